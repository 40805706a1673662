"""Double Monte Carlo ELBO: random times × random Bernoulli masks (time form).

The masked-diffusion ELBO in time form (ALGORITHMS.md §0; LLaDA, arXiv 2502.09992),

    ELBO(y) = E_{t ~ U(0,1)} E_{y_t ~ Bern(t)} [ (1/t) Σ_{i masked} log f_θ(y_i | y_t, q) ],

estimated with K independent draws per sequence: K times ``t_k`` and one Bernoulli(t_k)
mask each over the maskable completion positions (``length`` option, see below). Per
token, ``contrib_i = (1/K) Σ_k 1[i masked in draw k] · log f_θ(y_i | y_{t_k}, q) / t_k``.
Unbiased for the ELBO up to the ``eps`` floor on t (``t ~ U(eps, 1)``: an O(eps)
bias, 1e-3 by default as in LLaDA), but high variance — almost all of it from t.
A draw may mask nothing; it then contributes 0 (clamping it to one token would bias).

``length``: ``"padded"`` (default) — every completion position is maskable, L = padded
length; ``"true"`` — only ``completion_mask`` positions are maskable. In both modes the
positions with ``completion_mask == 0`` contribute 0. This matches ``exact_elbo`` with
the same ``length``.

``antithetic`` (ESPO's coupling, arXiv 2512.03759, as ``reduce_var`` in its reference code): the K
draws come in K/2 pairs. Draw 2p has a time ``t ~ U(eps, 1−eps)`` and a Bernoulli(t) mask
S; draw 2p+1 masks the complement of S over the maskable positions — marginally a
Bernoulli(1−t) mask at time ``1−t`` (uniform on the same range) — and is weighted
``1/(1−t)``. Each member is an unbiased draw of the time-form ELBO (up to the O(eps) floor
at both ends), so the pair mean is too; within a pair every maskable token is predicted
exactly once. ESPO couples exact-count masks on the count lattice instead (x and L−x masked
of L, weights (L+1)/x and (L+1)/(L−x)) — that form is ``stratified_elbo(antithetic=True)``.

``constant_memory``: chunks of B rows (or ``batch_size``) run under activation checkpointing
when grad is enabled — peak memory of one draw's forward for any K, identical values and
gradients, one extra forward per draw in backward (see ``_common``).

NFE: K (``num_samples``) forward passes per sequence, run as one ``[B*K, P+L]`` batch
(chunked by ``batch_size``).
"""

from __future__ import annotations

import torch

from dlm_trl.estimators import Generators
from dlm_trl.masking import bernoulli_mask, complement_mask, sample_times

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


class DoubleMCELBO:
    """``double_mc_elbo``: K random times, one Bernoulli(t) mask each, weight 1/t.

    Args:
        num_samples: K, the number of (time, mask) draws per sequence (default 1: the
            cheapest unbiased estimate; GDPO compares against K = 2..4).
        length: ``"padded"`` (default) or ``"true"`` — which completion positions are maskable.
        eps: times are drawn from U(eps, 1) (avoids t = 0).
        batch_size: rows per forward pass (``None``: all B*K rows at once).
        antithetic: pair each draw (t, S) with (1−t, complement of S); K must be even
            (default False; ESPO's coupling).
        constant_memory: checkpoint each chunk of rows so peak memory does not grow with K
            (default False; costs one extra forward per draw in backward).
    """

    name = "double_mc_elbo"
    deterministic = False

    def __init__(
        self,
        *,
        num_samples: int = 1,
        length: str = "padded",
        eps: float = 1e-3,
        batch_size: int | None = None,
        antithetic: bool = False,
        constant_memory: bool = False,
    ):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.antithetic = check_flag("antithetic", antithetic)
        self.constant_memory = check_flag("constant_memory", constant_memory)
        if antithetic and num_samples % 2:
            raise ValueError(f"antithetic=True draws pairs (t, 1-t): num_samples must be even, got {num_samples}")
        if antithetic and not eps < 0.5:
            raise ValueError(f"antithetic=True draws t ~ U(eps, 1-eps): eps must be < 0.5, got {eps}")
        self.num_samples = num_samples
        self.length = check_length_mode(length)
        self.eps = float(eps)
        self.batch_size = check_batch_size(batch_size)

    def nfe(self, completion_length: int) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"DoubleMCELBO(num_samples={self.num_samples}, length={self.length!r}, eps={self.eps}, "
            f"batch_size={self.batch_size}, antithetic={self.antithetic}, constant_memory={self.constant_memory})"
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
        B, K = completion_ids.shape[0], self.num_samples
        if self.antithetic:
            H = K // 2  # pairs per row
            gens = repeat_generators(generator, B, H)
            maskable = maskable_positions(completion_mask, self.length).repeat_interleave(H, dim=0)  # [B*H, L]
            u = sample_times(B * H, generator=gens, eps=0.0, device=maskable.device)  # [B*H] U(0, 1)
            t_half = self.eps + (1.0 - 2.0 * self.eps) * u  # [B*H] U(eps, 1-eps)
            first = bernoulli_mask(t_half, maskable, generator=gens)  # [B*H, L]
            noise = interleave_pairs(first, complement_mask(first, maskable))  # [B*K, L]
            t = interleave_pairs(t_half, 1.0 - t_half)  # [B*K]
        else:
            gens = repeat_generators(generator, B, K)
            maskable = maskable_positions(completion_mask, self.length).repeat_interleave(K, dim=0)  # [B*K, L]
            t = sample_times(B * K, generator=gens, eps=self.eps, device=maskable.device)  # [B*K]
            noise = bernoulli_mask(t, maskable, generator=gens)  # [B*K, L]
        logp = completion_log_probs(
            model,
            prompt_ids,
            completion_ids,
            noise,
            prompt_attention_mask=prompt_attention_mask,
            batch_size=self.batch_size,
            constant_memory=self.constant_memory,
        )  # [B*K, L]
        return finish(masked_weighted(logp, noise, 1.0 / t, B), completion_mask)
