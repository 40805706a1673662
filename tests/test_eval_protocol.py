"""The papers' evaluation protocol: several generation lengths, their average, the d1 preset."""

import json

import pytest

from dlm_trl.cli import main
from dlm_trl.evaluation import EVAL_PROTOCOLS, parse_lengths, sampler_configs_for
from dlm_trl.models import TINY_CHECKPOINT_DIR
from dlm_trl.sampling import SamplerConfig

needs_tiny = pytest.mark.skipif(
    not (TINY_CHECKPOINT_DIR / "model.safetensors").exists(), reason="embedded checkpoint missing"
)
PAPER_TASKS = ("gsm8k", "math", "countdown", "sudoku", "humaneval", "mbpp")


@pytest.mark.parametrize("family", ["llada", "bidirectional", "dream"])
def test_d1_preset_is_d1s_protocol_for_every_task(family):
    assert set(PAPER_TASKS) <= set(EVAL_PROTOCOLS["d1"].tasks)
    for task in PAPER_TASKS:
        configs = sampler_configs_for(task, family, protocol="d1")
        assert [(c.gen_length, c.block_length, c.steps, c.temperature) for c in configs] == [
            (128, 32, 64, 0.0), (256, 32, 128, 0.0), (512, 32, 256, 0.0)]
        for c in configs:
            d1 = SamplerConfig.d1_eval(c.gen_length)
            assert (c.block_length, c.steps, c.temperature) == (d1.block_length, d1.steps, d1.temperature)
    # explicit values win over the preset; the decoder applies to every length
    configs = sampler_configs_for("gsm8k", "llada", [256], protocol="d1", block_length=64, temperature=0.5,
                                  rollout="fast")
    assert [(c.gen_length, c.block_length, c.steps, c.temperature, c.transfer) for c in configs] == [
        (256, 64, 128, 0.5, "threshold")]
    # without a protocol, the task's lengths for the embedded model stay the defaults
    (c,) = sampler_configs_for("countdown", "bidirectional")
    assert (c.gen_length, c.block_length, c.steps) == (48, 16, 24)


def test_parse_lengths():
    assert parse_lengths("128,256, 512,128") == [128, 256, 512]
    assert parse_lengths(48) == [48] and parse_lengths(None) is None
    for bad in ("128,x", "0", "", "-32", "1.5"):
        with pytest.raises(ValueError, match="comma"):
            parse_lengths(bad)


@needs_tiny
def test_eval_cli_several_lengths_table_json_and_average(tmp_path, capsys):
    multi, single = tmp_path / "multi.json", tmp_path / "single.json"
    common = ["eval", "--task", "countdown", "--block-length", "16", "--num-samples", "3", "--batch-size", "2",
              "--no-progress", "--samples"]
    assert main([*common, "--gen-length", "32,48", "--output", str(multi)]) == 0
    out = capsys.readouterr().out
    assert "| gen length |" in out
    for row in ("| countdown | tiny | 32 | 3 |", "| countdown | tiny | 48 | 3 |", "| countdown | tiny | average | 3 |"):
        assert row in out
    res = json.loads(multi.read_text())
    assert res["gen_lengths"] == [32, 48] and len(res["results"]) == 2 and res["protocol"] is None
    assert [r["sampler"]["steps"] for r in res["results"]] == [16, 24]
    for key in ("accuracy", "mean_reward", "nfe_per_sample"):
        assert res["average"][key] == pytest.approx(sum(r[key] for r in res["results"]) / 2, abs=0.01)
    # one length: the single-result layout, and the same completions as that length inside the list
    assert main([*common, "--gen-length", "48", "--output", str(single)]) == 0
    one = json.loads(single.read_text())
    assert "results" not in one and one["sampler"]["gen_length"] == 48 and "protocol" not in one
    assert [s["completion"] for s in one["samples"]] == [s["completion"] for s in res["results"][1]["samples"]]
    assert "gen length" not in capsys.readouterr().out


@needs_tiny
def test_evaluate_lengths_passes_the_decoder_to_every_length():
    from dlm_trl.evaluation import evaluate_lengths, format_table

    res = evaluate_lengths("countdown", "32,48", block_length=16, num_samples=2, rollout="fast", progress=False)
    for r, L in zip(res["results"], (32, 48), strict=True):
        assert (r["sampler"]["gen_length"], r["sampler"]["transfer"], r["sampler"]["threshold"]) == (L, "threshold", 0.9)
        assert 0 < r["nfe_per_sample"] <= L  # the threshold rule takes at most one forward per token
    table = format_table(res["results"], average=res["average"])
    assert table.splitlines()[-1].startswith("| countdown | tiny | average | 2 |")


@needs_tiny
def test_eval_cli_d1_on_the_tiny_model_is_a_clear_error(capsys):
    # 512 tokens + the prompt exceed the tiny model's 512 positions: one line, before any generation
    assert main(["eval", "--task", "countdown", "--protocol", "d1", "--num-samples", "2", "--no-progress"]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()[-1]
    assert err.startswith("dlm-trl: error: gen_length=512") and "max_position_embeddings" in err
    assert "use a gen_length ≤" in err and "|" not in cap.out


@needs_tiny
@pytest.mark.parametrize(
    ("flags", "needle"),
    [(["--gen-length", "32,x"], "comma"), (["--gen-length", "32,40", "--block-length", "16"], "block_length")],
)
def test_eval_cli_bad_lengths_say_what_to_fix(flags, needle, capsys):
    assert main(["eval", "--num-samples", "2", "--no-progress", *flags]) == 2
    cap = capsys.readouterr()
    assert needle in cap.err and "|" not in cap.out  # checked before the first length runs
