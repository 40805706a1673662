"""Hand-computed examples for the pure loss math in ``dlm_trl/losses.py``."""

from __future__ import annotations

import math

import pytest
import torch

from dlm_trl.losses import (
    NORMALIZATIONS,
    clipped_token_loss,
    denoising_cross_entropy,
    dmpo_weights,
    ess,
    ess_temperature,
    k3_kl,
    sequence_clipped_loss,
    sequence_lengths,
    wdce_loss,
)

LOG = math.log


def token_example():
    # Row 0 (A = +1): ratios 1.5 and 0.5.  Row 1 (A = −1): ratios 1 and 2 (second token masked out).
    old = torch.zeros(2, 2)
    logps = torch.tensor([[LOG(1.5), LOG(0.5)], [0.0, LOG(2.0)]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    return logps, old, adv, mask


def test_clipped_token_loss_by_hand():
    logps, old, adv, mask = token_example()
    # ε = 0.2 → clip to [0.8, 1.2].
    # row 0, tok 0: −min(1.5·1, 1.2·1) = −1.2 (clipped: no gradient)
    # row 0, tok 1: −min(0.5·1, 0.8·1) = −0.5 (unclipped: d/dlogp = −ratio·A = −0.5)
    # row 1, tok 0: −min(1·(−1), 1·(−1)) = +1  (d/dlogp = −ratio·A = +1)
    # row 1, tok 1: masked out
    loss, metrics = clipped_token_loss(logps, old, adv, mask, epsilon=0.2, normalization="token")
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3)
    loss.backward()
    expected_grad = torch.tensor([[0.0, -0.5 / 3], [1.0 / 3, 0.0]])
    assert torch.allclose(logps.grad, expected_grad, atol=1e-6)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)  # row 0 tok 0
    assert metrics["clip_ratio/low_mean"].item() == 0.0
    assert metrics["ratio/mean"].item() == pytest.approx((1.5 + 0.5 + 1.0) / 3)

    logps, old, adv, mask = token_example()
    seq, _ = clipped_token_loss(logps, old, adv, mask, epsilon=0.2, normalization="sequence")
    assert seq.item() == pytest.approx(((-1.2 - 0.5) / 2 + 1.0 / 1) / 2)
    const, _ = clipped_token_loss(logps, old, adv, mask, epsilon=0.2, normalization="constant", max_length=2)
    assert const.item() == pytest.approx((-1.2 - 0.5 + 1.0) / (2 * 2))
    # asymmetric clip: ε_high = 1.0 → row 0 tok 0 keeps 1.5
    asym, _ = clipped_token_loss(logps, old, adv, mask, epsilon=0.2, epsilon_high=1.0)
    assert asym.item() == pytest.approx((-1.5 - 0.5 + 1.0) / 3)


def test_k3_kl_and_beta_term():
    # ref − θ = log 2 → 2 − log 2 − 1 ≈ 0.30685; ref = θ → 0
    assert k3_kl(torch.tensor(LOG(2.0)), torch.tensor(0.0)).item() == pytest.approx(1.0 - LOG(2.0))
    assert k3_kl(torch.tensor(0.3), torch.tensor(0.3)).item() == 0.0
    logps = torch.zeros(1, 2)
    ref = torch.tensor([[LOG(2.0), 0.0]])
    loss, metrics = clipped_token_loss(
        logps, logps, torch.zeros(1), torch.ones(1, 2), epsilon=0.2, ref_logps=ref, beta=0.5
    )
    assert loss.item() == pytest.approx(0.5 * (1.0 - LOG(2.0)) / 2)
    assert metrics["kl"].item() == pytest.approx((1.0 - LOG(2.0)) / 2)
    with pytest.raises(ValueError, match="ref_logps"):
        clipped_token_loss(logps, logps, torch.zeros(1), torch.ones(1, 2), epsilon=0.2, beta=0.1)


