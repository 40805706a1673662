"""The recipes: every YAML config parses with its recipe's parser, the no-argument defaults are the
tiny CPU settings (a fixed step budget of ~30 minutes), each recipe runs end to end (one step, a tiny
random model) and writes its report, and the evaluation protocol (validation curve, best checkpoint
chosen on validation, test before / final / best, the time cap) does what it says."""

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
from dlm_trl.trainers import recipe_utils  # noqa: E402
from dlm_trl.trainers.recipe_utils import (  # noqa: E402
    ParameterSnapshot,
    RecipeArguments,
    autocast_context,
    cpu_rollout_autocast_dtype,
    set_torch_threads,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "diffu_grpo": "DiffuGRPOConfig", "gdpo": "GDPOConfig", "dmpo": "DMPOConfig", "spg": "SPGConfig", "tr2d2": "TR2D2Config",
}
# Methods that are a configuration of another recipe's trainer (an estimator or loss option): config prefix → recipe.
METHOD_RECIPES = {"espo": "gdpo", "bgpo": "gdpo", "justgrpo": "diffu_grpo"}
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))


def config_recipe(stem: str) -> tuple[str, str, str]:
    """``(method, recipe, family)`` of a config file stem ``<method>_<family>_<task>``."""
    for method in sorted({**{a: a for a in RECIPES}, **METHOD_RECIPES}, key=len, reverse=True):
        for family in ("llada", "dream"):
            if stem.startswith(f"{method}_{family}_"):
                return method, METHOD_RECIPES.get(method, method), family
    raise AssertionError(f"config {stem!r} names no known method/recipe: add it to RECIPES or METHOD_RECIPES")


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
    _, algo, family = config_recipe(path.stem)
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


def test_autocast_context_names():
    x = torch.randn(2, 3)
    for off in (None, "none", "float32"):
        with autocast_context(off):
            assert (x @ x.T).dtype == torch.float32
    with autocast_context("bfloat16"):
        assert (x @ x.T).dtype == torch.bfloat16
    with autocast_context("auto"):  # bf16 exactly where the CPU has native bf16 matmuls
        want = torch.bfloat16 if cpu_rollout_autocast_dtype() == "bfloat16" else torch.float32
        assert (x @ x.T).dtype == want


# Measured on 2 idle cores, 256 completions per step (README); a greedy evaluation takes ~0.1 s per prompt.
# SPG: 0.51x GDPO's step in back-to-back 3-step runs on one thread (both with threshold-0.9 rollouts) x GDPO's
# 18.5 s idle step with those rollouts (README "Fast rollouts in RL").
# TR2-D2: 1.88x DMPO's first step in two 2-step runs side by side (948 s vs 504 s on a busy machine) x DMPO's 38 s.
# GDPO and diffu-GRPO roll out with `rollout: fast`: GDPO 18.5 s (README), diffu-GRPO 23.5 s with the plain sampler x
# 0.43 (its fast / plain step side by side, docs/rollout_rl_fast_diffu_grpo.md). They keep the step counts of the
# plain-sampler protocol their fast-rollout results were compared under, so they now finish in ~20 minutes.
SECONDS_PER_STEP = {"gdpo": 18.5, "diffu_grpo": 10.1, "dmpo": 38.0, "spg": 9.5, "tr2d2": 235.0}
FAST_ROLLOUT_RECIPES = ("gdpo", "diffu_grpo")


@pytest.mark.parametrize("algo", sorted(RECIPES))
def test_no_argument_budget_is_a_fixed_number_of_steps_of_about_30_minutes(algo):
    recipe = load_recipe(algo)
    parser = TrlParser((RecipeArguments, getattr(recipe, RECIPES[algo]), ModelConfig))
    parser.set_defaults_with_config(**recipe.TINY_DEFAULTS)
    script_args, args, _ = parser.parse_args_and_config([])
    # the step budget binds, not the clock: the cap is a safety margin well above the planned time
    assert args.max_steps == {"gdpo": 55, "diffu_grpo": 65, "dmpo": 40, "spg": 110, "tr2d2": 13}[algo]  # not on test
    assert script_args.val_samples == 200 and script_args.eval_every_steps == 5 and script_args.eval_samples == 400
    validations = args.max_steps // script_args.eval_every_steps + 1
    minutes = (args.max_steps * SECONDS_PER_STEP[algo] + 0.1 * validations * script_args.val_samples
               + 0.1 * 3 * script_args.eval_samples) / 60
    # TR2-D2's budget is DMPO's NFE (13 steps ≈ 343 k row-forwards vs 348 k, recipes/tr2d2_llada.py): ~55 minutes
    low, high = (48, 58) if algo == "tr2d2" else (15, 33) if algo in FAST_ROLLOUT_RECIPES else (27, 33)
    if algo in FAST_ROLLOUT_RECIPES:
        assert args.rollout == "fast"
    assert low <= minutes <= high, minutes
    assert script_args.train_minutes >= 1.5 * minutes


