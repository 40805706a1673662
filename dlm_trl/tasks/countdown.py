"""Countdown with three numbers (the d1 / TinyZero task, scaled to the embedded model).

A puzzle is three numbers and a target; an answer is an arithmetic expression that uses
each number exactly once with ``+ - * /`` and evaluates to the target. Puzzles are made
by drawing numbers and a random expression tree, so every puzzle has a known solution.
Puzzles are assigned to ``train`` / ``validation`` / ``test`` by a hash of their content
(:func:`split_of`, see :mod:`dlm_trl.tasks.splits`), so the splits never share a puzzle, whatever
the seeds. Of the 4,403 distinct puzzles the default settings draw, 912 are ``test``, about 440
``validation`` and about 3,050 ``train``.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

from .prompts import completion_text, user_turn
from .splits import TEST_FRACTION, VALIDATION_FRACTION, check_split, hash_split

OPS = ("+", "-", "*", "/")


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def question(numbers: list[int], target: int) -> str:
    return (
        f"Using the numbers {list(numbers)}, make {target} with + - * /, each number once."
    )


def split_of(
    numbers: list[int], target: int, test_fraction: float = TEST_FRACTION,
    validation_fraction: float = VALIDATION_FRACTION,
) -> str:
    """``"test"``, ``"validation"`` or ``"train"`` by a hash of the puzzle (test: the same puzzles as
    before the validation split existed; validation was carved out of the old train split)."""
    return hash_split(f"countdown:{list(numbers)}:{target}", test_fraction, validation_fraction)


def make_puzzle(
    rng: random.Random, *, max_number: int = 9, max_target: int = 99, ops: str = "+-*"
) -> dict | None:
    """One puzzle ``{numbers, target, solution, reasoning}`` or ``None`` if the draw is rejected.

    The reference solution is always ``(a op1 b) op2 c`` with the numbers listed in that
    order, and its reasoning works left to right (``a op1 b=x, x op2 c=y``), so every
    step of the reference is a copy or one single-step calculation: the embedded tiny
    model can learn it, and what is left to learn (which operators reach the target) is
    the search RL improves. The verifier accepts any correct equation, whatever its order
    or operators (``/`` included).
    """
    a, b, c = (rng.randint(1, max_number) for _ in range(3))
    op1, op2 = rng.choice(ops), rng.choice(ops)
    x = _apply(Fraction(a), op1, Fraction(b))
    if x is None or x.denominator != 1 or x < 0:
        return None
    y = _apply(x, op2, Fraction(c))
    if y is None or y.denominator != 1 or not (1 <= y <= max_target):
        return None
    x, y = int(x), int(y)
    return {
        "numbers": [a, b, c],
        "target": y,
        "solution": f"({a}{op1}{b}){op2}{c}",
        "reasoning": f"{a}{op1}{b}={x}, {x}{op2}{c}={y}",
    }


def _value(expr: str) -> Fraction | None:
    """Exact value of a generated expression (digits, + - * / and parentheses only)."""
    tokens = re.findall(r"\d+|[-+*/()]", expr)
    pos = 0

    def atom():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            v = add()
            pos += 1  # ')'
            return v
        return Fraction(int(tok))

    def mul():
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            v = _apply(v, op, atom()) if v is not None else None
        return v

    def add():
        nonlocal pos
        v = mul()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            rhs = mul()
            v = _apply(v, op, rhs) if v is not None and rhs is not None else None
        return v

    return add()


def generate(split: str, num_samples: int, seed: int = 0, **kwargs) -> list[dict]:
    """``num_samples`` distinct puzzles of ``split`` ("train", "validation" or "test"), deterministic in ``seed``."""
    check_split(split)
    rng = random.Random(f"countdown-{seed}")
    rows, seen = [], set()
    attempts = 0  # draws since the last accepted puzzle
    while len(rows) < num_samples:
        attempts += 1
        if attempts > 30_000:
            raise ValueError(
                f"only {len(rows)} distinct countdown puzzles exist in split {split!r} with these settings; "
                f"ask for fewer than {num_samples} or pass a larger max_number/max_target"
            )
        p = make_puzzle(rng, **kwargs)
        if p is None:
            continue
        key = (tuple(p["numbers"]), p["target"])
        if key in seen or split_of(p["numbers"], p["target"]) != split:
            continue
        seen.add(key)
        attempts = 0
        rows.append(
            {
                "prompt": user_turn(question(p["numbers"], p["target"])),
                "numbers": p["numbers"],
                "target": p["target"],
                "reference": completion_text(p["reasoning"], p["solution"]),
            }
        )
    return rows
