"""Countdown reward (d1 definition), evaluated safely with ``ast``.

Columns: ``numbers`` (list of ints) and ``target`` (int). The equation is the content of the last
``<answer>...</answer>`` pair. Scores, as in d1 (``diffu-grpo/reward_func.py::compute_score``):

* ``1.0``: the equation uses each given number exactly once and evaluates to ``target`` (within 1e-5);
* ``0.1``: an equation is present but uses the wrong numbers, cannot be evaluated, or misses the target;
* ``0.0``: no ``<answer>`` pair.

d1 validates with a character regex and calls ``eval``. Here the equation is parsed with ``ast``
and only integer literals, binary ``+ - * /``, unary ``+ -`` and parentheses are accepted; it is
evaluated with exact fractions (no ``eval``). Deliberate departures from d1, all of which score 0.1
(invalid) here: ``**`` and ``//`` (d1's regex lets them through to ``eval``), and decimal literals
such as ``2.5`` (d1 would count them as the two numbers 2 and 5).
"""

from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction
from typing import Any

from ._common import column, completion_to_text, extract_answer_tag

__all__ = ["countdown_reward", "score", "is_correct", "evaluate_equation", "numbers_used"]

_MAX_CHARS = 1000  # longer "equations" are not parsed at all
_MAX_NODES = 200  # guards against "------...1" chains once the numbers have been checked


class _Invalid(ValueError):
    pass


def _parse(equation: str) -> ast.expr:
    if len(equation) > _MAX_CHARS:
        raise _Invalid("equation too long")
    try:
        tree = ast.parse(equation.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise _Invalid(f"not an expression: {err}") from None
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise _Invalid("equation too large")
    return tree.body


def numbers_used(equation: str) -> list[int] | None:
    """The integer literals of ``equation`` in order, or ``None`` if it is not a valid arithmetic expression."""
    try:
        node = _parse(equation)
        out: list[int] = []
        _check(node, out)
        return out
    except _Invalid:
        return None


def _check(node: ast.AST, literals: list[int]) -> None:
    if isinstance(node, ast.Constant):
        if type(node.value) is not int:
            raise _Invalid(f"literal {node.value!r} is not an integer")
        literals.append(node.value)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        _check(node.left, literals)
        _check(node.right, literals)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        _check(node.operand, literals)
    else:
        raise _Invalid(f"{type(node).__name__} is not allowed")


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    assert isinstance(node, ast.BinOp)
    a, b = _eval(node.left), _eval(node.right)
    if isinstance(node.op, ast.Add):
        return a + b
    if isinstance(node.op, ast.Sub):
        return a - b
    if isinstance(node.op, ast.Mult):
        return a * b
    if b == 0:
        raise _Invalid("division by zero")
    return a / b


def evaluate_equation(equation: str) -> Fraction | None:
    """Exact value of an arithmetic expression (integers, ``+ - * /``, parentheses), or ``None`` if invalid."""
    try:
        node = _parse(equation)
        _check(node, [])
        return _eval(node)
    except (_Invalid, RecursionError, MemoryError, OverflowError):
        return None


def _as_ints(numbers: Any) -> list[int]:
    return [int(n) for n in numbers]


def _equation_of(answer_text: str) -> str | None:
    return extract_answer_tag(answer_text) if "<answer>" in answer_text else answer_text.strip()


def score(completion_text: str, numbers: Any, target: Any) -> float:
    """d1's score of one completion: 1.0 correct, 0.1 equation present but wrong/invalid, 0.0 none."""
    equation = extract_answer_tag(completion_text)
    if equation is None:
        return 0.0
    return 1.0 if _correct(equation, numbers, target) else 0.1


def _correct(equation: str, numbers: Any, target: Any) -> bool:
    used = numbers_used(equation)
    if used is None or Counter(used) != Counter(_as_ints(numbers)):
        return False
    value = evaluate_equation(equation)
    return value is not None and abs(float(value) - float(target)) < 1e-5


def is_correct(answer_text: str, numbers: Any, target: Any) -> bool:
    """Whether ``answer_text`` (an equation, or a completion with ``<answer>`` tags) solves the task."""
    equation = _equation_of(answer_text)
    return equation is not None and _correct(equation, numbers, target)


def countdown_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    """TRL reward: d1's countdown score per completion (columns ``numbers`` and ``target``)."""
    n = len(completions)
    numbers = column(columns, "numbers", n, "countdown")
    targets = column(columns, "target", n, "countdown")
    return [
        score(completion_to_text(c), nums, t)
        for c, nums, t in zip(completions, numbers, targets, strict=True)
    ]
