"""The estimators estimate what they claim, checked against ``exact_elbo`` on a tiny model.

A small randomly initialised LLaDA-style model (init std 0.3, so log-probabilities vary
from context to context) and completions of L ≤ 5 tokens, where ``exact_elbo`` enumerates
every mask. Monte Carlo means are compared with exact values within a few standard
errors (SE estimated from the replicates themselves): replicates are rows of one batch,
each with its own generator.
"""

from __future__ import annotations

import math

import pytest
import torch
from dlm_trl_estimators.sdmc_elbo import quadrature_nodes
from dlm_trl_estimators.stratified_elbo import stratified_counts

from dlm_trl.estimators import row_generators
from dlm_trl.masking import token_log_probs
from dlm_trl.models import DLM, TinyDLMConfig, TinyDLMForMaskedDiffusion
from dlm_trl.registry import load_estimator

MASK, EOS, V = 1, 2, 24
Z = 4.5  # tolerance in standard errors (deterministic seeds: a pass is reproducible)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = TinyDLMConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, initializer_range=0.3, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS,
    )
    return DLM.wrap(TinyDLMForMaskedDiffusion(cfg).eval())


@pytest.fixture(scope="module")
def data():
    """2 rows, prompt 3 tokens, L = 4; row 1 ends with an EOS that counts and one that does not."""
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(4, V, (2, 3), generator=g)
    comp = torch.randint(4, V, (2, 4), generator=g)
    cmask = torch.ones(2, 4, dtype=torch.long)
    comp[1, 2:], cmask[1, 3] = EOS, 0
    return prompt, comp, cmask


def _exact(model, prompt, comp, cmask, length="padded"):
    with torch.no_grad():
        return (load_estimator("exact_elbo", length=length)(model, prompt, comp, cmask) * cmask).sum(1).double()


def _replicates(est, model, prompt, comp, cmask, R, seed=0):
    """``[B, R]`` sequence estimates, replicate r of row b from its own generator."""
    B = prompt.shape[0]
    with torch.no_grad():
        out = est(
            model,
            prompt.repeat_interleave(R, 0),
            comp.repeat_interleave(R, 0),
            cmask.repeat_interleave(R, 0),
            generator=row_generators(range(seed, seed + B * R)),
        )
    return (out * cmask.repeat_interleave(R, 0)).sum(1).double().view(B, R)


def _logp(model, ids, pos, target):
    with torch.no_grad():
        return token_log_probs(model(ids)[:, pos], torch.tensor([target])).item()


def test_random_model_is_not_trivial(model, data):
    prompt, comp, _ = data
    ids = torch.cat([prompt, torch.full_like(comp, MASK)], 1)
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).float(), -1)[:, 3:]  # [2, 4, V]
    assert lp.max(-1).values.min() > -math.log(V) + 0.5, "predictions are close to uniform"
    assert lp.std() > 1.0


def test_exact_elbo_by_hand_for_two_tokens(model):
    """L = 2: ELBO = ½·(2/1)·½[a1 + a2] + ½·(2/2)·[b1 + b2] with a_i = log f(y_i | y_i masked alone)
    and b_i = log f(y_i | both masked), i.e. per token ½ a_i + ½ b_i."""
    q, y = [5, 9, 11], [7, 13]
    ids = torch.tensor([q + y])
    a1 = _logp(model, torch.tensor([q + [MASK, 13]]), 3, 7)
    a2 = _logp(model, torch.tensor([q + [7, MASK]]), 4, 13)
    b1 = _logp(model, torch.tensor([q + [MASK, MASK]]), 3, 7)
    b2 = _logp(model, torch.tensor([q + [MASK, MASK]]), 4, 13)
    with torch.no_grad():
        out = load_estimator("exact_elbo")(model, ids[:, :3], ids[:, 3:], torch.ones(1, 2))
    assert torch.allclose(out, torch.tensor([[0.5 * a1 + 0.5 * b1, 0.5 * a2 + 0.5 * b2]]), atol=1e-5)


def test_one_step_equals_exact_conditional_for_one_token(model):
    """L = 1: log π(y|q) = log f(y | q, M) exactly; one-step unmasking with p_mask_prompt=0 and the
    exact ELBO both give it."""
    q, y = [5, 9, 11, 4], 17
    want = _logp(model, torch.tensor([q + [MASK]]), 4, y)
    prompt, comp, cmask = torch.tensor([q]), torch.tensor([[y]]), torch.ones(1, 1)
    with torch.no_grad():
        one = load_estimator("one_step_unmasking", p_mask_prompt=0.0)(model, prompt, comp, cmask)
        ex = load_estimator("exact_elbo")(model, prompt, comp, cmask)
        masked = load_estimator("one_step_unmasking", p_mask_prompt=1.0)(model, prompt, comp, cmask)
    assert one.item() == pytest.approx(want, abs=1e-5)
    assert ex.item() == pytest.approx(want, abs=1e-5)
    assert masked.item() != pytest.approx(want, abs=1e-3)  # a masked prompt changes the answer


