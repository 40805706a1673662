"""Real checkpoints as a user meets them: hub-layout LLaDA and Dream folders (tiny random weights written
by the upstream code) load into dlm-trl's native classes with no remote code, run through `dlm-trl eval`
and the recipes, and every mistake gets one clear line naming the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from dlm_trl.cli import main as cli_main
from dlm_trl.models import DLM, ModelLoadError, load, load_model
from dlm_trl.models.lora import LORA_PRESETS, resolve_lora_targets
from dlm_trl.testing.hub_checkpoints import (
    REFERENCE_MISSING,
    build_remote_code_checkpoint,
    needs_transformers5_patch,
    reference_dir,
)

pytestmark = pytest.mark.skipif(reference_dir() is None, reason=REFERENCE_MISSING)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {
        "llada": build_remote_code_checkpoint("llada", root / "llada"),
        "dream": build_remote_code_checkpoint("dream", root / "dream"),
        "llada-unpatched": build_remote_code_checkpoint("llada", root / "llada-u", patched=False),
        "dream-unpatched": build_remote_code_checkpoint("dream", root / "dream-u", patched=False),
    }


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_hub_checkpoint_loads_natively_without_remote_code(hub, family):
    model, tok = load(str(hub[family]))
    assert model.family == family
    assert type(model.module).__module__ == f"dlm_trl.models.{family}"  # not transformers_modules.*
    assert model.mask_token_id == tok.mask_token_id and model.mask_mode == "2d"
    remote, _ = load(str(hub[family]), remote_code=True)
    assert type(remote.module).__module__.startswith("transformers_modules")
    ids = torch.randint(3, 1000, (2, 10))
    ids[:, 5:] = model.mask_token_id
    with torch.no_grad():
        assert torch.allclose(model(ids), remote(ids), atol=1e-5)


def _fresh_process(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter: transformers caches remote modules per process by class name, so
    the hub's unpatched files must be the first LLaDA / Dream code a process imports."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_unpatched_hub_code_fails_with_the_cause_and_the_fix(hub, family):
    """The hub's files byte-for-byte: under transformers 5 their own code fails (the error names the cause
    and the fix, in one short line); the native class reads the same folder."""
    path = str(hub[f"{family}-unpatched"])
    res = _fresh_process(
        "import sys\n"
        "from dlm_trl.cli import main\n"
        f"rc = main(['eval', '--model', {path!r}, '--remote-code', '--num-samples', '1', '--no-progress'])\n"
        "sys.exit(rc)\n"
    )
    if not needs_transformers5_patch():
        assert res.returncode == 0, res.stderr[-2000:]  # transformers 4.x runs the hub code as it is
    else:
        err = [line for line in res.stderr.splitlines() if line.startswith("dlm-trl: error")]
        assert res.returncode == 2 and len(err) == 1, res.stderr[-2000:]
        assert "does not run under transformers" in err[0] and "drop --remote-code" in err[0]
        assert len(err[0]) < 1000 and "Traceback" not in res.stderr  # not a list of 300 config classes
    assert type(load_model(path)).__module__ == f"dlm_trl.models.{family}"


def test_left_padding_through_the_adapter(hub):
    """Native models honour the padding mask; Dream's hub code gets its own 4-D mask (a 2-D integer mask
    crashed it); LLaDA's hub code ignores padding and says so."""
    for family in ("llada", "dream"):
        native, _ = load(str(hub[family]))
        remote, _ = load(str(hub[family]), remote_code=True)
        ids = torch.randint(3, 1000, (2, 12))
        ids[:, 8:] = native.mask_token_id
        att = torch.ones_like(ids)
        att[1, :4] = 0
        # Compare from the row's second token on: Dream's aligned logit at a position comes from the one
        # before it, which for a row's first token is padding (never a masked position anyway).
        with torch.no_grad():
            alone = native(ids[1:, 4:])
            padded = native(ids, attention_mask=att)
            assert torch.allclose(padded[1, 5:], alone[0, 1:], atol=1e-5)
            if family == "dream":
                assert remote.mask_mode == "dream_remote"
                assert torch.allclose(remote(ids, attention_mask=att)[1, 5:], alone[0, 1:], atol=1e-4)
            else:
                assert remote.mask_mode == "ignored"
                with pytest.warns(UserWarning, match="ignores the attention mask"):
                    remote(ids, attention_mask=att)


