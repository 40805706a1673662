"""``rollout_correction``: truncated / masked importance weights between the rollout sampler's token
probabilities (``SamplerOutput.commit_logprob``) and the trained likelihood, in the losses and the trainers."""

from __future__ import annotations

import math

import pytest
import torch
from test_trainers import _one_thread, dataset, make_trainer, snapshot, tokenizer  # noqa: F401

from dlm_trl.losses import clipped_token_loss, rollout_correction_weights, sequence_clipped_loss
from dlm_trl.trainers import DiffuGRPOConfig, DiffuGRPOTrainer, DMPOConfig, GDPOConfig, GDPOTrainer

BASE = dict(use_cpu=True, bf16=False, report_to="none", gen_length=16, block_length=8, diffusion_steps=8)
NAN = float("nan")


# ----------------------------------------------------------------------------- the weights


def test_token_weights_are_exp_of_the_gap_truncated_and_zero_outside_the_mask():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sampler = torch.tensor([[-1.5, -0.1, -0.5, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w, metrics = rollout_correction_weights(old, sampler, mask, mode="token_truncate", clip_min=None, clip_max=1.5)
    assert w.shape == (1, 4)
    assert math.isclose(w[0, 0].item(), 1.5)  # exp(0.5) = 1.65 → truncated at 1.5
    assert math.isclose(w[0, 1].item(), math.exp(-1.9), rel_tol=1e-6)
    assert w[0, 2].item() == 1.0 and w[0, 3].item() == 1.0  # no gap; outside the mask (NaN sampler) → 1
    assert math.isclose(metrics["rollout_correction/log_gap_mean"].item(), (0.5 - 1.9 + 0.0) / 3, rel_tol=1e-6)
    assert math.isclose(metrics["rollout_correction/changed_frac"].item(), 1 / 3, rel_tol=1e-6)

    masked, _ = rollout_correction_weights(old, sampler, mask, mode="token_mask", clip_min=0.2, clip_max=1.5)
    assert masked[0, 0].item() == 0.0 and masked[0, 1].item() == 0.0  # 1.65 > 1.5, 0.15 < 0.2
    assert masked[0, 2].item() == 1.0


def test_sequence_weights_use_the_mean_gap_over_valid_tokens():
    old = torch.tensor([[-1.0, -2.0, -9.0], [-1.0, -1.0, -1.0]])
    sampler = torch.tensor([[-0.5, -0.5, -0.1], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    w, _ = rollout_correction_weights(old, sampler, mask, mode="sequence_truncate", clip_max=3.0)
    assert w.shape == (2,)
    assert math.isclose(w[0].item(), math.exp((-0.5 - 1.5) / 2), rel_tol=1e-6)  # the masked −8.9 is left out
    assert w[1].item() == 1.0
    m, _ = rollout_correction_weights(old, sampler, mask, mode="sequence_mask", clip_min=0.5, clip_max=3.0)
    assert m.tolist() == [0.0, 1.0]  # exp(−1) = 0.37 < 0.5


def test_weights_errors_say_what_to_fix():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        rollout_correction_weights(x, x, mask, mode="tokens")
    with pytest.raises(ValueError, match="clip_max > 0"):
        rollout_correction_weights(x, x, mask, mode="token_mask", clip_max=None)
    with pytest.raises(ValueError, match="clip_min"):
        rollout_correction_weights(x, x, mask, mode="token_mask", clip_min=4.0, clip_max=3.0)
    with pytest.raises(ValueError, match=r"must all be \[B, L\]"):
        rollout_correction_weights(x, torch.zeros(2, 4), mask, mode="token_mask")


# ----------------------------------------------------------------------------- the losses


def _token_loss(weights, beta=0.1):
    torch.manual_seed(0)
    logps = (torch.randn(3, 5) * 0.1 - 1).requires_grad_()
    old = logps.detach() + torch.randn(3, 5) * 0.05
    ref = logps.detach() + torch.randn(3, 5) * 0.05
    A, mask = torch.tensor([1.0, -0.5, 0.2]), torch.ones(3, 5)
    loss, _ = clipped_token_loss(logps, old, A, mask, epsilon=0.2, ref_logps=ref, beta=beta, weights=weights)
    loss.backward()
    return loss.detach(), logps.grad


def test_token_loss_weights_scale_the_surrogate_not_the_kl():
    base, g_base = _token_loss(None)
    same, g_same = _token_loss(torch.ones(3, 5))
    assert torch.equal(base, same) and torch.equal(g_base, g_same)
    no_kl, _ = _token_loss(None, beta=0.0)
    zero, _ = _token_loss(torch.zeros(3, 5))
    assert math.isclose(zero.item(), (base - no_kl).item(), abs_tol=1e-7)  # only β·KL is left
    w = torch.rand(3, 5)
    _, g_w = _token_loss(w, beta=0.0)
    _, g_1 = _token_loss(None, beta=0.0)
    assert torch.allclose(g_w, g_1 * w, atol=1e-7)  # per-token weights scale each token's gradient
    _, g_row = _token_loss(torch.tensor([2.0, 0.0, 1.0]), beta=0.0)  # [B] weights broadcast over tokens
    assert torch.allclose(g_row, g_1 * torch.tensor([2.0, 0.0, 1.0])[:, None], atol=1e-7)
    with pytest.raises(ValueError, match="weights must be"):
        _token_loss(torch.ones(3, 4))


def test_sequence_loss_weights_scale_each_row():
    torch.manual_seed(1)
    logps = (torch.randn(4, 6) * 0.1 - 1).requires_grad_()
    old = logps.detach() + torch.randn(4, 6) * 0.01
    A, mask = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, 6)

    def run(weights):
        logps.grad = None
        loss, _ = sequence_clipped_loss(logps, old, A, mask, epsilon=0.2, weights=weights)
        loss.backward()
        return logps.grad.clone()

    g1 = run(None)
    w = torch.tensor([0.5, 2.0, 0.0, 1.0])
    assert torch.allclose(run(w), g1 * w[:, None], atol=1e-7)
    with pytest.raises(ValueError, match="one per sequence"):
        run(torch.ones(4, 6))


# ----------------------------------------------------------------------------- configs


def test_config_errors_say_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'token_truncate'"):
        DiffuGRPOConfig(output_dir=str(tmp_path), rollout_correction="token_truncat", **BASE)
    with pytest.raises(ValueError, match="sequence-level weights only.*sequence_truncate"):
        GDPOConfig(output_dir=str(tmp_path), rollout_correction="token_truncate", **BASE)
    with pytest.raises(ValueError, match="no importance ratio"):
        DMPOConfig(output_dir=str(tmp_path), rollout_correction="sequence_mask", **BASE)
    with pytest.raises(ValueError, match="rollout_correction_min"):
        DiffuGRPOConfig(output_dir=str(tmp_path), rollout_correction="token_mask", rollout_correction_min=5.0, **BASE)
    assert GDPOConfig(output_dir=str(tmp_path), rollout_correction="sequence_mask", **BASE).rollout_correction_max == 3.0


# ----------------------------------------------------------------------------- trainers


class _Recording(DiffuGRPOTrainer):
    """Keeps each rollout's (completion ids → commit log-probs) and each loss call's batch rows."""

    def _generate_single_turn(self, *args, **kwargs):
        result = super()._generate_single_turn(*args, **kwargs)
        out = self._rollout
        self.sampled = getattr(self, "sampled", [])
        for ids, lp in zip(out.completion_ids, out.commit_logprob, strict=True):
            self.sampled.append((tuple(ids.tolist()), lp.clone()))
        return result

    def compute_policy_loss(self, model, inputs):
        self.seen = getattr(self, "seen", [])
        self.seen.append((inputs["completion_ids"].clone(), inputs["sampler_logps"].clone()))
        return super().compute_policy_loss(model, inputs)


def test_diffu_grpo_trains_with_the_correction_and_rows_stay_aligned(tokenizer, dataset, tmp_path):  # noqa: F811
    trainer = make_trainer("diffu_grpo", tokenizer, dataset, tmp_path, trainer_cls=_Recording, max_steps=1,
                           rollout_correction="token_truncate", rollout_correction_max=2.0, after_eos="keep")
    trainer.train()
    logs = {k: v for h in trainer.state.log_history for k, v in h.items()}
    assert 0 < logs["rollout_correction/weight_max"] <= 2.0
    assert math.isfinite(logs["rollout_correction/log_gap_mean"])
    # TRL shuffles and splits the batch: every row's sampler log-probs must still be its own rollout's
    for ids, lps in trainer.seen:
        for row_ids, row_lp in zip(ids, lps, strict=True):
            matches = [lp for s_ids, lp in trainer.sampled if s_ids == tuple(row_ids.tolist())]
            assert any(torch.equal(row_lp.nan_to_num(9.0), lp.nan_to_num(9.0)) for lp in matches)


def test_masking_every_weight_leaves_the_policy_unchanged(tokenizer, dataset, tmp_path):  # noqa: F811
    # beta = 0: the loss is the weighted surrogate alone, so weights that are all 0 (every sequence weight
    # lies below rollout_correction_min) give no update; the same run keeping every weight does update.
    kw = dict(max_steps=1, beta=0.0, num_iterations=1)
    masked = make_trainer("gdpo", tokenizer, dataset, tmp_path / "a", rollout_correction="sequence_mask",
                          rollout_correction_min=1e29, rollout_correction_max=1e30, **kw)
    before = snapshot(masked)
    masked.train()
    after = dict(masked.model.named_parameters())
    assert all(torch.equal(p, after[n].detach()) for n, p in before.items())
    logs = {k: v for h in masked.state.log_history for k, v in h.items()}
    assert logs["rollout_correction/weight_max"] == 0.0 and logs["rollout_correction/changed_frac"] == 1.0
    kept = make_trainer("gdpo", tokenizer, dataset, tmp_path / "b", rollout_correction="sequence_mask",
                        rollout_correction_max=1e30, **kw)
    before = snapshot(kept)
    kept.train()
    after = dict(kept.model.named_parameters())
    assert any(not torch.equal(p, after[n].detach()) for n, p in before.items())


class _IgnoresCorrection(GDPOTrainer):
    def compute_policy_loss(self, model, inputs):
        logps = self.estimate_logps(model, inputs)
        return (logps * 0).sum(), {}


def test_a_loss_that_ignores_the_correction_fails_loudly(tokenizer, dataset, tmp_path):  # noqa: F811
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, trainer_cls=_IgnoresCorrection, max_steps=1,
                           rollout_correction="sequence_truncate")
    with pytest.raises(RuntimeError, match="ignores rollout_correction='sequence_truncate'"):
        trainer.train()
