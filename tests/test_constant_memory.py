"""Constant-memory Monte Carlo and antithetic (ESPO-coupled) draws of the multi-draw ELBO estimators.

* ``constant_memory=True`` must not change anything but memory: the same estimate and, after
  backward, the same gradient as the all-at-once path (≤ 1e-5), on a tiny random model and on the
  exact-conditional oracle ``JointTableDLM``; it runs each chunk of B rows under activation
  checkpointing, so backward forwards every row a second time (counted here).
* ``antithetic=True`` keeps each estimator's mean (``exact_elbo``, or SDMC's quadrature value) at
  the NFE of the independent draws; its variance is measured by
  ``benchmarks/estimator_variance.py --antithetic`` (``docs/estimator_variance_antithetic.md``).
* The contract of ``tests/test_estimator_contract.py`` is re-run on the new options (its checks are
  imported and applied with extra settings, without editing that file).
"""

from __future__ import annotations

import math

import pytest
import torch

import tests.test_estimator_contract as contract
from dlm_trl.estimators import row_generators
from dlm_trl.registry import load_estimator
from dlm_trl.testing.joint import JointTableDLM

MULTI = {
    "double_mc_elbo": {"num_samples": 4},
    "sdmc_elbo": {"num_nodes": 3, "masks_per_node": 2},
    "stratified_elbo": {"num_samples": 4},
}
ANTITHETIC = {
    "double_mc_elbo": {"num_samples": 4, "antithetic": True},
    "sdmc_elbo": {"num_nodes": 2, "masks_per_node": 2, "antithetic": True},
    "stratified_elbo": {"num_samples": 4, "antithetic": True},
}
Z = 4.5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return contract._model(0)


@pytest.fixture(scope="module")
def batch():
    return contract.batch.__wrapped__()


def _grads(est, model, batch, seeds=(3, 4, 5)):
    params = list(model.module.parameters()) if hasattr(model, "module") else list(model.parameters())
    for p in params:
        p.grad = None
    prompt, comp, cmask, pam = batch
    out = est(model, prompt, comp, cmask, generator=row_generators(seeds), prompt_attention_mask=pam)
    # a nonlinear loss of the sequence estimates, as the trainers use
    seq = (out * cmask).sum(1)
    torch.exp(seq / comp.shape[1]).sum().backward()
    return out.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("batch_size", [None, 2])
@pytest.mark.parametrize("name", sorted(MULTI))
def test_constant_memory_gives_identical_estimates_and_gradients(name, batch_size, model, batch):
    plain = load_estimator(name, **MULTI[name])
    cm = load_estimator(name, **MULTI[name], constant_memory=True, batch_size=batch_size)
    out0, g0 = _grads(plain, model, batch)
    with contract.RowCounter(model) as rc:
        out1, g1 = _grads(cm, model, batch)
    B, L = batch[1].shape
    assert torch.equal(out0, out1)
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    step = batch_size or B
    assert max(rc.calls) <= step, f"chunks of at most {step} rows, got {rc.calls}"
    # backward recomputed every chunk once: twice the rows of the estimate
    assert sum(rc.calls) == 2 * B * cm.nfe(L)


@pytest.mark.parametrize("name", sorted(MULTI))
def test_constant_memory_on_the_exact_oracle(name):
    torch.manual_seed(0)
    oracle = JointTableDLM(vocab_size=3, length=4, prompt_length=2, seed=1)
    y = oracle.sample(3, generator=torch.Generator().manual_seed(2))  # [3, 4]
    prompt = torch.zeros(3, 2, dtype=torch.long)
    cmask = torch.ones_like(y)
    outs, grads = [], []
    for cm in (False, True):
        oracle.log_joint.grad = None
        est = load_estimator(name, **MULTI[name], constant_memory=cm)
        out = est(oracle, prompt, y, cmask, generator=row_generators([7, 8, 9]))
        torch.exp((out * cmask).sum(1) / 4).sum().backward()
        outs.append(out.detach())
        grads.append(oracle.log_joint.grad.clone())
    assert torch.equal(outs[0], outs[1])
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_constant_memory_is_inert_without_grad(model, batch):
    est = load_estimator("sdmc_elbo", constant_memory=True)
    prompt, comp, cmask, pam = batch
    with contract.RowCounter(model) as rc, torch.no_grad():
        est(model, prompt, comp, cmask, generator=row_generators([0, 1, 2]), prompt_attention_mask=pam)
    assert rc.calls == [3 * 3]  # one forward of all rows, no chunking


# ----------------------------------------------------------------------------- the contract, re-run

CONTRACT_CHECKS = (
    "test_shape_dtype_and_zeros_on_padding",
    "test_same_generators_same_output_different_generators_different",
    "test_row_depends_only_on_its_own_generator",
    "test_accepts_one_generator_or_none",
    "test_masks_do_not_depend_on_the_model",
    "test_gradients_flow_only_when_enabled",
    "test_nfe_equals_forward_passes_run",
    "test_draws_folded_into_batch_and_chunking_is_invisible",
)
EXTRA = {
    f"{name}+{tag}": (name, kw)
    for tag, table in (("constant_memory", {k: {**v, "constant_memory": True} for k, v in MULTI.items()}),
                       ("antithetic", ANTITHETIC))
    for name, kw in table.items()
}


