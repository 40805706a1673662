"""TR2-D2: the tree search (dlm_trl.search) and the trainer on top of DMPO's loss.

* the path log-ratio of every buffer entry is exact: with one token per step and exact-conditional models
  it equals log p_ref(y) − log p_θ(y) (a hand computation by enumeration), for every unmasking order;
* the group's DMPO weights are softmax(ℓ + r/α) of those log-ratios (hand computation);
* on a toy model with a known optimum the buffer's best reward never decreases and reaches the optimum
  within the stated budget (40 iterations of 4 children, ≤ 520 row-forwards per prompt);
* the NFE accounting, exhaustion of a finite tree, determinism, progressive widening, the top-G choice
  (and multiplicity when the buffer is short), input checks;
* the trainer trains on the tiny model, logs the search metrics, and refuses what it cannot honour.
"""

from __future__ import annotations

import pytest
import torch

from dlm_trl.sampling import SamplerConfig
from dlm_trl.search import BufferEntry, Node, SearchConfig, SearchResult, select_leaf, tree_search
from dlm_trl.testing.joint import JointTableDLM

V, L, P = 3, 4, 2


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _match_reward(target):
    return lambda p, comps: [float((c == target).float().mean()) for c in comps]


def _run(policy, reference, reward_fn, n_prompts=2, steps=L, block=L, **cfg):
    sc = SamplerConfig(gen_length=L, block_length=block, steps=steps, temperature=1.0)
    gens = [torch.Generator().manual_seed(i) for i in range(n_prompts)]
    return tree_search(
        policy, reference, torch.zeros(n_prompts, P, dtype=torch.long), reward_fn, sampler_config=sc,
        config=SearchConfig(**cfg), mask_token_id=V, generators=gens,
    )


def test_path_log_ratio_is_exact_log_ratio_of_the_two_models():
    pol, ref = JointTableDLM(V, L, P, seed=0), JointTableDLM(V, L, P, seed=1)
    target = pol.seqs[0]
    res = _run(pol, ref, _match_reward(target), num_children=4, iterations=6)
    for r in res:
        assert len(r.buffer) >= 4
        ys = torch.stack([e.completion for e in r.buffer])
        want = (ref.log_prob(ys) - pol.log_prob(ys)).tolist()
        got = [e.log_ratio for e in r.buffer]
        assert got == pytest.approx(want, abs=1e-5)
        # the rewards are the reward function's
        assert [e.reward for e in r.buffer] == pytest.approx(_match_reward(target)(0, list(ys)))


def test_without_reference_every_log_ratio_is_zero_and_nfe_counts_policy_forwards():
    pol = JointTableDLM(V, L, P, seed=0)
    res = _run(pol, None, _match_reward(pol.seqs[5]), num_children=3, iterations=5)
    for r in res:
        assert all(e.log_ratio == 0.0 for e in r.buffer)
        # an expansion at depth d costs M·(S − d) forwards; the first one is at the root (d = 0)
        assert r.nfe <= 5 * 3 * L and r.best_curve[0][0] == 3 * L
    with_ref = _run(pol, JointTableDLM(V, L, P, seed=1), _match_reward(pol.seqs[5]), num_children=3, iterations=1)
    assert with_ref[0].nfe == 2 * 3 * L  # policy + reference


def test_best_reward_is_non_decreasing_and_reaches_the_optimum_within_budget():
    pol = JointTableDLM(V, L, P, seed=0, scale=0.0)  # a uniform model: the optimum has p = 1/81
    target = pol.seqs[pol.log_probs_table().argsort()[0]]
    res = _run(pol, None, _match_reward(target), n_prompts=10, num_children=4, iterations=40, widening=0.5)
    for r in res:
        best = [b for _, b in r.best_curve]
        assert all(b2 >= b1 for b1, b2 in zip(best, best[1:], strict=False))
        assert r.best_reward() == 1.0, f"optimum not reached within {r.nfe} row-forwards"
        assert r.nfe <= 520
    # the same budget without search (plain samples): P(found by all 10 prompts) = (1 − (80/81)^130)^10 ≈ 0.01


