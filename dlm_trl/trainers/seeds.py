"""Seeds and common random numbers (CRN, ALGORITHMS.md §0): every random draw of a run is a
function of (seed, stream, rollout, row, …), so runs are reproducible whatever the number of
processes, and the old, reference and current likelihood estimates of a row use identical masks.

:func:`mix_seed` (a splitmix64 chain) turns integers into a seed; :func:`derive_seeds` gives per-row
seeds of another stream. The trainer side is :class:`_MaskSeedsMixin`:
``mask_seeds[b, k] = mix(seed, MASK_STREAM, mode, rollout, global row b, k)`` (``k`` = inner
iteration; ``0`` for every ``k`` with ``mask_schedule="fixed"``), and the context
:meth:`~_MaskSeedsMixin.mask_seeds` under which an estimate uses one generator per row. The
sampler's generators are ``mix(seed, SAMPLER_STREAM, mode, rollout, global row)``. The quadrature
node / Monte Carlo draw index is not part of the seed: an estimator draws all of a row's masks
from that row's generator in a fixed order, so (seed, node) → mask is deterministic.
"""

from __future__ import annotations

import contextlib

import torch

_MASK64 = (1 << 64) - 1
# Stream tags keep the seeds of different uses of randomness apart.
SAMPLER_STREAM = 0x5A4D
MASK_STREAM = 0x4D41


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 chain): distinct inputs → unrelated seeds."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def derive_seeds(seeds: torch.Tensor, *tags: int) -> torch.Tensor:
    """Per-row seeds ``[B]`` for another use of randomness (a different stream) → ``[B]`` long."""
    return torch.tensor([mix_seed(int(s), *tags) for s in seeds.tolist()], dtype=torch.long, device=seeds.device)


class _MaskSeedsMixin:
    """The trainer's per-row mask seeds ``[B, μ]`` and the inner-iteration bookkeeping that selects them."""

    def _global_rows(self, B: int) -> list[int]:
        start = self.accelerator.process_index * B
        return list(range(start, start + B))

    def _num_inner_iterations(self) -> int:
        return self.num_iterations if self.model.training else 1

    def _inner_iteration(self) -> int:
        """Index ``k ∈ [0, μ)`` of the current pass over the buffered rollout batch."""
        if not self.model.training:
            return 0
        every = self.args.steps_per_generation * self.num_iterations
        return (self._step % every) // self.args.steps_per_generation

    def _make_mask_seeds(self, B: int) -> torch.Tensor:  # [B, μ] long
        mu = self._num_inner_iterations()
        fixed = self.args.mask_schedule == "fixed"
        mode = 0 if self.model.training else 1
        rows = [
            [
                mix_seed(self.args.seed, MASK_STREAM, mode, self._rollout_index, r, 0 if fixed else k)
                for k in range(mu)
            ]
            for r in self._global_rows(B)
        ]
        return torch.tensor(rows, dtype=torch.long, device=self.accelerator.device)

    def _shared_masks(self) -> bool:
        """True when every inner iteration uses the same masks (fixed schedule or a deterministic estimator)."""
        return self.args.mask_schedule == "fixed" or bool(getattr(self.estimator, "deterministic", False))

    @contextlib.contextmanager
    def mask_seeds(self, seeds: torch.Tensor):
        """Within this context, likelihood estimates use one generator per row seeded by ``seeds [B]``."""
        previous = self._active_mask_seeds
        self._active_mask_seeds = seeds
        try:
            yield
        finally:
            self._active_mask_seeds = previous
