"""dlm_trl/models/tiny/train.py: the task mix of experiment variants (``--task-mix``, ``--init-from``)."""

from __future__ import annotations

import json

import pytest

from dlm_trl.models.tiny import CHECKPOINT_DIR
from dlm_trl.models.tiny.train import TASK_MIX, main, parse_task_mix


def test_parse_task_mix():
    assert parse_task_mix("sudoku=1") == {"sudoku": 1.0}
    assert parse_task_mix("countdown=0.7, sudoku=0.3") == {"countdown": 0.7, "sudoku": 0.3}
    assert parse_task_mix("sudoku") == {"sudoku": 1.0}
    assert TASK_MIX == {"countdown": 1.0}  # the shipped model's mix
    for bad, message in [("sudko=1", "unknown task 'sudko'"), ("sudoku=x", "must be a number"),
                         ("sudoku=0", "must be > 0"), (" , ", "names no task")]:
        with pytest.raises(ValueError, match=message):
            parse_task_mix(bad)


def test_continue_training_on_sudoku(tmp_path):
    out = tmp_path / "tiny_sudoku"
    info = main(["--init-from", str(CHECKPOINT_DIR), "--task-mix", "sudoku=1", "--steps", "2", "--warmup", "1",
                 "--batch-size", "2", "--train-puzzles", "12", "--sudoku-puzzles", "8", "--eval-samples", "2",
                 "--eval-split", "validation", "--threads", "1", "--output-dir", str(out)])
    assert info["train_steps"] == 2 and info["task_mix"] == {"sudoku": 1.0}
    assert "heldout_sudoku_accuracy" in info and "heldout_countdown_accuracy" not in info
    assert info["heldout_split"] == "validation"
    assert json.loads((out / "training_info.json").read_text()) == info
    from dlm_trl.models import load

    dlm, tok = load(str(out))
    assert tok.mask_token_id == dlm.mask_token_id  # the checkpoint's tokenizer was kept