@pytest.mark.parametrize("algo", sorted(RECIPES))
def test_recipe_runs_end_to_end(algo, random_model_dir, tmp_path):
    recipe = load_recipe(algo)
    out = tmp_path / algo
    argv = [
        "--model_name_or_path", str(random_model_dir), "--output_dir", str(out), "--max_steps", "1",
        "--num_train_prompts", "8", "--eval_samples", "4", "--val_samples", "3", "--eval_batch_size", "4",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--gradient_accumulation_steps", "1",
        "--gen_length", "8", "--block_length", "8", "--diffusion_steps", "4", "--disable_tqdm", "true",
    ]
    if algo == "dmpo":
        argv += ["--num_replicates", "2"]
    report = recipe.main(argv)
    assert report["steps"] == 1 and report["max_steps"] == 1 and report["time_cap_hit"] is False
    for key in ("before", "test_final", "test_best"):
        assert report[key]["split"] == "test" and report[key]["num_samples"] == 4, key
    assert report["heldout_before"] == report["before"] and report["heldout_after"] == report["test_final"]
    # validated at the start and at the last step (eval_every_steps 50 > max_steps) on the validation split
    assert [p["step"] for p in report["validation_curve"]] == [0, 1]
    assert all(p["num_samples"] == 3 for p in report["validation_curve"])
    assert report["best_step"] == 0  # the random model scores 0 everywhere: ties go to the earlier step
    assert (out / "report.png").stat().st_size > 1000
    curve = json.loads((out / "report.json").read_text())["reward_curve"]
    assert curve and all(p["nfe_total"] > 0 for p in curve)
    if algo == "tr2d2":  # the search's own metrics are kept per step
        assert all(p["search/buffer_best_reward"] >= p["search/buffer_mean_reward"] for p in curve)
    assert (out / "model.safetensors").exists() and (out / "best" / "model.safetensors").exists()
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
        "--val_samples", "3",
    ]
    report = recipe.main(argv)
    assert report["steps"] == 1
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    assert (out / "best" / "adapter_model.safetensors").exists()


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


# --------------------------------------------------------------------------- the evaluation protocol


