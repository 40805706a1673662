"""Sudoku reward (d1 definition): fraction of the puzzle's empty cells filled correctly.

Columns: ``puzzle`` and ``solution``, strings of digits read left-to-right, top-to-bottom (16 for
the 4x4 puzzles of d1; any length works), ``'0'`` marks an empty cell of ``puzzle``. The answer is
the digits of the last ``<answer>...</answer>`` content; the first ``len(puzzle)`` of them are read,
a shorter answer is padded with ``'0'`` (never correct). No ``<answer>`` pair, no digit in it, or
a puzzle without empty cells score 0.0 (as in d1's ``sudoku_reward_func``).
"""

from __future__ import annotations

from typing import Any

from ._common import column, completion_to_text, extract_answer_tag

__all__ = ["sudoku_reward", "score", "answer_digits"]


def answer_digits(text: str) -> str | None:
    """The digits of the last ``<answer>`` content (``None`` without an answer pair)."""
    tagged = extract_answer_tag(text)
    return None if tagged is None else "".join(ch for ch in tagged if ch.isdigit())


def score(digits: str | None, puzzle: Any, solution: Any) -> float:
    """Fraction of ``puzzle``'s empty cells whose digit in ``digits`` matches ``solution``."""
    puzzle, solution = str(puzzle), str(solution)
    if not digits:
        return 0.0
    size = len(puzzle)
    grid = digits[:size].ljust(size, "0")
    empty = [i for i, ch in enumerate(puzzle) if ch == "0"]
    if not empty:
        return 0.0
    return sum(1 for i in empty if i < len(solution) and grid[i] == solution[i]) / len(empty)


def sudoku_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    """TRL reward: d1's sudoku score per completion (columns ``puzzle`` and ``solution``)."""
    n = len(completions)
    puzzles = column(columns, "puzzle", n, "sudoku")
    solutions = column(columns, "solution", n, "sudoku")
    return [
        score(answer_digits(completion_to_text(c)), p, s)
        for c, p, s in zip(completions, puzzles, solutions, strict=True)
    ]
