"""q-state Potts support of the neural samplers (``dlm_trl.neural_samplers``).

The Potts statistics against brute-force loops and against the Ising ones at q = 2, the Wolff Potts chain
against exact enumeration (3 × 3, q = 3: 19,683 states) and against the Ising Wolff chain at q = 2, the
reference selection and its errors, ``evaluate`` on a Potts sampler (the exact-conditionals oracle and an
untrained model), and the recipe with ``--q 3``.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from dlm_trl.neural_samplers.ising import (
    SpinStats,
    exact_ising,
    exact_potts,
    exact_potts_statistics,
    exact_statistics,
    potts_beta_c,
    potts_statistics,
    reference_statistics,
    spin_statistics,
    tokens_to_spins,
    wolff_ising,
    wolff_potts,
)
from dlm_trl.neural_samplers.mdns import SpinTarget, evaluate, make_model
from dlm_trl.testing.joint import JointTableDLM


def _brute_potts(L: int, q: int, beta: float) -> dict:
    """Exact Potts statistics by explicit loops over all colourings (module docstring definitions)."""
    n = L * L
    Z = E = Mo = C = 0.0
    nmax_pmf = np.zeros(n + 1)
    maj = np.zeros(q)
    for flat in itertools.product(range(q), repeat=n):
        s = [list(flat[r * L : (r + 1) * L]) for r in range(L)]
        agree = sum(
            (s[r][c] == s[r][(c + 1) % L]) + (s[r][c] == s[(r + 1) % L][c])
            for r in range(L)
            for c in range(L)
        )
        w = math.exp(beta * agree)  # U = -agree
        counts = [flat.count(k) for k in range(q)]
        top = max(counts)
        winners = [k for k in range(q) if counts[k] == top]
        Z += w
        E += w * (-agree) / n
        Mo += w * (q * top / n - 1) / (q - 1)
        C += w * (q * agree / (2 * n) - 1) / (q - 1)
        nmax_pmf[top] += w
        for k in winners:
            maj[k] += w / len(winners)
    return {
        "log_z": math.log(Z),
        "energy": E / Z,
        "order": Mo / Z,
        "corr": C / Z,
        "nmax": nmax_pmf / Z,
        "maj": maj / Z,
    }


@pytest.mark.parametrize("L,q,beta", [(2, 3, 0.7), (2, 4, 1.3), (3, 3, 1.0)])
def test_exact_potts_statistics_match_brute_force(L, q, beta):
    ex = exact_potts_statistics(L, q, beta)
    bf = _brute_potts(L, q, beta)
    assert ex.q == q and ex.n_samples is None
    assert ex.log_z == pytest.approx(bf["log_z"], abs=1e-9)
    assert ex.log_z == pytest.approx(exact_potts(L, q, beta)["log_z"], abs=1e-12)
    assert ex.energy == pytest.approx(bf["energy"], abs=1e-10)
    assert ex.abs_mag == pytest.approx(bf["order"], abs=1e-10)
    assert ex.nn_corr == pytest.approx(bf["corr"], abs=1e-10)
    np.testing.assert_allclose(ex.mag_pmf, bf["nmax"], atol=1e-12)
    np.testing.assert_allclose(ex.majority_pmf, bf["maj"], atol=1e-12)
    np.testing.assert_allclose(ex.majority_pmf, np.full(q, 1 / q), atol=1e-12)  # colour symmetry


def test_potts_statistics_at_q2_are_the_ising_ones():
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 2, (300, 4, 4), generator=g)
    w = torch.rand(300, generator=g, dtype=torch.float64)
    for weights in (None, w):
        p, s = potts_statistics(tok, 2, weights), spin_statistics(tokens_to_spins(tok), weights)
        assert p.abs_mag == pytest.approx(s.abs_mag, abs=1e-12)  # (2 n_max/N - 1) = |M|/N
        assert p.nn_corr == pytest.approx(s.nn_corr, abs=1e-12)  # 2 δ - 1 = s_i s_j
        assert s.energy == pytest.approx(2 * p.energy + 2, abs=1e-12)  # U_ising = 2 U_potts + 2N
    # exact: Ising at β is Potts (q = 2) at 2β; log Z shifts by 2Nβ
    ex_i, ex_p = exact_ising(3, 0.35), exact_potts_statistics(3, 2, 0.7)
    assert ex_p.abs_mag == pytest.approx(ex_i.abs_mag) and ex_p.nn_corr == pytest.approx(ex_i.nn_corr)
    assert ex_p.log_z == pytest.approx(ex_i.log_z + 2 * 9 * 0.35)
    assert potts_beta_c(2) == pytest.approx(2 * 0.5 * math.log(1 + math.sqrt(2)))


def test_potts_statistics_hand_made():
    one_colour = torch.full((1, 3, 3), 2)
    st = potts_statistics(one_colour, 3)
    assert st.energy == -2.0 and st.abs_mag == 1.0 and st.nn_corr == 1.0
    np.testing.assert_allclose(st.majority_pmf, [0, 0, 1])
    assert st.mag_pmf[9] == 1.0
    # three colours in equal numbers, stripes by row: horizontal bonds agree, vertical ones never
    stripes = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 2, 2]])[None]
    st = potts_statistics(stripes, 3)
    assert st.abs_mag == 0.0 and st.energy == -1.0 and st.nn_corr == pytest.approx((3 * 0.5 - 1) / 2)
    np.testing.assert_allclose(st.majority_pmf, [1 / 3, 1 / 3, 1 / 3])  # a three-way tie
    with pytest.raises(ValueError, match="0..2"):
        potts_statistics(torch.full((1, 2, 2), 3), 3)


@pytest.mark.parametrize("beta", [0.6, 1.2])  # β_c(3) = ln(1 + √3) ≈ 1.005: both sides
def test_wolff_potts_agrees_with_exact_3x3_q3(beta):
    ex = exact_potts_statistics(3, 3, beta)
    mc = wolff_potts(3, 3, beta, n_measure=20_000, burn_in=500, thin=2, seed=11)
    for attr in ("energy", "abs_mag", "nn_corr"):
        se = getattr(mc, attr + "_se")
        assert 0 < se < 0.02
        assert abs(getattr(mc, attr) - getattr(ex, attr)) < 4 * se, attr
    assert 0.5 * np.abs(mc.mag_pmf - ex.mag_pmf).sum() < 0.03
    assert 0.5 * np.abs(mc.majority_pmf - 1 / 3).sum() < 0.03
    assert mc.extra["method"] == "wolff" and mc.q == 3
    again = wolff_potts(3, 3, beta, n_measure=200, burn_in=10, seed=11)
    assert again.energy == wolff_potts(3, 3, beta, n_measure=200, burn_in=10, seed=11).energy  # seeded


def test_wolff_potts_q2_is_wolff_ising_and_handles_2x2():
    # the same chain in Potts units: β_potts = 2 β_ising gives the Ising bond probability
    ex = exact_ising(3, 0.4)
    mc = wolff_potts(3, 2, 0.8, n_measure=15_000, burn_in=300, seed=5)
    assert abs(mc.abs_mag - ex.abs_mag) < 4 * mc.abs_mag_se
    assert abs(mc.nn_corr - ex.nn_corr) < 4 * mc.nn_corr_se
    # 2 x 2: doubly-listed bonds (coupling 2), as in potts_energy
    ex2 = exact_potts_statistics(2, 3, 0.5)
    mc2 = wolff_potts(2, 3, 0.5, n_measure=15_000, burn_in=300, seed=6)
    assert abs(mc2.energy - ex2.energy) < 4 * mc2.energy_se


def test_reference_selection_and_errors():
    ex = reference_statistics(3, 0.9, q=3)  # 3^9 states: exact
    assert ex.n_samples is None and ex.log_z is not None and ex.q == 3
    mc = reference_statistics(3, 0.9, q=3, method="wolff", n_measure=500)
    assert mc.n_samples == 500 and mc.log_z is None and mc.q == 3
    assert reference_statistics(2, 0.3).log_z == pytest.approx(exact_ising(2, 0.3).log_z)  # Ising unchanged
    assert reference_statistics(5, 0.3, n_measure=300).extra["method"] == "wolff"
    with pytest.raises(ValueError, match="too many to enumerate.*wolff"):
        reference_statistics(4, 1.0, q=3, method="exact")  # 3^16 = 43 million states
    with pytest.raises(ValueError, match="too many to enumerate"):
        exact_statistics(5, 0.3)
    with pytest.raises(ValueError, match="q must be an integer ≥ 2"):
        reference_statistics(3, 0.5, q=1)
    with pytest.raises(ValueError, match="method must be one of"):
        reference_statistics(3, 0.5, method="metropolis")


def test_spin_stats_round_trip():
    for st in (exact_potts_statistics(2, 3, 0.4), exact_ising(2, 0.3), wolff_ising(3, 0.3, n_measure=100)):
        d = json.loads(json.dumps(st.as_dict()))
        back = SpinStats.from_dict(d)
        assert back.as_dict() == d and back.q == st.q
    assert "q" not in exact_ising(2, 0.3).as_dict()  # Ising dictionaries keep their keys


def test_evaluate_potts_oracle_and_untrained():
    L, q, beta = 2, 3, 0.9
    target = SpinTarget(L, beta, q)
    ref = exact_potts_statistics(L, q, beta)
    oracle = JointTableDLM(q, L * L)
    from dlm_trl.neural_samplers.ising import enumerate_states

    with torch.no_grad():
        oracle.log_joint.copy_(target.log_unnormalized(enumerate_states(L * L, q)))
    ev = evaluate(oracle, target, ref, n_samples=3000, seed=2)
    assert ev["ess"] == pytest.approx(1.0, abs=1e-6) and ev["err_log_z"] < 1e-3
    assert ev["kl_exact_pi_q"] < 1e-6
    assert ev["err_energy"] < 0.05 and ev["err_abs_mag"] < 0.05 and ev["err_nn_corr"] < 0.05
    assert ev["tv_mag"] < 0.05 and ev["mode_tv"] < 0.05 and ev["mode_min_share"] > 0.9
    assert ev["model"]["q"] == 3 and len(ev["majority_colour_pmf"]) == 3
    assert ev["energy_per_site"] == ev["model"]["energy_per_site"]
    assert "mode_coverage" not in ev
    model = make_model(L, q, hidden_size=16, num_layers=1, num_heads=2)
    ev0 = evaluate(model, target, ref, n_samples=500, seed=2)
    assert ev0["err_energy"] > ev["err_energy"] and ev0["ess"] < 0.9
    with pytest.raises(ValueError, match="q=2"):
        evaluate(model, target, exact_ising(2, 0.3), n_samples=8)


def test_recipe_potts_smoke_and_errors(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "mdns_ising.py"
    spec = importlib.util.spec_from_file_location("mdns_ising_recipe_potts", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    small = ["--steps", "2", "--batch", "16", "--hidden", "16", "--heads", "2", "--eval_samples", "64"]
    report = mod.main(["--q", "3", "--lattice", "3", "--beta", "1.2", *small, "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "3x3 3-state Potts" in out and "exact (enumeration)" in out and "Potts order m" in out
    assert report["reference"]["q"] == 3
    assert report["reference"]["log_z"] == pytest.approx(exact_potts(3, 3, 1.2)["log_z"])
    assert {"err_energy", "err_abs_mag", "kl_mag", "tv_mag", "mode_tv", "mode_min_share", "err_log_z"} <= set(
        report["trained"]
    )
    # a reference file from elsewhere (the benchmark's), here a short Wolff chain
    ref = wolff_potts(3, 3, 1.2, n_measure=300, seed=1)
    f = tmp_path / "ref.json"
    f.write_text(json.dumps({**ref.as_dict(), "beta": 1.2}))
    report = mod.main(["--q", "3", "--lattice", "3", "--beta", "1.2", "--reference_file", str(f), *small,
                       "--output_dir", str(tmp_path / "b")])  # fmt: skip
    assert "Wolff MC (300 measurements)" in capsys.readouterr().out and "err_log_z" not in report["trained"]
    with pytest.raises(SystemExit, match="beta=1.2, not 0.5"):
        mod.main(["--q", "3", "--lattice", "3", "--beta", "0.5", "--reference_file", str(f), *small])
    for bad in (["--q", "1"], ["--q", "3", "--lattice", "4", "--reference", "exact"]):
        with pytest.raises(SystemExit):
            mod.parse_args(bad)
    err = capsys.readouterr().err
    assert "--q must be >= 2" in err and "use --reference wolff" in err
