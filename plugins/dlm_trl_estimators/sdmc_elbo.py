"""Semi-deterministic Monte Carlo ELBO (GDPO, Rojas et al., arXiv 2510.08554).

The time integral of the ELBO, ``∫_0^1 G(t) dt`` with
``G(t) = E_{y_t}[(1/t) Σ_{i masked} log f_θ(y_i | y_t, q)]``, is approximated by a
deterministic quadrature over t, and only the inner expectation over masks is Monte
Carlo — the time dimension carries almost all of the variance of the double-MC estimator.

At each node ``t_j`` (weight ``w_j``, weights summing to 1 on [0, 1]) ``masks_per_node``
masks are drawn, each masking exactly ``m_j = max(1, floor(t_j · n))`` of the ``n``
maskable completion positions uniformly at random; a draw's value is
``ν_j Σ_{i masked} log f_θ(y_i | ·)`` with ``ν_j = 1/t_j`` (``weighting="time"``, GDPO's
choice) or ``ν_j = n/m_j`` (``weighting="count"``). The estimate is
``Σ_j w_j · mean_k(draw value)``; per token, ``contrib_i = Σ_j w_j ν_j mean_k 1[i ∈ S_jk] log f``.

Nodes (``quadrature``):

* ``"gauss"`` (default): Gauss–Legendre, mapped from [-1, 1] to [0, 1]: ``t = (x + 1)/2``,
  ``w = w_GL/2``. N=3: t = 0.1127, 0.5, 0.8873 with 5/18, 8/18, 5/18; N=2: t = 0.2113,
  0.7887 with 1/2, 1/2; N=1: t = 0.5.
* ``"simpson"``: GDPO's reference-code rule — Simpson weights 1/6, 4/6, 1/6 at nodes
  t = 0.1, 0.5, 1.0 (the left end is moved off t = 0, where 1/t is singular; so it is
  not an exact Simpson rule). N must be 3.
* ``"simpson_limit"``: composite Simpson on [0, 1] with N equally spaced nodes including
  both ends (N odd: 3 or 5). At t = 0 the integrand is taken at its limit,
  ``Σ_i log f(y_i | y_{-i})``, estimated by masking one token with weight n.

**Not exactly unbiased.** The mean of this estimator is its quadrature value
``Σ_j w_j ν_j E_{|S|=m_j}[Σ_{i∈S} log f]`` (see :meth:`SDMCELBO.expected_contributions`),
which differs from the ELBO by the quadrature error and the rounding of ``t·n`` to a
count. (With Bernoulli masks at the nodes, ``G`` would be a polynomial of degree n−1 in t
and N-point Gauss exact for n ≤ 2N; exact-count masks, as in GDPO, make it a step
function of t.) ``tests/test_estimator_correctness.py`` checks the estimator against the
quadrature value and measures the gap to ``exact_elbo``.

``length``: ``"padded"`` (default, as GDPO's reference code): n = L, every completion
position, EOS padding included, is maskable and predicted; ``"true"``: n = the row's
``completion_mask`` count and only those positions are maskable. Contributions of
positions with ``completion_mask == 0`` are 0 in both modes.

``antithetic`` (ESPO's coupling, arXiv 2512.03759, applied to the mirror-symmetric
Gauss nodes; ``quadrature="gauss"`` only): node ``N−1−j`` mirrors node ``j`` (``t ↦ 1−t``,
same weight). For ``j < N−1−j`` mask k of the mirrored node is the complement of mask k of
node j over the maskable positions, so it masks ``n − m_j = ceil((1−t_j)·n)`` positions
instead of ``floor((1−t_j)·n)`` (equal when ``t_j·n`` is an integer); its weight is
unchanged (``1/t_{N−1−j}``, or ``n/count``). The middle node of an odd N keeps independent
draws. Each mask is still a uniform exact-count mask, so the estimator's mean is the
quadrature value of :meth:`SDMCELBO.node_plan` (which returns the coupled counts) and
:meth:`SDMCELBO.expected_contributions` stays exact. GDPO itself draws nodes independently
(default ``antithetic=False``).

``constant_memory``: chunks of B rows (or ``batch_size``) run under activation checkpointing
when grad is enabled — GDPO's memory trick (the paper's optional no-grad estimate, then backprop node by
node) done by autograd: peak memory of one node's forward, identical values and gradients,
one extra forward per node in backward (see ``_common``).

NFE: N · K (``num_nodes · masks_per_node``) forward passes per sequence, run as one
``[B*N*K, P+L]`` batch (chunked by ``batch_size``).
"""

