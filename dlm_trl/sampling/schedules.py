"""Step schedules: how many of a block's masks each step of the count-based rules commits.

``"even"`` (LLaDA) splits a block's masks evenly over its steps; ``"dream_linspace"`` (Dream)
commits ``int(n·(1 − t_{j+1}/t_j))`` of the ``n`` remaining on ``t = linspace(1, eps, S + 1)``.
The time grids are also the ``origin`` rule's per-token unmasking probabilities.
"""

from __future__ import annotations

import torch

from ._names import SCHEDULES, _choice_error


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """The ``"even"`` schedule: how many tokens each of ``steps`` steps commits so that ``num_masked`` are filled.

    The count is split evenly; the first ``num_masked % steps`` steps get one more, e.g.
    ``num_transfer_tokens(10, 4) == [3, 3, 2, 2]``.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if s < remainder else 0) for s in range(steps)]


def _check_schedule_args(num_masked: int | None, steps: int, eps: float) -> None:
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if num_masked is not None and num_masked < 0:
        raise ValueError(f"num_masked must be ≥ 0, got {num_masked}")
    if not 0 <= eps < 1:
        raise ValueError(f"eps must satisfy 0 ≤ eps < 1, got {eps}")


def schedule_times(schedule: str, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """The time grid ``t_0 = 1 > t_1 > … > t_steps`` of a schedule, float32 on the CPU.

    ``"even"``: ``linspace(1, 0, steps + 1)``; ``"dream_linspace"``: ``linspace(1, eps, steps + 1)``.
    """
    _check_schedule_args(None, steps, eps)
    if schedule not in SCHEDULES:
        raise _choice_error("schedule", schedule, SCHEDULES)
    end = 0.0 if schedule == "even" else float(eps)
    return torch.linspace(1.0, end, steps + 1, dtype=torch.float32)


def unmask_fractions(schedule: str, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """``1 − t_{j+1} / t_j`` for each step (float32 ``[steps]``), with the last one forced to 1.

    The fraction of the still-masked tokens that step ``j`` unmasks: the ``origin`` rule's
    per-token probability, and the ``dream_linspace`` count's factor.
    """
    t = schedule_times(schedule, steps, eps)
    frac = 1 - t[1:] / t[:-1]  # float32 arithmetic, as Dream's reference does it
    frac[-1] = 1.0
    return frac


def dream_transfer_counts(num_masked: int, steps: int, eps: float = 1e-3) -> list[int]:
    """The ``"dream_linspace"`` schedule: tokens committed at each of ``steps`` steps, ``num_masked`` in all.

    Step ``j`` commits ``int(n_j · (1 − t_{j+1}/t_j))`` of the ``n_j`` tokens still masked,
    ``t = linspace(1, eps, steps + 1)``, and the last step commits the rest. The product
    is rounded in float32, like Dream's reference, so the counts are identical to its.
    E.g. ``dream_transfer_counts(16, 8) == [1, 2, 2, 2, 2, 2, 2, 3]``.
    """
    _check_schedule_args(num_masked, steps, eps)
    frac = unmask_fractions("dream_linspace", steps, eps)
    counts, remaining = [], int(num_masked)
    for j in range(steps):
        if j == steps - 1:
            k = remaining
        else:
            k = int((torch.tensor(float(remaining), dtype=torch.float32) * frac[j]).item())
        counts.append(k)
        remaining -= k
    return counts


def transfer_counts(schedule: str, num_masked: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Per-step commit counts of ``schedule`` (:func:`num_transfer_tokens` or :func:`dream_transfer_counts`)."""
    if schedule == "even":
        return num_transfer_tokens(num_masked, steps)
    if schedule == "dream_linspace":
        return dream_transfer_counts(num_masked, steps, eps)
    raise _choice_error("schedule", schedule, SCHEDULES)

