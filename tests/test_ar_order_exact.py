"""``ar_order_exact`` (JustGRPO, arXiv 2601.15165) against independent computations.

* a Python loop of single-row forwards, one per completion position, with the future masked
  (values and parameter gradients), on a tiny random LLaDA-style model with left-padded
  prompts and EOS padding;
* the exact joint of :class:`~dlm_trl.testing.joint.JointTableDLM`, where the left-to-right
  chain rule is exact: the estimate must equal ``log p(y)``;
* the fast variants: the random subset's mean over many generators is the exact value within
  a few standard errors; the entropy subset is the top-entropy positions of the loop
  reference, of the stated size, and stays the same for old / current estimates.
"""

from __future__ import annotations

import math

import pytest
import torch

from dlm_trl.estimators import row_generators
from dlm_trl.models import DLM, TinyDLMConfig, TinyDLMForMaskedDiffusion
from dlm_trl.registry import load_estimator
from dlm_trl.testing.joint import JointTableDLM

MASK, EOS, V = 1, 2, 24
Z = 4.5  # tolerance in standard errors (fixed seeds: a pass is reproducible)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int = 0) -> DLM:
    torch.manual_seed(seed)
    cfg = TinyDLMConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, initializer_range=0.3, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS,
    )
    return DLM.wrap(TinyDLMForMaskedDiffusion(cfg).eval())


@pytest.fixture(scope="module")
def model():
    return _model(0)


@pytest.fixture(scope="module")
def batch():
    """4 rows, prompt width 5 left-padded by 0/1/2/3, L = 6; rows 1–3 EOS-padded (the first EOS counts)."""
    g = torch.Generator().manual_seed(11)
    prompt = torch.randint(4, V, (4, 5), generator=g)
    pam = torch.ones(4, 5, dtype=torch.long)
    for b in range(4):
        prompt[b, :b], pam[b, :b] = EOS, 0
    comp = torch.randint(4, V, (4, 6), generator=g)
    cmask = torch.ones(4, 6, dtype=torch.long)
    for b, first_eos in ((1, 4), (2, 2), (3, 0)):
        comp[b, first_eos:], cmask[b, first_eos + 1 :] = EOS, 0
    return prompt, comp, cmask, pam


def _loop_reference(model, prompt, comp, cmask, pam):
    """``[B, L]``: log f(y_i | prompt, y_<i, M…M) by one single-row forward per counted position."""
    B, P = prompt.shape
    L = comp.shape[1]
    out = torch.zeros(B, L)
    for b in range(B):
        for i in range(L):
            if not cmask[b, i]:
                continue
            c = comp[b].clone()
            c[i:] = model.mask_token_id
            ids = torch.cat([prompt[b], c])[None]  # [1, P+L]
            attn = torch.cat([pam[b], torch.ones(L, dtype=torch.long)])[None]
            logits = model(ids, attention_mask=attn)  # [1, P+L, V]
            lp = torch.log_softmax(logits[0, P + i].double(), dim=-1)
            out = out.index_put((torch.tensor([b]), torch.tensor([i])), lp[comp[b, i]].float()[None])
    return out


def _loop_entropies(model, prompt, comp, pam):
    """``[B, L]`` entropy of f(· | prompt, y_<i, M…M) at every position, one forward per position."""
    B, P = prompt.shape
    L = comp.shape[1]
    H = torch.zeros(B, L, dtype=torch.float64)
    with torch.no_grad():
        for b in range(B):
            for i in range(L):
                c = comp[b].clone()
                c[i:] = model.mask_token_id
                ids = torch.cat([prompt[b], c])[None]
                attn = torch.cat([pam[b], torch.ones(L, dtype=torch.long)])[None]
                p = torch.softmax(model(ids, attention_mask=attn)[0, P + i].double(), dim=-1)
                H[b, i] = -(p * p.clamp_min(1e-300).log()).sum()
    return H


