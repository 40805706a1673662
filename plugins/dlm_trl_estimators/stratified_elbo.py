"""Stratified count-form ELBO (LLaDA likelihood evaluation, arXiv 2502.09992; VRPO,
LLaDA 1.5, arXiv 2505.19223).

The count form of the masked-diffusion ELBO (ALGORITHMS.md §0),

    ELBO(y) = E_{l ~ U{1..n}} E_{|S| = l} [ (n/l) Σ_{i ∈ S} log f_θ(y_i | y_S→M, q) ],

estimated with ``b = num_samples`` draws per sequence whose mask counts are stratified:
one uniform offset ``u`` per row and ``l_j = 1 + floor(((u + j/b) mod 1) · n)`` for
``j = 0..b-1`` — evenly spaced counts with one random offset, wrapped into ``1..n``. Each
``l_j`` is marginally uniform on ``1..n``, so the estimate is exactly unbiased; for
``b = n`` every count appears once and only the mask positions are random. Draw j
masks exactly ``l_j`` maskable positions uniformly and is weighted ``n / l_j``; the
estimate is the mean over the b draws.

Departure from LLaDA's ``get_log_likelihood``: LLaDA rounds ``k + j·n/b`` with an integer
offset k; with round-half-to-even two offsets can then give the same count, which makes
a draw's count slightly non-uniform (biased). The floor-of-a-shifted-lattice form above
keeps every draw exactly uniform.

``length``: ``"padded"`` (default) — n = L, every completion position is maskable;
``"true"`` — n = the row's ``completion_mask`` count, only those positions are maskable.
Contributions of positions with ``completion_mask == 0`` are 0 in both modes; this
matches ``exact_elbo`` with the same ``length``.

``antithetic`` (ESPO's coupled estimator, arXiv 2512.03759; ``forward_process`` +
``reduce_var`` of its reference code): the b draws are b/2 complementary pairs. Primary j
masks ``x_j = floor(((u + j/(b/2)) mod 1) · (n+1))`` positions, ``x_j ∈ {0..n}`` uniform,
weight ``(n+1)/x_j`` (0 when ``x_j = 0``); its partner masks the complement, ``n − x_j``
positions (also uniform on ``{0..n}``), weight ``(n+1)/(n − x_j)``. Unbiased:
``E = Σ_{x=1..n} (1/(n+1)) · ((n+1)/x) · E_{|S|=x}[Σ_S] = Σ_{l=1..n} (1/l) E_{|S|=l}[Σ_S]``,
the count-form ELBO. The ``n+1`` grid (rather than ``1..n``) is what makes the complement's
count uniform too. Differences from ESPO's code: ESPO stratifies one lattice across the
rows of a micro-batch (one seed per micro-batch) with ``round``; here the lattice is per
row over its own draws (row b's masks depend only on generator b) and uses ``floor``, which
keeps every count exactly uniform.

``constant_memory``: chunks of B rows (or ``batch_size``) run under activation checkpointing
when grad is enabled (see ``_common``): memory of one draw's forward for any b, identical
values and gradients, one extra forward per draw in backward.

NFE: b (``num_samples``) forward passes per sequence, run as one ``[B*b, P+L]`` batch
(chunked by ``batch_size``).
"""

from __future__ import annotations

import torch

from dlm_trl.estimators import Generators
from dlm_trl.masking import complement_mask, count_mask, sample_times

from ._common import (
    check_batch_size,
    check_flag,
    check_inputs,
    check_length_mode,
    completion_log_probs,
    finish,
    interleave_pairs,
    maskable_positions,
    masked_weighted,
    repeat_generators,
)


def stratified_counts(u: torch.Tensor, n: torch.Tensor, b: int) -> torch.Tensor:
    """Mask counts ``[B, b]``: ``1 + floor(((u + j/b) mod 1) · n)``, clamped to ``[min(1, n), n]``."""
    j = torch.arange(b, dtype=torch.float64) / b  # [b]
    frac = torch.remainder(u.double()[:, None] + j[None, :], 1.0)  # [B, b]
    n = n.long().cpu()
    counts = 1 + torch.floor(frac * n.double()[:, None]).long()  # [B, b]
    return torch.minimum(counts, n[:, None])  # 0 only for a row with nothing maskable


