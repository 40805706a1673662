"""Failure handling (single process, tiny random model; the 2-rank NaN case is in
tests/test_distributed_deepspeed.py):

* a NaN / inf loss stops training with a clear error *before* the backward pass: the weights and
  the optimizer are untouched;
* an infinite reward stops training naming the reward function, or, with ``nonfinite="skip"``,
  the completion is treated as unscorable (advantage 0) and training goes on;
* running out of memory in the sampler says which settings reduce memory.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch
from trl import GRPOTrainer

sys.path.insert(0, str(Path(__file__).parent))
from test_trainers import COMMON, make_model, make_trainer, text_reward  # noqa: E402

from dlm_trl.models.tiny.train import build_tokenizer  # noqa: E402
from dlm_trl.tasks import get_task  # noqa: E402
from dlm_trl.trainers import DMPOTrainer, GDPOConfig, GDPOTrainer  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    rows = get_task("countdown").rows("train", 40, seed=1)
    corpus = [r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows]
    return build_tokenizer(corpus, vocab_size=300), get_task("countdown").dataset("train", 8, seed=0)


class NaNAtStep2(GDPOTrainer):
    def compute_policy_loss(self, model, inputs):
        loss, metrics = super().compute_policy_loss(model, inputs)
        return (loss * float("nan") if self.state.global_step == 1 else loss), metrics


class InfLoss(DMPOTrainer):
    def compute_policy_loss(self, model, inputs):
        loss, metrics = super().compute_policy_loss(model, inputs)
        return loss + float("inf"), metrics


def test_nan_loss_stops_before_the_optimizer_step(data, tmp_path):
    tok, ds = data
    trainer = make_trainer("gdpo", tok, ds, tmp_path, trainer_cls=NaNAtStep2, max_steps=3)
    after_step1 = {}

    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                after_step1.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
                after_step1["_adam_step"] = max(
                    int(s.get("step", 0)) for s in trainer.optimizer.state_dict()["state"].values()
                )

    trainer.add_callback(Snapshot())
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan here\) on rank\(s\) \[0\] at optimizer step 2"):
        trainer.train()
    assert trainer.state.global_step == 1
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), after_step1[name]), f"{name} changed by the NaN step"
        assert p.grad is None or torch.isfinite(p.grad).all()
    steps = [int(s.get("step", 0)) for s in trainer.optimizer.state_dict()["state"].values()]
    assert max(steps) == after_step1["_adam_step"] == 1  # no optimizer step was taken with the NaN loss


def test_nan_loss_step_is_skipped_when_configured(data, tmp_path):
    """nonfinite='skip': the NaN step (step 2) changes neither the weights nor Adam's state; steps 1 and 3
    are taken normally and training finishes."""
    tok, ds = data
    trainer = make_trainer("gdpo", tok, ds, tmp_path, trainer_cls=NaNAtStep2, max_steps=3, nonfinite="skip")
    snaps = {}

    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snaps[state.global_step] = (
                {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                max(int(s.get("step", 0)) for s in trainer.optimizer.state_dict()["state"].values()),
            )

    trainer.add_callback(Snapshot())
    trainer.train()
    assert trainer.state.global_step == 3
    (w1, adam1), (w2, adam2), (w3, adam3) = snaps[1], snaps[2], snaps[3]
    assert adam1 == adam2 == 1 and adam3 == 2  # step 2 took no optimizer step
    assert all(torch.equal(w1[n], w2[n]) for n in w1), "the skipped step changed the weights"
    assert any(not torch.equal(w2[n], w3[n]) for n in w2), "training did not go on after the skipped step"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    logged = {k: v for e in trainer.state.log_history for k, v in e.items() if k.startswith("nonfinite/")}
    assert logged.get("nonfinite/loss_skipped") == 1.0


def test_inf_loss_is_reported_too(data, tmp_path):
    tok, ds = data
    trainer = make_trainer("dmpo", tok, ds, tmp_path, trainer_cls=InfLoss, max_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(FloatingPointError, match="non-finite loss .*learning rate"):
        trainer.train()
    assert all(torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())


def inf_reward(prompts, completions, **kwargs):
    return [float("inf") if i == 1 else 0.5 for i in range(len(completions))]


def gdpo_with_rewards(reward_funcs, data, tmp_path, **overrides):
    tok, ds = data
    args = GDPOConfig(output_dir=str(tmp_path / "gdpo"), **{**COMMON, "max_steps": 1, **overrides})
    return GDPOTrainer(model=make_model(tok), reward_funcs=reward_funcs, args=args, train_dataset=ds,
                       processing_class=tok)


def test_infinite_reward_stops_with_the_function_name(data, tmp_path):
    trainer = gdpo_with_rewards([text_reward, inf_reward], data, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"\['inf_reward'\] returned an infinite reward for 1 of 8"):
        trainer.train()
    assert all(torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())


def test_infinite_reward_skipped_when_configured(data, tmp_path):
    trainer = gdpo_with_rewards([inf_reward], data, tmp_path, nonfinite="skip")
    seen = []
    original = trainer._score_rollout

    def recording(out):
        seen.append(out["advantages"].clone())
        original(out)

    trainer._score_rollout = recording
    trainer.train()
    adv = torch.cat(seen)
    assert torch.isfinite(adv).all() and adv[1] == 0.0  # the skipped completion carries no signal
    logged = {k: v for e in trainer.state.log_history for k, v in e.items()}
    assert logged["nonfinite/rewards_skipped"] == 1.0
    assert torch.isfinite(torch.tensor(logged["loss"]))


def test_oom_in_the_sampler_names_the_memory_knobs(data, tmp_path, monkeypatch):
    import dlm_trl.trainers._base as base

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(base, "generate", oom)
    tok, ds = data
    trainer = make_trainer("gdpo", tok, ds, tmp_path, max_steps=1)
    with pytest.raises(torch.OutOfMemoryError) as info:
        trainer.train()
    msg = str(info.value)
    for knob in ("per_device_train_batch_size", "steps_per_generation", "gen_length", "--use_peft", "zero3.yaml",
                 "Tried to allocate 20.00 GiB"):
        assert knob in msg, f"{knob!r} missing from: {msg}"


def test_nonfinite_option_is_validated(tmp_path):
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        GDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", nonfinite="ignore")


def test_calculate_rewards_hook_signature_unchanged():
    got = list(inspect.signature(GRPOTrainer._calculate_rewards).parameters)
    assert got == ["self", "inputs", "prompts", "completions", "completion_ids_list"], (
        f"TRL changed GRPOTrainer._calculate_rewards (overridden in dlm_trl/trainers/_base.py): {got}"
    )