def test_a_finite_tree_is_exhausted_and_the_search_stops():
    pol = JointTableDLM(2, 2, P, seed=0)
    sc = SamplerConfig(gen_length=2, block_length=2, steps=2, temperature=1.0)
    res = tree_search(
        pol, None, torch.zeros(1, P, dtype=torch.long), lambda p, c: [0.0] * len(c), sampler_config=sc,
        config=SearchConfig(num_children=8, iterations=1000), mask_token_id=2, generators=[torch.Generator().manual_seed(0)],
    )
    assert res[0].root.exhausted and res[0].iterations < 1000
    assert len(res[0].buffer) <= 4  # 2^2 sequences


def test_search_is_deterministic_and_budget_by_nfe():
    pol = JointTableDLM(V, L, P, seed=0)
    a = _run(pol, None, _match_reward(pol.seqs[3]), num_children=4, iterations=None, nfe_budget=60)
    b = _run(pol, None, _match_reward(pol.seqs[3]), num_children=4, iterations=None, nfe_budget=60)
    for ra, rb in zip(a, b, strict=True):
        assert [e.completion.tolist() for e in ra.buffer] == [e.completion.tolist() for e in rb.buffer]
        assert ra.nfe >= 60 and ra.nfe - 4 * L < 60  # stops at the first iteration that reaches the budget


def test_uct_prefers_the_better_child_and_softmax_draws():
    root = Node(state=torch.zeros(2, dtype=torch.long), depth=0, visits=10, value=5.0)
    good = Node(state=torch.zeros(2, dtype=torch.long), depth=1, parent=root, visits=5, value=4.0)
    bad = Node(state=torch.ones(2, dtype=torch.long), depth=1, parent=root, visits=5, value=1.0)
    root.children = [bad, good]
    g = torch.Generator().manual_seed(0)
    assert select_leaf(root, "uct", 1.0, g) is good
    picks = [select_leaf(root, "softmax", 0.0, g) for _ in range(200)]
    share = sum(p is good for p in picks) / 200  # ∝ exp(0.8) vs exp(0.2): 0.646
    assert 0.5 < share < 0.8
    bad.exhausted = good.exhausted = True
    root.exhausted = True
    assert select_leaf(root, "uct", 1.0, g) is None


def test_top_g_and_multiplicity():
    res = SearchResult(buffer=[
        BufferEntry(torch.tensor([0]), 0.5, -1.0, 1), BufferEntry(torch.tensor([1]), 1.0, -3.0, 2),
        BufferEntry(torch.tensor([2]), 1.0, -2.0, 3),
    ])
    assert res.top(2) == ([2, 1], [1, 1])  # by reward, then log-ratio
    picked, mult = res.top(5)
    assert picked == [2, 1, 0, 2, 1] and mult == [2, 2, 1, 2, 2]
    with pytest.raises(ValueError, match="buffer selection"):
        res.top(2, "best")
    assert len(set(res.top(2, "entropy")[0])) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_children": 0}, "num_children"),
        ({"iterations": None}, "budget"),
        ({"selection": "ucb"}, "selection"),
        ({"temperature": 0.0}, "temperature"),
        ({"widening": 1.5}, "widening"),
    ],
)
def test_search_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- the trainer


def _trainer(tmp_path, **overrides):
    from test_trainers import COMMON, make_model, text_reward  # noqa: PLC0415

    from dlm_trl.models.tiny.train import build_tokenizer
    from dlm_trl.tasks import get_task
    from dlm_trl.trainers import TR2D2Config, TR2D2Trainer

    rows = get_task("countdown").rows("train", 40, seed=1)
    tok = build_tokenizer([r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows], vocab_size=300)
    ds = get_task("countdown").dataset("train", 8, seed=0)
    reward = overrides.pop("reward", text_reward)
    base = {**COMMON, "temperature": 1.0, "search_children": 2, "search_iterations": 3, **overrides}
    args = TR2D2Config(output_dir=str(tmp_path / "tr2d2"), **base)
    return TR2D2Trainer(model=make_model(tok), reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok)