def antithetic_counts(u: torch.Tensor, n: torch.Tensor, pairs: int) -> torch.Tensor:
    """Primary mask counts ``[B, pairs]`` on the ``0..n`` grid: ``floor(((u + j/pairs) mod 1) · (n+1))``."""
    j = torch.arange(pairs, dtype=torch.float64) / pairs  # [pairs]
    frac = torch.remainder(u.double()[:, None] + j[None, :], 1.0)  # [B, pairs]
    n = n.long().cpu()
    counts = torch.floor(frac * (n.double()[:, None] + 1.0)).long()  # [B, pairs] in 0..n
    return torch.minimum(counts, n[:, None])


class StratifiedELBO:
    """``stratified_elbo``: b draws with evenly spaced mask counts, weight n/l.

    Args:
        num_samples: b, draws per sequence (default 1; LLaDA evaluates with larger b).
        length: ``"padded"`` (default) or ``"true"`` — which completion positions are maskable.
        batch_size: rows per forward pass (``None``: all B*b rows at once).
        antithetic: b/2 complementary mask pairs on the ``0..n`` count grid (ESPO); b even.
        constant_memory: checkpoint each chunk of rows so peak memory does not grow with b.
    """

    name = "stratified_elbo"
    deterministic = False

    def __init__(
        self,
        *,
        num_samples: int = 1,
        length: str = "padded",
        batch_size: int | None = None,
        antithetic: bool = False,
        constant_memory: bool = False,
    ):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.antithetic = check_flag("antithetic", antithetic)
        self.constant_memory = check_flag("constant_memory", constant_memory)
        if antithetic and num_samples % 2:
            raise ValueError(f"antithetic=True draws complementary pairs: num_samples must be even, got {num_samples}")
        self.num_samples = num_samples
        self.length = check_length_mode(length)
        self.batch_size = check_batch_size(batch_size)

    def nfe(self, completion_length: int) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"StratifiedELBO(num_samples={self.num_samples}, length={self.length!r}, batch_size={self.batch_size}, "
            f"antithetic={self.antithetic}, constant_memory={self.constant_memory})"
        )

    def __call__(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        completion_ids: torch.Tensor,  # [B, L]
        completion_mask: torch.Tensor,  # [B, L]
        *,
        generator: Generators = None,
        prompt_attention_mask: torch.Tensor | None = None,  # [B, P]
    ) -> torch.Tensor:  # [B, L]
        check_inputs(prompt_ids, completion_ids, completion_mask, prompt_attention_mask, generator)
        B, b = completion_ids.shape[0], self.num_samples
        maskable = maskable_positions(completion_mask, self.length)  # [B, L]
        n = maskable.sum(1).cpu()  # [B]
        # row b's offset first, then its b masks — all from generator b
        u = sample_times(B, generator=generator, eps=0.0)  # [B] in [0, 1)
        if self.antithetic:
            H = b // 2
            x = antithetic_counts(u, n, H)  # [B, H] in 0..n
            counts = interleave_pairs(x.T, (n[:, None] - x).T).T  # [B, b]: x_0, n-x_0, x_1, ...
            grid = n.double()[:, None] + 1.0  # [B, 1]
            weight = torch.where(counts > 0, grid / counts.clamp(min=1).double(), torch.zeros_like(grid))  # [B, b]
            gens = repeat_generators(generator, B, H)
            maskable_h = maskable.repeat_interleave(H, dim=0)  # [B*H, L]
            first = count_mask(x.reshape(B * H), maskable_h, generator=gens)  # [B*H, L]
            noise = interleave_pairs(first, complement_mask(first, maskable_h))  # [B*b, L]
        else:
            counts = stratified_counts(u, n, b)  # [B, b]
            weight = n.double()[:, None] / counts.clamp(min=1).double()  # [B, b]
            gens = repeat_generators(generator, B, b)
            noise = count_mask(counts.reshape(B * b), maskable.repeat_interleave(b, dim=0), generator=gens)  # [B*b, L]
        logp = completion_log_probs(
            model,
            prompt_ids,
            completion_ids,
            noise,
            prompt_attention_mask=prompt_attention_mask,
            batch_size=self.batch_size,
            constant_memory=self.constant_memory,
        )  # [B*b, L]
        return finish(masked_weighted(logp, noise, weight.reshape(B * b).float(), B), completion_mask)
