"""GSM8K from local JSONL files (no download): ``../shared/data/gsm8k/{train,test}.jsonl``.

Splits: ``test`` is ``test.jsonl`` (1,319 rows); ``validation`` is the last 500 rows of ``train.jsonl``
in file order and ``train`` the first 6,973 (:func:`dlm_trl.tasks.splits.carve_validation`), so
training never sees a validation row.

Each row keeps the original ``question`` and the full gold ``answer`` text (which ends in
``#### <number>``; the reward parses it), and adds ``target`` (the number after ``####``
as a string, commas removed) and the conversational ``prompt``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .prompts import user_turn
from .splits import carve_validation, check_split

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
    candidates = [Path(path)] if path is not None else []
    if os.environ.get("DLM_TRL_DATA_DIR"):
        candidates.append(Path(os.environ["DLM_TRL_DATA_DIR"]))
    repo = Path(__file__).resolve().parents[2]
    return candidates + [repo.parent / "shared" / "data", repo / "shared" / "data", Path.cwd().parent / "shared" / "data"]


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


def load_rows(split: str, path: str | os.PathLike | None = None) -> list[dict]:
    """The rows of ``split`` in file order (``train`` / ``validation``: the train file without / only its last rows)."""
    check_split(split)
    file = data_dir(path) / "gsm8k" / f"{'test' if split == 'test' else 'train'}.jsonl"
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing")
    rows = []
    with open(file) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            rec = json.loads(line)
            missing = {"question", "answer"} - rec.keys()
            if missing:
                raise ValueError(f"{file}:{i + 1} lacks column(s) {sorted(missing)}")
            rows.append(rec)
    return rows if split == "test" else carve_validation(rows, split)


def generate(split: str, num_samples: int | None = None, seed: int = 0, data_path=None) -> list[dict]:
    """The first ``num_samples`` rows of ``split`` (all if None) in file order, or a seeded
    random subset when ``seed`` is not None and ``num_samples`` is smaller than the split."""
    import random

    rows = load_rows(split, data_path)
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
