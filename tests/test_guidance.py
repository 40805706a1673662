"""Classifier-free guidance in the sampler (dlm_trl/sampling/guidance.py, arXiv 2507.08965): guidance schedules,
rate-preserving guidance, their validation and the ``dlm-trl eval`` flags.

The paper's check is made on a fake model whose conditional and unconditional logits are known tables
(:class:`KnownCFG`): with threshold decoding the number of tokens unmasked at the first step follows from the
confidences, and rate-preserving guidance must unmask exactly as many as the unguided sampler while plain
guidance unmasks more.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_sampler_fast import _tiny
from test_sampling import EOS, MASK, HashLM, V

from dlm_trl.cli import main
from dlm_trl.models import TINY_CHECKPOINT_DIR
from dlm_trl.sampling import GUIDANCE_SCHEDULES, SamplerConfig, generate, guidance_scales, guide


def _row_gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


def _squared(s, m):
    """A user schedule: the effective scale s · (1 − m)²."""
    return s * (1 - m) ** 2


# --------------------------------------------------------------------------- the schedules by hand


def test_schedule_scales_by_hand():
    m = torch.tensor([1.0, 0.5, 0.0])
    assert guidance_scales("constant", 2.0, m).tolist() == [2.0, 2.0, 2.0]
    assert guidance_scales("linear", 2.0, m).tolist() == [0.0, 1.0, 2.0]
    assert guidance_scales("late", 2.0, m, late_fraction=0.5).tolist() == [0.0, 2.0, 2.0]
    assert guidance_scales("late", 2.0, m, late_fraction=0.4).tolist() == [0.0, 0.0, 2.0]
    assert guidance_scales("late", 2.0, m, late_fraction=1.0).tolist() == [2.0, 2.0, 2.0]
    assert guidance_scales(_squared, 2.0, m).tolist() == [0.0, 0.5, 2.0]
    assert guidance_scales(lambda s, m: s, 1.5, m).tolist() == [1.5, 1.5, 1.5]  # a number is broadcast
    assert guidance_scales("linear", 2.0, m).dtype == torch.float64


def test_a_bad_user_schedule_is_a_clear_error():
    m = torch.tensor([1.0, 0.5])
    with pytest.raises(ValueError, match="finite scales ≥ 0"):
        guidance_scales(lambda s, m: -s * m, 1.0, m)
    with pytest.raises(ValueError, match="finite scales ≥ 0"):
        guidance_scales(lambda s, m: m * float("nan"), 1.0, m)
    with pytest.raises(ValueError, match="broadcastable"):
        guidance_scales(lambda s, m: torch.ones(3), 1.0, m)


def test_guide_is_the_formula_and_exactly_conditional_at_scale_zero():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    unc = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    out = guide(cond, unc, torch.tensor([0.0, 1.5]))
    assert torch.equal(out[0], cond[0])  # bitwise, not unc + (cond − unc)
    assert torch.equal(out[1], unc[1] + 2.5 * (cond[1] - unc[1]))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(guidance_schedule="lat"), r"unknown guidance_schedule='lat'.*Did you mean 'late'\?"),
        (dict(guidance_schedule="cosine"), r"choose one of \['constant', 'linear', 'late'\]"),
        (dict(guidance_schedule=3), r"guidance_schedule must be one of .* or a callable"),
        (dict(guidance_late_fraction=1.5), r"guidance_late_fraction must be a number in \[0, 1\]"),
        (dict(guidance_late_fraction=-0.1), r"guidance_late_fraction must be a number in \[0, 1\]"),
        (dict(guidance_late_fraction=True), r"guidance_late_fraction must be a number"),
        (dict(guidance_rate_preserving="yes"), r"guidance_rate_preserving must be True or False"),
        (dict(cfg_scale=1.0, cache="prefix", guidance_rate_preserving=True), r"cfg_scale > 0 with a key/value"),
    ],
)
def test_invalid_guidance_options_say_what_to_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(gen_length=16, block_length=8, steps=8, **kwargs)


def test_guidance_options_are_allowed_without_guidance():
    cfg = SamplerConfig(guidance_schedule="late", guidance_late_fraction=0.25, guidance_rate_preserving=True)
    assert cfg.cfg_scale == 0 and set(GUIDANCE_SCHEDULES) == {"constant", "linear", "late"}
    SamplerConfig(guidance_schedule=_squared, cfg_scale=1.0)


# --------------------------------------------------------------------------- scale 0 = the unguided sampler


SCHEDULE_CASES = ["constant", "linear", "late", _squared]


def _same(a, b):
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.commit_step, b.commit_step)
    assert torch.equal(a.commit_logprob.nan_to_num(9.0), b.commit_logprob.nan_to_num(9.0))


@pytest.mark.parametrize("schedule", SCHEDULE_CASES, ids=lambda s: s if isinstance(s, str) else "callable")
@pytest.mark.parametrize("rate_preserving", [False, True])
@pytest.mark.parametrize("transfer", ["topk", "threshold"])
def test_scale_zero_is_the_unguided_sampler_on_the_tiny_model(schedule, rate_preserving, transfer):
    model = _tiny()
    prompt = torch.randint(3, 64, (3, 5), generator=torch.Generator().manual_seed(1))
    base = dict(gen_length=16, block_length=8, steps=8, transfer=transfer, threshold=0.3, after_eos="keep")
    for temperature in (0.0, 1.0):
        plain = generate(model, prompt, config=SamplerConfig(temperature=temperature, **base), generator=_row_gens(3))
        got = generate(
            model,
            prompt,
            config=SamplerConfig(
                temperature=temperature,
                cfg_scale=0.0,
                guidance_schedule=schedule,
                guidance_rate_preserving=rate_preserving,
                **base,
            ),
            generator=_row_gens(3),
        )
        _same(got, plain)
        assert got.nfe == plain.nfe and torch.equal(got.row_nfe, plain.row_nfe)


@pytest.mark.parametrize("rate_preserving", [False, True])
@pytest.mark.parametrize("transfer", ["topk", "threshold"])
def test_a_schedule_at_zero_on_every_step_decodes_the_unguided_tokens(rate_preserving, transfer):
    """cfg_scale > 0 with 'late' at fraction 0 guides no step (a step always starts with a mask left): the logits
    are exactly the conditional ones, so the tokens are the unguided ones; the unconditional forward still runs
    and is counted."""
    model, prompt = HashLM(seed=3), torch.randint(1, 14, (3, 4), generator=torch.Generator().manual_seed(2))
    base = dict(gen_length=16, block_length=8, steps=8, transfer=transfer, threshold=0.5, after_eos="keep")
    plain = generate(model, prompt, config=SamplerConfig(**base))
    got = generate(
        model,
        prompt,
        config=SamplerConfig(
            cfg_scale=2.0,
            guidance_schedule="late",
            guidance_late_fraction=0.0,
            guidance_rate_preserving=rate_preserving,
            **base,
        ),
    )
    _same(got, plain)
    assert got.nfe == 2 * plain.nfe and torch.equal(got.row_nfe, 2 * plain.row_nfe)


def test_a_user_schedule_sees_each_rows_masked_fraction():
    seen: list[torch.Tensor] = []

    def record(s, m):
        seen.append(m.clone())
        return s * (1 - m)

    model, prompt = HashLM(seed=3), torch.randint(1, 14, (3, 4), generator=torch.Generator().manual_seed(2))
    generate(model, prompt, config=SamplerConfig(gen_length=16, block_length=8, steps=8, cfg_scale=1.0,
                                                 guidance_schedule=record))
    # topk, 2 tokens per step: every row has 16 − 2j of 16 masked at step j
    assert [m.tolist() for m in seen] == [[1 - 2 * j / 16] * 3 for j in range(8)]
    seen.clear()
    out = generate(model, prompt, config=SamplerConfig(gen_length=16, block_length=8, steps=8, cfg_scale=1.0,
                                                       transfer="threshold", threshold=0.4, after_eos="keep",
                                                       guidance_schedule=record))
    assert seen[0].tolist() == [1.0, 1.0, 1.0]
    assert len(seen) == out.num_model_calls
    assert sum(m.numel() for m in seen) == int(out.row_nfe.sum()) // 2  # one m per active row and forward


# --------------------------------------------------------------------------- the paper's check on known logits


class KnownCFG:
    """Completion logits are fixed tables, ``cond`` [L, V] when the prompt is given and ``unc`` [L, V] when its
    real tokens are masked (the unconditional half of a CFG batch), whatever has been committed."""

    mask_token_id, eos_token_id = MASK, EOS

    def __init__(self, cond: torch.Tensor, unc: torch.Tensor, P: int):
        self.cond, self.unc, self.P = cond, unc, P

    def __call__(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        uncond = input_ids[:, self.P - 1] == MASK  # [B]
        logits = torch.zeros(B, T, V)
        logits[:, self.P :] = torch.where(uncond[:, None, None], self.unc, self.cond)
        return logits


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Four positions, threshold 0.9, s = 1 (guided = 2ℓ_c − ℓ_u):

    0: certain under both                     → committed at the first step by every sampler;
    1: cond p(3) = σ(0.5) = 0.62, guided p(4) = σ(3) = 0.95 (guidance flips 3 → 4 and passes the threshold);
    2: cond p(6) = 0.62, guided p(6) = 0.95;
    3: a tie between 8 and 9 under both       → never confident.
    """
    cond = torch.full((4, V), -10.0)
    unc = torch.full((4, V), -10.0)
    cond[0, 5], unc[0, 5] = 10.0, 10.0
    cond[1, 3], cond[1, 4], unc[1, 3], unc[1, 4] = 2.0, 1.5, 3.0, -1.0
    cond[2, 6], cond[2, 7], unc[2, 6], unc[2, 7] = 1.0, 0.5, -1.0, 1.0
    cond[3, 8], cond[3, 9], unc[3, 8], unc[3, 9] = 0.0, 0.0, 0.0, 0.0
    return cond, unc


