"""GSM8K: ``../shared/data/gsm8k/{train,test}.jsonl`` when present, else the 60-row fixture shipped in
``dlm_trl/tasks/data/gsm8k``, or any dataset by name or path (:mod:`dlm_trl.tasks.sources`; e.g.
``--dataset openai/gsm8k --dataset-config main``). Columns: ``question``, ``answer``.

Splits: ``test`` is ``test.jsonl`` (1,319 rows); ``validation`` is the last 500 rows of ``train.jsonl``
in file order and ``train`` the first 6,973 (:func:`dlm_trl.tasks.splits.carve_validation`), so
training never sees a validation row. (The fixture: 20 test rows; 40 train rows, the last 4 validation.)

Each row keeps the original ``question`` and the full gold ``answer`` text (which ends in
``#### <number>``; the reward parses it), and adds ``target`` (the number after ``####``
as a string, commas removed) and the conversational ``prompt``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .prompts import user_turn
from .sources import DataSource, load_split, shared_candidates

_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def extract_final_answer(answer: str) -> str:
    """The number after ``####`` in a GSM8K gold answer, commas removed."""
    m = _FINAL.search(answer)
    if not m:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer[-80:]!r}")
    return m.group(1).replace(",", "").strip()


def data_candidates(path: str | os.PathLike | None = None) -> list[Path]:
    """Folders that may hold the shared data, in order: ``path``, ``$DLM_TRL_DATA_DIR``, ``<repo>/../shared/data``,
    ``<repo>/shared/data``, ``../shared/data`` from the working directory."""
    return ([Path(path)] if path is not None else []) + shared_candidates()


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """Where the shared data lives: ``path`` → ``$DLM_TRL_DATA_DIR`` → ``<repo>/../shared/data`` → ``./shared/data``."""
    candidates = data_candidates(path)
    for c in candidates:
        if (c / "gsm8k").is_dir() or (c / "humaneval").is_dir():
            return c
    raise FileNotFoundError(
        "shared data not found; looked in " + ", ".join(str(c) for c in candidates)
        + ". Set DLM_TRL_DATA_DIR or pass --data_dir pointing at the folder holding gsm8k/ and humaneval/."
    )


def load_rows(split: str, path: str | os.PathLike | None = None, dataset: DataSource | None = None) -> list[dict]:
    """The rows of ``split`` in file order (``train`` / ``validation``: the train file without / only its last rows)."""
    return load_split("gsm8k", split, required=("question", "answer"), data_path=path, source=dataset)


def generate(split: str, num_samples: int | None = None, seed: int = 0, data_path=None, dataset=None) -> list[dict]:
    """The first ``num_samples`` rows of ``split`` (all if None) in file order, or a seeded
    random subset when ``seed`` is not None and ``num_samples`` is smaller than the split."""
    import random

    rows = load_rows(split, data_path, dataset)
    if num_samples is not None and num_samples < len(rows):
        rows = random.Random(f"gsm8k-{seed}").sample(rows, num_samples)
    out = []
    for rec in rows:
        reasoning = _FINAL.sub("", rec["answer"]).strip()
        final = extract_final_answer(rec["answer"])
        out.append(
            {
                "prompt": user_turn(rec["question"]),
                "question": rec["question"],
                "answer": rec["answer"],
                "target": final,
                "reference": f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{final}\n</answer>",
            }
        )
    return out