from __future__ import annotations

import numpy as np
import torch

from dlm_trl.estimators import Generators
from dlm_trl.masking import complement_mask, count_mask

from ._common import (
    check_batch_size,
    check_flag,
    check_inputs,
    check_length_mode,
    completion_log_probs,
    finish,
    maskable_positions,
    masked_weighted,
    repeat_generators,
)

QUADRATURES = ("gauss", "simpson", "simpson_limit")
WEIGHTINGS = ("time", "count")


def quadrature_nodes(num_nodes: int, quadrature: str = "gauss") -> tuple[list[float], list[float]]:
    """Nodes ``t_j`` on [0, 1] and weights ``w_j`` (summing to 1)."""
    if quadrature == "gauss":
        x, w = np.polynomial.legendre.leggauss(num_nodes)
        return [float((xi + 1.0) / 2.0) for xi in x], [float(wi / 2.0) for wi in w]
    if quadrature == "simpson":
        if num_nodes != 3:
            raise ValueError(f"quadrature='simpson' (GDPO's t = 0.1, 0.5, 1.0) has 3 nodes, got num_nodes={num_nodes}")
        return [0.1, 0.5, 1.0], [1.0 / 6.0, 4.0 / 6.0, 1.0 / 6.0]
    if num_nodes < 3 or num_nodes % 2 == 0:
        raise ValueError(
            f"quadrature='simpson_limit' needs an odd number of nodes ≥ 3 (3 or 5), got num_nodes={num_nodes}"
        )
    h = 1.0 / (num_nodes - 1)
    coef = [1.0] + [4.0 if j % 2 else 2.0 for j in range(1, num_nodes - 1)] + [1.0]
    return [j * h for j in range(num_nodes)], [c * h / 3.0 for c in coef]