def varied_reward(prompts, completions, **kwargs):
    """Varies between completions, so the random model's groups are not flat and every step changes it."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(map(ord, t)) % 5) / 4.0 for t in texts]


def _protocol_argv(model_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(out), "--num_train_prompts", "8",
        "--eval_samples", "4", "--val_samples", "3", "--eval_batch_size", "4", "--per_device_train_batch_size", "4",
        "--num_generations", "4", "--gradient_accumulation_steps", "1", "--gen_length", "8", "--block_length", "8",
        "--diffusion_steps", "4", "--disable_tqdm", "true", "--learning_rate", "1e-2",
        "--reward_funcs", f"{__name__}:varied_reward", *extra,
    ]


def _weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_best_checkpoint_is_chosen_on_validation_saved_and_tested(random_model_dir, tmp_path, monkeypatch):
    """Scripted validation accuracies 0.2, 0.6, 0.6, 0.4 at steps 0-3: the best is step 1 (the tie at step 2
    goes to the earlier step); best/ holds step 1's weights, test_best is measured on them, the final model
    comes back afterwards, and the validation accuracy is logged as val/accuracy at every validation."""
    from safetensors.torch import load_file

    scripted = {0: 0.2, 1: 0.6, 2: 0.6, 3: 0.4}
    seen = {"validation": {}, "test": []}
    real_evaluate = recipe_utils.RecipeProtocol.evaluate

    def evaluate(self, split, n):
        res = real_evaluate(self, split, n)
        step = self.trainer.state.global_step
        if split == "validation":
            seen["validation"][step] = _weights(self._model())
            res = dict(res, accuracy=scripted[step])
        else:
            seen["test"].append(_weights(self._model()))
        return res

    logs = {}
    real_report = recipe_utils.RecipeProtocol.report

    def report(self, **kw):
        logs["history"] = list(self.trainer.state.log_history)
        logs["model"] = self.trainer.model
        return real_report(self, **kw)

    monkeypatch.setattr(recipe_utils.RecipeProtocol, "evaluate", evaluate)
    monkeypatch.setattr(recipe_utils.RecipeProtocol, "report", report)
    out = tmp_path / "gdpo"
    rep = load_recipe("gdpo").main(_protocol_argv(random_model_dir, out, "--max_steps", "3", "--eval_every_steps", "1"))

    assert [(p["step"], p["accuracy"]) for p in rep["validation_curve"]] == sorted(scripted.items())
    assert rep["best_step"] == 1 and rep["best_validation_accuracy"] == 0.6
    assert [e["val/accuracy"] for e in logs["history"] if "val/accuracy" in e] == [0.2, 0.6, 0.6, 0.4]
    assert [e["step"] for e in logs["history"] if "val/accuracy" in e] == [0, 1, 2, 3]
    # the training logs are left alone: every step still logs its reward, without validation keys
    assert [e["step"] for e in logs["history"] if "reward" in e] == [1, 2, 3]
    assert all("val/accuracy" not in e for e in logs["history"] if "reward" in e)
    w = seen["validation"]
    assert all(any(not torch.equal(w[a][n], w[b][n]) for n in w[a]) for a, b in ((0, 1), (1, 3)))  # lr 1e-2 moves it
    # test evaluations: before (step-0 weights), final (step 3), best (step 1, restored)
    assert len(seen["test"]) == 3
    for got, want in zip(seen["test"], (w[0], w[3], w[1]), strict=True):
        assert all(torch.equal(got[n], want[n]) for n in want)
    best = load_file(out / "best" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert any(not torch.equal(best[n], final[n]) for n in final)
    assert all(torch.equal(best[n], w[1][n]) for n in best) and all(torch.equal(final[n], w[3][n]) for n in final)
    # the trainer's model is the final model again
    assert all(torch.equal(p, w[3][n]) for n, p in logs["model"].named_parameters())
    assert rep["test_best"]["split"] == "test" and rep["test_final"]["split"] == "test"


def test_validation_passes_do_not_change_training(random_model_dir, tmp_path):
    """Evaluations are greedy with per-row generators and use no global randomness: the same run with a
    validation every step and test evaluations trains exactly as without any."""
    recipe = load_recipe("gdpo")
    with_eval = recipe.main(_protocol_argv(random_model_dir, tmp_path / "a", "--max_steps", "2", "--eval_every_steps", "1"))
    without = recipe.main(_protocol_argv(random_model_dir, tmp_path / "b", "--max_steps", "2", "--val_samples", "0",
                                         "--eval_samples", "0"))
    assert len(with_eval["validation_curve"]) == 3 and without["validation_curve"] == []
    assert without["best_step"] is None and without["test_best"] is None and without["before"] is None
    assert [p["reward"] for p in with_eval["reward_curve"]] == [p["reward"] for p in without["reward_curve"]]
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not (tmp_path / "b" / "best").exists()


def test_time_cap_stops_training_and_says_so(random_model_dir, tmp_path):
    """train_minutes is a safety cap: when it binds before max_steps the report says so, and the last step is
    still validated (eval_every_steps 0: only at the start and the end)."""
    rep = load_recipe("gdpo").main(_protocol_argv(
        random_model_dir, tmp_path / "capped", "--max_steps", "3", "--eval_every_steps", "0",
        "--train_minutes", "1e-6", "--eval_samples", "0"))
    assert rep["steps"] == 1 and rep["max_steps"] == 3 and rep["time_cap_hit"] is True
    assert [p["step"] for p in rep["validation_curve"]] == [0, 1]
    assert rep["test_final"] is None and rep["test_best"] is None and rep["best_step"] == 0


def test_parameter_snapshot_copies_trainable_parameters_and_restores_them():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # frozen (e.g. a LoRA base weight): not copied
    before = _weights(model)
    snap = ParameterSnapshot(model)
    assert snap.numel == sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 + 8 + 2
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    snap.restore()
    after = _weights(model)
    assert torch.equal(after["0.weight"], before["0.weight"] + 1)  # frozen: untouched by restore
    assert all(torch.equal(after[n], before[n]) for n in ("0.bias", "1.weight", "1.bias"))