def test_sequence_clipped_loss_by_hand():
    a, b = LOG(1.5), LOG(0.25)
    # row 0: 4 valid tokens, each +a → Ê − Ê_old = 4a; padded ratio exp(4a/4) = 1.5
    # row 1: 2 valid tokens, each +b (the 7s are masked out) → 2b; padded exp(2b/4) = 0.5, true exp(2b/2) = 0.25
    logps = torch.tensor([[a, a, a, a], [b, b, 7.0, 7.0]])
    old = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv = torch.tensor([1.0, 1.0])
    loss, metrics = sequence_clipped_loss(logps, old, adv, mask, epsilon=0.2, length="padded")
    # row 0: −min(1.5, 1.2) = −1.2; row 1: −min(0.5, 0.8) = −0.5
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert metrics["ratio/max"].item() == pytest.approx(1.5)
    assert metrics["ratio/min"].item() == pytest.approx(0.5)
    loss, _ = sequence_clipped_loss(logps, old, adv, mask, epsilon=0.2, length="true")
    assert loss.item() == pytest.approx((-1.2 - 0.25) / 2)
    # identical estimates → ratio exactly 1, loss −mean(A)
    loss, metrics = sequence_clipped_loss(logps, logps, adv, mask, epsilon=0.2)
    assert metrics["ratio/mean"].item() == 1.0 and loss.item() == -1.0
    assert sequence_lengths(mask, "true").tolist() == [4.0, 2.0]
    assert sequence_lengths(mask, "padded").tolist() == [4.0, 4.0]


def test_sequence_loss_gradient_is_per_token_mean():
    # Unclipped, A = 1: d(−r)/dlogp_i = −r / L for every valid token i.
    logps = torch.zeros(1, 4, requires_grad=True)
    loss, _ = sequence_clipped_loss(logps, torch.zeros(1, 4), torch.ones(1), torch.ones(1, 4), epsilon=0.2)
    loss.backward()
    assert torch.allclose(logps.grad, torch.full((1, 4), -0.25))


def test_dmpo_weights_two_rollouts_by_hand():
    # ℓ = 0, r = (1, 0), α = 0.5 → scores (2, 0): w = (e²/(e²+1), 1/(e²+1)) = (0.8808, 0.1192)
    # negative tilt b = softmax(−2, 0) = (0.1192, 0.8808) → ŵ = ±(e²−1)/(e²+1) = ±tanh(1)
    ell, r = torch.zeros(2), torch.tensor([1.0, 0.0])
    w, metrics = dmpo_weights(ell, r, group_size=2, alpha=0.5)
    assert torch.allclose(w, torch.tensor([math.tanh(1.0), -math.tanh(1.0)]), atol=1e-6)
    w_mean, _ = dmpo_weights(ell, r, group_size=2, alpha=0.5, baseline="mean")
    p = math.exp(2) / (math.exp(2) + 1)
    assert torch.allclose(w_mean, torch.tensor([p - 0.5, 0.5 - p]), atol=1e-6)
    w_none, _ = dmpo_weights(ell, r, group_size=2, alpha=0.5, baseline="none")
    assert torch.allclose(w_none, torch.tensor([p, 1 - p]), atol=1e-6)
    # ESS of (p, 1−p): 1 / (2 (p² + (1−p)²))
    assert metrics["ess_mean"].item() == pytest.approx(1.0 / (2 * (p**2 + (1 - p) ** 2)), rel=1e-5)
    assert metrics["weight_max_mean"].item() == pytest.approx(p, rel=1e-5)


def test_dmpo_weights_three_rollouts_with_log_ratio_and_tempering():
    ell = torch.tensor([0.1, -0.2, 0.0])
    r = torch.tensor([1.0, 0.0, 0.5])
    c, alpha = 0.5, 1.0
    # scores ℓ + r/α = (1.1, −0.2, 0.5); tilted-down ℓ − r/α = (−0.9, −0.2, −0.5), both × c
    up = [math.exp(c * s) for s in (1.1, -0.2, 0.5)]
    down = [math.exp(c * s) for s in (-0.9, -0.2, -0.5)]
    expected = [u / sum(up) - d / sum(down) for u, d in zip(up, down, strict=True)]
    w, _ = dmpo_weights(ell, r, group_size=3, alpha=alpha, c=c)
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6)
    assert abs(w.sum().item()) < 1e-6


def test_dmpo_weights_sum_to_zero_per_group_and_shift_invariance():
    g = torch.Generator().manual_seed(0)
    ell = torch.randn(12, generator=g)
    r = torch.rand(12, generator=g)
    w, _ = dmpo_weights(ell, r, group_size=4, alpha=0.04, c=0.3)
    assert torch.allclose(w.view(3, 4).sum(1), torch.zeros(3), atol=1e-6)
    shifted = r + torch.tensor([5.0, -3.0, 1.0]).repeat_interleave(4)  # per-group shift (advantages vs rewards)
    w2, _ = dmpo_weights(ell, shifted, group_size=4, alpha=0.04, c=0.3)
    assert torch.allclose(w, w2, atol=1e-6)
    with pytest.raises(ValueError, match="groups of 5"):
        dmpo_weights(ell, r, group_size=5, alpha=1.0)


