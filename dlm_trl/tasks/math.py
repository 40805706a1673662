"""MATH (Hendrycks et al.) — the d1 / GDPO math setting.

dlm-trl ships only a small MATH-*style* fixture (problems written for it, ``dlm_trl/tasks/data/math``),
used when nothing else is found. For the benchmark pass a dataset by name or file
(:mod:`dlm_trl.tasks.sources`; e.g. ``--dataset HuggingFaceH4/MATH-500`` for the test split), or put
``math/{train,test}.jsonl`` where the other shared data lives (``$DLM_TRL_DATA_DIR``,
``../shared/data/``), or pass ``--data_path DIR`` (a folder holding ``train.jsonl`` / ``test.jsonl``,
or holding ``math/``). Each row is one problem with a ``problem`` field and either an ``answer``
field (MATH-500 style) or a ``solution`` whose last ``\\boxed{...}`` is the answer (original MATH
style); an optional ``level`` / ``type`` is kept. The reward is ``math_accuracy`` (math-verify).

Splits: ``test`` is ``test.jsonl``; ``validation`` is the last ``min(500, n // 10)`` rows of
``train.jsonl`` in file order and ``train`` the rest (:func:`dlm_trl.tasks.splits.carve_validation`).
"""

from __future__ import annotations

import os
import random

from dlm_trl_rewards._common import last_boxed  # the reward parses answers the same way

from .prompts import user_turn
from .sources import DataSource, load_split


def load_rows(split: str, path: str | os.PathLike | None = None, dataset: DataSource | None = None) -> list[dict]:
    """The rows of ``split`` in file order (``train`` / ``validation``: the train file without / only its
    last rows), each with its final ``answer`` (from the ``answer`` column, else the solution's last ``\\boxed{}``)."""
    rows = []
    for i, rec in enumerate(load_split("math", split, required=("problem",), data_path=path, source=dataset)):
        answer = rec.get("answer")
        if answer is None:
            if "solution" not in rec:
                raise ValueError(f"MATH row {i + 1} has neither 'answer' nor 'solution' (has {sorted(rec)}); map one "
                                 "with --dataset-columns answer=<column>")
            answer = last_boxed(rec["solution"])
            if answer is None:
                raise ValueError(f"MATH row {i + 1}: the solution has no \\boxed{{...}} answer; add an 'answer' column")
        rows.append(dict(rec, answer=str(answer).strip()))
    return rows


def generate(split: str, num_samples: int | None = None, seed: int = 0, data_path=None, dataset=None) -> list[dict]:
    """Rows of ``split`` (all if ``num_samples`` is None, else a subset seeded by ``seed``) with the
    conversational ``prompt`` and the gold ``answer`` the ``math_accuracy`` reward reads."""
    rows = load_rows(split, data_path, dataset)
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
