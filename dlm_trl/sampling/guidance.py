"""Classifier-free guidance: the per-step guidance scale and the guided logits (arXiv 2507.08965).

With a conditional forward ``ℓ_c`` (the prompt as given) and an unconditional one ``ℓ_u`` (the
real prompt tokens replaced by the mask token), a row guided with scale ``w`` gets

    ℓ_g = ℓ_u + (w + 1)(ℓ_c − ℓ_u),        and exactly ℓ_g = ℓ_c where w = 0.

**When** (``guidance_schedule``). The scale of a row at a step is ``w = f(s, m)``, where ``s`` is
``cfg_scale`` and ``m`` the fraction of that row's *completion* still masked when the step starts
(1 at the first step, → 0 at the end). ``m`` is per row: the threshold / factor decoders finish
rows at different speeds (and ``origin`` commits a random number per row), so the scales are a
``[R]`` vector broadcast over the block's positions and the vocabulary.

* ``"constant"`` — ``w = s`` at every step (the usual CFG);
* ``"linear"`` — ``w = s · (1 − m)``: no guidance on the fully masked completion, ``s`` at the end;
* ``"late"`` — ``w = s`` once ``m ≤ guidance_late_fraction`` (default 0.5), else 0;
* a callable ``f(s: float, m: torch.Tensor) -> float | torch.Tensor`` — the effective scale itself,
  called once per step with the ``[R]`` float64 tensor of masked fractions; it must return a number
  or a tensor broadcastable to ``[R]``, finite and ≥ 0 (e.g. ``lambda s, m: s * (1 - m) ** 2``).

The paper's finding: guidance on the heavily masked inputs of early steps harms quality, and late
guidance matters most.

**Rate-preserving guidance** (``guidance_rate_preserving=True``). Guidance sharpens the
distribution, and a sampler whose unmasking count depends on it (the threshold / factor rules
here) then unmasks too many tokens early. The fix keeps the unmasking *rate* of the unguided
model and applies guidance only to the normalised distribution of the destination tokens: the
transfer decision (the scorer's confidences / margins / entropies behind ``topk``, ``threshold``
and ``factor``) is made on ``ℓ_c`` — exactly the decision the unguided sampler makes at that state,
with the same noise — and the committed tokens are drawn from ``softmax(ℓ_g / T)`` (argmax at
``T = 0``). Dream's ``origin`` rule commits each position with the schedule's probability without
reading the logits, so for it the rate is the unguided one under both variants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._names import GUIDANCE_SCHEDULES, _choice_error

GuidanceSchedule = str | Callable[[float, torch.Tensor], "float | torch.Tensor"]


def schedule_name(schedule: GuidanceSchedule) -> str:
    """A printable name of a schedule (a callable's ``__name__``), e.g. for result files."""
    if isinstance(schedule, str):
        return schedule
    return getattr(schedule, "__name__", None) or repr(schedule)


def check_schedule(schedule: object, late_fraction: object) -> None:
    """Raise a ``ValueError`` that says what to fix when the schedule options are not valid."""
    if isinstance(schedule, str):
        if schedule not in GUIDANCE_SCHEDULES:
            raise _choice_error(
                "guidance_schedule", schedule, GUIDANCE_SCHEDULES, " (or pass a callable f(s, m) -> scale)"
            )
    elif not callable(schedule):
        raise ValueError(
            f"guidance_schedule must be one of {list(GUIDANCE_SCHEDULES)} or a callable f(s, m) -> scale, "
            f"got {schedule!r} ({type(schedule).__name__})"
        )
    if (
        isinstance(late_fraction, bool)
        or not isinstance(late_fraction, (int, float))
        or not 0 <= late_fraction <= 1
    ):
        raise ValueError(
            "guidance_late_fraction must be a number in [0, 1] (the 'late' schedule guides once at most this "
            f"fraction of the completion is masked; default 0.5), got {late_fraction!r}"
        )


def guidance_scales(
    schedule: GuidanceSchedule,
    scale: float,
    masked_fraction: torch.Tensor,  # [R] float, the fraction of each row's completion still masked
    late_fraction: float = 0.5,
) -> torch.Tensor:
    """The guidance scale of each row at this step, ``[R]`` float64 (module docstring)."""
    m = masked_fraction.to(torch.float64)
    s = float(scale)
    if schedule == "constant":
        return torch.full_like(m, s)
    if schedule == "linear":
        return s * (1.0 - m)
    if schedule == "late":
        return torch.where(m <= late_fraction, s, 0.0).to(torch.float64)
    if isinstance(schedule, str):
        raise _choice_error("guidance_schedule", schedule, GUIDANCE_SCHEDULES)
    out = schedule(s, m)
    try:
        w = torch.as_tensor(out, dtype=torch.float64, device=m.device).expand(m.shape).clone()
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(
            f"guidance_schedule {schedule_name(schedule)} must return a number or a tensor broadcastable to the "
            f"{tuple(m.shape)} masked fractions, got {out!r}"
        ) from err
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(
            f"guidance_schedule {schedule_name(schedule)} must return finite scales ≥ 0, got {w.tolist()} "
            f"for masked fractions {m.tolist()}"
        )
    return w


def guide(cond: torch.Tensor, uncond: torch.Tensor, scales: torch.Tensor | float) -> torch.Tensor:
    """Guided logits ``ℓ_u + (w + 1)(ℓ_c − ℓ_u)`` of ``[R, ...]`` logits with per-row ``scales`` ``[R]``
    (or one number); rows with ``w = 0`` get ``ℓ_c`` exactly."""
    if not torch.is_tensor(scales):
        if not math.isfinite(scales):
            raise ValueError(f"guidance scale must be finite, got {scales}")
        return cond if scales == 0 else uncond + (scales + 1.0) * (cond - uncond)
    w = scales.to(cond.dtype).reshape(-1, *([1] * (cond.dim() - 1)))  # [R, 1, ...]
    guided = uncond + (w + 1.0) * (cond - uncond)
    return torch.where(w == 0, cond, guided)


__all__ = ["GuidanceSchedule", "check_schedule", "guidance_scales", "guide", "schedule_name"]