def test_ess_and_tempering():
    assert ess(torch.full((1, 4), 0.25)).item() == pytest.approx(1.0)
    assert ess(torch.tensor([[1.0, 0.0, 0.0, 0.0]])).item() == pytest.approx(0.25)
    scores = torch.tensor([[10.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]])
    c = ess_temperature(scores, 0.7, c_max=1.0)
    # group 1 already has ESS ≥ 0.7 at c = 1 → c = 1; group 0 is tempered down to ESS = 0.7
    assert c[1].item() == 1.0
    assert 0.0 < c[0].item() < 1.0
    assert ess(torch.softmax(c[0] * scores[0], -1)[None]).item() == pytest.approx(0.7, abs=1e-4)


def test_denoising_cross_entropy_and_wdce_by_hand():
    logps = torch.tensor([[[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]]])  # [1, 3, 3]
    noise = torch.tensor([[[1, 1, 0], [0, 0, 1], [0, 0, 0]]], dtype=torch.bool)
    # replicate 0: (1 + 2)/2 = 1.5; replicate 1: 3/1 = 3; replicate 2: nothing masked → 0 (m clamped to 1)
    ce = denoising_cross_entropy(logps, noise)
    assert ce.tolist() == [pytest.approx((1.5 + 3.0 + 0.0) / 3)]
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    w = torch.tensor([0.5, -0.5, 0.25, -0.25])
    loss, metrics = wdce_loss(ce, w, group_size=2)
    # Σ w·ce = 0.5 − 1 + 0.75 − 1 = −0.75, × G/B = 2/4
    assert loss.item() == pytest.approx(-0.375)
    loss.backward()
    assert torch.allclose(ce.grad, w * 0.5)
    assert metrics["wdce/ce_mean"].item() == pytest.approx(2.5)


# ----------------------------------------------------------------------------- options of issue 14


def _sequence_rows(log_ratios, L=4):
    """Rows whose length-normalised log-ratio (padded length L) is each of ``log_ratios``; old = 0."""
    x = torch.tensor(log_ratios, dtype=torch.float64)[:, None].expand(-1, L).clone().requires_grad_(True)
    return x, torch.zeros_like(x), torch.ones(len(log_ratios), L)


def test_sequence_clip_binds_at_sequence_epsilon_and_gradient_vanishes_outside():
    """GDPO's ratio r = exp(Δ/L) clipped to [1 − ε, 1 + ε] with ε = 3e-3 (GDPOConfig.sequence_epsilon):
    a row just outside the range on the side its advantage pushes gets zero gradient, one just inside
    gets −A·r/L per token; with TRL's ε = 0.2 the same rows are all unclipped."""
    eps, L = 3e-3, 4
    hi, lo = math.log1p(eps), math.log1p(-eps)
    # A > 0: just above / just below the upper bound; A < 0: just below / just above the lower bound
    logps, old, mask = _sequence_rows([hi + 1e-4, hi - 1e-4, lo - 1e-4, lo + 1e-4], L)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    loss, metrics = sequence_clipped_loss(logps, old, adv, mask, epsilon=eps)
    loss.backward()
    r = torch.exp(logps.detach()[:, 0])
    expected = torch.stack([torch.zeros(()), -r[1] / L / 4, torch.zeros(()), r[3] / L / 4])  # ÷ 4 rows (mean)
    assert torch.allclose(logps.grad, expected[:, None].expand(-1, L), atol=1e-12)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 4)
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 4)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(2 / 4)
    assert metrics["log_ratio/abs_max"].item() == pytest.approx(-lo + 1e-4)
    assert metrics["log_ratio/abs_mean"].item() == pytest.approx((2 * hi - 2 * lo) / 4)
    # The clipped rows still contribute their (constant) clipped value to the loss.
    assert loss.item() == pytest.approx((-(1 + eps) - r[1].item() + (1 - eps) + r[3].item()) / 4)
    # TRL's ε = 0.2 does not bind on these per-token-mean ratios: every row keeps its gradient.
    logps, old, mask = _sequence_rows([hi + 1e-4, hi - 1e-4, lo - 1e-4, lo + 1e-4], L)
    loss, metrics = sequence_clipped_loss(logps, old, adv, mask, epsilon=0.2)
    loss.backward()
    assert (logps.grad != 0).all() and metrics["clip_ratio/region_mean"].item() == 0.0


