"""The rollout decoder options in training and evaluation: ``rollout`` presets, ``rollout_transfer`` /
``rollout_threshold`` / ``rollout_cache`` in every trainer config, ``dlm-trl eval --rollout/--transfer/--cache``,
and variable forward counts under ZeRO-3 without a hang."""

from __future__ import annotations

import json

import pytest
from test_recipe_zero3 import ACCELERATE_CONFIG, BIN, _env, _free_port, _run
from test_trainers import _one_thread, dataset, make_trainer, tokenizer  # noqa: F401

from dlm_trl.cli import main
from dlm_trl.models import TINY_CHECKPOINT_DIR
from dlm_trl.sampling import ROLLOUT_PRESETS
from dlm_trl.trainers import DiffuGRPOConfig, DMPOConfig, GDPOConfig

BASE = dict(use_cpu=True, bf16=False, report_to="none", gen_length=16, block_length=8, diffusion_steps=8)


@pytest.mark.parametrize("config_cls", [DiffuGRPOConfig, GDPOConfig, DMPOConfig])
def test_every_trainer_config_takes_the_rollout_section(config_cls, tmp_path):
    plain = config_cls(output_dir=str(tmp_path), **BASE).sampler_config()
    assert plain.transfer == "topk" and plain.cache == "none"
    fast = config_cls(output_dir=str(tmp_path), rollout="fast", **BASE).sampler_config()
    for key, value in ROLLOUT_PRESETS["fast"].items():
        assert getattr(fast, key) == value
    mixed = config_cls(output_dir=str(tmp_path), rollout="fast", rollout_cache="dual", rollout_threshold=0.7,
                       **BASE).sampler_config()
    assert (mixed.transfer, mixed.threshold, mixed.cache) == ("threshold", 0.7, "dual")


def test_rollout_errors_say_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="unknown rollout='fsat'.*Did you mean 'fast'"):
        GDPOConfig(output_dir=str(tmp_path), rollout="fsat", **BASE)
    with pytest.raises(ValueError, match="transfer"):
        GDPOConfig(output_dir=str(tmp_path), rollout_transfer="treshold", **BASE)
    with pytest.raises(ValueError, match="cache_implementation"):
        GDPOConfig(output_dir=str(tmp_path), cache_implementation="static", **BASE)


def test_trainer_rolls_out_with_the_threshold_decoder(tokenizer, dataset, tmp_path):  # noqa: F811
    # A threshold below every confidence fills each block in one forward: nfe per row = number of blocks.
    # after_eos="keep": no row stops early after an EOS.
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, max_steps=1, rollout_transfer="threshold",
                           rollout_threshold=1e-9, rollout_cache="dual", after_eos="keep")
    trainer.train()
    nfe = [h["sampler/nfe_per_row"] for h in trainer.state.log_history if "sampler/nfe_per_row" in h]
    assert nfe == [2.0]  # gen_length 8 / block_length 4 = 2 blocks, one forward each
    # completion tokens (≤ 8, up to the first EOS) per forward, and the mean log-probability at commit
    logs = next(h for h in trainer.state.log_history if "sampler/tokens_per_forward" in h)
    assert 0 < logs["sampler/tokens_per_forward"] <= 4
    assert -20 < logs["sampler/commit_logprob"] <= 0
    assert trainer.sampler_config.transfer == "threshold" and trainer.sampler_config.cache == "dual"


pytestmark_eval = pytest.mark.skipif(
    not (TINY_CHECKPOINT_DIR / "model.safetensors").exists(), reason="embedded checkpoint missing"
)


@pytestmark_eval
def test_eval_cli_rollout_fast_and_cache(tmp_path):
    results = {}
    for name, flags in {"plain": [], "fast": ["--rollout", "fast"], "dual": ["--cache", "dual"],
                        "factor": ["--transfer", "factor", "--cache", "prefix", "--cache-refresh", "4"]}.items():
        path = tmp_path / f"{name}.json"
        rc = main(["eval", "--model", "tiny", "--task", "countdown", "--num-samples", "8", "--batch-size", "8",
                   "--no-progress", "--output", str(path), *flags])
        assert rc == 0
        results[name] = json.loads(path.read_text())
    assert results["plain"]["nfe_per_sample"] == 24 and results["dual"]["nfe_per_sample"] == 24
    assert results["fast"]["nfe_per_sample"] < 24
    assert results["fast"]["sampler"]["transfer"] == ROLLOUT_PRESETS["fast"]["transfer"]
    assert results["dual"]["sampler"]["cache"] == "dual"
    assert results["factor"]["sampler"]["cache_refresh"] == 4


@pytestmark_eval
def test_eval_cli_cache_on_a_model_without_one_is_a_clear_error(capsys, monkeypatch):
    from dlm_trl.models import TinyDLMForMaskedDiffusion

    monkeypatch.setattr(TinyDLMForMaskedDiffusion, "supports_block_kv_cache", False)
    assert main(["eval", "--num-samples", "2", "--cache", "dual", "--no-progress"]) == 2
    assert "block key/value cache" in capsys.readouterr().err


@pytest.mark.distributed
def test_zero3_threshold_rollouts_with_unequal_forward_counts_do_not_hang(tmp_path, random_model_dir):
    """ZeRO-3 without gathering the parameters for generation: every sampler forward runs collective
    parameter gathers, so ranks whose rows finish sooner must keep calling the model (sync_ranks)."""
    out = tmp_path / "z3_fast"
    args = [
        "--model_name_or_path", str(random_model_dir), "--output_dir", str(out), "--max_steps", "1",
        "--eval_every_steps", "0", "--num_train_prompts", "8", "--eval_samples", "0", "--val_samples", "0",
        "--per_device_train_batch_size", "2", "--num_generations", "2", "--gradient_accumulation_steps", "1",
        "--gen_length", "16", "--block_length", "8", "--diffusion_steps", "8", "--disable_tqdm", "true",
        "--torch_threads", "1", "--rollout_transfer", "threshold", "--rollout_threshold", "0.02",
        "--ds3_gather_for_generation", "false",
    ]
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG), "--zero_stage", "3",
           "--main_process_port", str(_free_port()), "recipes/gdpo_llada.py", *args]
    _run(cmd, _env(tmp_path), timeout=240)
    assert (out / "report.json").exists()


def test_fast_preset_scores_by_confidence_for_every_family_and_explicit_options_win(tmp_path):
    from dlm_trl.evaluation import sampler_config_for
    from dlm_trl.sampling import SamplerConfig

    dream = sampler_config_for("countdown", "dream", rollout="fast")
    assert (dream.transfer, dream.remasking, dream.schedule) == ("threshold", "low_confidence", "dream_linspace")
    assert sampler_config_for("countdown", "dream", rollout="fast", remasking="margin").remasking == "margin"
    cfg = GDPOConfig(output_dir=str(tmp_path), rollout="fast", remasking="margin", model_family="dream", **BASE)
    assert cfg.sampler_config().remasking == "margin"
    with pytest.raises(ValueError, match="probability-scale scorer"):
        SamplerConfig(transfer="threshold", remasking="entropy")