class Rows:
    """Rows per forward call (pre-hook on the wrapped module)."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.handle = model.module.register_forward_pre_hook(
            lambda m, a, kw: self.calls.append((kw["input_ids"] if "input_ids" in kw else a[0]).shape[0]),
            with_kwargs=True,
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ----------------------------------------------------------------------------- exact


def test_equals_the_loop_of_single_forwards(model, batch):
    prompt, comp, cmask, pam = batch
    with torch.no_grad():
        ref = _loop_reference(model, prompt, comp, cmask, pam)
        for length in ("padded", "true"):
            out = load_estimator("ar_order_exact", length=length)(model, prompt, comp, cmask, prompt_attention_mask=pam)
            assert out.dtype == torch.float32 and out.shape == comp.shape
            assert torch.allclose(out, ref, atol=1e-5), (length, (out - ref).abs().max())
            assert (out[cmask == 0] == 0).all() and (out[cmask == 1] != 0).all()
    # the masking matters: a row scored with its own token visible is a different (larger) number
    assert (ref[cmask == 1] < 0).all()


def test_on_the_exact_joint_it_is_log_p():
    joint = JointTableDLM(vocab_size=3, length=5, prompt_length=2, seed=3)
    y = joint.sample(8, generator=torch.Generator().manual_seed(0))  # [8, 5]
    prompt = torch.zeros(8, 2, dtype=torch.long)
    cmask = torch.ones_like(y)
    est = load_estimator("ar_order_exact")
    with torch.no_grad():
        seq = (est(joint, prompt, y, cmask) * cmask).sum(1).double()
        # the one-shot (all masked) mean-field sum is not log p: the test can tell
        mean_field = (load_estimator("one_step_unmasking", p_mask_prompt=0.0)(joint, prompt, y, cmask)).sum(1).double()
    exact = joint.log_prob(y)
    assert torch.allclose(seq, exact, atol=1e-5), (seq - exact).abs().max()
    assert (seq - mean_field).abs().max() > 1e-2


def test_gradients_equal_the_loop_reference(model, batch):
    prompt, comp, cmask, pam = batch
    params = list(model.module.parameters())
    out = load_estimator("ar_order_exact", batch_size=5)(model, prompt, comp, cmask, prompt_attention_mask=pam)
    g_est = torch.autograd.grad((out * cmask).sum(), params, allow_unused=True)
    ref = _loop_reference(model, prompt, comp, cmask, pam)
    g_ref = torch.autograd.grad((ref * cmask).sum(), params, allow_unused=True)
    nonzero = 0
    for a, b in zip(g_est, g_ref, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
        nonzero += int(a.abs().sum() > 0)
    assert nonzero > 0


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"length": "true"}, {"score_fraction": 0.5, "select": "random"}, {"score_fraction": 0.5, "select": "entropy"}],
)
def test_chunking_changes_nothing_and_nfe_counts_rows(model, batch, kwargs):
    prompt, comp, cmask, pam = batch
    B, L = comp.shape
    outs = []
    for bs in (None, 1, 4, 7):
        est = load_estimator("ar_order_exact", batch_size=bs, **kwargs)
        with Rows(model) as rc, torch.no_grad():
            gens = row_generators([3, 4, 5, 6])
            outs.append(est(model, prompt, comp, cmask, generator=gens, prompt_attention_mask=pam))
        if bs is None:
            assert len(rc.calls) == 1
        else:
            assert max(rc.calls) <= bs
        if kwargs.get("length") == "true":
            assert sum(rc.calls) == int(cmask.sum()) <= B * est.nfe(L)
        elif kwargs.get("select") == "entropy":
            assert sum(rc.calls) == B * L  # first call under no_grad: the selection pass only
        else:
            assert sum(rc.calls) == B * est.nfe(L)
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-6)


# ----------------------------------------------------------------------------- fast variants


def test_random_subset_is_unbiased():
    joint = JointTableDLM(vocab_size=3, length=6, prompt_length=1, seed=5)
    y = joint.sample(1, generator=torch.Generator().manual_seed(2)).repeat(400, 1)  # [400, 6] one sequence
    prompt = torch.zeros(400, 1, dtype=torch.long)
    cmask = torch.ones_like(y)
    cmask[:, 5] = 0  # one padding position: n = 6 candidates (padded), 5 count
    est = load_estimator("ar_order_exact", score_fraction=0.25, select="random")
    assert est.nfe(6) == 2 and not est.deterministic
    with torch.no_grad():
        contrib = est(joint, prompt, y, cmask, generator=row_generators(range(1000, 1400)))
        exact = (load_estimator("ar_order_exact")(joint, prompt[:1], y[:1], cmask[:1])).sum()
    assert ((contrib != 0).sum(1) <= 2).all() and ((contrib != 0).sum(1) >= 1).any()
    draws = contrib.sum(1).double()  # [400]
    se = draws.std() / math.sqrt(draws.numel())
    assert se > 0 and abs(draws.mean() - exact) < Z * se, (draws.mean().item(), exact.item(), se.item())


def test_random_subset_same_generators_same_positions(batch):
    prompt, comp, cmask, pam = batch
    old, cur = _model(0), _model(1)
    est = load_estimator("ar_order_exact", score_fraction=0.5, select="random", length="true")
    with torch.no_grad():
        a = est(old, prompt, comp, cmask, generator=row_generators([7, 8, 9, 10]), prompt_attention_mask=pam)
        b = est(cur, prompt, comp, cmask, generator=row_generators([7, 8, 9, 10]), prompt_attention_mask=pam)
    assert torch.equal(a != 0, b != 0) and not torch.allclose(a, b)
    n = cmask.sum(1)
    assert torch.equal((a != 0).sum(1), torch.ceil(0.5 * n.double()).long())


def test_entropy_subset_is_the_top_entropy_positions_and_is_shared(batch):
    prompt, comp, cmask, pam = batch
    old, cur = _model(0), _model(1)
    frac = 0.5
    est = load_estimator("ar_order_exact", score_fraction=frac, select="entropy", length="true")
    assert est.deterministic
    seeds = [21, 22, 23, 24]
    n = cmask.sum(1)
    k = torch.ceil(frac * n.double()).long()  # [B] = 3, 3, 2, 1

    # old policy first (no grad): the selection pass, its values reused
    with Rows(old) as rc, torch.no_grad():
        a = est(old, prompt, comp, cmask, generator=row_generators(seeds), prompt_attention_mask=pam)
    assert sum(rc.calls) == int(n.sum()) == est.last_call_nfe  # the count includes the selection pass
    sel = a != 0
    assert torch.equal(sel.sum(1), k)
    H = _loop_entropies(old, prompt, comp, pam).masked_fill(cmask == 0, -1.0)
    for b in range(4):
        top = set(torch.sort(H[b], descending=True, stable=True).indices[: int(k[b])].tolist())
        assert set(sel[b].nonzero().flatten().tolist()) == top
    with torch.no_grad():
        ref_old = _loop_reference(old, prompt, comp, cmask, pam)
    assert torch.allclose(a, torch.where(sel, ref_old, torch.zeros(())), atol=1e-5)

    # current policy, same seeds, with grad: same positions, its own values, only k rows forwarded
    with Rows(cur) as rc:
        b_ = est(cur, prompt, comp, cmask, generator=row_generators(seeds), prompt_attention_mask=pam)
    assert sum(rc.calls) == int(k.sum()) == est.last_call_nfe and b_.requires_grad
    assert torch.equal(b_ != 0, sel)
    with torch.no_grad():
        ref_cur = _loop_reference(cur, prompt, comp, cmask, pam)
    assert torch.allclose(b_.detach(), torch.where(sel, ref_cur, torch.zeros(())), atol=1e-5)

    # without the memo the current model would pick other positions: the memo is what keeps them shared
    fresh = load_estimator("ar_order_exact", score_fraction=frac, select="entropy", length="true")
    with torch.no_grad():
        c = fresh(cur, prompt, comp, cmask, generator=row_generators(seeds), prompt_attention_mask=pam)
    assert not torch.equal(c != 0, sel)
    # a first estimate with grad (JustGRPO's on-policy step): the no-grad selection pass, then k rows with grad,
    # and last_call_nfe counts both (nfe(L) is only the k of a memoised row)
    with Rows(cur) as rc:
        fresh2 = load_estimator("ar_order_exact", score_fraction=frac, select="entropy", length="true")
        fresh2(cur, prompt, comp, cmask, generator=row_generators(seeds), prompt_attention_mask=pam)
    assert sum(rc.calls) == int(n.sum() + k.sum()) == fresh2.last_call_nfe
    # another seed (another rollout / inner iteration) is selected afresh
    with torch.no_grad():
        d = est(cur, prompt, comp, cmask, generator=row_generators([31, 32, 33, 34]), prompt_attention_mask=pam)
    assert torch.equal(d != 0, c != 0)
    est.clear_selection_memo()
    with torch.no_grad():
        e = est(cur, prompt, comp, cmask, generator=row_generators(seeds), prompt_attention_mask=pam)
    assert torch.equal(e != 0, c != 0)


def test_subset_sizes_and_nfe():
    for frac, L, k in ((0.25, 256, 64), (0.25, 5, 2), (0.7, 10, 7), (0.01, 3, 1), (1.0, 7, 7)):
        assert load_estimator("ar_order_exact", score_fraction=frac).nfe(L) == k


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"score_fraction": 0.0}, "score_fraction"),
        ({"score_fraction": 1.5}, "score_fraction"),
        ({"score_fraction": -0.25}, "score_fraction"),
        ({"score_fraction": "0.5"}, "score_fraction"),
        ({"score_fraction": True}, "score_fraction"),
        ({"select": "top"}, "select"),
        ({"length": "full"}, "length"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        load_estimator("ar_order_exact", **kwargs)