@pytest.mark.parametrize("length", ["padded", "true"])
@pytest.mark.parametrize(
    "name,kwargs,R",
    [
        ("double_mc_elbo", {"num_samples": 1}, 3000),
        ("stratified_elbo", {"num_samples": 1}, 1500),
        ("stratified_elbo", {"num_samples": 3}, 600),
    ],
)
def test_unbiased_estimators_match_exact(model, data, name, kwargs, R, length):
    prompt, comp, cmask = data
    exact = _exact(model, prompt, comp, cmask, length)
    reps = _replicates(load_estimator(name, length=length, **kwargs), model, prompt, comp, cmask, R)
    mean, se = reps.mean(1), reps.std(1) / math.sqrt(R)
    # double MC draws t ~ U(1e-3, 1): an O(1e-3) relative bias, far below the SE
    assert ((mean - exact).abs() < Z * se + 1e-2 * exact.abs() * (name == "double_mc_elbo")).all(), (mean, exact, se)


def test_length_modes_estimate_different_quantities(model, data):
    prompt, comp, cmask = data
    padded, true = _exact(model, prompt, comp, cmask, "padded"), _exact(model, prompt, comp, cmask, "true")
    assert padded[0] == pytest.approx(true[0].item(), abs=1e-6)  # no padding: the same
    assert abs(padded[1] - true[1]) > 1e-3


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # GDPO default: Gauss N=3, K=1, time weights
        {"num_nodes": 2, "masks_per_node": 2},
        {"quadrature": "simpson", "num_nodes": 3},  # GDPO's t = 0.1, 0.5, 1.0
        {"quadrature": "simpson_limit", "num_nodes": 5, "length": "true"},
        {"weighting": "count", "length": "true"},
    ],
)
def test_sdmc_mean_is_its_quadrature_value(model, data, kwargs):
    """SDMC is unbiased for its quadrature value Σ_j w_j ν_j E_{|S|=m_j}[Σ_{i∈S} log f], computed here by
    enumerating every subset of size m_j = max(1, floor(t_j n))."""
    prompt, comp, cmask = data
    est = load_estimator("sdmc_elbo", **kwargs)
    with torch.no_grad():
        table, n = load_estimator("exact_elbo", length=est.length).count_table(model, prompt, comp, cmask)
    quad = (est.expected_contributions(table, n) * cmask).sum(1)
    R = 1500
    reps = _replicates(est, model, prompt, comp, cmask, R)
    mean, se = reps.mean(1), reps.std(1) / math.sqrt(R)
    assert ((mean - quad).abs() < Z * se).all(), (mean, quad, se)


class ContextFree:
    """A 'model' whose prediction ignores the input and the position: every completion token y_i = 7
    gets log f(7 | ·) = a. Any mask of m tokens then sums to m·a, the ELBO is n·a, and every
    estimator's value is a deterministic weighting that can be derived by hand."""

    mask_token_id = MASK

    def __init__(self, logits):  # [V]
        self.logits = logits

    def __call__(self, ids, attention_mask=None):
        return self.logits[None, None].expand(ids.shape[0], ids.shape[1], -1).clone()