def test_delta_caps_the_unclipped_ratio():
    """Two-sided clipping: with A < 0 a runaway ratio's loss is capped at δ·|A| and its gradient is 0."""
    logps = torch.tensor([[LOG(5.0)], [LOG(1.5)]], requires_grad=True)
    old, adv, mask = torch.zeros(2, 1), torch.tensor([-1.0, -1.0]), torch.ones(2, 1)
    loss, _ = clipped_token_loss(logps, old, adv, mask, epsilon=0.2, delta=3.0)
    assert loss.item() == pytest.approx((3.0 + 1.5) / 2)  # row 0 capped at δ = 3, row 1 unclipped
    loss.backward()
    assert logps.grad[0, 0].item() == 0.0 and logps.grad[1, 0].item() == pytest.approx(1.5 / 2)
    seq, _ = sequence_clipped_loss(logps.detach(), old, adv, mask, epsilon=0.2, delta=3.0)
    assert seq.item() == pytest.approx((3.0 + 1.5) / 2)
    with pytest.raises(ValueError, match="delta"):
        clipped_token_loss(logps, old, adv, mask, epsilon=0.2, delta=1.1)


def test_token_k3_and_sequence_k3_on_known_per_token_differences():
    """δ_i = ref_i − θ_i = ±d alternating: the mean difference is 0, so the sequence k3 is 0 and gives
    no gradient, while the per-token k3 is mean(k3(±d)) ≈ d²/2 and pulls every token toward the
    reference. With δ_i = d for every token the two agree."""
    d = 0.5
    ref = torch.tensor([[d, -d, d, -d]])
    logps = torch.zeros(1, 4, requires_grad=True)
    adv, mask = torch.zeros(1), torch.ones(1, 4)
    tok, m_tok = sequence_clipped_loss(logps, logps.detach(), adv, mask, epsilon=0.2, ref_logps=ref, beta=1.0,
                                       kl_estimator="token_k3")
    expected = ((math.exp(d) - d - 1) + (math.exp(-d) + d - 1)) / 2
    assert tok.item() == pytest.approx(expected) and m_tok["kl"].item() == pytest.approx(expected)
    tok.backward()
    # d k3(ref − θ)/dθ = 1 − exp(ref − θ): toward the reference (negative where ref > θ), / 4 tokens
    assert torch.allclose(logps.grad, (1 - torch.exp(ref)) / 4)
    logps.grad = None
    seq, m_seq = sequence_clipped_loss(logps, logps.detach(), adv, mask, epsilon=0.2, ref_logps=ref, beta=1.0,
                                       kl_estimator="sequence_k3")
    seq.backward()
    assert seq.item() == 0.0 and m_seq["kl"].item() == 0.0 and torch.equal(logps.grad, torch.zeros(1, 4))
    same = torch.full((1, 4), d)
    a, _ = sequence_clipped_loss(torch.zeros(1, 4), torch.zeros(1, 4), adv, mask, epsilon=0.2, ref_logps=same,
                                 beta=1.0, kl_estimator="token_k3")
    b, _ = sequence_clipped_loss(torch.zeros(1, 4), torch.zeros(1, 4), adv, mask, epsilon=0.2, ref_logps=same,
                                 beta=1.0, kl_estimator="sequence_k3")
    assert a.item() == pytest.approx(b.item()) == pytest.approx(math.exp(d) - d - 1)
    with pytest.raises(ValueError, match="kl_estimator"):
        sequence_clipped_loss(logps, logps, adv, mask, epsilon=0.2, ref_logps=ref, beta=1.0, kl_estimator="k2")


def test_kl_ratio_correction_weights_k3_by_the_token_ratio():
    logps = torch.tensor([[LOG(2.0)]], requires_grad=True)
    ref = torch.zeros(1, 1)
    plain, _ = clipped_token_loss(logps, torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), epsilon=0.2,
                                  ref_logps=ref, beta=1.0)
    corrected, _ = clipped_token_loss(logps, torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), epsilon=0.2,
                                      ref_logps=ref, beta=1.0, kl_ratio_correction=True)
    k3 = 0.5 + LOG(2.0) - 1.0
    assert plain.item() == pytest.approx(k3) and corrected.item() == pytest.approx(2.0 * k3)


