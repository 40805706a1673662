"""Reward functions on the core side: resolve names to callables, and guard what they return.

Rewards themselves live in plugins (entry-point group ``dlm_trl.rewards``; first-party ones in
``rewards/dlm_trl_rewards``) and follow TRL's signature
``f(prompts, completions, **columns) -> list[float | None]``. This module adds two things:

* :func:`resolve_rewards` turns a mix of names (``"math_accuracy"``, ``"pkg.mod:attr"``) and
  callables into callables, through :func:`dlm_trl.registry.load_reward` (whose error suggests the
  closest installed names);
* :func:`checked_reward` wraps a reward so that a bad batch is never passed on silently. If the
  reward raises, returns something that is not a sequence of the batch's length, or returns a value
  that is not a finite real number (``None`` is allowed: TRL's "not applicable"), the wrapper either
  raises :class:`RewardError` naming the reward, the row index and the cause (``on_error="raise"``),
  or scores the offending rows ``None`` / ``0.0`` (``on_error="none"`` / ``"zero"``), counts them in
  :func:`reward_metrics` and logs a warning. To name the row when the whole call raises, the reward
  is called again one row at a time (with ``log_metric``/``log_extra`` replaced by no-ops).

The wrapper keeps the reward's ``__name__`` (TRL logs each reward under it) and is async when the
reward is, so TRL's ``is_async_callable`` still recognises it.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .registry import load_reward

__all__ = ["RewardError", "resolve_rewards", "checked_reward", "reward_metrics", "reset_reward_metrics"]

logger = logging.getLogger(__name__)

_ON_ERROR = ("raise", "none", "zero")
_PER_CALL_KWARGS = ("log_metric", "log_extra")  # TRL callbacks; not called again when rows are re-run

_metrics: dict[str, dict[str, int]] = {}
_metrics_lock = threading.Lock()


class RewardError(RuntimeError):
    """A reward function failed or returned an invalid score."""

    def __init__(self, reward: str, row: int | None, cause: str) -> None:
        where = f"row {row}" if row is not None else "a batch (no single row fails on its own)"
        super().__init__(f"reward {reward!r} failed on {where}: {cause}")
        self.reward, self.row, self.cause = reward, row, cause


def reward_metrics() -> dict[str, dict[str, int]]:
    """Per reward name: ``calls``, ``rows``, ``failed_calls`` (calls with any bad row) and
    ``bad_rows`` (rows scored ``None``/``0.0`` instead of failing, or that raised)."""
    with _metrics_lock:
        return {k: dict(v) for k, v in _metrics.items()}


def reset_reward_metrics() -> None:
    with _metrics_lock:
        _metrics.clear()


def _callable_name(fn: Any) -> str:
    inner = fn
    while hasattr(inner, "func") and not hasattr(inner, "__name__"):  # functools.partial
        inner = inner.func
    return getattr(inner, "__name__", type(inner).__name__)


def _scalar(value: Any) -> Any:
    """The Python number inside a one-element tensor / array, else ``None``."""
    item = getattr(value, "item", None)
    if not callable(item):
        return None
    numel = getattr(value, "numel", None)
    count = numel() if callable(numel) else getattr(value, "size", None)
    if count != 1:
        return None
    try:
        inner = item()
    except Exception:
        return None
    return inner if isinstance(inner, numbers.Real) else None


def _check_value(value: Any) -> tuple[float | None, str | None]:
    """``(score, None)`` for a valid score, ``(None, cause)`` otherwise."""
    if value is None:
        return None, None
    number = value if isinstance(value, numbers.Real) else _scalar(value)  # bool, int, float, numpy, tensors
    if number is None:
        text = repr(value)
        return (
            None,
            f"returned {type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}, not a number",
        )
    score = float(number)
    if not math.isfinite(score):
        return None, f"returned {score}"
    return score, None


def _shape_problem(out: Any, n: int) -> str | None:
    if isinstance(out, (str, bytes, dict)) or not isinstance(out, Sequence) and not hasattr(out, "__len__"):
        return f"returned {type(out).__name__}, not a list of {n} scores"
    try:
        length = len(out)
    except TypeError:
        return f"returned {type(out).__name__}, not a list of {n} scores"
    if length != n:
        return f"returned {length} scores for {n} completions"
    return None


def _row_kwargs(kwargs: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    row = {}
    for key, value in kwargs.items():
        if key in _PER_CALL_KWARGS:
            row[key] = lambda *a, **k: None
        elif isinstance(value, (list, tuple)) and len(value) == n:
            row[key] = value[i : i + 1]
        else:
            row[key] = value  # e.g. trainer_state
    return row


def _row_args(prompts: Any, completions: Sequence, i: int) -> tuple[Any, list]:
    p = (
        prompts[i : i + 1]
        if isinstance(prompts, (list, tuple)) and len(prompts) == len(completions)
        else prompts
    )
    return p, list(completions[i : i + 1])


class CheckedReward:
    """``checked_reward`` for a synchronous reward (see the module docstring)."""

    def __init__(self, fn: Callable, name: str | None = None, on_error: str = "raise") -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
        if not callable(fn):
            raise TypeError(f"reward {name or fn!r} is not callable")
        self.fn, self.on_error = fn, on_error
        self.__name__ = _callable_name(fn)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        self.name = name or self.__name__
        with _metrics_lock:
            self.metrics = _metrics.setdefault(
                self.name, {"calls": 0, "rows": 0, "failed_calls": 0, "bad_rows": 0}
            )

    def __repr__(self) -> str:
        return f"checked_reward({self.fn!r}, name={self.name!r}, on_error={self.on_error!r})"

    # -- shared logic ------------------------------------------------------------------------
    def _finish(self, out: list, n: int, row_causes: dict[int, str]) -> list[float | None]:
        scores: list[float | None] = []
        causes = dict(row_causes)
        for i, value in enumerate(out):
            if i in causes:
                scores.append(None)
                continue
            score, cause = _check_value(value)
            if cause is not None:
                causes[i] = cause
            scores.append(score)
        with _metrics_lock:
            self.metrics["calls"] += 1
            self.metrics["rows"] += n
            if causes:
                self.metrics["failed_calls"] += 1
                self.metrics["bad_rows"] += len(causes)
        if not causes:
            return scores
        first = min(causes)
        if self.on_error == "raise":
            raise RewardError(self.name, first, causes[first])
        fill = None if self.on_error == "none" else 0.0
        for i in causes:
            scores[i] = fill
        logger.warning(
            "reward %r: %d of %d rows scored %s (row %d: %s)",
            self.name,
            len(causes),
            n,
            fill,
            first,
            causes[first],
        )
        return scores

    def _batch_failure(
        self, n: int, cause: str, row_results: list[tuple[Any, str | None]]
    ) -> list[float | None]:
        """Combine the one-row re-runs after the batch call failed with ``cause``."""
        causes = {
            i: f"{c} (called with all {n} rows it {cause})"
            for i, (_, c) in enumerate(row_results)
            if c is not None
        }
        if not causes and self.on_error == "raise":
            with _metrics_lock:
                self.metrics["calls"] += 1
                self.metrics["rows"] += n
                self.metrics["failed_calls"] += 1
            raise RewardError(self.name, None, cause)
        if not causes:  # rows work one by one: use those scores, but say the batch call failed
            logger.warning(
                "reward %r failed on a batch of %d (%s); scored its rows one by one", self.name, n, cause
            )
        return self._finish([v for v, _ in row_results], n, causes)

    @staticmethod
    def _one_row(out: Any) -> tuple[Any, str | None]:
        problem = _shape_problem(out, 1)
        return (None, problem) if problem else (out[0], None)

    # -- call ----------------------------------------------------------------------------------
    def __call__(self, prompts: Any, completions: Sequence, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        try:
            out = self.fn(prompts, completions, **kwargs)
            cause = _shape_problem(out, n)
        except Exception as err:
            cause = f"raised {type(err).__name__}: {err}"
        if cause is None:
            return self._finish(list(out), n, {})
        rows = []
        for i in range(n):
            try:
                rows.append(
                    self._one_row(self.fn(*_row_args(prompts, completions, i), **_row_kwargs(kwargs, i, n)))
                )
            except Exception as err:
                rows.append((None, f"raised {type(err).__name__}: {err}"))
        return self._batch_failure(n, cause, rows)


class AsyncCheckedReward(CheckedReward):
    """``checked_reward`` for an ``async`` reward; TRL runs it on its event loop."""

    async def __call__(self, prompts: Any, completions: Sequence, **kwargs: Any) -> list[float | None]:  # type: ignore[override]
        n = len(completions)
        try:
            out = await self.fn(prompts, completions, **kwargs)
            cause = _shape_problem(out, n)
        except Exception as err:
            cause = f"raised {type(err).__name__}: {err}"
        if cause is None:
            return self._finish(list(out), n, {})
        rows = []
        for i in range(n):
            try:
                out_i = await self.fn(*_row_args(prompts, completions, i), **_row_kwargs(kwargs, i, n))
                rows.append(self._one_row(out_i))
            except Exception as err:
                rows.append((None, f"raised {type(err).__name__}: {err}"))
        return self._batch_failure(n, cause, rows)


def _is_async(fn: Any) -> bool:
    inner = fn
    while hasattr(inner, "func") and not inspect.isfunction(inner):  # functools.partial
        inner = inner.func
    return inspect.iscoroutinefunction(inner) or (
        callable(inner) and inspect.iscoroutinefunction(type(inner).__call__)
    )


def checked_reward(fn: Callable, name: str | None = None, on_error: str = "raise") -> CheckedReward:
    """Wrap reward ``fn`` so that failures and invalid scores are reported (see module docstring).

    ``name`` is used in errors and metrics (default: ``fn.__name__``); ``on_error`` is ``"raise"``
    (default), ``"none"`` (bad rows score ``None``) or ``"zero"`` (bad rows score ``0.0``).
    """
    if isinstance(fn, CheckedReward):
        fn = fn.fn
    cls = AsyncCheckedReward if _is_async(fn) else CheckedReward
    return cls(fn, name, on_error)


def resolve_rewards(
    names_or_callables: str | Callable | Sequence[str | Callable], *, on_error: str | None = "raise"
) -> list:
    """Names (entry points or ``"package.module:attr"``) and callables -> reward callables.

    Each is wrapped with :func:`checked_reward` using ``on_error``; pass ``on_error=None`` to get
    the plain callables. Unknown names raise :class:`dlm_trl.registry.PluginNotFoundError` with
    "did you mean" suggestions.
    """
    items = (
        [names_or_callables]
        if isinstance(names_or_callables, str) or callable(names_or_callables)
        else list(names_or_callables)
    )
    out = []
    for item in items:
        if isinstance(item, str):
            fn, name = load_reward(item), item
        elif callable(item):
            fn, name = item, _callable_name(item)
        else:
            raise TypeError(f"a reward must be a name or a callable, got {type(item).__name__} {item!r}")
        out.append(fn if on_error is None else checked_reward(fn, name, on_error))
    return out