@pytest.mark.parametrize("L", [4, 8])
def test_sdmc_quadrature_bias_by_hand(L):
    """Gauss N = 3 (t = 0.1127, 0.5, 0.8873; w = 5/18, 8/18, 5/18), m_j = max(1, floor(t_j L)).
    Count weights n/m_j: each node gives n·a, the ELBO exactly. GDPO's time weights 1/t_j give
    Σ_j w_j m_j/(t_j L) times the ELBO: L = 4 → m = 1, 2, 3 → 1.2954; L = 8 → m = 1, 4, 7 → 1.0265.
    The stratified and double-MC estimators are exact here too (every draw: n·a resp. m·a/t)."""
    torch.manual_seed(0)
    model = ContextFree(torch.randn(V))
    a = torch.log_softmax(model.logits, -1)[7].item()
    prompt, comp, cmask = torch.tensor([[5, 6]]), torch.full((1, L), 7), torch.ones(1, L)
    t, w = quadrature_nodes(3)
    factor = sum(wj * max(1, math.floor(tj * L)) / (tj * L) for tj, wj in zip(t, w, strict=True))
    assert factor == pytest.approx({4: 1.2954, 8: 1.0265}[L], abs=1e-4)
    gens = row_generators([0])
    est = {
        "exact": load_estimator("exact_elbo"),
        "count": load_estimator("sdmc_elbo", weighting="count"),
        "time": load_estimator("sdmc_elbo"),
        "strat": load_estimator("stratified_elbo", num_samples=3),
    }
    got = {k: e(model, prompt, comp, cmask, generator=gens).sum().item() for k, e in est.items()}
    assert got["exact"] == pytest.approx(L * a, rel=1e-5)
    assert got["count"] == pytest.approx(L * a, rel=1e-5)
    assert got["strat"] == pytest.approx(L * a, rel=1e-5)
    assert got["time"] == pytest.approx(factor * L * a, rel=1e-5)


def test_stratified_counts_are_each_uniform():
    """Every draw j of the stratified scheme is marginally uniform on 1..n (what makes it unbiased),
    and with b = n the counts are a permutation of 1..n."""
    n, b, M = 5, 3, 1000
    u = (torch.arange(M, dtype=torch.float64) + 0.5) / M  # a fine grid over the offset
    counts = stratified_counts(u, torch.full((M,), n), b)  # [M, b]
    for j in range(b):
        hist = torch.bincount(counts[:, j], minlength=n + 1)[1:]
        assert (hist == M // n).all(), hist
    perm = stratified_counts(u, torch.full((M,), n), n)
    assert (perm.sort(1).values == torch.arange(1, n + 1)).all()


@pytest.mark.parametrize("name", ["double_mc_elbo", "stratified_elbo", "sdmc_elbo"])
def test_true_length_never_masks_padding(model, data, name):
    prompt, comp, cmask = data
    seen = []
    handle = model.module.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True
    )
    try:
        for length in ("true", "padded"):
            seen.clear()
            est = load_estimator(name, length=length, **({} if name == "sdmc_elbo" else {"num_samples": 64}))
            with torch.no_grad():
                est(model, prompt, comp, cmask, generator=row_generators([0, 1]))
            noisy = torch.cat(seen)[:, prompt.shape[1] :]  # [rows, L]; rows of batch row 1 come second
            pad_col = noisy[noisy.shape[0] // 2 :, 3]
            if length == "true":
                assert (pad_col == EOS).all()
            elif name != "sdmc_elbo":
                assert (pad_col == MASK).any()
    finally:
        handle.remove()


def test_exact_elbo_refuses_long_completions(model):
    with pytest.raises(ValueError, match="shorter completion|another estimator"):
        load_estimator("exact_elbo")(model, torch.tensor([[5]]), torch.full((1, 11), 7), torch.ones(1, 11))


def test_quadrature_nodes_match_the_spec():
    t, w = quadrature_nodes(3)
    assert t == pytest.approx([0.1127017, 0.5, 0.8872983], abs=1e-6)
    assert w == pytest.approx([5 / 18, 8 / 18, 5 / 18], abs=1e-12)
    t, w = quadrature_nodes(2)
    assert t == pytest.approx([0.2113249, 0.7886751], abs=1e-6) and w == pytest.approx([0.5, 0.5])
    for n in range(1, 6):
        assert sum(quadrature_nodes(n)[1]) == pytest.approx(1.0)
    assert quadrature_nodes(3, "simpson") == ([0.1, 0.5, 1.0], pytest.approx([1 / 6, 4 / 6, 1 / 6]))
    t, w = quadrature_nodes(5, "simpson_limit")
    assert t == [0.0, 0.25, 0.5, 0.75, 1.0] and w == pytest.approx([1 / 12, 4 / 12, 2 / 12, 4 / 12, 1 / 12])
    with pytest.raises(ValueError, match="3 nodes"):
        quadrature_nodes(5, "simpson")


def test_exact_elbo_true_length_forwards_each_rows_own_subsets(model, data):
    """length="true": row b runs 2^{n_b} − 1 masks (n = 4, 3 here), so nfe(L) = 2^L − 1 is an upper bound."""
    prompt, comp, cmask = data
    rows = []
    handle = model.module.register_forward_pre_hook(
        lambda mod, args, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            load_estimator("exact_elbo", length="true")(model, prompt, comp, cmask)
    finally:
        handle.remove()
    assert sum(rows) == (2**4 - 1) + (2**3 - 1)
