"""The sampler's fast parts: threshold / factor transfer, inverse-CDF draws, rows leaving the batch,
EOS stopping, commit log-probabilities, rank synchronisation and key/value caches.

The golden comparison of the cached and threshold decoders with Fast-dLLM's LLaDA reference is in
``test_sampler_golden.py``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from test_sampling import EOS, MASK, HashLM, V

from dlm_trl.models import DLM
from dlm_trl.sampling import SamplerConfig, generate, keep_freed_memory, minor_page_faults
from dlm_trl.sampling.loop import _inverse_cdf_draws
from dlm_trl.sampling.transfer import factor_commit, threshold_commit, topk_commit


def _row_gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


# --------------------------------------------------------------------------- transfer rules


def test_threshold_commit_takes_every_candidate_above_and_at_least_the_best():
    score = torch.tensor([[0.95, 0.5, 0.91, 0.99], [0.2, 0.3, 0.1, 0.25]], dtype=torch.float64)
    cand = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = threshold_commit(score, cand, 0.9)
    assert got.tolist() == [[True, False, True, False], [False, True, False, False]]
    # no candidates → nothing
    assert not threshold_commit(score, torch.zeros_like(cand), 0.9).any()


def test_factor_commit_follows_the_rule_by_hand():
    # f = 1: rank m needs c ≥ 1 − 1/(m+1): m=1: ≥ .5, m=2: ≥ .667, m=3: ≥ .75, m=4: ≥ .8
    score = torch.tensor([[0.9, 0.7, 0.76, 0.3, 0.1]], dtype=torch.float64)
    cand = torch.ones(1, 5, dtype=torch.bool)
    # sorted .9 (≥.5 ok), .76 (≥.667 ok), .7 (< .75 stop) → 2 best
    assert factor_commit(score, cand, 1.0).tolist() == [[True, False, True, False, False]]
    # a low best still commits one token
    low = torch.tensor([[0.1, 0.2, 0.05]], dtype=torch.float64)
    assert factor_commit(low, torch.ones(1, 3, dtype=torch.bool), 1.0).tolist() == [[False, True, False]]
    # the last candidate failing does not commit it (the published code's off-by-one is not reproduced)
    s3 = torch.tensor([[0.99, 0.99, 0.5]], dtype=torch.float64)
    assert factor_commit(s3, torch.ones(1, 3, dtype=torch.bool), 1.0).tolist() == [[True, True, False]]
    # non-candidates are never committed, even with top scores
    cand2 = torch.tensor([[False, True, True, True, True]])
    assert not factor_commit(score, cand2, 1.0)[0, 0]


def test_topk_commit():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.7]], dtype=torch.float64)
    cand = torch.tensor([[True, False, True, True]])
    assert topk_commit(score, cand, 2).tolist() == [[False, False, True, True]]
    assert not topk_commit(score, cand, 0).any()


def test_inverse_cdf_draws_follow_the_tempered_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -torch.inf]], dtype=torch.float64).expand(200_000, 5)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200_000, generator=g, dtype=torch.float64)
    for T in (1.0, 0.5):
        draws = _inverse_cdf_draws(logits, u, T)
        freq = torch.bincount(draws, minlength=5).double() / draws.numel()
        expected = torch.softmax(logits[0] / T, -1)
        assert freq[4] == 0  # a −inf logit is never drawn
        assert torch.allclose(freq, expected, atol=4e-3), (T, freq, expected)


# --------------------------------------------------------------------------- the dynamic loop


def _cfg(**kw) -> SamplerConfig:
    base = dict(gen_length=12, block_length=4, steps=6, temperature=0.0)
    base.update(kw)
    return SamplerConfig(**base)


def _prompt(B=3, P=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V - 1, (B, P), generator=g)


def test_threshold_one_commits_one_token_per_step_like_topk_with_one_per_step():
    # Nothing reaches probability 1, so each step commits exactly the most confident candidate: the
    # count-based sampler with one token per step (steps = gen_length).
    model, prompt = HashLM(seed=3), _prompt()
    fast = generate(model, prompt, config=_cfg(transfer="threshold", threshold=1.0, after_eos="keep"))
    slow = generate(model, prompt, config=_cfg(steps=12, after_eos="keep"))
    assert torch.equal(fast.completion_ids, slow.completion_ids)
    assert torch.equal(fast.commit_step, slow.commit_step)
    assert fast.num_model_calls == 12 and fast.row_nfe.tolist() == [12, 12, 12]


def test_tiny_threshold_fills_each_block_in_one_forward():
    model, prompt = HashLM(seed=4), _prompt()
    out = generate(model, prompt, config=_cfg(transfer="threshold", threshold=1e-12, after_eos="keep"))
    assert out.num_model_calls == 3 and out.row_nfe.tolist() == [3, 3, 3]
    assert set(out.commit_step.unique().tolist()) == {0, 1, 2}
    # each block = argmax of one forward on the sequence with that block (and later ones) masked
    x = torch.cat([prompt, torch.full((3, 12), MASK)], 1)
    for b in range(3):
        lo = 4 + 4 * b
        logits = model(x)[..., :].clone()
        logits[..., MASK] = -torch.inf
        x[:, lo : lo + 4] = logits[:, lo : lo + 4].argmax(-1)
    assert torch.equal(out.completion_ids, x[:, 4:])


@pytest.mark.parametrize("transfer", ["threshold", "factor"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_dynamic_rows_are_independent_of_their_batch(transfer, temperature):
    model = HashLM(seed=5, scale=1.0)
    prompt = _prompt(B=4, seed=2)
    cfg = _cfg(transfer=transfer, threshold=0.5, temperature=temperature, after_eos="keep")
    together = generate(model, prompt, config=cfg, generator=_row_gens(4))
    for b in range(4):
        alone = generate(model, prompt[b : b + 1], config=cfg, generator=[_row_gens(4)[b]])
        assert torch.equal(alone.completion_ids[0], together.completion_ids[b])
        assert alone.row_nfe.item() == together.row_nfe[b].item()


def test_rows_leave_the_batch_when_their_block_is_full():
    model = HashLM(seed=6, scale=1.0)
    prompt = _prompt(B=4, seed=3)
    out = generate(model, prompt, config=_cfg(transfer="threshold", threshold=0.5, temperature=1.0),
                   generator=_row_gens(4))
    rows_per_call = [c[0].shape[0] for c in model.calls]
    assert sum(rows_per_call) == int(out.row_nfe.sum())
    assert min(rows_per_call) >= 1 and len(model.calls) == out.num_model_calls


def test_stopping_after_eos_changes_nothing_but_the_work():
    model = HashLM(seed=7, scale=1.5, eos_bias=6.0)  # EOS in the first block
    prompt = _prompt(B=6, seed=4)
    gens = lambda: _row_gens(6, seed=1)  # noqa: E731
    cfg = dict(transfer="threshold", threshold=0.6, temperature=1.0)
    stopped = generate(model, prompt, config=_cfg(**cfg), generator=gens())
    kept = generate(model, prompt, config=_cfg(after_eos="keep", **cfg), generator=gens())
    ids = kept.completion_ids.clone()
    after = (ids == EOS).long().cumsum(1) - (ids == EOS).long() > 0
    assert torch.equal(stopped.completion_ids, ids.masked_fill(after, EOS))
    assert torch.equal(stopped.completion_mask, kept.completion_mask)
    assert int(stopped.row_nfe.sum()) < int(kept.row_nfe.sum())  # some rows stopped early
    skipped = torch.isnan(stopped.commit_logprob)
    assert skipped.any() and (stopped.commit_step[skipped] == -1).all()


@pytest.mark.parametrize("transfer", ["topk", "threshold"])
def test_commit_logprob_is_the_drawn_tokens_log_probability(transfer):
    model, prompt = HashLM(seed=8), _prompt(B=2)
    out = generate(model, prompt, config=_cfg(transfer=transfer, temperature=0.0, after_eos="keep"))
    assert torch.isfinite(out.commit_logprob).all() and (out.commit_logprob <= 0).all()
    # recompute the first committed token of row 0 from the first forward (all of block 0 masked)
    x = torch.cat([prompt, torch.full((2, 12), MASK)], 1)
    logits = model(x)[:, 4:8].double()
    logits[..., MASK] = -torch.inf
    first = (out.commit_step[0, :4] == 0).nonzero()[0, 0]
    expected = torch.log_softmax(logits[0, first], -1)[out.completion_ids[0, first]]
    assert math.isclose(out.commit_logprob[0, first].item(), expected.item(), rel_tol=1e-5)


def test_dynamic_config_validation():
    with pytest.raises(ValueError, match="transfer"):
        SamplerConfig(transfer="tresh")
    with pytest.raises(ValueError, match="threshold must be"):
        SamplerConfig(transfer="threshold", threshold=1.5)
    with pytest.raises(ValueError, match="factor must be"):
        SamplerConfig(transfer="factor", factor=0)
    with pytest.raises(ValueError, match="remasking"):
        SamplerConfig(transfer="threshold", remasking="random")
    with pytest.raises(ValueError, match="cache"):
        SamplerConfig(cache="duel")
    with pytest.raises(ValueError, match="cfg_scale"):
        SamplerConfig(cache="dual", cfg_scale=1.0)
    with pytest.raises(ValueError, match="cache_refresh"):
        SamplerConfig(cache="dual", cache_refresh=0)


def test_cache_needs_a_model_with_a_block_cache():
    with pytest.raises(ValueError, match="block key/value cache"):
        generate(HashLM(), _prompt(), config=_cfg(cache="dual"))


def test_keep_freed_memory_is_idempotent_and_page_faults_are_counted():
    first = keep_freed_memory()
    assert keep_freed_memory() == first
    assert minor_page_faults() > 0


# --------------------------------------------------------------------------- ranks in step


SYNC_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
sys.path.insert(0, os.environ["DLM_TEST_DIR"])
from test_sampler_fast import HashLM, _cfg, _prompt
from dlm_trl.sampling import generate

dist.init_process_group("gloo")
rank = dist.get_rank()
# Rank 0 decodes confidently (few forwards), rank 1 one token per step (many).
model = HashLM(seed=9, scale=4.0 if rank == 0 else 0.01)
cfg = _cfg(transfer="threshold", threshold=0.5 if rank == 0 else 1.0, after_eos="keep")
out = generate(model, _prompt(B=2, seed=rank), config=cfg, sync_ranks=True)
with open(os.path.join(os.environ["DLM_TEST_OUT"], f"{rank}.txt"), "w") as f:
    f.write(f"{len(model.calls)} {int(out.row_nfe.max())}")
dist.destroy_process_group()
"""


