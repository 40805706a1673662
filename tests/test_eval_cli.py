import json

import pytest

from dlm_trl.cli import main
from dlm_trl.models import TINY_CHECKPOINT_DIR

pytestmark = pytest.mark.skipif(
    not (TINY_CHECKPOINT_DIR / "model.safetensors").exists(), reason="embedded checkpoint missing"
)


def test_eval_cli_writes_json_and_is_deterministic(tmp_path, capsys):
    outs = []
    for i in range(2):
        path = tmp_path / f"r{i}.json"
        rc = main(["eval", "--model", "tiny", "--task", "countdown", "--num-samples", "6", "--seed", "0",
                   "--batch-size", "4", "--no-progress", "--samples", "--output", str(path)])
        assert rc == 0
        outs.append(json.loads(path.read_text()))
    assert "| countdown |" in capsys.readouterr().out
    for key in ("task", "model", "num_samples", "accuracy", "seconds"):
        assert key in outs[0]
    assert outs[0]["num_samples"] == 6 and outs[0]["sampler"]["steps"] == 24
    # same seed → same completions, whatever the batch split
    assert [s["completion"] for s in outs[0]["samples"]] == [s["completion"] for s in outs[1]["samples"]]


def test_eval_cli_bad_task_is_a_clear_error(capsys):
    assert main(["eval", "--task", "countdwn", "--num-samples", "2", "--no-progress"]) == 2
    assert "did you mean 'countdown'" in capsys.readouterr().err.lower()


def test_eval_cli_bad_sampler_config_says_how_to_fix(capsys):
    rc = main(["eval", "--num-samples", "2", "--gen-length", "48", "--block-length", "20", "--no-progress"])
    assert rc == 2
    assert "block_length" in capsys.readouterr().err


def test_eval_cli_validation_split(tmp_path):
    path = tmp_path / "val.json"
    rc = main(["eval", "--model", "tiny", "--task", "countdown", "--split", "validation", "--num-samples", "4",
               "--batch-size", "4", "--no-progress", "--samples", "--output", str(path)])
    assert rc == 0
    res = json.loads(path.read_text())
    assert res["split"] == "validation" and res["num_samples"] == 4
    from dlm_trl.tasks import countdown

    val = {r["prompt"][0]["content"].split("\n\n", 1)[1] for r in countdown.generate("validation", 4, seed=0)}
    assert {s["prompt"].split("\n\n", 1)[1] for s in res["samples"]} == val
