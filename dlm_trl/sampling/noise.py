"""Randomness of the sampler: one generator for the batch, or one per row (row b draws only from its own)."""

from __future__ import annotations

import torch

from ._names import Generators


def _per_row_generators(generator: Generators, B: int) -> list[torch.Generator] | None:
    """``None`` / one generator → returned as is (whole-batch draws); a list → checked, one per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != B:
        raise ValueError(
            f"got {len(gens)} generators for {B} prompt rows; pass one generator or exactly one per row"
        )
    for g in gens:
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generator list must hold torch.Generator objects, got {type(g).__name__}")
    return gens


def _rand(
    shape: tuple[int, ...],  # (B, ...)
    generator: Generators,
    per_row: list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """U[0, 1) of ``shape``; with ``per_row`` generators row b comes from generator b only.

    Noise is drawn on the generator's own device and then moved, so CPU and CUDA
    generators both work.
    """
    if per_row is not None:
        rows = [torch.rand(shape[1:], generator=g, device=g.device, dtype=dtype) for g in per_row]
        return torch.stack(rows).to(device)
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _exponential(
    shape: tuple[int, ...],  # (B, ...)
    generator: Generators,
    per_row: list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Exp(1) draws of ``shape``, per row with ``per_row`` generators (see :func:`_rand`)."""
    if per_row is not None:
        rows = [
            torch.empty(shape[1:], device=g.device, dtype=dtype).exponential_(generator=g) for g in per_row
        ]
        return torch.stack(rows).to(device)
    gen_device = device if generator is None else generator.device
    return torch.empty(shape, device=gen_device, dtype=dtype).exponential_(generator=generator).to(device)


def _origin_uniforms(
    candidates: torch.Tensor,  # [B, K] bool
    generator: Generators,
    per_row: list[torch.Generator] | None,
) -> torch.Tensor:
    """U[0, 1) for the ``origin`` rule, ``[B, K]`` (values at non-candidates are meaningless).

    Per-row generators draw a fixed ``K`` float64 values each. Otherwise one float32 value
    per candidate, in row-major order — the draws Dream's reference makes each step.
    """
    B, K = candidates.shape
    if per_row is not None:
        return _rand((B, K), generator, per_row, candidates.device)
    n = int(candidates.sum())
    gen_device = candidates.device if generator is None else generator.device
    draws = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float32)
    u = torch.ones(B, K, dtype=torch.float32, device=candidates.device)
    u[candidates] = draws.to(candidates.device)
    return u

