"""MDNS / PDNS neural samplers on the Ising / Potts model (``dlm_trl.neural_samplers``).

Exact statistics against brute-force loops and known partition functions, energies on hand-made
configurations, the Wolff reference against exact 4 × 4 statistics, the sampler's trajectory
log-probability against the conditionals it used, the exact-conditionals oracle (every log-weight equals
log Z, ESS = 1), the WDCE / PDNS weights, and a few training steps lowering the exact KL on 2 × 2.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dlm_trl.losses import ess
from dlm_trl.neural_samplers.ising import (
    enumerate_states,
    exact_ising,
    exact_log_probs,
    exact_potts,
    ising_energy,
    potts_energy,
    tokens_to_spins,
    wolff_ising,
)
from dlm_trl.neural_samplers.mdns import (
    SpinTarget,
    TrainConfig,
    evaluate,
    exact_model_log_probs,
    importance_weights,
    kl,
    log_weights,
    log_z_estimate,
    make_model,
    row_generators,
    sample,
    train,
    trajectory_log_prob,
)
from dlm_trl.testing.joint import JointTableDLM

# ------------------------------------------------------------------------------------------- brute force


def _loop_energy(s: list[list[int]], L: int) -> float:
    """Ising energy by explicit loops over right and down neighbours (periodic)."""
    U = 0
    for r in range(L):
        for c in range(L):
            U -= s[r][c] * (s[r][(c + 1) % L] + s[(r + 1) % L][c])
    return U


def _brute_stats(L: int, beta: float) -> dict:
    n = L * L
    Z = E = A = C = 0.0
    pmf = np.zeros(n + 1)
    for flat in itertools.product((-1, 1), repeat=n):
        s = [list(flat[r * L : (r + 1) * L]) for r in range(L)]
        U = _loop_energy(s, L)
        w = math.exp(-beta * U)
        M = sum(flat)
        Z += w
        E += w * U / n
        A += w * abs(M) / n
        C += w * (-U) / (2 * n)
        pmf[(M + n) // 2] += w
    return {"log_z": math.log(Z), "energy": E / Z, "abs_mag": A / Z, "nn_corr": C / Z, "pmf": pmf / Z}


@pytest.mark.parametrize("L,beta", [(2, 0.3), (2, 0.7), (3, 0.25), (3, 0.44)])
def test_exact_statistics_match_brute_force(L, beta):
    ex = exact_ising(L, beta)
    bf = _brute_stats(L, beta)
    assert ex.log_z == pytest.approx(bf["log_z"], abs=1e-10)
    assert ex.energy == pytest.approx(bf["energy"], abs=1e-10)
    assert ex.abs_mag == pytest.approx(bf["abs_mag"], abs=1e-10)
    assert ex.nn_corr == pytest.approx(bf["nn_corr"], abs=1e-10)
    np.testing.assert_allclose(ex.mag_pmf, bf["pmf"], atol=1e-12)
    assert ex.mag_pmf.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(ex.mag_pmf, ex.mag_pmf[::-1], atol=1e-12)  # Z2 symmetry


@pytest.mark.parametrize("beta", [0.1, 0.4407, 1.0])
def test_2x2_partition_function(beta):
    # periodic 2x2 = a 4-cycle with coupling 2: energies -8 (2 states), 0 (12), +8 (2)
    assert exact_ising(2, beta).log_z == pytest.approx(
        math.log(2 * math.exp(8 * beta) + 12 + 2 * math.exp(-8 * beta))
    )
    K = 2 * beta  # transfer-matrix form of the ring: Z = (2 cosh K)^4 + (2 sinh K)^4
    assert exact_ising(2, beta).log_z == pytest.approx(
        math.log((2 * math.cosh(K)) ** 4 + (2 * math.sinh(K)) ** 4)
    )


def test_beta_zero_and_known_4x4_values():
    ex = exact_ising(4, 0.0)
    assert ex.log_z == pytest.approx(16 * math.log(2))
    assert ex.energy == pytest.approx(0.0, abs=1e-12) and ex.nn_corr == pytest.approx(0.0, abs=1e-12)
    # binomial magnetisation at infinite temperature
    np.testing.assert_allclose(ex.mag_pmf, [math.comb(16, k) / 2**16 for k in range(17)], atol=1e-12)


def test_energy_hand_made_configurations():
    for L in (2, 3, 4, 5):
        n = L * L
        up = torch.ones(1, L, L, dtype=torch.long)
        assert float(ising_energy(up)) == -2 * n
        one_flip = up.clone()
        one_flip[0, 0, 0] = -1
        if L >= 3:
            assert float(ising_energy(one_flip)) == -2 * n + 8  # four broken bonds
        assert float(ising_energy(one_flip)) == _loop_energy(one_flip[0].tolist(), L)
    checker = torch.tensor([[(-1) ** (r + c) for c in range(4)] for r in range(4)])[None]
    assert float(ising_energy(checker)) == 32.0
    stripes = torch.tensor([[1 if r % 2 else -1 for _ in range(4)] for r in range(4)])[None]  # rows alternate
    assert float(ising_energy(stripes)) == 0.0  # horizontal bonds satisfied, vertical broken
    g = torch.Generator().manual_seed(0)
    s = 2 * torch.randint(0, 2, (50, 4, 4), generator=g) - 1
    assert torch.equal(ising_energy(s), ising_energy(-s))  # global flip
    assert torch.equal(ising_energy(s.reshape(50, 16), 4), ising_energy(s))  # flat input
    for i in range(5):
        assert float(ising_energy(s[i : i + 1])) == _loop_energy(s[i].tolist(), 4)
    # Potts: q = 2 Potts is Ising with U_ising = 2 U_potts + 2N
    tok = (s + 1) // 2
    assert torch.equal(ising_energy(s), 2 * potts_energy(tok) + 32)
    assert float(potts_energy(torch.full((1, 3, 3), 2))) == -18.0
    three = torch.randint(0, 3, (20, 3, 3), generator=g)
    assert torch.equal(potts_energy(three), potts_energy((three + 1) % 3))  # colour permutation


def test_exact_potts_matches_brute_force():
    q, L, beta = 3, 2, 0.6
    Z = E = 0.0
    for flat in itertools.product(range(q), repeat=L * L):
        s = [list(flat[r * L : (r + 1) * L]) for r in range(L)]
        U = -sum(
            (s[r][c] == s[r][(c + 1) % L]) + (s[r][c] == s[(r + 1) % L][c])
            for r in range(L)
            for c in range(L)
        )
        Z += math.exp(-beta * U)
        E += math.exp(-beta * U) * U / (L * L)
    ex = exact_potts(L, q, beta)
    assert ex["log_z"] == pytest.approx(math.log(Z), abs=1e-10)
    assert ex["energy_per_site"] == pytest.approx(E / Z, abs=1e-10)


@pytest.mark.parametrize("beta", [0.3, 0.44])
def test_wolff_agrees_with_exact_4x4(beta):
    ex = exact_ising(4, beta)
    mc = wolff_ising(4, beta, n_measure=20_000, burn_in=500, thin=2, seed=7)
    for attr in ("energy", "abs_mag", "nn_corr"):
        se = getattr(mc, attr + "_se")
        assert 0 < se < 0.02
        assert abs(getattr(mc, attr) - getattr(ex, attr)) < 4 * se, attr
    assert 0.5 * np.abs(mc.mag_pmf - ex.mag_pmf).sum() < 0.03
    again = wolff_ising(4, beta, n_measure=200, burn_in=10, seed=7)
    assert again.energy == wolff_ising(4, beta, n_measure=200, burn_in=10, seed=7).energy  # seeded


def test_wolff_2x2_double_bonds():
    ex = exact_ising(2, 0.4)
    mc = wolff_ising(2, 0.4, n_measure=20_000, burn_in=200, seed=3)
    assert abs(mc.energy - ex.energy) < 4 * mc.energy_se


# ------------------------------------------------------------------------------------------- sampler


def _oracle(L: int, beta: float, q: int = 2) -> JointTableDLM:
    """JointTableDLM whose joint is π ∝ exp(−βU): its logits are the exact conditionals of π."""
    m = JointTableDLM(q, L * L)
    target = SpinTarget(L, beta, q)
    with torch.no_grad():
        m.log_joint.copy_(target.log_unnormalized(enumerate_states(L * L, q)))
    return m


def test_trajectory_log_prob_is_the_product_of_the_conditionals_used():
    L, q = 3, 2
    model = make_model(L, q, hidden_size=16, num_layers=1, num_heads=2, seed=3)
    with torch.no_grad():  # make the conditionals far from uniform
        for p in model.parameters():
            p.mul_(5.0)
    tr = sample(model, L * L, q, row_generators(0, 1, 0, 8))
    assert tr.tokens.max() < q and sorted(tr.order[0].tolist()) == list(range(9))
    B = tr.tokens.shape[0]
    for b in range(B):  # replay each row's trajectory by hand
        x = torch.full((1, 9), q)
        total = 0.0
        for k in range(9):
            pos, v = int(tr.order[b, k]), int(tr.tokens[b, tr.order[b, k]])
            with torch.no_grad():
                logits = model(x).logits[0, pos, :q].double()
            lp = float(torch.log_softmax(logits, -1)[v])
            assert tr.step_log_probs[b, k].item() == pytest.approx(lp, abs=1e-6)
            total += lp
            x[0, pos] = v
        assert tr.log_q[b].item() == pytest.approx(total, abs=1e-6)
    assert torch.allclose(trajectory_log_prob(model, tr.tokens, tr.order, q), tr.log_q, atol=1e-9)
    assert tr.step_log_probs.std() > 0.2  # the check above is not vacuous


def test_rows_depend_only_on_their_own_generator():
    model = make_model(2, hidden_size=16, num_layers=1, num_heads=2)
    a = sample(model, 4, 2, row_generators(5, 1, 3, 10))
    b = sample(model, 4, 2, row_generators(5, 1, 3, range(7, 10)))
    assert torch.equal(a.tokens[7:], b.tokens) and torch.equal(a.order[7:], b.order)


@pytest.mark.parametrize("L,beta,q", [(2, 0.4, 2), (3, 0.44, 2), (3, 0.8, 2), (2, 0.7, 3)])
def test_exact_conditionals_give_log_z_everywhere(L, beta, q):
    oracle = _oracle(L, beta, q)
    target = SpinTarget(L, beta, q)
    tr = sample(oracle, L * L, q, row_generators(1, 1, 0, 64))
    lw = log_weights(target, tr)
    log_z = exact_ising(L, beta).log_z if q == 2 else exact_potts(L, q, beta)["log_z"]
    assert torch.allclose(lw, torch.full_like(lw, log_z), atol=2e-4)  # float32 logits of the oracle
    w, c, m = importance_weights(lw)
    assert m["ess_full"] == pytest.approx(1.0, abs=1e-6) and m["ess"] == pytest.approx(1.0, abs=1e-6)
    est, se = log_z_estimate(lw)
    assert est == pytest.approx(log_z, abs=2e-4) and se < 1e-3
    # the sampler's order-averaged law is π itself
    if L * L <= 4:
        assert torch.allclose(exact_model_log_probs(oracle, L * L, q), exact_log_probs(L, beta, q), atol=1e-5)


def test_sampler_frequencies_match_its_exact_law():
    """Sample frequencies of a random model on 2x2 agree with the DP's exact order-averaged law."""
    model = make_model(2, hidden_size=16, num_layers=1, num_heads=2, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    lq = exact_model_log_probs(model, 4, 2)
    assert float(lq.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    assert float(lq.exp().max()) > 0.15  # far from uniform (1/16)
    tr = sample(model, 4, 2, row_generators(2, 1, 0, 6000))
    idx = (tr.tokens * torch.tensor([8, 4, 2, 1])).sum(1)
    freq = torch.bincount(idx, minlength=16).double() / 6000
    assert 0.5 * float((freq - lq.exp()).abs().sum()) < 0.04


def test_oracle_sampler_matches_pi():
    oracle = _oracle(2, 0.3)
    tr = sample(oracle, 4, 2, row_generators(4, 1, 0, 6000))
    idx = (tr.tokens * torch.tensor([8, 4, 2, 1])).sum(1)
    freq = torch.bincount(idx, minlength=16).double() / 6000
    assert 0.5 * float((freq - exact_log_probs(2, 0.3).exp()).abs().sum()) < 0.04


# ------------------------------------------------------------------------------------------- weights


def test_wdce_weights_sum_to_one_and_pdns_hits_target_ess():
    g = torch.Generator().manual_seed(0)
    lw = 3.0 * torch.randn(256, generator=g, dtype=torch.float64) + 10.0
    w, c, m = importance_weights(lw)  # MDNS
    assert c == 1.0 and float(w.sum()) == pytest.approx(1.0, abs=1e-12) and bool((w >= 0).all())
    assert torch.allclose(w, torch.softmax(lw, 0))
    assert m["ess"] == pytest.approx(float(ess(w[None])[0])) and m["ess"] < 0.2
    for target in (0.3, 0.5, 0.9):
        wt, ct, mt = importance_weights(lw, target_ess=target)  # PDNS adaptive proximal step
        assert float(wt.sum()) == pytest.approx(1.0, abs=1e-12)
        assert 0 < ct < 1
        assert mt["ess"] == pytest.approx(target, abs=1e-6)
        assert torch.allclose(wt, torch.softmax(ct * lw, 0))
    # already above the target: c stays at its cap
    flat = 0.01 * lw
    _, c2, m2 = importance_weights(flat, target_ess=0.5)
    assert c2 == 1.0 and m2["ess"] >= 0.5
    _, c3, _ = importance_weights(lw, c=0.25)  # fixed proximal exponent
    assert c3 == 0.25


def test_wdce_loss_reuses_the_shared_losses():
    """The training loss equals Σ_b w_b · CE_b (dlm_trl.losses.wdce_loss with group = batch)."""
    from dlm_trl.losses import wdce_loss
    from dlm_trl.neural_samplers.mdns import denoising_ce

    model = make_model(2, hidden_size=16, num_layers=1, num_heads=2)
    tr = sample(model, 4, 2, row_generators(0, 1, 0, 16))
    w = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(1)), 0)
    ce = denoising_ce(model, tr.tokens, 2, row_generators(0, 2, 0, 16), replicates=3)
    again = denoising_ce(model, tr.tokens, 2, row_generators(0, 2, 0, 16), replicates=3)
    assert torch.equal(ce, again)  # masks are seeded per row
    loss, _ = wdce_loss(ce, w, group_size=16)
    assert float(loss.detach()) == pytest.approx(float((w * ce).sum().detach()), rel=1e-6)
    # near-uniform untrained model: CE ≈ log 2 per masked site
    assert float(ce.detach().mean()) == pytest.approx(math.log(2), abs=0.05)