class SDMCELBO:
    """``sdmc_elbo``: GDPO's quadrature-over-time ELBO estimate.

    Args:
        num_nodes: N quadrature nodes, 1..5 (default 3, as GDPO's main tables).
        masks_per_node: K masks per node (default 1).
        quadrature: ``"gauss"`` (default), ``"simpson"`` (GDPO's 0.1/0.5/1.0 rule) or ``"simpson_limit"``.
        length: ``"padded"`` (default) or ``"true"`` — see the module docstring.
        weighting: ``"time"`` (default, 1/t as GDPO) or ``"count"`` (n/m).
        batch_size: rows per forward pass (``None``: all B*N*K rows at once).
        antithetic: mirrored Gauss nodes share complementary masks (default False; gauss only, N ≥ 2).
        constant_memory: checkpoint each chunk of rows so peak memory does not grow with N·K.
    """

    name = "sdmc_elbo"
    deterministic = False

    def __init__(
        self,
        *,
        num_nodes: int = 3,
        masks_per_node: int = 1,
        quadrature: str = "gauss",
        length: str = "padded",
        weighting: str = "time",
        batch_size: int | None = None,
        antithetic: bool = False,
        constant_memory: bool = False,
    ):
        self.antithetic = check_flag("antithetic", antithetic)
        self.constant_memory = check_flag("constant_memory", constant_memory)
        if antithetic and (quadrature != "gauss" or num_nodes < 2):
            raise ValueError(
                "antithetic=True pairs mirrored nodes t and 1-t with complementary masks: it needs "
                f"quadrature='gauss' (symmetric nodes) and num_nodes >= 2, got {quadrature!r}, {num_nodes}"
            )
        if not isinstance(num_nodes, int) or not 1 <= num_nodes <= 5:
            raise ValueError(f"num_nodes must be an int in 1..5, got {num_nodes!r}")
        if not isinstance(masks_per_node, int) or masks_per_node < 1:
            raise ValueError(f"masks_per_node must be a positive int, got {masks_per_node!r}")
        if quadrature not in QUADRATURES:
            raise ValueError(f"quadrature must be one of {QUADRATURES}, got {quadrature!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.num_nodes = num_nodes
        self.masks_per_node = masks_per_node
        self.quadrature = quadrature
        self.length = check_length_mode(length)
        self.weighting = weighting
        self.batch_size = check_batch_size(batch_size)
        self.nodes, self.weights = quadrature_nodes(num_nodes, quadrature)

    def nfe(self, completion_length: int) -> int:
        return self.num_nodes * self.masks_per_node

    def __repr__(self) -> str:
        return (
            f"SDMCELBO(num_nodes={self.num_nodes}, masks_per_node={self.masks_per_node}, "
            f"quadrature={self.quadrature!r}, length={self.length!r}, weighting={self.weighting!r}, "
            f"batch_size={self.batch_size}, antithetic={self.antithetic}, constant_memory={self.constant_memory})"
        )

    def mirror(self, j: int) -> int | None:
        """With ``antithetic``, the node whose masks node ``j`` complements (``None``: drawn freely)."""
        k = self.num_nodes - 1 - j
        return k if self.antithetic and k < j else None

    def node_plan(self, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For maskable counts ``n [B]``: mask counts ``m [B, N]`` and draw weights ``w_j ν_j [B, N]``."""
        n = n.long().cpu()
        counts, weights = [], []
        for j, (t, w) in enumerate(zip(self.nodes, self.weights, strict=True)):
            m = torch.clamp(torch.floor(t * n.double() + 1e-9).long(), min=1)
            m = torch.minimum(m, n)  # 0 only for a row with nothing maskable
            if self.mirror(j) is not None:  # complement of the mirrored node's masks
                m = n - counts[self.mirror(j)]
            if t == 0.0:  # simpson_limit's left end: the t → 0 limit, one token weighted n
                nu = n.double()
            elif self.weighting == "time":
                nu = torch.full(n.shape, 1.0 / t, dtype=torch.float64)
            else:
                nu = n.double() / m.clamp(min=1).double()
            counts.append(m)
            weights.append(w * nu)
        return torch.stack(counts, 1), torch.stack(weights, 1).float()  # [B, N], [B, N]

    def expected_contributions(self, count_table: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The estimator's exact mean, per token ``[B, L]``, from a count table.

        ``count_table[b, l, i] = E_{|S|=l}[1[i ∈ S] log f(y_i | y_S→M)]`` for ``l = 0..L``
        (as returned by ``ExactELBO.count_table``) and ``n [B]`` the maskable counts.
        """
        m, v = self.node_plan(n)  # [B, N]
        m = m.to(count_table.device)
        v = v.to(count_table.device, count_table.dtype)
        picked = torch.gather(
            count_table, 1, m[:, :, None].expand(-1, -1, count_table.shape[2])
        )  # [B, N, L]
        return (v[:, :, None] * picked).sum(1)

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
        B = completion_ids.shape[0]
        N, K = self.num_nodes, self.masks_per_node
        D = N * K  # draws per row, ordered (node, mask)
        gens = repeat_generators(generator, B, D)
        maskable = maskable_positions(completion_mask, self.length)  # [B, L]
        m, v = self.node_plan(maskable.sum(1))  # [B, N]
        counts = m.repeat_interleave(K, dim=1).reshape(B * D)  # [B*D]
        weight = v.repeat_interleave(K, dim=1).reshape(B * D) * N  # [B*D]; ×N: masked_weighted averages over D
        if self.antithetic:
            free = [j for j in range(N) if self.mirror(j) is None]  # nodes whose masks are drawn
            F = len(free) * K
            gens_f = repeat_generators(generator, B, F)
            maskable_f = maskable.repeat_interleave(F, dim=0)  # [B*F, L]
            drawn = count_mask(m[:, free].repeat_interleave(K, dim=1).reshape(B * F), maskable_f, generator=gens_f)
            drawn = drawn.view(B, len(free), K, -1)  # [B, |free|, K, L]
            by_node = {j: drawn[:, i] for i, j in enumerate(free)}  # [B, K, L] each
            mk = maskable[:, None, :].expand(-1, K, -1)  # [B, K, L]
            for j in range(N):
                if j not in by_node:
                    by_node[j] = complement_mask(by_node[self.mirror(j)], mk)
            noise = torch.stack([by_node[j] for j in range(N)], 1).reshape(B * D, -1)  # [B*D, L]
        else:
            noise = count_mask(counts, maskable.repeat_interleave(D, dim=0), generator=gens)  # [B*D, L]
        logp = completion_log_probs(
            model,
            prompt_ids,
            completion_ids,
            noise,
            prompt_attention_mask=prompt_attention_mask,
            batch_size=self.batch_size,
            constant_memory=self.constant_memory,
        )  # [B*D, L]
        return finish(masked_weighted(logp, noise, weight, B), completion_mask)


__all__ = ["QUADRATURES", "SDMCELBO", "WEIGHTINGS", "quadrature_nodes"]
