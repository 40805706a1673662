"""SPG's evidence upper bound (EUBO) and its ELBO, on shared masks (Wang et al., arXiv 2510.09541).

SPG (Sandwiched Policy Gradient) maximises a lower bound of ``log π_θ(y|q)`` for completions with
positive advantage and minimises an *upper* bound for those with negative advantage. This module
estimates both bounds from the same Monte Carlo draws (one set of forward passes):

* ``eubo`` (:class:`EUBO`) returns the per-token EUBO (this module);
* ``spg_elbo`` (:class:`~dlm_trl_estimators.spg_elbo.SPGELBO`) returns the ELBO on the very masks the
  ``eubo`` estimator draws for the same generators;
* :meth:`EUBO.bounds` returns both from one forward pass (what ``SPGTrainer`` calls).

**The bounds.** Write ``p_i(z) = f_θ(y_i | z, q)`` for a noisy completion ``z`` in which position ``i``
is masked. Each token has a *context distribution* ``C_i``: the visible set a token sees at the moment
the generation order unmasks it. The ELBO (paper Eq. 2, continuous time, linear schedule) and the
tractable EUBO (paper Eq. 7, the form of the reference code) are

    ELBO(y) = Σ_i E_{z ~ C_i} [ log p_i(z) ],
    EUBO(y) = Σ_i (1/β) log E_{z ~ C_i} [ p_i(z)^β ],       β > 0 (paper: 1.5; ``beta``).

The EUBO comes from a Rényi-type variational bound with exponent β (the paper's §3.2), made tractable
by taking the log inside the sum over tokens; it does not decompose into per-token *expectations*
(the log is outside each token's expectation), so the per-token numbers returned are each token's
``(1/β) log E[p_i^β]`` and the row sum is the sequence EUBO. Facts that hold exactly (checked by
``tests/test_spg.py`` by enumerating orders):

* ``ELBO ≤ EUBO`` for any model and any β > 0 (per token, the power mean ``E[p^β]^{1/β}`` is at least
  the geometric mean ``exp E[log p]``), and EUBO → ELBO as β → 0;
* on a model whose conditionals are those of one joint ``p`` (:class:`dlm_trl.testing.JointTableDLM`)
  the ELBO equals ``log p(y)`` exactly, and the EUBO is ``≥ log p(y)`` — **not tight** for β > 0 unless
  each ``p_i`` is the same in every context (e.g. independent tokens);
* by Hölder's inequality, ``E_σ[Π_i p_i] ≤ Π_i E[p_i^n]^{1/n}``, so for ``β ≥ n`` (n scored tokens)
  the EUBO upper-bounds the any-order mixture likelihood ``log E_σ Π_i p_σ(i)`` of *any* model; for
  β < n (the paper's 1.5 with n = 256) it is an upper bound only on models close to consistent — an
  inconsistent model can have ``EUBO < log E_σ Π p`` (two tokens whose orders agree on high
  probabilities: EUBO(β=1) ≈ log 1/4 < log 1/2).

**Masks** (``masking``):

* ``"block"`` (SPG §3.3, the default; the reference code's ``forward_type="block_random"``): the
  completion is split into blocks of ``block_length`` (the sampler's semi-autoregressive blocks; the
  last may be shorter). A draw picks one block ``j`` among the ``J`` blocks holding a maskable
  position, keeps every earlier block clean, masks every later block fully, and masks a uniformly
  random count ``l ~ U{1..n_j}`` of block ``j``'s ``n_j`` maskable positions, chosen uniformly. The K
  draws of a row take distinct blocks (a random permutation of the ``J`` blocks, cycled when K > J).
  The reference code permutes all of the sampler's blocks and takes them modulo ``J``, which can repeat
  a block and is not uniform when ``J`` does not divide the block count; dlm-trl's choice is uniform.
  ``C_i`` is then the context of token ``i`` under semi-autoregressive generation (blocks left to
  right, a uniformly random order inside a block).
* ``"random"`` (the reference code's ``forward_type="random"``): count form over the whole completion,
  ``l ~ U{1..n}``, ``l`` maskable positions uniformly; ``C_i`` is the context under a uniformly
  random unmasking order (the usual masked-diffusion ELBO, = ``exact_elbo``).

**Which masked tokens are scored, and their weight** (``scoring``; only matters for ``"block"``):

* ``"block"`` (default): only the masked tokens of the chosen block, weight ``w = J · n_j / l``. Then
  ``E[w · 1[i scored]] = 1`` and ``w·1[i scored]`` reweights the draws to exactly ``C_i``: the ELBO
  estimate ``mean_k Σ_{i scored} w_k log p_i`` is unbiased (on a consistent model its mean is
  ``log p(y)``), and so is each token's power mean ``mean_k w_k 1[i scored] p_i^β``.
* ``"masked"`` (the reference code): every masked maskable token, the later blocks' included, weight
  ``n / m`` with ``m`` the draw's masked count — the reference code's ``1/t`` with the empirical mask
  ratio ``t = m/n``. Not an unbiased estimate of any of the bounds above (the fully masked later
  blocks are scored as if their context were drawn at rate ``t``); kept for comparison with the paper's
  numbers. With ``masking="random"`` both rules coincide.

**The EUBO estimate.** Token ``i``'s inner expectation is estimated from the K draws,
``Ê_i = Σ_k w_k 1[i ∈ S_k] p_ik^β / D_i`` with ``D_i = Σ_k w_k 1[i ∈ S_k]`` (``normalize="self"``,
default: a self-normalised mean, so that a token scored once contributes exactly ``log p_ik``) or
``D_i = K`` (``normalize="mean"``, the reference code: the plain Monte Carlo mean, whose log carries a
θ-independent offset ``(1/β) log(w/K)`` per token). The two differ by a constant per token, so their
gradients are identical; both are consistent as K → ∞ but, being logs of a mean, biased for finite K
(the *inner* mean with ``D_i = K`` is unbiased: :meth:`EUBO.power_mean`). Tokens no draw scored get 0
and the others are scaled by ``n_c / |I|`` (``n_c`` tokens that count, ``|I|`` of them scored): the
reference code's mean over the scored tokens times the length. A row with no scored token gives 0.

**Length** (``length``, as the other estimators): ``"padded"`` (default) — all ``L`` completion
positions are maskable, blocks are the sampler's ``L / block_length`` blocks; ``"true"`` — only the
``completion_mask`` positions are maskable and blocks without one are never chosen (the reference
code's choice); positions after the first EOS then stay visible, whereas the reference code masks
them in every draw. Contributions of positions with ``completion_mask == 0`` are 0 in both modes.

NFE: K (``num_samples``; the reference code's ``num_t`` = 2) forward passes per sequence, one
``[B*K, P+L]`` batch chunked by ``batch_size``. Randomness: per row, from that row's generator only
(block permutation, then per draw the count and the positions), so old / current estimates of a row
share masks.
"""