def test_trainer_trains_on_the_buffer_and_logs_the_search(tmp_path):
    trainer = _trainer(tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    captured = {}
    orig = trainer._log_ratio

    def spy(out):
        ell = orig(out)
        captured["ell"], captured["adv"] = ell.clone(), out["advantages"].clone()
        return ell

    trainer._log_ratio = spy
    orig_score = trainer._score_rollout

    def score(out):
        orig_score(out)
        captured.setdefault("weights", []).append((captured["ell"], captured["adv"], out["dmpo_weights"].clone()))

    trainer._score_rollout = score
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    logs = {k for entry in trainer.state.log_history for k in entry}
    assert {"search/nfe_per_prompt", "search/buffer_best_reward", "search/buffer_unique", "dmpo/ess_mean"} <= logs
    # hand computation of the weights of the first rollout: softmax_G(c·(ℓ + r/α)), baseline "none"
    ell, adv, w = captured["weights"][0]
    G, alpha = trainer.num_generations, trainer.args.alpha
    from dlm_trl.losses import ess_temperature

    scores = (ell.double() + adv.double() / alpha).view(-1, G)
    c = ess_temperature(scores, trainer.args.target_ess, c_max=1.0)
    want = torch.softmax(torch.as_tensor(c, dtype=torch.float64).reshape(-1, 1) * scores, -1).flatten()
    assert w.double().tolist() == pytest.approx(want.tolist(), abs=1e-5)


def test_trainer_refuses_greedy_search_and_reward_models(tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        _trainer(tmp_path, temperature=0.0)
    with pytest.raises(ValueError, match="search_selection|selection"):
        _trainer(tmp_path, search_selection="best")
    with pytest.raises(ValueError, match="buffer_selection"):
        _trainer(tmp_path, buffer_selection="random")
    with pytest.raises(ValueError, match="widening"):
        _trainer(tmp_path, search_widening=2.0)
    assert _trainer(tmp_path, search_widening=0.5)._search_config().widening == 0.5


def test_reward_plugin_of_wrong_length_is_named(tmp_path):
    def short(prompts, completions, **kw):
        return [0.0]

    trainer = _trainer(tmp_path, reward=short)
    with pytest.raises(ValueError, match="short.*returned 1 rewards"):
        trainer.train()


def test_trl_reuses_the_search_rewards_and_logs_what_it_would_compute(tmp_path):
    """The rows' rewards come from the search (the reward function is not called again by TRL, whose calls carry
    ``log_metric``), and training is identical to recomputing them."""
    from test_trainers import text_reward  # noqa: PLC0415

    calls = {"trl": 0, "search": 0}

    def counted(prompts, completions, **kw):
        calls["trl" if "log_metric" in kw else "search"] += len(completions)
        return text_reward(prompts, completions, **kw)

    trainer = _trainer(tmp_path / "a", reward=counted, max_steps=1)
    trainer.train()
    assert calls["trl"] == 0 and calls["search"] > 0
    assert trainer.reward_cache_hits == trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    cached = [e for e in trainer.state.log_history if "reward" in e]

    recomputed = _trainer(tmp_path / "b", reward=counted, max_steps=1)
    recomputed._rewards_from_cache = lambda inputs, ids: None
    recomputed.train()
    assert calls["trl"] > 0 and recomputed.reward_cache_hits == 0
    fresh = [e for e in recomputed.state.log_history if "reward" in e]
    assert [(e["reward"], e["loss"]) for e in cached] == [(e["reward"], e["loss"]) for e in fresh]