@pytest.mark.parametrize("check", CONTRACT_CHECKS)
@pytest.mark.parametrize("variant", sorted(EXTRA))
def test_contract_holds_with_the_new_options(variant, check, model, batch, monkeypatch):
    name, kw = EXTRA[variant]
    monkeypatch.setitem(contract.OVERRIDES, name, kw)
    fn = getattr(contract, check)
    if check == "test_masks_do_not_depend_on_the_model":
        fn(name, batch)
    else:
        fn(name, model, batch)


def test_option_validation():
    with pytest.raises(ValueError, match="even"):
        load_estimator("double_mc_elbo", num_samples=3, antithetic=True)
    with pytest.raises(ValueError, match="even"):
        load_estimator("stratified_elbo", num_samples=1, antithetic=True)
    with pytest.raises(ValueError, match="gauss"):
        load_estimator("sdmc_elbo", quadrature="simpson", antithetic=True)
    with pytest.raises(ValueError, match="bool"):
        load_estimator("sdmc_elbo", constant_memory="yes")


# ----------------------------------------------------------------------------- antithetic draws


def test_antithetic_pairs_are_complements(batch):
    """Draw 2p+1 masks exactly the maskable positions draw 2p keeps (recorded from the model's inputs)."""
    prompt, comp, cmask, pam = batch
    P, L = prompt.shape[1], comp.shape[1]
    for name, kw in ANTITHETIC.items():
        m = contract._model(0)
        with contract.RowCounter(m) as rc, torch.no_grad():
            load_estimator(name, **kw)(m, prompt, comp, cmask, generator=row_generators([0, 1, 2]))
        masked = torch.cat(rc.inputs)[:, P:] == 1  # [B*D, L]
        D = masked.shape[0] // 3
        masked = masked.view(3, D, L)
        if name == "sdmc_elbo":  # nodes (0, 1) mirrored, K = 2: draw k of node 1 complements draw k of node 0
            assert torch.equal(masked[:, 2:], ~masked[:, :2])
        else:
            assert torch.equal(masked[:, 1::2], ~masked[:, 0::2])


def _seq_reps(est, model, prompt, comp, cmask, R, seed=0):
    B = prompt.shape[0]
    with torch.no_grad():
        out = est(model, prompt.repeat_interleave(R, 0), comp.repeat_interleave(R, 0), cmask.repeat_interleave(R, 0),
                  generator=row_generators(range(seed, seed + B * R)))
    return (out * cmask.repeat_interleave(R, 0)).sum(1).double().view(B, R)


@pytest.fixture(scope="module")
def small():
    """2 rows, prompt 3, L = 4, row 1 with one padding EOS (as test_estimator_correctness)."""
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(4, 24, (2, 3), generator=g)
    comp = torch.randint(4, 24, (2, 4), generator=g)
    cmask = torch.ones(2, 4, dtype=torch.long)
    comp[1, 2:], cmask[1, 3] = 2, 0
    return prompt, comp, cmask


@pytest.mark.parametrize("length", ["padded", "true"])
@pytest.mark.parametrize("name", sorted(ANTITHETIC))
def test_antithetic_keeps_the_mean(name, length, model, small):
    prompt, comp, cmask = small
    kw = ANTITHETIC[name]
    ind = {k: v for k, v in kw.items() if k != "antithetic"}
    anti_est = load_estimator(name, length=length, **kw)
    ind_est = load_estimator(name, length=length, **ind)
    if name == "sdmc_elbo":
        with torch.no_grad():
            table, n = load_estimator("exact_elbo", length=length).count_table(model, prompt, comp, cmask)
        target = (anti_est.expected_contributions(table, n) * cmask).sum(1)
    else:
        with torch.no_grad():
            target = (load_estimator("exact_elbo", length=length)(model, prompt, comp, cmask) * cmask).sum(1)
    R = 800
    anti = _seq_reps(anti_est, model, prompt, comp, cmask, R)
    se = anti.std(1) / math.sqrt(R)
    slack = 2e-3 * target.abs() if name == "double_mc_elbo" else 0.0  # O(eps) floor of the times
    assert ((anti.mean(1) - target.double()).abs() < Z * se + slack).all(), (anti.mean(1), target, se)
    assert anti_est.nfe(4) == ind_est.nfe(4)


# ----------------------------------------------------------------------------- benchmark smoke test


def test_mc_memory_benchmark_measures_in_process():
    """The benchmark's measuring function on tiny settings (in this process; the benchmark itself uses a
    fresh process per configuration)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mc_memory.py"
    spec = importlib.util.spec_from_file_location("mc_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.measure("sdmc_elbo", 4, True, rows=2, prompt_length=4, length=8)
    assert r["settings"] == {"num_nodes": 4, "masks_per_node": 1} and r["peak_growth_mib"] >= 0 and r["seconds"] > 0
    md = bench.markdown({"rows": 2, "prompt_length": 4, "length": 8, "threads": 1,
                         "results": [r, {**r, "constant_memory": False}]})
    assert "| sdmc_elbo | 4 |" in md
    with pytest.raises(ValueError, match="unknown estimator"):
        bench.settings("exact_elbo", 4)