from __future__ import annotations

import math
import warnings

import torch

from dlm_trl.estimators import Generators

from ._common import (
    check_batch_size,
    check_inputs,
    check_length_mode,
    completion_log_probs,
    finish,
    maskable_positions,
    masked_weighted,
    repeat_generators,
)

MASKINGS = ("block", "random")
SCORINGS = ("block", "masked")
NORMALIZES = ("self", "mean")


def _row_uniforms(generator: Generators, rows: int, n: int, device) -> torch.Tensor:
    """``[rows, n]`` U(0,1), row r from generator r (one generator or None: one draw for all rows)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand((rows, n), generator=generator).to(device)
    gens = list(generator)
    if not gens:
        return torch.zeros(0, n, device=device)
    return torch.stack([torch.rand(n, generator=g) for g in gens]).to(device)


def _rank_select(keys: torch.Tensor, allowed: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``[R, T]`` bool: the ``count[r]`` allowed positions of row r with the smallest keys (uniform subset)."""
    keys = keys.masked_fill(~allowed, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    return (rank < count[:, None]) & allowed


class SPGDraws:
    """The noise of one call: ``noise`` / ``scored`` ``[B*K, L]`` bool, ``weight`` ``[B*K]``,
    ``block`` ``[B*K]`` (chosen block, -1 for ``"random"``); row ``b*K + k`` is draw k of row b."""

    def __init__(self, noise, scored, weight, block, K):
        self.noise, self.scored, self.weight, self.block, self.K = noise, scored, weight, block, K


class EUBO:
    """``eubo``: SPG's per-token evidence upper bound (and, via :meth:`bounds`, the ELBO on the same masks).

    Args:
        beta: the Rényi exponent β > 0 (paper / reference scripts: 1.5 for GSM8K and MATH500, 2.0 for
            countdown with the pure EUBO, 1.0 for sudoku).
        masking: ``"block"`` (default, SPG's block-wise masking) or ``"random"``.
        block_length: block size of ``"block"`` masking (the sampler's; default 32).
        num_samples: K draws per sequence (default 2, the reference code's ``num_t``).
        scoring: ``"block"`` (default, unbiased) or ``"masked"`` (reference code) — see the module doc.
        normalize: ``"self"`` (default) or ``"mean"`` (reference code) — see the module doc.
        length: ``"padded"`` (default) or ``"true"``.
        batch_size: rows per forward pass (``None``: all B*K rows at once).
    """

    name = "eubo"
    deterministic = False
    bound = "eubo"

    def __init__(
        self,
        *,
        beta: float = 1.5,
        masking: str = "block",
        block_length: int = 32,
        num_samples: int = 2,
        scoring: str = "block",
        normalize: str = "self",
        length: str = "padded",
        batch_size: int | None = None,
    ):
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta (the EUBO's Rényi exponent) must be a finite number > 0, e.g. 1.5; got {beta!r}")
        if beta < 1:
            warnings.warn(
                f"eubo: beta={beta!r} < 1. SPG's upper-bound theorem (arXiv 2510.09541, Thm. 1 / Cor. 1) holds for "
                "beta >= 1; below 1 the estimate need not bound log p(x) from above. The paper uses 1.0-2.0.",
                stacklevel=2,
            )
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS} ('block': SPG's block-wise masking), got {masking!r}")
        if not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"block_length must be a positive int (the sampler's block size), got {block_length!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int (draws per sequence, SPG: 2), got {num_samples!r}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if normalize not in NORMALIZES:
            raise ValueError(f"normalize must be one of {NORMALIZES}, got {normalize!r}")
        self.beta = float(beta)
        self.masking = masking
        self.block_length = block_length
        self.num_samples = num_samples
        self.scoring = scoring
        self.normalize = normalize
        self.length = check_length_mode(length)
        self.batch_size = check_batch_size(batch_size)

    def nfe(self, completion_length: int) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(beta={self.beta}, masking={self.masking!r}, block_length={self.block_length}, "
            f"num_samples={self.num_samples}, scoring={self.scoring!r}, normalize={self.normalize!r}, "
            f"length={self.length!r}, batch_size={self.batch_size})"
        )

    # ------------------------------------------------------------------ masks

    def draw_masks(
        self,
        completion_mask: torch.Tensor,  # [B, L]
        *,
        generator: Generators = None,
    ) -> SPGDraws:
        """The K draws of every row (no model involved): which positions are masked, which are scored
        and with which weight."""
        B, L = completion_mask.shape
        K = self.num_samples
        device = completion_mask.device
        maskable = maskable_positions(completion_mask, self.length)  # [B, L]
        rep = maskable.repeat_interleave(K, dim=0)  # [B*K, L]
        gens = repeat_generators(generator, B, K)
        if self.masking == "random":
            n = rep.sum(1)  # [B*K]
            u = _row_uniforms(gens, B * K, 1 + L, device)  # [B*K, 1+L]
            count = torch.minimum((u[:, 0] * n).floor().long() + 1, n)  # U{1..n}
            noise = _rank_select(u[:, 1:], rep, count)  # [B*K, L]
            weight = torch.where(n > 0, n / count.clamp(min=1), torch.zeros_like(n)).float()  # n / l
            block = torch.full((B * K,), -1, dtype=torch.long, device=device)
            return SPGDraws(noise, noise, weight, block, K)
        J = -(-L // self.block_length)
        blk = torch.arange(L, device=device) // self.block_length  # [L] block of each position
        in_block = blk[None, :] == torch.arange(J, device=device)[:, None]  # [J, L]
        n_blk = (maskable[:, None, :] & in_block[None]).sum(-1)  # [B, J] maskable positions per block
        eligible = n_blk > 0  # [B, J]
        n_eligible = eligible.sum(1)  # [B]
        # Per row: a uniformly random order of its eligible blocks; draw k takes the (k mod J_b)-th.
        keys = _row_uniforms(generator, B, J, device).masked_fill(~eligible, 2.0)  # [B, J]
        order = keys.argsort(dim=1)  # [B, J] eligible blocks first
        slot = torch.arange(K, device=device)[None, :] % n_eligible.clamp(min=1)[:, None]  # [B, K]
        block = order.gather(1, slot).reshape(B * K)  # [B*K]
        n_sel = n_blk.repeat_interleave(K, dim=0).gather(1, block[:, None]).squeeze(1)  # [B*K] n_j
        u = _row_uniforms(gens, B * K, 1 + L, device)  # [B*K, 1+L]
        count = torch.minimum((u[:, 0] * n_sel).floor().long() + 1, n_sel)  # U{1..n_j}
        current = rep & (blk[None, :] == block[:, None])  # [B*K, L]
        partial = _rank_select(u[:, 1:], current, count)  # [B*K, L]
        later = rep & (blk[None, :] > block[:, None])  # [B*K, L] fully masked
        noise = partial | later
        if self.scoring == "block":
            scored = partial
            jb = n_eligible.repeat_interleave(K).float()
            weight = torch.where(n_sel > 0, jb * n_sel / count.clamp(min=1), torch.zeros_like(jb))  # J · n_j / l
        else:
            scored = noise
            n = rep.sum(1).float()
            m = noise.sum(1).float()
            weight = torch.where(m > 0, n / m.clamp(min=1.0), torch.zeros_like(m))  # n / m = 1 / t_empirical
        return SPGDraws(noise, scored, weight.float(), block, K)

    # ------------------------------------------------------------------ estimates

    def _forward(self, model, prompt_ids, completion_ids, completion_mask, generator, prompt_attention_mask):
        check_inputs(prompt_ids, completion_ids, completion_mask, prompt_attention_mask, generator)
        draws = self.draw_masks(completion_mask, generator=generator)
        logp = completion_log_probs(
            model,
            prompt_ids,
            completion_ids,
            draws.noise,
            prompt_attention_mask=prompt_attention_mask,
            batch_size=self.batch_size,
        )  # [B*K, L] float32
        return draws, logp

    def _elbo(self, draws: SPGDraws, logp: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        B = completion_mask.shape[0]
        return finish(masked_weighted(logp, draws.scored, draws.weight, B), completion_mask)  # [B, L]

    def _eubo(self, draws: SPGDraws, logp: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        B, L = completion_mask.shape
        K = draws.K
        scored = draws.scored.view(B, K, L)
        w = draws.weight.to(logp.device, torch.float64)[:, None].expand(-1, L).reshape(B, K, L)
        lp = logp.double().view(B, K, L)
        counts = completion_mask.to(logp.device).bool()  # [B, L]
        hit = scored.any(1) & counts  # [B, L] scored by some draw and counting
        keep = scored & hit[:, None, :]  # [B, K, L]
        neg_inf = torch.full((), float("-inf"), dtype=torch.float64, device=logp.device)
        # log Σ_k w_k p_k^β over the draws that score the token; tokens never scored get a finite dummy
        terms = torch.where(keep, w.clamp_min(1e-300).log() + self.beta * lp, neg_inf)
        terms = torch.where(hit[:, None, :], terms, torch.zeros_like(terms))
        lse = torch.logsumexp(terms, dim=1)  # [B, L]
        if self.normalize == "self":
            denom = torch.where(keep, w, torch.zeros_like(w)).sum(1).clamp_min(1e-300).log()
        else:
            denom = torch.full_like(lse, math.log(K))
        value = (lse - denom) / self.beta  # [B, L] (1/β) log Ê_i
        n_c = counts.sum(1).double()  # [B]
        n_i = hit.sum(1).double()  # [B]
        scale = torch.where(n_i > 0, n_c / n_i.clamp(min=1.0), torch.zeros_like(n_c))  # [B]
        contrib = torch.where(hit, value * scale[:, None], torch.zeros_like(value))
        return finish(contrib, completion_mask)

    def bounds(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        completion_ids: torch.Tensor,  # [B, L]
        completion_mask: torch.Tensor,  # [B, L]
        *,
        generator: Generators = None,
        prompt_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # ([B, L], [B, L]) float32
        """``(ELBO, EUBO)`` per-token contributions from one set of K draws (one forward pass each)."""
        draws, logp = self._forward(model, prompt_ids, completion_ids, completion_mask, generator, prompt_attention_mask)
        return self._elbo(draws, logp, completion_mask), self._eubo(draws, logp, completion_mask)

    def power_mean(
        self,
        model,
        prompt_ids: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        *,
        generator: Generators = None,
        prompt_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:  # [B, L] float64
        """``(1/K) Σ_k w_k 1[i scored in k] p_ik^β`` per token: with ``scoring="block"`` (or ``"random"``
        masking) an unbiased estimate of ``E_{C_i}[p_i^β]``, the quantity inside the EUBO's log."""
        draws, logp = self._forward(model, prompt_ids, completion_ids, completion_mask, generator, prompt_attention_mask)
        B, L = completion_mask.shape
        w = draws.weight.to(logp.device, torch.float64)[:, None]
        per_draw = torch.where(draws.scored, w * torch.exp(self.beta * logp.double()), torch.zeros((), dtype=torch.float64))
        out = per_draw.view(B, draws.K, L).mean(1)
        return torch.where(completion_mask.bool(), out, torch.zeros_like(out))

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
        draws, logp = self._forward(model, prompt_ids, completion_ids, completion_mask, generator, prompt_attention_mask)
        if self.bound == "elbo":
            return self._elbo(draws, logp, completion_mask)
        return self._eubo(draws, logp, completion_mask)
