"""Pure loss math of the DLM trainers (ALGORITHMS.md §2).

No model, no trainer, no TRL: every function takes plain tensors and numbers and returns
``(loss, metrics)`` (or tensors), where ``metrics`` is a dict of detached scalar tensors
for logging. The trainers in :mod:`dlm_trl.trainers` compute the inputs (per-token
likelihood contributions from an estimator, advantages from TRL) and call these.

Shapes: ``B`` rows, ``L`` completion positions, ``G`` group size (rollouts per prompt),
``R`` denoising replicates.

Common keyword arguments: ``keep [B]`` (bool or 0/1; ``None`` = every row) drops rows from the
loss *and* from its normaliser — the trainers pass it for groups whose rewards are all equal
when ``drop_flat_groups=True`` (DAPO's dynamic sampling, without the resampling); ``delta``
caps the unclipped ratio term (two-sided clipping, INTELLECT-2, TRL's ``delta``).

Ratio metrics (every ratio loss): ``ratio/mean``, ``clip_ratio/low_mean`` (ratio below the
range with ``A < 0``), ``clip_ratio/high_mean`` (above it with ``A > 0``),
``clip_ratio/region_mean`` (either), ``log_ratio/abs_mean`` and ``log_ratio/abs_max`` (of the
log-ratio the clip acts on: per token for diffu-GRPO, the length-normalised sequence log-ratio
for GDPO), all over the rows / tokens that count.

* :func:`clipped_token_loss` — diffu-GRPO (d1, arXiv 2504.12216): token-level PPO clip on
  ``ρ = exp(logp_θ − logp_old)`` plus ``β`` times the k3 KL to the reference.
* :func:`sequence_clipped_loss` — GDPO (arXiv 2510.08554): one ratio per sequence,
  ``exp((Ê_θ − Ê_old) / L)`` (the length normaliser sits inside the exponent), and a KL
  term that is either per token (``kl_estimator="token_k3"``) or on the sequence mean; ESPO
  (arXiv 2512.03759) is the same ratio with the k2 KL (``"sequence_k2"``); BGPO (arXiv
  2510.11683) replaces the ratio by its linear lower bound (``ratio_form="bgpo_linear"``).
* :func:`dmpo_weights`, :func:`ess`, :func:`ess_temperature`, :func:`denoising_cross_entropy`,
  :func:`wdce_loss` — DMPO (arXiv 2510.08233) with the optional PDNS tempering
  (arXiv 2510.03824).
* :func:`rollout_correction_weights` — truncated / masked importance weights between the rollout
  sampler's token probabilities and the trained likelihood (TIS / MIS, TRL's
  ``vllm_importance_sampling_*``), multiplied into the surrogate by the two ratio losses (``weights``).
* :func:`sandwiched_loss` — SPG (arXiv 2510.09541): ELBO for rows with ``A ≥ 0``, an EUBO (or the
  mixture ``ω·EUBO + (1 − ω)·ELBO``) for ``A < 0``; no ratio by default, GDPO's sequence clip optional.
"""

from __future__ import annotations

import torch

NORMALIZATIONS = ("token", "sequence", "constant")
LENGTH_MODES = ("padded", "true")
BASELINES = ("negative_tilt", "mean", "none")
KL_ESTIMATORS = ("token_k3", "sequence_k3", "sequence_k2", "sequence_k2_normalized")
RATIO_FORMS = ("exp", "bgpo_linear")
ROLLOUT_CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")

