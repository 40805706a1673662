"""Test layouts of the code reward as *units* the trusted checker judges one at a time.

Two dataset layouts (both trusted; the completion is the only untrusted input):

* **HumanEval**: ``test`` defines ``check(candidate)``. All-or-nothing scoring calls ``check``
  as a whole (``code.py``; no plan needed). For partial credit :func:`humaneval_plan` splits the
  body of ``check`` into its top-level statements: those holding an ``assert`` are scored units,
  the others (imports, assignments, docstrings) run as setup.
* **MBPP**: ``test_list`` holds ``assert`` statements that call the function by name, and the
  optional ``test_setup_code`` runs first. :func:`mbpp_plan`: one scored unit per assert, for
  both scores (all-or-nothing = every unit passed).

A unit passes when its code runs to its end in the checker process, after ``setup`` and with
the entry point (and each name in ``aliases``) bound to the proxy of the untrusted function;
see ``_sandbox_proc._run_units``. Everything here is pure Python, run by the trainer.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["UnitPlan", "humaneval_plan", "mbpp_entry_point", "mbpp_plan", "asserts_of"]

_CANDIDATE = "__dlm_trl_candidate__"  # the name a fallback unit calls check() with


@dataclass(frozen=True)
class UnitPlan:
    """What the checker runs: ``setup`` (trusted code), then each ``(code, scored)`` unit."""

    setup: str
    units: tuple[tuple[str, bool], ...]
    aliases: tuple[str, ...] = ()

    @property
    def num_scored(self) -> int:
        return sum(1 for _, scored in self.units if scored)


def _asserts_outside_nested_scopes(node: ast.AST) -> bool:
    """Whether ``node`` holds an ``assert`` of a non-constant test outside nested defs/classes."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Assert) and not isinstance(n.test, ast.Constant):
            return True
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                stack.append(child)
    return False


def _compiles(code: str) -> bool:
    try:
        compile(code, "<unit>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def humaneval_plan(test: str) -> UnitPlan:
    """Partial-credit units of a HumanEval ``test``: the top-level statements of ``check``'s body.

    ``setup`` is the whole test module (so ``check`` and module-level names exist); the first
    parameter of ``check`` is an alias of the candidate. When ``check`` cannot be split (not found,
    no assert, a statement that only compiles inside a function such as ``return``), the plan is a
    single unit calling ``check``, i.e. the all-or-nothing score.
    """
    whole = UnitPlan(test, ((f"check({_CANDIDATE})", True),), (_CANDIDATE,))
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        return whole
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks or not checks[-1].args.args:
        return whole
    fn = checks[-1]
    units = tuple((ast.unparse(stmt), _asserts_outside_nested_scopes(stmt)) for stmt in fn.body)
    if not any(scored for _, scored in units) or not all(_compiles(code) for code, _ in units):
        return whole
    return UnitPlan(test, units, (fn.args.args[0].arg,))


def asserts_of(value: object) -> list[str]:
    """The asserts of an MBPP ``test_list`` cell: a list/tuple of strings, or one string with one
    assert per line."""
    if value is None:
        return []
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip()]
    if isinstance(value, Sequence):
        return [str(v) for v in value if str(v).strip()]
    raise TypeError(f"test_list must be a list of assert strings, got {type(value).__name__}")


def _setup_text(setup: object) -> str:
    """``test_setup_code`` as text (MBPP-sanitized's ``test_imports`` is a list of lines)."""
    if setup is None:
        return ""
    if isinstance(setup, str):
        return setup
    return "\n".join(str(line) for line in setup)


def mbpp_plan(test_list: object, test_setup_code: object = "") -> UnitPlan:
    """One scored unit per assert of ``test_list``, after ``test_setup_code``."""
    return UnitPlan(_setup_text(test_setup_code), tuple((a, True) for a in asserts_of(test_list)))


def mbpp_entry_point(test_list: object, test_setup_code: object = "") -> str:
    """The function the asserts test: the first name they call that is neither a builtin nor
    defined by ``test_setup_code`` (``assert math.isclose(area(2), 12.56)`` → ``area``)."""
    asserts = asserts_of(test_list)
    defined = set(dir(builtins))
    try:
        for node in ast.walk(ast.parse(_setup_text(test_setup_code))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.alias):
                defined.add((node.asname or node.name).split(".")[0])
    except SyntaxError as err:
        raise ValueError(f"test_setup_code is not valid Python: {err}") from None
    for source in asserts:
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise ValueError(f"test_list entry is not valid Python ({err.msg}): {source[:120]!r}") from None
        calls = sorted(
            (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for call in calls:
            if call.func.id not in defined:
                return call.func.id
    raise ValueError(
        f"cannot tell which function the asserts test (no call of a non-builtin name in {asserts[:1]!r}); "
        "add an 'entry_point' column"
    )