def _probs(table: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    t = table.double().clone()
    t[:, MASK] = -torch.inf
    return torch.softmax(t / T, dim=-1)  # [L, V]


def _first_step_count(table: torch.Tensor, threshold: float) -> int:
    """Threshold decoding at T = 0: positions whose argmax confidence reaches the threshold, at least one."""
    return max(1, int((_probs(table).max(-1).values >= threshold).sum()))


THR, S = 0.9, 1.0
PROMPT = torch.tensor([[4, 6, 7]])


def _known(**kw) -> SamplerConfig:
    base = dict(gen_length=4, block_length=4, steps=4, transfer="threshold", threshold=THR, after_eos="keep")
    base.update(kw)
    return SamplerConfig(**base)


def test_rate_preserving_keeps_the_unguided_first_step_count_plain_cfg_unmasks_more():
    cond, unc = _tables()
    guided = unc + (S + 1) * (cond - unc)
    model = KnownCFG(cond, unc, P=3)
    n_unguided, n_guided = _first_step_count(cond, THR), _first_step_count(guided, THR)
    assert (n_unguided, n_guided) == (1, 3)  # by hand (see _tables)

    unguided = generate(model, PROMPT, config=_known())
    plain = generate(model, PROMPT, config=_known(cfg_scale=S))
    rate = generate(model, PROMPT, config=_known(cfg_scale=S, guidance_rate_preserving=True))
    first = {name: int((out.commit_step == 0).sum()) for name, out in
             {"unguided": unguided, "plain": plain, "rate": rate}.items()}
    assert first == {"unguided": n_unguided, "plain": n_guided, "rate": n_unguided}
    # the logits do not depend on the state, so rate-preserving guidance unmasks at the unguided steps throughout
    assert torch.equal(rate.commit_step, unguided.commit_step)
    assert rate.num_model_calls == unguided.num_model_calls > plain.num_model_calls

    # the tokens are the guided distribution's (argmax at T = 0), and so is their log-probability
    guided_argmax = _probs(guided).argmax(-1)
    assert rate.completion_ids[0].tolist() == guided_argmax.tolist() == [5, 4, 6, 8]
    assert torch.equal(plain.completion_ids[0], guided_argmax)
    assert unguided.completion_ids[0].tolist() == [5, 3, 6, 8]
    expected_lp = _probs(guided).log().gather(-1, guided_argmax[:, None]).squeeze(-1).float()
    assert torch.allclose(rate.commit_logprob[0], expected_lp)
    # rate-preserving differs from plain CFG here (in when, not in what)
    assert not torch.equal(rate.commit_step, plain.commit_step)


@pytest.mark.parametrize("schedule", ["linear", "late"])
def test_a_late_schedule_leaves_the_first_step_unguided(schedule):
    cond, unc = _tables()
    model = KnownCFG(cond, unc, P=3)
    out = generate(model, PROMPT, config=_known(cfg_scale=S, guidance_schedule=schedule))
    assert int((out.commit_step == 0).sum()) == _first_step_count(cond, THR) == 1


def test_rate_preserving_keeps_the_rate_at_temperature_one_over_many_seeds():
    """Stochastic version: 400 rows, one generator each. Rate-preserving guidance commits at the unguided steps
    row for row (same uniforms, decision on ℓ_c); plain guidance's mean first-step count is the expectation
    Σ_i Σ_v p_i(v)·[p_i(v) ≥ threshold] under the guided distribution (position 0 always passes, so the
    "at least one" rule never binds), about 2.9 against the unguided 1."""
    cond, unc = _tables()
    guided = unc + (S + 1) * (cond - unc)
    model = KnownCFG(cond, unc, P=3)
    n = 400
    prompts = PROMPT.repeat(n, 1)
    unguided = generate(model, prompts, config=_known(temperature=1.0), generator=_row_gens(n))
    rate = generate(model, prompts, config=_known(temperature=1.0, cfg_scale=S, guidance_rate_preserving=True),
                    generator=_row_gens(n))
    plain = generate(model, prompts, config=_known(temperature=1.0, cfg_scale=S), generator=_row_gens(n))

    def expected(table):
        p = _probs(table)
        return float((p * (p >= THR)).sum())

    first = {name: (out.commit_step == 0).sum(1).double() for name, out in
             {"unguided": unguided, "rate": rate, "plain": plain}.items()}
    assert torch.equal(rate.commit_step, unguided.commit_step)
    assert abs(first["unguided"].mean().item() - expected(cond)) < 0.05 and expected(cond) == pytest.approx(1.0)
    assert abs(first["plain"].mean().item() - expected(guided)) < 0.1 and expected(guided) > 2.8
    # tokens come from the guided distribution: at position 1 mostly 4 (guided p = 0.95), which the unguided
    # sampler (p = 0.38) rarely commits
    assert (rate.completion_ids[:, 1] == 4).double().mean() > 0.9
    assert (unguided.completion_ids[:, 1] == 4).double().mean() < 0.2


def test_origin_commits_at_the_unguided_rate_under_both_variants():
    """Dream's origin rule commits each position with the schedule's probability without reading the logits:
    over 400 seeded rows every variant commits at the same steps (mean first-step count K/S = 1), and only
    the tokens are guided."""
    cond, unc = _tables()
    model = KnownCFG(cond, unc, P=3)
    n = 400
    prompts = PROMPT.repeat(n, 1)
    base = dict(transfer="topk", remasking="origin")
    outs = {
        "unguided": generate(model, prompts, config=_known(**base), generator=_row_gens(n, 1)),
        "plain": generate(model, prompts, config=_known(cfg_scale=S, **base), generator=_row_gens(n, 1)),
        "rate": generate(model, prompts, config=_known(cfg_scale=S, guidance_rate_preserving=True, **base),
                         generator=_row_gens(n, 1)),
    }
    assert torch.equal(outs["plain"].commit_step, outs["unguided"].commit_step)
    assert torch.equal(outs["rate"].commit_step, outs["unguided"].commit_step)
    assert abs((outs["unguided"].commit_step == 0).sum(1).double().mean().item() - 1.0) < 0.15
    assert (outs["rate"].completion_ids == torch.tensor([5, 4, 6, 8])).all()
    assert torch.equal(outs["rate"].completion_ids, outs["plain"].completion_ids)


def test_rate_preserving_topk_orders_positions_by_the_unguided_confidence():
    """topk, one token per step: the order comes from the conditional confidences under rate-preserving
    guidance (0.88 at position 1 before 0.62 at position 2) and from the guided ones under plain guidance
    (position 2's 0.95 before position 1's 0.73); the tokens are the guided argmax under both."""
    cond, unc = _tables()
    cond[1, 3], cond[1, 4] = 3.0, 1.0  # cond p(3) = σ(2) = 0.88
    unc[1, 3], unc[1, 4] = 3.0, 0.0  # guided 2ℓ_c − ℓ_u: token 3 → 3, token 4 → 2, p(3) = σ(1) = 0.73
    model = KnownCFG(cond, unc, P=3)
    cfg = dict(transfer="topk")
    unguided = generate(model, PROMPT, config=_known(**cfg))
    plain = generate(model, PROMPT, config=_known(cfg_scale=S, **cfg))
    rate = generate(model, PROMPT, config=_known(cfg_scale=S, guidance_rate_preserving=True, **cfg))
    assert unguided.commit_step[0].tolist() == [0, 1, 2, 3]
    assert torch.equal(rate.commit_step, unguided.commit_step)
    assert plain.commit_step[0].tolist() == [0, 2, 1, 3]
    assert rate.completion_ids[0].tolist() == plain.completion_ids[0].tolist() == [5, 3, 6, 8]


# --------------------------------------------------------------------------- dlm-trl eval


@pytest.mark.skipif(not (TINY_CHECKPOINT_DIR / "model.safetensors").exists(), reason="embedded checkpoint missing")
def test_eval_cli_guidance_flags_land_in_the_result(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    rc = main(["eval", "--model", "tiny", "--task", "countdown", "--num-samples", "2", "--batch-size", "2",
               "--no-progress", "--cfg-scale", "1.5", "--guidance-schedule", "late", "--guidance-late-fraction",
               "0.25", "--rate-preserving", "--output", str(path)])
    assert rc == 0
    res = json.loads(path.read_text())
    sampler = res["sampler"]
    assert sampler["cfg_scale"] == 1.5
    assert (sampler["guidance_schedule"], sampler["guidance_late_fraction"], sampler["guidance_rate_preserving"]) == (
        "late", 0.25, True)
    assert res["nfe_per_sample"] == 2 * sampler["steps"]
    assert main(["eval", "--num-samples", "2", "--no-progress", "--cfg-scale", "1", "--guidance-schedule",
                 "lienar"]) == 2
    assert "Did you mean 'linear'?" in capsys.readouterr().err
