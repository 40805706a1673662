"""Verifiable tasks: generators (Countdown, 4×4 Sudoku) and loaders for GSM8K, MATH, HumanEval and MBPP.

``get_task(name)`` returns a :class:`Task`; ``task.dataset(split, n, seed)`` gives a
``datasets.Dataset`` in TRL's conversational format (column ``prompt``) plus the columns
its reward reads. Every task has the splits ``train``, ``validation`` and ``test``, pairwise
disjoint (:mod:`dlm_trl.tasks.splits`; HumanEval has only ``test`` unless its dataset has a train
split): choose on validation, report on test. Correctness is decided by the task's reward plugin
(entry-point group ``dlm_trl.rewards``): an answer is correct when that reward returns its maximum, 1.0.
**Countdown is the default task.** The file tasks (:data:`FILE_TASKS`) read a dataset by name or
path, the shared benchmark files, or else small fixtures shipped with the package
(:mod:`dlm_trl.tasks.sources`), so every task runs offline in a clean clone.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import code_tasks, countdown, gsm8k, math, sources, splits, sudoku
from .sources import DataSource
from .splits import SPLITS

DEFAULT_TASK = "countdown"


@dataclass(frozen=True)
class Task:
    name: str
    reward: str  # entry-point name of the reward that verifies answers
    generator: Callable[..., list[dict]]
    columns: tuple[str, ...]  # columns the reward reads
    gen_length: int  # default generation length for the embedded model
    block_length: int
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self, split: str = "train", num_samples: int | None = 256, seed: int = 0, **kwargs) -> list[dict]:
        return self.generator(split, num_samples, seed, **kwargs)

    def dataset(self, split: str = "train", num_samples: int | None = 256, seed: int = 0, **kwargs):
        from datasets import Dataset

        return Dataset.from_list(self.rows(split, num_samples, seed, **kwargs))

    def reward_fn(self):
        from ..registry import load_reward

        return load_reward(self.reward)

    def score(self, completions: list[str], rows: list[dict]) -> list[float]:
        """Reward of each completion for its row (TRL reward signature underneath)."""
        fn = self.reward_fn()
        kwargs = {c: [r[c] for r in rows] for c in self.columns}
        scores = fn(prompts=[r["prompt"] for r in rows], completions=completions, **kwargs)
        return [0.0 if s is None else float(s) for s in scores]

    def correct(self, completions: list[str], rows: list[dict]) -> list[bool]:
        return [s >= 1.0 - 1e-9 for s in self.score(completions, rows)]


TASKS: dict[str, Task] = {
    "countdown": Task(
        "countdown", "countdown", countdown.generate, ("numbers", "target"), gen_length=48, block_length=16,
        description="three numbers and a target; an equation using each number once",
    ),
    "sudoku": Task(
        "sudoku", "sudoku", sudoku.generate, ("puzzle", "solution"), gen_length=128, block_length=32,
        description="4x4 Sudoku with a unique solution",
    ),
    "gsm8k": Task(
        "gsm8k", "math_accuracy", gsm8k.generate, ("answer",), gen_length=256, block_length=32,
        description="GSM8K grade-school math (../shared/data/gsm8k, else a 60-row fixture; --dataset NAME_OR_FILE)",
    ),
    "math": Task(
        "math", "math_accuracy", math.generate, ("answer",), gen_length=256, block_length=32,
        description="MATH competition problems (--dataset NAME_OR_FILE; else a MATH-style fixture)",
    ),
    "humaneval": Task(
        "humaneval", "code_unit_tests", code_tasks.humaneval, ("test", "entry_point", "code_prefix"),
        gen_length=128, block_length=32,  # the fixture's prompts (≤ 289 tiny tokens) fit the tiny model's 512
        description="HumanEval Python functions, sandboxed tests (../shared/data/humaneval, else a fixture)",
    ),
    "mbpp": Task(
        "mbpp", "code_unit_tests", code_tasks.mbpp, ("test_list", "test_setup_code", "entry_point", "code_prefix"),
        gen_length=256, block_length=32,
        description="MBPP-style Python functions, sandboxed asserts (--dataset NAME_OR_FILE; else a fixture)",
    ),
}

# Tasks read from files; they take ``data_path`` and ``dataset`` (the others are generated).
FILE_TASKS = ("gsm8k", "math", "humaneval", "mbpp")


def data_kwargs(task: str, data_path: str | None = None, dataset: DataSource | None = None) -> dict[str, Any]:
    """The data keyword arguments of ``get_task(task).rows(...)``: only file tasks read data."""
    if task not in FILE_TASKS:
        if dataset is not None:
            raise ValueError(
                f"task {task!r} is generated and reads no dataset; --dataset (recipes: dataset_name) applies to "
                f"{', '.join(FILE_TASKS)}"
            )
        return {}
    return {k: v for k, v in (("data_path", data_path), ("dataset", dataset)) if v is not None}


def get_task(name: str | None = None) -> Task:
    name = name or DEFAULT_TASK
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown task {name!r}.{hint} Available: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["DEFAULT_TASK", "FILE_TASKS", "SPLITS", "TASKS", "DataSource", "Task", "code_tasks", "countdown",
           "data_kwargs", "get_task", "gsm8k", "math", "sources", "splits", "sudoku"]