Metrics = dict[str, torch.Tensor]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def _masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Largest ``x`` where ``mask`` is set (0 when nothing is)."""
    sel = x[mask.bool()]
    return sel.max() if sel.numel() else torch.zeros((), dtype=x.dtype, device=x.device)


def _keep_rows(keep: torch.Tensor | None, B: int, like: torch.Tensor) -> torch.Tensor:
    """``keep`` as a float ``[B]`` (all ones when ``None``)."""
    if keep is None:
        return torch.ones(B, dtype=like.dtype, device=like.device)
    if keep.shape != (B,):
        raise ValueError(f"keep must have shape [{B}] (one flag per row), got {tuple(keep.shape)}")
    return keep.to(device=like.device, dtype=like.dtype)


def _ratio_metrics(
    ratio: torch.Tensor, log_ratio: torch.Tensor, A: torch.Tensor, lo: float, hi: float, m: torch.Tensor
) -> Metrics:
    """Clip fractions and |log r| over the entries where ``m`` is set (all shapes broadcast alike)."""
    low = (ratio < lo) & (A < 0)
    high = (ratio > hi) & (A > 0)
    return {
        "ratio/mean": _masked_mean(ratio, m),
        "clip_ratio/low_mean": _masked_mean(low.to(m.dtype), m),
        "clip_ratio/high_mean": _masked_mean(high.to(m.dtype), m),
        "clip_ratio/region_mean": _masked_mean((low | high).to(m.dtype), m),
        "log_ratio/abs_mean": _masked_mean(log_ratio.abs(), m),
        "log_ratio/abs_max": _masked_max(log_ratio.abs(), m),
    }


def _surrogate(ratio: torch.Tensor, A: torch.Tensor, lo: float, hi: float, delta: float | None) -> torch.Tensor:
    """PPO's ``−min(r A, clip(r, lo, hi) A)``; with ``delta`` the unclipped ``r`` is capped at ``delta``
    (two-sided clipping: bounds the loss of a sample with ``A < 0`` whose ratio ran away)."""
    clipped = torch.clamp(ratio, lo, hi)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    return -torch.min(unclipped * A, clipped * A)


def k3_kl(ref_logps: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ ‖ π_ref): ``exp(ref − θ) − (ref − θ) − 1`` (≥ 0), elementwise."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1.0


def _clip_bounds(epsilon: float, epsilon_high: float | None, delta: float | None = None) -> tuple[float, float]:
    if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
        raise ValueError(f"clip ranges must be ≥ 0, got epsilon={epsilon}, epsilon_high={epsilon_high}")
    hi = 1.0 + (epsilon if epsilon_high is None else epsilon_high)
    if delta is not None and delta <= hi:
        raise ValueError(f"delta={delta} must exceed the upper clip bound 1 + epsilon_high = {hi}")
    return 1.0 - epsilon, hi


def clipped_token_loss(
    logps: torch.Tensor,  # [B, L] current policy, carries grad
    old_logps: torch.Tensor,  # [B, L] rollout policy (same masks), no grad
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, L] 1 = token counts
    *,
    epsilon: float,
    epsilon_high: float | None = None,
    ref_logps: torch.Tensor | None = None,  # [B, L] reference policy (same masks)
    beta: float = 0.0,
    normalization: str = "token",
    max_length: int | None = None,
    delta: float | None = None,
    kl_ratio_correction: bool = False,
    keep: torch.Tensor | None = None,  # [B]
    weights: torch.Tensor | None = None,  # [B, L] or [B], no grad
) -> tuple[torch.Tensor, Metrics]:
    """diffu-GRPO's token-level clipped surrogate (d1, arXiv 2504.12216).

    ``ρ = exp(logps − old_logps)``; per token ``−min(ρ A, clip(ρ, 1−ε, 1+ε_high) A) + β·k3``.
    ``normalization``: ``"token"`` — sum over valid tokens / number of valid tokens in the
    batch (d1's choice, TRL's ``bnpo``); ``"sequence"`` — mean over each sequence's valid
    tokens, then over sequences (TRL's ``grpo``); ``"constant"`` — sum / (B · max_length)
    (TRL's ``dr_grpo``). Rows with ``keep = 0`` count in none of them.
    ``kl_ratio_correction`` multiplies the per-token k3 by ``ρ`` (with its gradient), TRL's
    ``use_bias_correction_kl`` (DeepSeek-V3.2): the KL gradient then is that of the reverse KL
    under the current policy rather than under the rollout policy.
    ``weights`` (:func:`rollout_correction_weights`, per token ``[B, L]`` or per row ``[B]``) multiply
    the clipped surrogate, not the KL term, as TRL applies its importance-sampling correction.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps (the reference policy's per-token log-probs)")
    lo, hi = _clip_bounds(epsilon, epsilon_high, delta)
    B = logps.shape[0]
    kept = _keep_rows(keep, B, logps)  # [B]
    m = mask.to(logps.dtype) * kept[:, None]  # [B, L]
    A = advantages.to(logps.dtype)[:, None]  # [B, 1]
    log_ratio = logps - old_logps  # [B, L]
    ratio = torch.exp(log_ratio)
    per_token = _surrogate(ratio, A, lo, hi, delta)  # [B, L]
    if weights is not None:
        per_token = per_token * _as_token_weights(weights, logps).detach()
    kl = None
    if beta != 0.0:
        kl = k3_kl(ref_logps, logps)  # [B, L]
        per_token = per_token + beta * (kl * ratio if kl_ratio_correction else kl)
    if normalization == "token":
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    elif normalization == "sequence":
        per_row = (per_token * m).sum(1) / m.sum(1).clamp(min=1.0)
        loss = (per_row * kept).sum() / kept.sum().clamp(min=1.0)
    else:
        if max_length is None:
            raise ValueError('normalization="constant" needs max_length (the generation length)')
        loss = (per_token * m).sum() / (kept.sum().clamp(min=1.0) * max_length)
    with torch.no_grad():
        metrics = _ratio_metrics(ratio, log_ratio, A, lo, hi, m)
        if kl is not None:
            metrics["kl"] = _masked_mean(kl, m)
    return loss, metrics


def _as_token_weights(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` or ``[B]`` weights as ``[B, L]``-broadcastable, in ``like``'s dtype."""
    B, L = like.shape
    if weights.shape == (B,):
        weights = weights[:, None]
    elif weights.shape != (B, L):
        raise ValueError(f"weights must be [B={B}, L={L}] (per token) or [B={B}] (per row), got {tuple(weights.shape)}")
    return weights.to(like.dtype)


def check_correction_bounds(clip_min: float | None, clip_max: float | None, prefix: str = "clip_") -> None:
    """``clip_max > 0`` and ``clip_min`` None or in ``[0, clip_max)`` (names in errors: ``prefix`` + min / max)."""
    if clip_max is None or not clip_max > 0:
        raise ValueError(f"set {prefix}max > 0 (the largest weight kept, e.g. 3.0), got {clip_max!r}")
    if clip_min is not None and not 0 <= clip_min < clip_max:
        raise ValueError(f"{prefix}min must be None or in [0, {prefix}max={clip_max}), got {clip_min!r}")


def rollout_correction_weights(
    old_logps: torch.Tensor,  # [B, L] the trained likelihood of the rollout policy (the loss's old estimate)
    sampler_logps: torch.Tensor,  # [B, L] each token's log-probability when the sampler committed it (NaN: none)
    mask: torch.Tensor,  # [B, L] 1 = token counts
    *,
    mode: str,
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> tuple[torch.Tensor, Metrics]:
    """Importance weights from the rollout sampler's distribution to the trained likelihood.

    Log-weight per token ``d_i = old_i − sampler_i`` over valid tokens (0 where the sampler recorded
    nothing, as TRL does for a missing log-probability). ``mode``:

    * ``"token_truncate"`` — ``min(max(exp(d_i), clip_min), clip_max)`` per token, ``[B, L]``
      (truncated importance sampling, Yao et al. 2025);
    * ``"token_mask"`` — ``exp(d_i)``, or 0 where it leaves ``[clip_min, clip_max]``, ``[B, L]``;
    * ``"sequence_truncate"`` / ``"sequence_mask"`` — the same on one weight per row, ``[B]``, from
      the **mean** of ``d_i`` over the row's valid tokens (the geometric mean of the token
      weights). TRL's sequence modes exponentiate the *sum*; for a DLM the trained likelihood
      of a sequence is an ELBO, a bound whose gap grows with the length, so the sum would put
      almost every sequence weight near 0. The mean matches GDPO's length-normalised ratio.

    A DLM's sampler does not draw tokens from the distribution the estimators score (it commits a
    token given the tokens decoded so far, the estimators score it under other masks), so these
    weights measure the gap between the two as much as off-policyness: look at the logged
    ``rollout_correction/log_gap_mean`` before relying on them. Returns ``(weights, metrics)``;
    the weights carry no gradient.
    """
    if mode not in ROLLOUT_CORRECTIONS[1:]:
        raise ValueError(f"mode must be one of {ROLLOUT_CORRECTIONS[1:]}, got {mode!r}")
    if old_logps.shape != sampler_logps.shape or old_logps.shape != mask.shape:
        raise ValueError(
            f"old_logps {tuple(old_logps.shape)}, sampler_logps {tuple(sampler_logps.shape)} and mask "
            f"{tuple(mask.shape)} must all be [B, L]"
        )
    check_correction_bounds(clip_min, clip_max)
    with torch.no_grad():
        m = mask.bool()
        d = old_logps.detach().double() - sampler_logps.to(old_logps.device).double()  # [B, L]
        d = torch.where(m & torch.isfinite(d), d, torch.zeros_like(d))
        if mode.startswith("token"):
            log_w, counts = d, m  # [B, L]
        else:
            log_w = d.sum(1) / m.sum(1).clamp(min=1)  # [B] mean over valid tokens
            counts = m.any(1)  # [B]
        raw = torch.exp(log_w)
        lo = -torch.inf if clip_min is None else float(clip_min)
        hi = float(clip_max)
        if mode.endswith("truncate"):
            w = raw.clamp(min=lo, max=hi)
        else:
            w = torch.where((raw >= lo) & (raw <= hi), raw, torch.zeros_like(raw))
        changed = (w != raw) & counts
        metrics = {
            "rollout_correction/log_gap_mean": _masked_mean(d, m),
            "rollout_correction/weight_mean": _masked_mean(w, counts),
            "rollout_correction/weight_min": w[counts].min() if counts.any() else w.new_ones(()),
            "rollout_correction/weight_max": w[counts].max() if counts.any() else w.new_ones(()),
            "rollout_correction/changed_frac": _masked_mean(changed.double(), counts),
        }
        metrics = {k: v.float() for k, v in metrics.items()}
        return w.to(old_logps.dtype), metrics


def sequence_lengths(mask: torch.Tensor, length: str = "padded") -> torch.Tensor:
    """Normaliser per row: the padded length ``L`` or the true length ``Σ mask`` (≥ 1) → ``[B]``."""
    if length not in LENGTH_MODES:
        raise ValueError(f"length must be one of {LENGTH_MODES}, got {length!r}")
    if length == "padded":
        return torch.full((mask.shape[0],), float(mask.shape[1]), device=mask.device)
    return mask.float().sum(1).clamp(min=1.0)


def sequence_clipped_loss(
    logps: torch.Tensor,  # [B, L] per-token ELBO contributions, current policy (grad)
    old_logps: torch.Tensor,  # [B, L] same masks, rollout policy
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, L]
    *,
    epsilon: float,
    epsilon_high: float | None = None,
    length: str = "padded",
    ref_logps: torch.Tensor | None = None,  # [B, L]
    beta: float = 0.0,
    kl_estimator: str = "sequence_k3",
    delta: float | None = None,
    keep: torch.Tensor | None = None,  # [B]
    ratio_form: str = "exp",
    draw_logps: torch.Tensor | None = None,  # [B, D] per-draw sequence estimates, current policy (grad)
    old_draw_logps: torch.Tensor | None = None,  # [B, D] the same draws, rollout policy
    weights: torch.Tensor | None = None,  # [B], no grad
) -> tuple[torch.Tensor, Metrics]:
    """GDPO's sequence-level clipped surrogate (arXiv 2510.08554).

    ``Ê = Σ_i mask_i · logps_i`` per row; ``r = exp((Ê_θ − Ê_old) / n)`` with ``n`` the padded
    length ``L`` (default, as GDPO's reference code) or the true length (``length="true"``);
    loss ``mean_b −min(r A, clip(r, 1−ε, 1+ε_high) A)`` over the kept rows. The clip acts on
    the length-normalised log-ratio ``log r = Δ/n``, a per-token mean, so a range suited to it is
    small (GSPO: 3e-4 / 4e-4; ``GDPOConfig.sequence_epsilon``): ``r`` leaves ``[1−ε, 1+ε_high]``
    once ``Δ/n`` leaves ``[log(1−ε), log(1+ε_high)]`` ≈ ``[−ε, ε_high]``, and then the row's
    gradient is zero (for the sign of ``A`` that the clip guards).

    ``beta > 0`` adds ``β·KL`` per row, estimated on the reference's estimate on the same masks:

    * ``kl_estimator="token_k3"``: k3 of each token's contribution,
      ``mean_{i valid} [exp(c_ref,i − c_θ,i) − (c_ref,i − c_θ,i) − 1]`` — ≈ ``mean δ_i² / 2``;
    * ``"sequence_k3"``: k3 of the mean difference ``(Ê_ref − Ê_θ)/n`` — ≈ ``(mean δ_i)² / 2``,
      which is much weaker whenever the per-token differences do not all share a sign (not a KL
      anchor; kept for comparison with earlier runs);
    * ``"sequence_k2"`` (ESPO, arXiv 2512.03759; the form of its reference code): k2 of the
      sequence-ELBO difference, length-normalised once, ``½ (Ê_θ − Ê_ref)² / n`` (``compute_approx_kl(
      ..., "k2")`` summed and divided by ``batch · L``). k3 on a sequence difference exponentiates
      it (``exp(Ê_ref − Ê_θ)`` overflows or vanishes for |Δ| of tens of nats); k2 is quadratic,
      and its gradient ``(Δ/n)·∇Ê_θ`` equals that of k1-in-reward on-policy;
    * ``"sequence_k2_normalized"``: ``½ ((Ê_θ − Ê_ref)/n)²``, k2 of the per-token mean difference
      (the form of ESPO's project page; ``n`` times smaller than ``"sequence_k2"``, so β must be
      ``n`` times larger for the same pull).

    ``ratio_form``:

    * ``"exp"`` (default): the clipped ratio above (GDPO, ESPO);
    * ``"bgpo_linear"`` (BGPO, arXiv 2510.11683 v3, Eqs. 9 and 12; the paper's exponent is the unnormalised ΔB̂, here it is divided by ``n``): the objective ``A·exp(x)`` with ``x`` the
      length-normalised log-ratio is replaced by a lower bound that is *linear* in the Monte
      Carlo draws — for ``A ≥ 0`` the tangent ``A·(1 + x̄)`` (``e^x ≥ 1 + x``), for ``A < 0``
      ``A·mean_d exp(x_d)`` (Jensen, ``exp(mean_d x_d) ≤ mean_d exp(x_d)``), where
      ``x_d = (Ê_θ,d − Ê_old,d)/n`` is draw d's log-ratio (``draw_logps`` / ``old_draw_logps``,
      ``[B, D]``, whose mean over d is the row's estimate) and ``x̄`` their mean. On-policy
      (``θ = θ_old``, ``x_d = 0``) value and gradient equal those of ``"exp"``; off-policy the
      bound is ≤ the unclipped ``A·exp(x̄)``. Each term depends on one draw, so BGPO can
      backpropagate draw by draw (here: ``constant_memory`` of the estimators gives the same
      memory for either form). No clip is applied (BGPO trains on-policy, μ = 1); ``epsilon``
      only sets the clip metrics. Without per-draw values the ``A < 0`` branch uses the row's
      estimate as its single draw, ``A·exp(x̄)`` — then the bound is exact there.

    ``weights`` ``[B]`` (:func:`rollout_correction_weights` in a sequence mode) multiply each row's
    surrogate, not its KL term.
    """
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if ratio_form not in RATIO_FORMS:
        raise ValueError(f"ratio_form must be one of {RATIO_FORMS}, got {ratio_form!r}")
    if (draw_logps is None) != (old_draw_logps is None):
        raise ValueError("pass both draw_logps and old_draw_logps (per-draw estimates on the same masks) or neither")
    if draw_logps is not None:
        if ratio_form != "bgpo_linear":
            raise ValueError("draw_logps / old_draw_logps are used only by ratio_form='bgpo_linear'")
        if draw_logps.dim() != 2 or draw_logps.shape[0] != logps.shape[0] or old_draw_logps.shape != draw_logps.shape:
            raise ValueError(
                f"draw_logps and old_draw_logps must both be [B={logps.shape[0]}, D], got "
                f"{tuple(draw_logps.shape)} and {tuple(old_draw_logps.shape)}"
            )
    lo, hi = _clip_bounds(epsilon, epsilon_high, delta)
    B = logps.shape[0]
    kept = _keep_rows(keep, B, logps)  # [B]
    m = mask.to(logps.dtype)
    n = sequence_lengths(mask, length).to(logps.dtype)  # [B]
    seq = (logps * m).sum(1)  # [B]
    seq_old = (old_logps * m).sum(1)  # [B]
    A = advantages.to(logps.dtype)  # [B]
    log_ratio = (seq - seq_old) / n  # [B] length-normalised
    ratio = torch.exp(log_ratio)
    if ratio_form == "exp":
        per_seq = _surrogate(ratio, A, lo, hi, delta)  # [B]
    else:
        if draw_logps is not None:
            x_d = (draw_logps - old_draw_logps.to(draw_logps.dtype)) / n[:, None]  # [B, D]
            upper = torch.exp(x_d).mean(1)  # [B] ≥ exp(mean_d x_d)
        else:
            upper = ratio  # [B] one draw: exact
        per_seq = -torch.where(A >= 0, A * (1.0 + log_ratio), A * upper)  # [B]
    if weights is not None:
        if weights.shape != (B,):
            raise ValueError(
                f"weights must be [B={B}] (one per sequence: a sequence_* rollout correction), got {tuple(weights.shape)}"
            )
        per_seq = per_seq * weights.to(per_seq.dtype).detach()
    kl = None
    if beta != 0.0:
        if kl_estimator == "token_k3":
            kl = (k3_kl(ref_logps, logps) * m).sum(1) / m.sum(1).clamp(min=1.0)  # [B] mean over valid tokens
        elif kl_estimator == "sequence_k3":
            kl = k3_kl((ref_logps * m).sum(1) / n, seq / n)  # [B]
        else:
            diff = seq - (ref_logps * m).sum(1)  # [B] Ê_θ − Ê_ref
            kl = 0.5 * diff**2 / n if kl_estimator == "sequence_k2" else 0.5 * (diff / n) ** 2  # [B]
        per_seq = per_seq + beta * kl
    loss = (per_seq * kept).sum() / kept.sum().clamp(min=1.0)
    with torch.no_grad():
        metrics = _ratio_metrics(ratio, log_ratio, A, lo, hi, kept)
        on = kept.bool()
        metrics["ratio/min"] = ratio[on].min() if on.any() else ratio.new_ones(())
        metrics["ratio/max"] = ratio[on].max() if on.any() else ratio.new_ones(())
        metrics["elbo/per_token_mean"] = _masked_mean(seq / n, kept)
        if kl is not None:
            metrics["kl"] = _masked_mean(kl, kept)
    return loss, metrics


# ----------------------------------------------------------------------------- DMPO


def ess(weights: torch.Tensor) -> torch.Tensor:
    """Normalised effective sample size ``1 / (G Σ_g w_g²)`` of each group → ``[n_groups]``.

    ``weights`` is ``[n_groups, G]`` with rows summing to one; the result lies in ``[1/G, 1]``.
    """
    G = weights.shape[-1]
    return 1.0 / (G * (weights**2).sum(-1))


def ess_temperature(
    scores: torch.Tensor,  # [n_groups, G] ℓ + r/α
    target: float,
    *,
    c_max: float = 1.0,
    iters: int = 50,
) -> torch.Tensor:  # [n_groups]
    """PDNS proximal tempering (arXiv 2510.03824): per group the largest ``c ∈ (0, c_max]``
    whose weights ``softmax(c · scores)`` have normalised ESS ``1/(G Σ w²)`` ≥ ``target``
    (bisection; the ESS of a tempered softmax decreases monotonically in ``c`` from 1 at
    ``c = 0``). A group whose ESS at ``c_max`` already reaches the target keeps ``c_max``; any
    other ends within ``c_max · 2^-iters`` of the ``c`` where the ESS equals the target."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the ESS target is a fraction in (0, 1], got {target}")
    s = scores.double()
    top = torch.full(s.shape[:1], float(c_max), dtype=torch.float64, device=s.device)
    ok = ess(torch.softmax(top[:, None] * s, -1)) >= target
    lo = torch.zeros_like(top)
    hi = top.clone()
    for _ in range(iters):
        mid = (lo + hi) / 2
        good = ess(torch.softmax(mid[:, None] * s, -1)) >= target
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid)
    return torch.where(ok, top, lo).to(scores.dtype)


def dmpo_weights(
    log_ratio: torch.Tensor,  # [N] ℓ = log p_ref(y) − log p_v(y), N = n_groups · G, groups contiguous
    rewards: torch.Tensor,  # [N] (any per-group shift is harmless: softmax is shift-invariant)
    *,
    group_size: int,
    alpha: float,
    c: float | torch.Tensor = 1.0,  # scalar or [n_groups]
    baseline: str = "negative_tilt",
    metric_groups: torch.Tensor | None = None,  # [n_groups] bool
) -> tuple[torch.Tensor, Metrics]:
    """DMPO's importance weights over each group of ``G`` rollouts (arXiv 2510.08233).

    ``w = softmax_G(c·(ℓ + r/α))``; baseline ``b``: ``"negative_tilt"`` (default)
    ``softmax_G(c·(ℓ − r/α))``, ``"mean"`` ``1/G``, ``"none"`` 0. Returns ``ŵ = w − b``
    (``[N]``, detached) and metrics of ``w``: ``ess_mean`` / ``ess_min`` (normalised ESS
    ``1/(G Σ w²)``), ``weight_max_mean`` (the largest weight of a group, averaged),
    ``weight_entropy_mean``, ``weight_abs_centered_mean`` (``|ŵ|``) — over the groups of
    ``metric_groups`` (e.g. those whose rewards differ; all groups when ``None`` or none is
    set) — and ``log_ratio/*`` of ℓ over all rows. With a baseline the weights of each group
    sum to zero.

    Scale: the scores are ``r/α``; with rewards in {0, 0.1, 1} and α = 0.04 they are {0, 2.5, 25},
    so in a group with one correct rollout ``w`` puts all but < G·e⁻²² of the mass on it (ESS ≈ 1/G) and
    ``e^2.5 ≈ 12`` times more on a 0.1 than on a 0 — see :func:`ess_temperature`.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    N = log_ratio.shape[0]
    if group_size < 1 or N % group_size:
        raise ValueError(f"{N} rows do not split into groups of {group_size}")
    with torch.no_grad():
        ell = log_ratio.detach().double().view(-1, group_size)  # [n, G]
        r = rewards.detach().double().view(-1, group_size) / alpha  # [n, G]
        cc = torch.as_tensor(c, dtype=torch.float64, device=ell.device)
        cc = cc.view(-1, 1) if cc.dim() else cc
        w = torch.softmax(cc * (ell + r), dim=-1)  # [n, G]
        if baseline == "negative_tilt":
            b = torch.softmax(cc * (ell - r), dim=-1)
        elif baseline == "mean":
            b = torch.full_like(w, 1.0 / group_size)
        else:
            b = torch.zeros_like(w)
        w_hat = (w - b).reshape(N).to(log_ratio.dtype if log_ratio.is_floating_point() else torch.float32)
        sel = slice(None)
        if metric_groups is not None and bool(metric_groups.any()):
            sel = metric_groups.to(device=w.device, dtype=torch.bool)
        ws, bs = w[sel], b[sel]
        e = ess(ws)
        metrics: Metrics = {
            "ess_mean": e.mean().float(),
            "ess_min": e.min().float(),
            "weight_max_mean": ws.max(-1).values.mean().float(),
            "weight_entropy_mean": (-(ws * ws.clamp_min(1e-300).log()).sum(-1)).mean().float(),
            "weight_abs_centered_mean": (ws - bs).abs().mean().float(),
            "log_ratio/mean": ell.mean().float(),
            "log_ratio/std": ell.std(unbiased=False).float(),
            "log_ratio/abs_max": ell.abs().max().float(),
        }
    return w_hat, metrics


def denoising_cross_entropy(
    token_logps: torch.Tensor,  # [B, R, L] log f(y_i | x_masked) at every completion position
    noise: torch.Tensor,  # [B, R, L] bool, True = masked in that replicate
) -> torch.Tensor:  # [B]
    """``(1/R) Σ_r (1/m_r) Σ_{i masked} −log f(y_i | ·)`` per row, ``m_r`` = realised mask count (≥ 1)."""
    nm = noise.to(token_logps.dtype)
    m = nm.sum(-1).clamp(min=1.0)  # [B, R]
    ce = -(token_logps * nm).sum(-1) / m  # [B, R]
    return ce.mean(-1)


def wdce_loss(
    ce: torch.Tensor,  # [B] denoising cross-entropy per row (grad)
    weights: torch.Tensor,  # [B] ŵ, detached
    *,
    group_size: int,
    keep: torch.Tensor | None = None,  # [B]
) -> tuple[torch.Tensor, Metrics]:
    """Weighted denoising cross-entropy ``Σ_b ŵ_b · CE_b``, scaled by ``G / B`` so that a
    (micro-)batch of ``B`` rows gives the per-group mean in expectation (``B`` counts only the
    kept rows when ``keep`` is given; the others get weight 0)."""
    kept = _keep_rows(keep, ce.shape[0], ce)
    w = weights.detach().to(ce.dtype) * kept
    loss = (w * ce).sum() * (group_size / kept.sum().clamp(min=1.0))
    with torch.no_grad():
        metrics: Metrics = {"wdce/ce_mean": ce.mean(), "wdce/weighted_ce": (w * ce).sum()}
    return loss, metrics


__all__ = [
    "BASELINES",
    "KL_ESTIMATORS",
    "LENGTH_MODES",
    "NORMALIZATIONS",
    "clipped_token_loss",
    "denoising_cross_entropy",
    "dmpo_weights",
    "ess",
    "ess_temperature",
    "k3_kl",
    "sequence_clipped_loss",
    "sequence_lengths",
    "wdce_loss",
]


# ----------------------------------------------------------------------------- SPG

SPG_NORMALIZATIONS = ("token", "sequence")


def sandwiched_loss(
    elbo_logps: torch.Tensor,  # [B, L] per-token ELBO contributions, current policy (grad)
    eubo_logps: torch.Tensor | None,  # [B, L] per-token EUBO contributions on the same masks (grad)
    old_elbo: torch.Tensor | None,  # [B, L] rollout policy, same masks (only with clip=True)
    old_eubo: torch.Tensor | None,  # [B, L]
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, L] 1 = token counts
    *,
    mixture: float = 0.5,
    normalization: str = "token",
    clip: bool = False,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    length: str = "padded",
    delta: float | None = None,
    keep: torch.Tensor | None = None,  # [B]
) -> tuple[torch.Tensor, Metrics]:
    """SPG's sandwiched policy-gradient loss (Wang et al., arXiv 2510.09541, Algorithm 1).

    Per row, ``E = Σ_i mask_i · elbo_i`` (a lower bound of ``log π_θ``) and ``U = Σ_i mask_i · eubo_i``
    (an upper bound); the row's bound is ``S = E`` when ``A ≥ 0`` and ``S = ω·U + (1 − ω)·E`` when
    ``A < 0`` (``mixture`` = ω: 1 is "SPG w/ EUBO", 0.5 "SPG w/ Mixture" — the reference scripts' value
    and the paper's best variant —, 0 the ELBO-only policy gradient). Raising the lower bound of the
    good samples and lowering the upper bound of the bad ones keeps the surrogate below the true
    objective on both sides. ``eubo_logps`` may be ``None`` only when ``mixture == 0``.

    ``clip=False`` (default; the paper and its code: no importance ratio, the μ inner steps reuse the
    rollout with the current bound): per row ``−A·S``, aggregated by ``normalization``:
    ``"token"`` (default, the reference code) ``Σ_b −A_b S_b / Σ_b n_b`` with ``n_b`` the row's counted
    tokens (TRL's ``dapo``/``bnpo`` aggregation of the per-token loss ``−A·contrib_i``), or
    ``"sequence"`` ``mean_b −A_b S_b`` (Algorithm 1's ``(1/g) Σ_j A_j L(x_j)``).

    ``clip=True`` (an option beyond the paper, GDPO's / GSPO's form): ``r = exp((S − S_old)/n)`` with ``n``
    the padded or true length (``length``), loss ``mean_b −min(r A, clip(r, 1−ε, 1+ε_high) A)``
    (``delta`` caps the unclipped ratio); ``old_elbo`` / ``old_eubo`` ``None`` means on-policy (the
    current estimates, detached). ``S_old`` uses the same side and mixture as ``S``.

    Rows with ``keep = 0`` count in neither the loss nor its normaliser. Metrics: ``spg/frac_positive``,
    ``spg/frac_negative`` (rows with A > 0 / A < 0), ``spg/elbo_per_token_mean``,
    ``spg/eubo_per_token_mean`` and ``spg/gap_per_token_mean`` (``(U − E)/n``, true length) over the
    kept rows, and with ``clip`` the ratio metrics of the other losses.
    """
    if not 0.0 <= mixture <= 1.0:
        raise ValueError(f"mixture (ω, the EUBO's share for A < 0) must be in [0, 1], got {mixture}")
    if normalization not in SPG_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {SPG_NORMALIZATIONS}, got {normalization!r}")
    if eubo_logps is None and mixture > 0.0:
        raise ValueError(
            f"mixture={mixture} needs eubo_logps (the per-token EUBO on the ELBO's masks); pass it, or set mixture=0"
        )
    B = elbo_logps.shape[0]
    if advantages.shape != (B,):
        raise ValueError(f"advantages must have shape [{B}], got {tuple(advantages.shape)}")
    kept = _keep_rows(keep, B, elbo_logps)  # [B]
    m = mask.to(elbo_logps.dtype)  # [B, L]
    A = advantages.to(elbo_logps.dtype)  # [B]
    neg = A < 0  # [B]

    def side(elbo: torch.Tensor, eubo: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = (elbo * m).sum(1)  # [B]
        u = (eubo * m).sum(1) if eubo is not None else e  # [B]
        return torch.where(neg, mixture * u + (1.0 - mixture) * e, e), e, u

    S, E, U = side(elbo_logps, eubo_logps)  # [B] each
    n_true = m.sum(1).clamp(min=1.0)  # [B]
    metrics: Metrics = {}
    if not clip:
        per_row = -A * S  # [B]
        if normalization == "token":
            loss = (per_row * kept).sum() / (n_true * kept).sum().clamp(min=1.0)
        else:
            loss = (per_row * kept).sum() / kept.sum().clamp(min=1.0)
    else:
        lo, hi = _clip_bounds(epsilon, epsilon_high, delta)
        if old_elbo is None:
            old_elbo = elbo_logps.detach()
            old_eubo = eubo_logps.detach() if eubo_logps is not None else None
        elif old_eubo is None and mixture > 0.0:
            raise ValueError("old_elbo was given without old_eubo; pass both (the same masks) or neither")
        S_old, _, _ = side(old_elbo.to(S.dtype), old_eubo.to(S.dtype) if old_eubo is not None else None)
        n = sequence_lengths(mask, length).to(S.dtype)  # [B]
        log_ratio = (S - S_old) / n  # [B]
        ratio = torch.exp(log_ratio)
        per_row = _surrogate(ratio, A, lo, hi, delta)  # [B]
        loss = (per_row * kept).sum() / kept.sum().clamp(min=1.0)
        with torch.no_grad():
            metrics.update(_ratio_metrics(ratio, log_ratio, A, lo, hi, kept))
    with torch.no_grad():
        metrics["spg/frac_positive"] = _masked_mean((A > 0).to(m.dtype), kept)
        metrics["spg/frac_negative"] = _masked_mean(neg.to(m.dtype), kept)
        metrics["spg/elbo_per_token_mean"] = _masked_mean(E / n_true, kept)
        if eubo_logps is not None:
            metrics["spg/eubo_per_token_mean"] = _masked_mean(U / n_true, kept)
            metrics["spg/gap_per_token_mean"] = _masked_mean((U - E) / n_true, kept)
    return loss, metrics


__all__ += ["SPG_NORMALIZATIONS", "sandwiched_loss"]
