"""MATH (Hendrycks et al.) from local JSONL files — the d1 / GDPO math setting, no download.

dlm-trl does not ship MATH. Put the files where the other shared data lives
(``$DLM_TRL_DATA_DIR/math/{train,test}.jsonl``, ``../shared/data/math/``) or pass
``--data_path DIR`` (a folder holding ``train.jsonl`` / ``test.jsonl``, or holding ``math/``).
Each line is one problem with a ``problem`` field and either an ``answer`` field (MATH-500
style) or a ``solution`` whose last ``\\boxed{...}`` is the answer (original MATH style);
an optional ``level`` / ``type`` is kept. The reward is ``math_accuracy`` (math-verify).

Splits: ``test`` is ``test.jsonl``; ``validation`` is the last ``min(500, n // 10)`` rows of
``train.jsonl`` in file order and ``train`` the rest (:func:`dlm_trl.tasks.splits.carve_validation`).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from dlm_trl_rewards._common import last_boxed  # the reward parses answers the same way

from .gsm8k import data_candidates
from .prompts import user_turn
from .splits import carve_validation, check_split


def _file(split: str, path: str | os.PathLike | None) -> Path:
    candidates = [Path(path) / f"{split}.jsonl"] if path is not None else []
    candidates += [d / "math" / f"{split}.jsonl" for d in data_candidates(path)]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"MATH {split} split not found (dlm-trl does not ship or download it); looked for "
        + ", ".join(str(c) for c in candidates)
        + ". Save the dataset as JSONL (fields 'problem' and 'answer' or 'solution' with \\boxed{}) and pass "
        "--data_path DIR or set DLM_TRL_DATA_DIR to the folder holding math/train.jsonl and math/test.jsonl."
    )


def load_rows(split: str, path: str | os.PathLike | None = None) -> list[dict]:
    """The rows of ``split`` in file order (``train`` / ``validation``: the train file without / only its last rows)."""
    check_split(split)
    file = _file("test" if split == "test" else "train", path)
    rows = []
    with open(file) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "problem" not in rec:
                raise ValueError(f"{file}:{i + 1} lacks the 'problem' column (has {sorted(rec)})")
            answer = rec.get("answer")
            if answer is None:
                if "solution" not in rec:
                    raise ValueError(f"{file}:{i + 1} has neither 'answer' nor 'solution' (has {sorted(rec)})")
                answer = last_boxed(rec["solution"])
                if answer is None:
                    raise ValueError(f"{file}:{i + 1}: the solution has no \\boxed{{...}} answer; add an 'answer' field")
            rec = dict(rec, answer=str(answer).strip())
            rows.append(rec)
    return rows if split == "test" else carve_validation(rows, split)


def generate(split: str, num_samples: int | None = None, seed: int = 0, data_path=None) -> list[dict]:
    """Rows of ``split`` (all if ``num_samples`` is None, else a subset seeded by ``seed``) with the
    conversational ``prompt`` and the gold ``answer`` the ``math_accuracy`` reward reads."""
    rows = load_rows(split, data_path)
    if num_samples is not None and num_samples < len(rows):
        rows = random.Random(f"math-{seed}").sample(rows, num_samples)
    out = []
    for rec in rows:
        reasoning = (rec.get("solution") or "").strip()
        out.append(
            {
                "prompt": user_turn(rec["problem"]),
                "problem": rec["problem"],
                "answer": rec["answer"],
                "level": str(rec.get("level", "")),
                "type": str(rec.get("type", "")),
                "reference": f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{rec['answer']}\n</answer>",
            }
        )
    return out