def test_sync_ranks_keeps_every_rank_calling_the_model_the_same_number_of_times(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "sync.py"
    script.write_text(SYNC_SCRIPT)
    env = {**os.environ, "DLM_TEST_DIR": str(Path(__file__).parent), "DLM_TEST_OUT": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script)], env=env, check=True, timeout=300,
                   capture_output=True)
    calls = [tuple(map(int, (tmp_path / f"{r}.txt").read_text().split())) for r in range(2)]
    assert calls[0][0] == calls[1][0] == 12  # rank 1 needs 12; rank 0 keeps pace with idle forwards
    assert calls[0][1] < calls[1][1]  # rank 0's rows themselves took fewer forwards


# --------------------------------------------------------------------------- caches on real models


def _native(family: str) -> DLM:
    from dlm_trl.testing.hub_checkpoints import random_native_model

    module = random_native_model(family, seed=0)
    cfg = module.config
    return DLM(module=module, mask_token_id=int(cfg.mask_token_id), family=family, eos_token_id=int(cfg.eos_token_id))


def _tiny() -> DLM:
    from dlm_trl.models import TinyDLMConfig, TinyDLMForMaskedDiffusion

    torch.manual_seed(0)
    module = TinyDLMForMaskedDiffusion(
        TinyDLMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(10.0)  # far from init, so that confidences vary
    return DLM(module=module, mask_token_id=1, family="llada", eos_token_id=2)


MODELS = {"tiny": _tiny, "llada": lambda: _native("llada"), "dream": lambda: _native("dream")}


def _padded_prompts(model: DLM, B: int = 3, seed: int = 0):
    """Left-padded prompts of different lengths (tokens avoid the mask / EOS / pad ids)."""
    g = torch.Generator().manual_seed(seed)
    V = model.module.config.vocab_size
    lengths = [5, 3, 7][:B]
    P = max(lengths)
    ids = torch.full((B, P), model.eos_token_id, dtype=torch.long)
    att = torch.zeros(B, P, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, P - n :] = torch.randint(4, V, (n,), generator=g)
        att[b, P - n :] = 1
    return ids, att


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("transfer", ["topk", "threshold"])
def test_cache_refreshed_every_step_is_the_uncached_sampler(name, cache, transfer):
    model = MODELS[name]()
    ids, att = _padded_prompts(model)
    base = dict(gen_length=16, block_length=8, steps=8, temperature=1.0, transfer=transfer, threshold=0.3,
                after_eos="keep")
    plain = generate(model, ids, config=SamplerConfig(**base), prompt_attention_mask=att, generator=_row_gens(3))
    cached = generate(model, ids, config=SamplerConfig(cache=cache, cache_refresh=1, **base),
                      prompt_attention_mask=att, generator=_row_gens(3))
    assert torch.equal(plain.completion_ids, cached.completion_ids)
    assert torch.equal(plain.row_nfe, cached.row_nfe)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_padded_batch_equals_rows_alone(name, cache):
    model = MODELS[name]()
    ids, att = _padded_prompts(model)
    cfg = SamplerConfig(gen_length=16, block_length=8, steps=8, temperature=1.0, cache=cache,
                        transfer="threshold", threshold=0.3, after_eos="keep")
    together = generate(model, ids, config=cfg, prompt_attention_mask=att, generator=_row_gens(3))
    for b in range(3):
        real = att[b].bool()
        alone = generate(model, ids[b : b + 1, real], config=cfg, generator=[_row_gens(3)[b]])
        assert torch.equal(alone.completion_ids[0], together.completion_ids[b]), (name, cache, b)


@pytest.mark.parametrize("name", ["tiny", "llada", "dream"])
def test_block_only_logits_do_not_change_the_default_sampler(name):
    """The default sampler asks the model for the block's logits only (``logits_to_keep``); a plain callable
    returning every position's logits must decode the same tokens."""
    model = MODELS[name]()
    ids, att = _padded_prompts(model)
    cfg = SamplerConfig(gen_length=16, block_length=8, steps=8, temperature=1.0)

    class Plain:  # hides the block-cache support: full logits, sliced by the sampler
        mask_token_id, eos_token_id = model.mask_token_id, model.eos_token_id

        def __call__(self, input_ids, attention_mask=None):
            return model(input_ids, attention_mask=attention_mask)

    a = generate(model, ids, config=cfg, prompt_attention_mask=att, generator=_row_gens(3))
    b = generate(Plain(), ids, config=cfg, prompt_attention_mask=att, generator=_row_gens(3))
    assert torch.equal(a.completion_ids, b.completion_ids)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_run_under_bf16_autocast(name, cache):
    """The recipes' bf16 rollouts: cached keys/values come out of autocast in bf16 and are merged with fresh ones;
    with a very low threshold each block is one full forward, so the cached decode equals the uncached one."""
    model = MODELS[name]()
    ids, att = _padded_prompts(model)
    base = dict(gen_length=16, block_length=8, steps=8, temperature=1.0, transfer="threshold", after_eos="keep")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, ids, config=SamplerConfig(cache=cache, threshold=0.3, **base), prompt_attention_mask=att,
                       generator=_row_gens(3))
        one = generate(model, ids, config=SamplerConfig(cache=cache, threshold=1e-9, **base), prompt_attention_mask=att,
                       generator=_row_gens(3))
        ref = generate(model, ids, config=SamplerConfig(threshold=1e-9, **base), prompt_attention_mask=att,
                       generator=_row_gens(3))
    assert (out.completion_ids != model.mask_token_id).all()
    assert torch.isfinite(out.commit_logprob).all()
    assert torch.equal(one.completion_ids, ref.completion_ids)
