"""The recipes: every YAML config parses with its recipe's parser, the no-argument defaults are the
tiny CPU settings, and each recipe runs end to end (one step, a tiny random model) and writes
its report."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import ModelConfig, TrlParser  # noqa: E402

from dlm_trl.tasks import get_task  # noqa: E402
from dlm_trl.trainers.recipe_utils import (  # noqa: E402
    RecipeArguments,
    cpu_rollout_autocast_dtype,
    set_torch_threads,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"diffu_grpo": "DiffuGRPOConfig", "gdpo": "GDPOConfig", "dmpo": "DMPOConfig"}
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))


def load_recipe(name: str):
    path = ROOT / "recipes" / f"{name}_llada.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_there_is_a_config_per_trainer_and_task():
    names = {p.stem for p in CONFIGS}
    for algo in RECIPES:
        for task in ("gsm8k", "math", "countdown", "sudoku"):
            assert f"{algo}_llada_{task}" in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_yaml_config_parses(path):
    algo, family = next((a, f) for a in RECIPES for f in ("llada", "dream") if path.stem.startswith(f"{a}_{f}_"))
    recipe = load_recipe(algo)
    config_cls = getattr(recipe, RECIPES[algo])
    header = path.read_text().splitlines()[:5]
    assert any(f"recipes/{algo}_llada.py --config recipes/configs/{path.name}" in line for line in header), (
        "the header comment must give the launch command"
    )
    parser = TrlParser((RecipeArguments, config_cls, ModelConfig))
    script_args, args, model_args = parser.parse_args_and_config(["--config", str(path), "--use_cpu", "true"])
    expected_model = {"llada": "GSAI-ML/LLaDA-8B-Instruct", "dream": "Dream-org/Dream-v0-Instruct-7B"}[family]
    assert model_args.model_name_or_path == expected_model
    assert model_args.use_peft and model_args.lora_r == 128 and model_args.lora_alpha == 64
    # LoRA targets are the family's preset: every projection of every block (a Llama list misses LLaDA's)
    assert model_args.lora_target_modules in ([family], family)  # TrlParser turns a one-item list into a str
    assert args.gen_length == 256 == args.max_completion_length and args.block_length == 32
    assert script_args.task in path.stem and script_args.reward_funcs
    assert get_task(script_args.task).name == script_args.task  # every config names a task that exists
    assert args.bf16


@pytest.mark.parametrize("algo", sorted(RECIPES))
def test_no_argument_defaults_are_the_tiny_cpu_settings(algo):
    recipe = load_recipe(algo)
    parser = TrlParser((RecipeArguments, getattr(recipe, RECIPES[algo]), ModelConfig))
    parser.set_defaults_with_config(**recipe.TINY_DEFAULTS)
    script_args, args, model_args = parser.parse_args_and_config([])
    assert model_args.model_name_or_path == "tiny" and script_args.task == "countdown"
    assert not args.bf16 and args.use_cpu and args.num_generations == 8
    assert (args.gen_length, args.block_length, args.diffusion_steps) == (48, 16, 24)
    assert 1000 <= script_args.num_train_prompts <= 3400 and script_args.torch_threads is None
    assert args.rollout_autocast_dtype == cpu_rollout_autocast_dtype()  # bf16 rollouts where the CPU has bf16
    # 256 completions per optimizer step: smaller batches lowered held-out accuracy (README)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps >= 256


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory):
    from dlm_trl.models import TinyDLMConfig, TinyDLMForMaskedDiffusion
    from dlm_trl.models.tiny.train import build_tokenizer
    from dlm_trl.tasks import get_task

    rows = get_task("countdown").rows("train", 40, seed=1)
    tok = build_tokenizer([r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows], 300)
    torch.manual_seed(0)
    cfg = TinyDLMConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
    )
    path = tmp_path_factory.mktemp("random_tiny")
    TinyDLMForMaskedDiffusion(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("algo", sorted(RECIPES))
def test_recipe_runs_end_to_end(algo, random_model_dir, tmp_path):
    recipe = load_recipe(algo)
    out = tmp_path / algo
    argv = [
        "--model_name_or_path", str(random_model_dir), "--output_dir", str(out), "--max_steps", "1",
        "--num_train_prompts", "8", "--eval_samples", "4", "--eval_batch_size", "4",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--gradient_accumulation_steps", "1",
        "--gen_length", "8", "--block_length", "8", "--diffusion_steps", "4", "--disable_tqdm", "true",
    ]
    if algo == "dmpo":
        argv += ["--num_replicates", "2"]
    report = recipe.main(argv)
    assert report["steps"] == 1
    assert report["heldout_before"]["num_samples"] == 4 and report["heldout_after"]["num_samples"] == 4
    assert (out / "report.png").stat().st_size > 1000
    assert json.loads((out / "report.json").read_text())["reward_curve"]
    assert (out / "model.safetensors").exists()
    # where the time went: every bucket measured, and together no more than the training run
    seconds = report["seconds"]
    assert set(seconds) == {"sampler", "nograd_likelihoods", "rollout_other"} and seconds["sampler"] > 0
    assert sum(seconds.values()) <= report["train_seconds"] + 1.0


def test_recipe_with_lora_and_trl_default_task_type(random_model_dir, tmp_path):
    """``--use_peft`` with TRL's default ``lora_task_type`` (CAUSAL_LM) on the tiny model: PEFT's causal-LM
    wrapper needs ``prepare_inputs_for_generation``; the checkpoint holds the adapter."""
    recipe = load_recipe("gdpo")
    out = tmp_path / "gdpo_lora"
    argv = [
        "--model_name_or_path", str(random_model_dir), "--output_dir", str(out), "--max_steps", "1",
        "--num_train_prompts", "8", "--eval_samples", "4", "--eval_batch_size", "4",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--gradient_accumulation_steps", "1",
        "--gen_length", "8", "--block_length", "8", "--diffusion_steps", "4", "--disable_tqdm", "true",
        "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
    ]
    report = recipe.main(argv)
    assert report["steps"] == 1
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()


def test_torch_threads_default_uses_this_process_share_of_the_cores(monkeypatch):
    """`accelerate launch` exports OMP_NUM_THREADS=1; the recipes' default must still use the cores."""
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        torch.set_num_threads(1)
        assert set_torch_threads(None) == 8 == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this node share the cores
        assert set_torch_threads(None) == 4 == torch.get_num_threads()
        assert set_torch_threads(3) == 3 == torch.get_num_threads()
        assert set_torch_threads(0) == 3  # 0 keeps torch's setting
        with pytest.raises(ValueError, match="torch_threads must be"):
            set_torch_threads(-1)
    finally:
        torch.set_num_threads(before)