def test_missing_checkpoint_and_custom_code_errors(tmp_path, hub):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "nope"))
    # an unknown family with custom code: no silent trust
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((hub["llada"] / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "mystery", ["MysteryModel"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        load_model(str(other))


def test_eval_cli_on_real_architectures(hub, tmp_path, capsys):
    for family in ("llada", "dream"):
        out = tmp_path / f"{family}.json"
        rc = cli_main(["eval", "--model", str(hub[family]), "--num-samples", "3", "--batch-size", "3",
                       "--gen-length", "16", "--block-length", "8", "--no-progress", "--output", str(out)])
        assert rc == 0, capsys.readouterr().err
        res = json.loads(out.read_text())
        assert res["num_samples"] == 3
        assert res["sampler"]["schedule"] == ("even" if family == "llada" else "dream_linspace")
    # flags: family / mask id / remote code / dtype reach the loader
    rc = cli_main(["eval", "--model", str(hub["dream"]), "--model-family", "dream", "--mask-token-id", "1",
                   "--remote-code", "--torch-dtype", "float32", "--num-samples", "2", "--gen-length", "8",
                   "--block-length", "8", "--no-progress"])
    assert rc == 0, capsys.readouterr().err


def test_eval_cli_user_errors_are_one_line(hub, tmp_path, capsys):
    assert cli_main(["eval", "--model", str(tmp_path / "missing"), "--num-samples", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlm-trl: error:") and "Traceback" not in err and len(err.splitlines()) == 1
    assert cli_main(["eval", "--model", str(hub["llada"]), "--remasking", "low_confidense", "--num-samples", "1",
                     "--no-progress"]) == 2
    assert "did you mean 'low_confidence'" in capsys.readouterr().err.lower()


def test_trainers_on_transformers_4_say_what_to_install():
    if needs_transformers5_patch():
        pytest.skip("transformers >= 5 is installed")
    from dlm_trl.trainers import GDPOConfig

    with pytest.raises(ImportError, match="transformers >= 5"):
        GDPOConfig(output_dir="unused", gen_length=8, block_length=8)


def test_lora_presets_cover_every_projection(hub):
    llada = load_model(str(hub["llada"]))
    pattern = resolve_lora_targets(llada, ["llada"])
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(llada, LoraConfig(r=2, lora_alpha=4, target_modules=pattern))
    adapted = {n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(LORA_PRESETS["llada"])
    # the LM head (also named ff_out) is left alone
    assert not any("transformer.ff_out.lora_A" in n for n, _ in peft_model.named_parameters())
    n_blocks = llada.config.n_layers
    assert sum(1 for _, m in peft_model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")) \
        == n_blocks * len(LORA_PRESETS["llada"])

    llada = load_model(str(hub["llada"]))  # get_peft_model changed the first one in place
    dream = load_model(str(hub["dream"]))
    assert resolve_lora_targets(dream, "auto") == resolve_lora_targets(dream, ["dream"])
    # the Llama list the YAMLs had matched only q/k/v/up_proj of LLaDA, silently: now an error ...
    llama_names = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
    with pytest.raises(ValueError, match=r"\['o_proj', 'down_proj', 'gate_proj'\] match no linear module.*attn_out"):
        resolve_lora_targets(llada, llama_names)
    # ... and a list of real names that covers part of the projections warns, naming the rest
    with pytest.warns(UserWarning, match=r"leave out \['attn_out', 'ff_proj', 'ff_out'\]"):
        resolve_lora_targets(llada, ["q_proj", "k_proj", "v_proj", "up_proj"])
    with pytest.raises(ValueError, match="matches no module"):
        resolve_lora_targets(llada, ["dream"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_lora_targets(llada, list(LORA_PRESETS["llada"])) == list(LORA_PRESETS["llada"])


def test_dlm_wrap_detects_family_from_native_config(hub):
    llada = load_model(str(hub["llada"]))
    spec = DLM.wrap(llada)
    assert spec.family == "llada" and spec.mask_token_id == llada.config.mask_token_id


@pytest.mark.skipif(not needs_transformers5_patch(), reason="the trainers need transformers >= 5")
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_gdpo_recipe_one_step_natively(hub, family, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from real_arch_smoke import run_recipe

    res = run_recipe(hub[family], "gdpo", "native", tmp_path / "run")
    assert res["ok"], res


@pytest.mark.slow
@pytest.mark.skipif(not needs_transformers5_patch(), reason="the trainers need transformers >= 5")
def test_real_arch_smoke_full_matrix(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from real_arch_smoke import expected_ok, run_matrix

    rows = run_matrix(tmp_path, ["llada", "dream"], ["native", "remote", "remote-unpatched"],
                      ["gdpo", "diffu_grpo", "dmpo"])
    bad = [r for r in rows if r["ok"] != expected_ok(r)]
    assert not bad, bad
    assert len(rows) == 2 * (1 + 3 + 1 + 3 + 1)


@pytest.mark.distributed
@pytest.mark.skipif(not needs_transformers5_patch(), reason="the trainers need transformers >= 5")
@pytest.mark.parametrize("family,zero_stage,lora", [("llada", 3, True), ("dream", 3, False)])
def test_recipe_on_native_models_under_zero3_two_processes(hub, tmp_path, family, zero_stage, lora):
    """The 8B runs' set-up on this machine: a hub-layout checkpoint loaded natively (deepspeed.zero.Init under
    ZeRO-3), sharded over 2 CPU processes, one GDPO step, validation and test evaluation on all ranks."""
    import shutil
    import socket
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [
        shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate"), "launch",
        "--config_file", str(repo / "recipes" / "accelerate" / "cpu_deepspeed_2proc.yaml"),
        "--zero_stage", str(zero_stage), "--main_process_port", str(port), str(repo / "recipes" / "gdpo_llada.py"),
        "--model_name_or_path", str(hub[family]), "--output_dir", str(out), "--max_steps", "1",
        "--eval_every_steps", "1", "--num_train_prompts", "8", "--eval_samples", "3", "--val_samples", "3",
        "--eval_batch_size", "2", "--per_device_train_batch_size", "2", "--num_generations", "2",
        "--gradient_accumulation_steps", "1", "--gen_length", "8", "--block_length", "8", "--diffusion_steps", "4",
        "--disable_tqdm", "true", "--torch_threads", "1", "--bf16", "false",
    ]
    if lora:
        cmd += ["--use_peft", "--lora_r", "2", "--lora_alpha", "4", "--lora_target_modules", family]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo, env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 1 and report["test_final"]["num_samples"] == 3
    saved = out / ("adapter_model.safetensors" if lora else "model.safetensors")
    assert saved.exists(), sorted(p.name for p in out.iterdir())