# ------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("method", ["mdns", "pdns"])
def test_a_few_training_steps_lower_the_exact_kl_on_2x2(method):
    torch.set_num_threads(1)
    L, beta = 2, 0.35
    target = SpinTarget(L, beta)
    model = make_model(L, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    lp = exact_log_probs(L, beta)
    before = kl(lp, exact_model_log_probs(model, 4, 2))
    cfg = TrainConfig(method=method, steps=50, batch=64, lr=3e-3, replicates=2, seed=0, pdns_target_ess=0.5)
    hist = train(model, target, cfg, log=None)
    after = kl(lp, exact_model_log_probs(model, 4, 2))
    assert before > 0.5
    assert after < 0.25 * before, (before, after)
    assert hist[-1]["ess_full"] > hist[0]["ess_full"]
    if method == "pdns":
        assert min(h["c"] for h in hist) < 1.0


def test_evaluate_reports_errors_and_exact_kl():
    target = SpinTarget(2, 0.3)
    ex = exact_ising(2, 0.3)
    oracle = _oracle(2, 0.3)
    ev = evaluate(oracle, target, ex, n_samples=2000, seed=1)
    assert ev["ess"] == pytest.approx(1.0, abs=1e-6)
    assert ev["err_log_z"] < 1e-3
    assert ev["kl_exact_pi_q"] < 1e-6 and ev["kl_exact_q_pi"] < 1e-6
    assert ev["err_energy"] < 0.1 and ev["tv_mag"] < 0.05
    assert ev["err_energy_reweighted"] == pytest.approx(ev["err_energy"], abs=1e-6)  # uniform weights
    assert 0.4 < ev["mode_coverage"] < 0.6
    model = make_model(2, hidden_size=16, num_layers=1, num_heads=2)
    ev0 = evaluate(model, target, ex, n_samples=500, seed=1)
    assert ev0["err_energy"] > ev["err_energy"] and ev0["ess"] < 0.9
    assert torch.equal(tokens_to_spins(torch.tensor([0, 1])), torch.tensor([-1, 1]))


def test_recipe_smoke(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "mdns_ising.py"
    spec = importlib.util.spec_from_file_location("mdns_ising_recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = [
        "--lattice",
        "2",
        "--beta",
        "0.3",
        "--method",
        "pdns",
        "--steps",
        "3",
        "--batch",
        "16",
        "--hidden",
        "16",
    ]
    args += ["--heads", "2", "--eval_samples", "64", "--threads", "1", "--output_dir", str(tmp_path)]
    report = mod.main(args)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert len(saved["history"]) == 3 and saved["reference"]["log_z"] == pytest.approx(
        exact_ising(2, 0.3).log_z
    )
    assert {"err_energy", "kl_mag", "tv_mag", "ess", "mode_coverage", "log_z_is"} <= set(report["trained"])