def test_keep_drops_rows_from_the_loss_and_its_normaliser():
    """``keep`` = dynamic sampling: the loss equals the loss of the kept rows alone, for every loss."""
    g = torch.Generator().manual_seed(0)
    logps, old = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    ref, adv = torch.randn(4, 3, generator=g), torch.tensor([0.0, 1.0, 0.0, -0.5])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    keep = torch.tensor([False, True, False, True])
    k = keep.nonzero().flatten()
    for norm in NORMALIZATIONS:
        kw = dict(epsilon=0.2, ref_logps=ref, beta=0.1, normalization=norm, max_length=3)
        a, ma = clipped_token_loss(logps, old, adv, mask, keep=keep, **kw)
        kw["ref_logps"] = ref[k]
        b, mb = clipped_token_loss(logps[k], old[k], adv[k], mask[k], **kw)
        assert a.item() == pytest.approx(b.item()), norm
        assert ma["clip_ratio/region_mean"].item() == pytest.approx(mb["clip_ratio/region_mean"].item())
    a, _ = sequence_clipped_loss(logps, old, adv, mask, epsilon=0.2, ref_logps=ref, beta=0.1, keep=keep)
    b, _ = sequence_clipped_loss(logps[k], old[k], adv[k], mask[k], epsilon=0.2, ref_logps=ref[k], beta=0.1)
    assert a.item() == pytest.approx(b.item())
    ce, w = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.3, 0.5, -0.3, -0.5])
    a, _ = wdce_loss(ce, w, group_size=2, keep=keep)
    b, _ = wdce_loss(ce[k], w[k], group_size=2)
    assert a.item() == pytest.approx(b.item()) == pytest.approx((1.0 - 2.0) * 2 / 2)
    nothing, _ = sequence_clipped_loss(logps, old, adv, mask, epsilon=0.2, keep=torch.zeros(4, dtype=torch.bool))
    assert nothing.item() == 0.0  # a micro-batch of flat groups only: no loss, no NaN


def test_ess_tempering_reaches_the_target_with_countdown_rewards_and_alpha_0_04():
    """Rewards in {0, 0.1, 1} with α = 0.04 (scores {0, 2.5, 25}): untempered, a group's weight sits on
    one or two rollouts; tempered to target 0.7 (DMPOConfig's default) every such group has ESS 0.7
    within 1e-6, and a flat group keeps c = 1 (ESS 1)."""
    G, alpha, target = 8, 0.04, 0.7
    rewards = torch.tensor([
        [1.0, 0, 0, 0, 0, 0, 0, 0],
        [1.0, 1.0, 0.1, 0, 0, 0, 0, 0],
        [0.1, 0.1, 0.1, 0, 0, 0, 0, 0],
        [1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        [0.1] * 8,
    ])
    scores = rewards / alpha  # ℓ = 0 at the first rollout
    untempered = ess(torch.softmax(scores.double(), -1))
    assert untempered[0] < 1.01 / G and untempered[1] < 2.01 / G  # one / two rollouts hold the weight
    c = ess_temperature(scores, target, c_max=1.0)
    tempered = ess(torch.softmax(c.double()[:, None] * scores.double(), -1))
    assert torch.allclose(tempered[:4], torch.full((4,), target, dtype=torch.float64), atol=1e-6)
    assert c[4].item() == 1.0 and tempered[4].item() == pytest.approx(1.0)
    # Groups with a correct rollout need c ≈ 0.05 (an effective α ≈ 0.8); 0.1-vs-0 groups c ≈ 0.5.
    assert (c[[0, 1, 3]] < 0.1).all() and 0.3 < c[2].item() < 0.8
    w, metrics = dmpo_weights(torch.zeros(G * 5), rewards.flatten(), group_size=G, alpha=alpha, c=c,
                              metric_groups=torch.tensor([True, True, True, True, False]))
    assert metrics["ess_mean"].item() == pytest.approx(target, abs=1e-6)
    assert torch.allclose(w.view(5, G).sum(1), torch.zeros(5), atol=1e-6)
