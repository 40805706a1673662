"""The three DLM trainers on a tiny random model built in-process (CPU, a few seconds each).

* each trainer takes two optimiser steps and every trainable parameter changes;
* common random numbers: a forward hook on the model records every noisy input; the old,
  reference and current estimates of a row in an inner iteration see identical masks, and
  fresh masks differ across inner iterations (fixed ones do not);
* GDPO's ratio is exactly 1 on the first inner step (and ≈ 1 when the old estimate is a
  separate forward on the same masks);
* DMPO's baseline-subtracted weights sum to zero per group, tempered to the default ESS target;
* ratio metrics (clip fractions, |log r|) are logged and GDPO's sequence clip binds at μ = 2;
* drop_flat_groups: each micro-batch's loss is that of its kept rows alone;
* the estimators see exactly the completion ids the sampler produced (after_eos 'eos' / 'keep');
* transformers' learning-rate warm-up and decay drive the optimizer;
* a user subclass overriding the loss and a user estimator plug in as documented;
* configs reject invalid combinations, and TRL options the trainers do not honour, with a
  message that names the option and its value and says how to fix it;
* no telemetry is sent.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from dlm_trl.masking import apply_mask, token_log_probs  # noqa: E402
from dlm_trl.models import TinyDLMConfig, TinyDLMForMaskedDiffusion  # noqa: E402
from dlm_trl.models.tiny.train import build_tokenizer  # noqa: E402
from dlm_trl.tasks import get_task  # noqa: E402
from dlm_trl.trainers import (  # noqa: E402
    DiffuGRPOConfig,
    DiffuGRPOTrainer,
    DMPOConfig,
    DMPOTrainer,
    GDPOConfig,
    GDPOTrainer,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machines are shared: one intra-op thread is several times faster under contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tokenizer():
    rows = get_task("countdown").rows("train", 40, seed=1)
    corpus = [r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows]
    return build_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="module")
def dataset():
    return get_task("countdown").dataset("train", 8, seed=0)


def make_model(tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    cfg = TinyDLMConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256, mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    return TinyDLMForMaskedDiffusion(cfg)


def text_reward(prompts, completions, **kwargs):
    """A deterministic reward that varies between completions (the random model never solves countdown)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(map(ord, t)) % 5) / 4.0 for t in texts]


COMMON = dict(
    per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=2, max_steps=2,
    num_iterations=2, gen_length=8, block_length=4, diffusion_steps=4, learning_rate=1e-2, bf16=False,
    use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
)


def make_trainer(kind, tokenizer, dataset, tmp_path, model=None, **overrides):
    trainer_cls, config_cls = {
        "diffu_grpo": (DiffuGRPOTrainer, DiffuGRPOConfig),
        "gdpo": (GDPOTrainer, GDPOConfig),
        "dmpo": (DMPOTrainer, DMPOConfig),
    }[kind]
    ctor = {k: overrides.pop(k) for k in ("peft_config", "ref_model", "estimator") if k in overrides}
    trainer_cls = overrides.pop("trainer_cls", trainer_cls)
    args = config_cls(output_dir=str(tmp_path / kind), **{**COMMON, **overrides})
    return trainer_cls(
        model=model if model is not None else make_model(tokenizer), reward_funcs=[text_reward], args=args,
        train_dataset=dataset, processing_class=tokenizer, **ctor,
    )


def snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def assert_all_changed(trainer, before):
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not unchanged, f"parameters unchanged after training: {unchanged}"


@pytest.mark.parametrize("kind", ["diffu_grpo", "gdpo", "dmpo"])
def test_two_steps_change_every_parameter(kind, tokenizer, dataset, tmp_path):
    trainer = make_trainer(kind, tokenizer, dataset, tmp_path)
    before = snapshot(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    assert_all_changed(trainer, before)
    logs = {k for entry in trainer.state.log_history for k in entry}
    assert "reward" in logs and "nfe/total" in logs
    if kind == "dmpo":
        assert {"dmpo/ess_mean", "dmpo/weight_max_mean", "dmpo/c_mean", "wdce/ce_mean"} <= logs
    else:
        assert "ratio/mean" in logs
    if kind == "diffu_grpo":
        assert "kl" in logs  # β = 0.04 by default: a frozen copy of the initial policy is the reference


def _capturing(trainer_cls):
    """A subclass that keeps its first micro-batch, and (for the ratio trainers) the estimate before any update."""

    class Capturing(trainer_cls):
        captured = None

        def compute_policy_loss(self, model, inputs):
            if self.captured is None:
                batch = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
                with torch.no_grad():
                    before = self.estimate_logps(model, batch).detach()
                    loss_before, _ = super().compute_policy_loss(model, batch)
                self.captured = (batch, before, float(loss_before))
            return super().compute_policy_loss(model, inputs)

    return Capturing


@pytest.mark.parametrize("kind", ["diffu_grpo", "gdpo", "dmpo"])
def test_one_update_moves_likelihood_towards_the_rewarded_completions(kind, tokenizer, dataset, tmp_path):
    """The sign of each objective: after one small optimizer step on a batch, the advantage-weighted
    ELBO estimate of that batch (same masks) goes up — completions with A > 0 became more likely
    relative to those with A < 0 — and DMPO's weighted denoising cross-entropy goes down."""
    trainer_cls = {"diffu_grpo": DiffuGRPOTrainer, "gdpo": GDPOTrainer, "dmpo": DMPOTrainer}[kind]
    trainer = make_trainer(
        kind, tokenizer, dataset, tmp_path, trainer_cls=_capturing(trainer_cls), max_steps=1,
        gradient_accumulation_steps=1, num_iterations=1, per_device_train_batch_size=8, learning_rate=1e-3,
    )
    trainer.train()
    batch, before, loss_before = trainer.captured
    with torch.no_grad():
        after = trainer.estimate_logps(trainer.model, batch)
        loss_after, _ = trainer.compute_policy_loss(trainer.model, batch)
    if kind == "dmpo":
        assert float(loss_after) < loss_before, (float(loss_after), loss_before)
        return
    A = batch["advantages"]
    assert A.abs().sum() > 0, "the rewards did not vary within a group"
    delta = ((after - before) * batch["completion_mask"]).sum(1)  # [B] change of each sequence's estimate
    assert float((A * delta).sum()) > 0, (A, delta)


def test_groups_with_equal_rewards_get_exactly_zero_advantage(tokenizer, dataset, tmp_path):
    """TRL's float32 ``R - mean(R)`` leaves ±1e-9 in a flat group, which Adam would turn into full-size
    steps; the base zeroes those rows exactly and leaves the other groups' advantages alone."""

    def flat_then_varied(prompts, completions, **kwargs):
        # rows of the first group (the first prompt's G completions) all score 0.1; the rest vary
        return [0.1 if i < 4 else float(i % 3) / 10 + 0.1 for i in range(len(completions))]

    args = GDPOConfig(output_dir=str(tmp_path / "gdpo"), **{**COMMON, "max_steps": 1, "num_iterations": 1})
    trainer = GDPOTrainer(model=make_model(tokenizer), reward_funcs=[flat_then_varied], args=args,
                          train_dataset=dataset, processing_class=tokenizer)
    seen = []
    original = trainer._score_rollout

    def recording(out):
        seen.append(out["advantages"].clone())
        original(out)

    trainer._score_rollout = recording
    trainer.train()
    adv = seen[0]  # [8] two groups of 4
    assert torch.equal(adv[:4], torch.zeros(4)), adv
    assert torch.allclose(adv[4:], torch.tensor([0.0, 0.1, -0.1, 0.0]), atol=1e-6), adv  # R - mean(R), untouched


class ForwardRecorder:
    """Forward pre-hook: the mask pattern of every estimator forward, keyed by the row's seed."""

    def __init__(self, trainer, tag):
        self.trainer, self.tag, self.calls = trainer, tag, []

    def __call__(self, module, args, kwargs):
        seeds = self.trainer._estimating_seeds
        if seeds is None:  # a sampler forward
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        masked = (ids == self.trainer.mask_token_id).cpu()  # [B*D, T]
        D = masked.shape[0] // seeds.shape[0]
        phase = "current" if torch.is_grad_enabled() else self.tag
        for seed, rows in zip(seeds.tolist(), masked.view(seeds.shape[0], D, -1), strict=True):
            self.calls.append((phase, seed, rows.clone()))


def record_masks(trainer):
    recorders = [ForwardRecorder(trainer, "old")]
    handles = [trainer.model.register_forward_pre_hook(recorders[0], with_kwargs=True)]
    if trainer.ref_model is not None:
        recorders.append(ForwardRecorder(trainer, "ref"))
        handles.append(trainer.ref_model.register_forward_pre_hook(recorders[1], with_kwargs=True))
    return recorders, handles


@pytest.mark.parametrize("kind", ["diffu_grpo", "gdpo"])
def test_old_ref_current_share_masks_and_fresh_masks_change(kind, tokenizer, dataset, tmp_path):
    """GDPO runs its per-token KL anchor (kl_estimator='token_k3'): reference and policy contributions
    are compared token by token, so they must come from the same masks."""
    extra = {"kl_estimator": "token_k3"} if kind == "gdpo" else {}
    trainer = make_trainer(kind, tokenizer, dataset, tmp_path, beta=0.04, max_steps=2, **extra)
    trainer._iteration0_on_policy = False  # force a separate old forward for the first inner iteration too
    recorders, handles = record_masks(trainer)
    trainer.train()
    for h in handles:
        h.remove()
    calls = [c for r in recorders for c in r.calls]
    by_phase: dict[str, dict[int, torch.Tensor]] = {"old": {}, "ref": {}, "current": {}}
    for phase, seed, rows in calls:
        by_phase[phase].setdefault(seed, rows)
        assert torch.equal(by_phase[phase][seed], rows)  # a seed always gives the same masks
    current = by_phase["current"]
    assert current, "no current-policy estimate was recorded"
    for seed, rows in current.items():
        assert torch.equal(by_phase["old"][seed], rows), "old and current masks differ for a row"
        assert torch.equal(by_phase["ref"][seed], rows), "reference and current masks differ for a row"
    # Fresh masks: the two inner iterations of a row use different seeds and different masks.
    assert len(current) == 2 * 8  # 8 rows × 2 inner iterations (one rollout batch per 2 steps)
    patterns = [rows for rows in current.values()]
    distinct = {tuple(p.flatten().tolist()) for p in patterns}
    assert len(distinct) > len(patterns) // 2


def test_fixed_mask_schedule_reuses_masks_and_old_is_computed_once(tokenizer, dataset, tmp_path):
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, mask_schedule="fixed", num_iterations=2)
    trainer._iteration0_on_policy = False
    recorders, handles = record_masks(trainer)
    trainer.train()
    for h in handles:
        h.remove()
    current_seeds = [seed for phase, seed, _ in recorders[0].calls if phase == "current"]
    assert len(set(current_seeds)) == 8  # 8 rows, the same seed in both inner iterations
    assert len(current_seeds) == 16
    n = trainer.estimator.nfe(8)
    assert trainer.nfe_counts["old"] == 8 * n  # one old estimate per row, not one per inner iteration


def test_gdpo_ratio_exactly_one_on_first_inner_step(tokenizer, dataset, tmp_path, monkeypatch):
    import dlm_trl.trainers.gdpo as gdpo

    seen = []
    original = gdpo.sequence_clipped_loss

    def recording(logps, old, advantages, mask, **kw):
        seq, seq_old = (logps * mask).sum(1), (old * mask).sum(1)
        seen.append((trainer._inner_iteration(), torch.exp((seq - seq_old).detach() / mask.shape[1])))
        return original(logps, old, advantages, mask, **kw)

    monkeypatch.setattr(gdpo, "sequence_clipped_loss", recording)
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path)
    trainer.train()
    first = torch.cat([r for k, r in seen if k == 0])
    later = torch.cat([r for k, r in seen if k == 1])
    assert torch.equal(first, torch.ones_like(first))
    assert not torch.allclose(later, torch.ones_like(later))  # the policy moved after the first step

    # With the old estimate as its own forward (same masks), the first ratio is 1 up to float error.
    seen.clear()
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, max_steps=1)
    trainer._iteration0_on_policy = False
    trainer.train()
    first = torch.cat([r for k, r in seen if k == 0])
    assert torch.allclose(first, torch.ones_like(first), atol=1e-5)


def test_dmpo_weights_sum_to_zero_per_group(tokenizer, dataset, tmp_path):
    """With DMPOConfig's defaults (target_ess 0.7) the logged ESS is the target, reached by tempering."""
    trainer = make_trainer("dmpo", tokenizer, dataset, tmp_path, max_steps=1)
    assert trainer.args.target_ess == 0.7
    weights = []
    original = trainer._score_rollout

    def recording(out):
        original(out)
        weights.append(out["dmpo_weights"].clone())

    trainer._score_rollout = recording
    trainer.train()
    w = torch.cat(weights).view(-1, 4)  # rows of a group are contiguous before TRL shuffles them
    assert torch.allclose(w.sum(1), torch.zeros(w.shape[0]), atol=1e-6)
    assert w.abs().sum() > 0
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert logged["dmpo/ess_mean"] >= 0.7 - 1e-6
    assert logged["dmpo/ess_untempered_mean"] < logged["dmpo/ess_mean"]  # text_reward / α = up to 25 nats
    assert 0.0 < logged["dmpo/c_mean"] < 1.0 and 0.25 <= logged["dmpo/weight_max_mean"] < 1.0
    assert logged["dmpo/log_ratio/abs_max"] == 0.0  # p_v = p_ref at the first rollout, on shared masks


def test_peft_reference_is_the_adapter_disabled_base(tokenizer, dataset, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = make_trainer("diffu_grpo", tokenizer, dataset, tmp_path, peft_config=peft_config)
    assert trainer.ref_model is None
    before = snapshot(trainer)
    assert before and all("lora_" in n for n in before)
    trainer.train()
    assert_all_changed(trainer, before)
    first_kl = next(e["kl"] for e in trainer.state.log_history if "kl" in e)
    assert abs(first_kl) < 1e-6  # zero-initialised adapter: policy = reference at the start


def test_copied_reference_runs_the_initial_weights(tokenizer, dataset, tmp_path):
    """Without PEFT the reference is a copy of the initial policy. TRL patches the policy's
    ``forward`` with a closure over the policy itself; a copy that kept that patch ran the
    *policy's* weights, so the KL to the reference (and DMPO's ℓ) were identically zero."""
    model = make_model(tokenizer)
    initial = make_model(tokenizer)  # same seed: the same weights as `model` before training
    trainer = make_trainer("diffu_grpo", tokenizer, dataset, tmp_path, model=model, num_iterations=1, max_steps=3)
    assert trainer.ref_model is not None
    trainer.train()
    ids = torch.randint(3, len(tokenizer), (2, 12))
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    with torch.no_grad():
        ref_logits, init_logits = ref(input_ids=ids).logits, initial(input_ids=ids).logits
        policy_logits = trainer.model(input_ids=ids).logits
    torch.testing.assert_close(ref_logits, init_logits)
    assert (policy_logits - ref_logits).abs().max() > 1e-4
    kls = [e["kl"] for e in trainer.state.log_history if "kl" in e]
    assert kls[0] == 0.0 and all(k > 0 for k in kls[1:]), kls  # μ = 1: every later step is off the reference


def test_explicit_reference_model(tokenizer, dataset, tmp_path):
    ref = make_model(tokenizer, seed=1)
    trainer = make_trainer("diffu_grpo", tokenizer, dataset, tmp_path, ref_model=ref, max_steps=1)
    assert trainer.accelerator.unwrap_model(trainer.ref_model) is ref
    assert not any(p.requires_grad for p in ref.parameters())
    path = tmp_path / "saved"
    make_model(tokenizer, seed=2).save_pretrained(path)
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, ref_model=str(path), beta=0.01, max_steps=1)
    assert trainer.ref_model is not None
    trainer.train()


class ConstantEstimator:
    """A user estimator: one fully masked forward, log f(y_i | all masked) (no randomness)."""

    name = "constant_user_estimator"
    deterministic = True
    calls = 0

    def nfe(self, completion_length):
        return 1

    def __call__(self, model, prompt_ids, completion_ids, completion_mask, *, generator=None,
                 prompt_attention_mask=None):
        type(self).calls += 1
        P = prompt_ids.shape[1]
        ids = torch.cat([prompt_ids, completion_ids], 1)
        noise = torch.zeros_like(ids, dtype=torch.bool)
        noise[:, P:] = True
        attn = None
        if prompt_attention_mask is not None:
            attn = torch.cat([prompt_attention_mask, torch.ones_like(completion_ids)], 1)
        logits = model(apply_mask(ids, noise, model.mask_token_id), attention_mask=attn)
        return token_log_probs(logits[:, P:], completion_ids) * completion_mask


def test_user_estimator_by_instance_and_by_import_path(tokenizer, dataset, tmp_path):
    ConstantEstimator.calls = 0
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, estimator=ConstantEstimator(), max_steps=1)
    trainer.train()
    assert ConstantEstimator.calls > 0
    assert trainer.nfe_counts["old"] == 8  # deterministic: one old estimate per row for both iterations

    ConstantEstimator.calls = 0
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, estimator=f"{__name__}:ConstantEstimator",
                           max_steps=1)
    assert isinstance(trainer.estimator, ConstantEstimator)
    trainer.train()
    assert ConstantEstimator.calls > 0


class ReinforceGDPO(GDPOTrainer):
    """A user subclass: plain REINFORCE on the ELBO instead of the clipped ratio."""

    def compute_policy_loss(self, model, inputs):
        logps = self.estimate_logps(model, inputs)
        seq = (logps * inputs["completion_mask"]).sum(1) / logps.shape[1]
        self.loss_calls = getattr(self, "loss_calls", 0) + 1
        return -(inputs["advantages"] * seq).mean(), {"user/seq_elbo": seq.detach().mean()}


def test_user_subclass_overriding_the_loss(tokenizer, dataset, tmp_path):
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, trainer_cls=ReinforceGDPO, max_steps=1)
    before = snapshot(trainer)
    trainer.train()
    assert trainer.loss_calls == 2  # two micro-batches
    assert_all_changed(trainer, before)
    assert any("user/seq_elbo" in e for e in trainer.state.log_history)


@pytest.mark.parametrize(
    "config_cls, kwargs, match",
    [
        (GDPOConfig, {"gen_length": 12, "block_length": 8}, "block_length"),
        (GDPOConfig, {"gen_length": 16, "block_length": 8, "diffusion_steps": 3}, "diffusion_steps"),
        (GDPOConfig, {"estimator": "sdmc_elb"}, "Did you mean 'sdmc_elbo'"),
        (GDPOConfig, {"estimator_kwargs": {"num_nodez": 3}}, "estimator_kwargs"),
        (GDPOConfig, {"beta": 0.1, "reference": "none"}, "reference='initial'"),
        (GDPOConfig, {"use_vllm": True}, "use_vllm=True is not supported.*Leave it at False"),
        (GDPOConfig, {"length_normalization": "mean"}, "padded"),
        (DMPOConfig, {"num_generations": 1}, "num_generations ≥ 2"),
        (DMPOConfig, {"beta": 0.04}, "set beta=0"),
        (DMPOConfig, {"scale_rewards": "group"}, "scale_rewards='none'"),
        (DMPOConfig, {"num_replicates": 3}, "even"),
        (DiffuGRPOConfig, {"loss_type": "dapo"}, "bnpo"),
        (DiffuGRPOConfig, {"importance_sampling_level": "sequence"}, "GDPOTrainer"),
        (GDPOConfig, {"rollout_autocast_dtype": "bfloat61"}, "Did you mean 'bfloat16'"),
        (GDPOConfig, {"kl_estimator": "k2"}, "token_k3"),
        (GDPOConfig, {"after_eos": "pad"}, "after_eos must be one of"),
        # TRL options the trainers do not honour: the error names the option, its value and what to do
        (GDPOConfig, {"use_bias_correction_kl": True}, r"use_bias_correction_kl=True is not supported.*=False"),
        (DMPOConfig, {"use_bias_correction_kl": True}, r"use_bias_correction_kl=True is not supported.*False"),
        (DMPOConfig, {"delta": 4.0}, r"delta=4.0 is not supported.*no importance ratio"),
        (GDPOConfig, {"delta": 1.002}, r"delta=1.002 is not supported.*1 \+ epsilon_high = 1.003"),
        (DiffuGRPOConfig, {"delta": 1.2}, r"delta=1.2 is not supported.*= 1.5"),
        (GDPOConfig, {"loss_type": "dapo"}, r"loss_type='dapo' is not supported.*loss_type='grpo'"),
        (DMPOConfig, {"loss_type": "grpo"}, r"loss_type='grpo' is not supported.*loss_type='wdce'"),
        (GDPOConfig, {"importance_sampling_level": "token"}, r"importance_sampling_level='token' is not supported"),
        (DMPOConfig, {"importance_sampling_level": "sequence"}, r"importance_sampling_level='sequence' is not"),
        (GDPOConfig, {"epsilon": 0.3}, r"epsilon=0.3 is not supported.*sequence_epsilon=None"),
        (GDPOConfig, {"epsilon_high": 0.28}, r"epsilon_high=0.28 is not supported.*sequence_epsilon"),
        (DMPOConfig, {"epsilon": 0.3}, r"epsilon=0.3 is not supported.*no importance ratio"),
        (DMPOConfig, {"epsilon_high": 0.3}, r"epsilon_high=0.3 is not supported"),
        (DiffuGRPOConfig, {"top_p": 0.9}, r"top_p=0.9 is not supported: the diffusion sampler has no such option"),
        (DiffuGRPOConfig, {"top_k": 50}, r"top_k=50 is not supported.*Leave it at 0"),
        (GDPOConfig, {"min_p": 0.1}, r"min_p=0.1 is not supported.*Leave it at None"),
        (DMPOConfig, {"repetition_penalty": 1.1}, r"repetition_penalty=1.1 is not supported"),
        (GDPOConfig, {"generation_kwargs": {"num_beams": 2}}, r"generation_kwargs=\{'num_beams': 2\} is not supported"),
        (GDPOConfig, {"cache_implementation": "static"}, r"cache_implementation='static' is not supported"),
        (GDPOConfig, {"max_tool_calling_iterations": 3}, r"max_tool_calling_iterations=3 is not supported.*no tools"),
        (GDPOConfig, {"use_transformers_continuous_batching": True}, r"use_transformers_continuous_batching=True"),
        (DiffuGRPOConfig, {"entropy_coef": 0.01}, r"entropy_coef=0.01 is not supported.*entropies"),
        (DiffuGRPOConfig, {"router_aux_loss_coef": 0.01}, r"router_aux_loss_coef=0.01 is not supported"),
        (DiffuGRPOConfig, {"cfg_scale": 1.0}, r"cfg_scale=1.0 is not supported.*unguided.*Set cfg_scale=0"),
        (GDPOConfig, {"cfg_scale": 0.5}, r"cfg_scale=0.5 is not supported"),
        (DMPOConfig, {"cfg_scale": 2.0}, r"cfg_scale=2.0 is not supported"),
    ],
)
def test_config_rejects_invalid_combinations(config_cls, kwargs, match, tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(ValueError, match=match):
        config_cls(**{**base, **kwargs})


def test_rollout_autocast_applies_to_the_sampler_only(tokenizer, dataset, tmp_path):
    """bf16 rollouts: every sampler forward runs under autocast, every likelihood / gradient forward in fp32."""
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, max_steps=1, rollout_autocast_dtype="bfloat16")
    seen = []  # (grad enabled, autocast dtype or None, logits dtype)

    def hook(module, args, kwargs, output):
        on = torch.is_autocast_enabled("cpu")
        seen.append((torch.is_grad_enabled(), torch.get_autocast_dtype("cpu") if on else None, output.logits.dtype))

    handle = trainer.model.register_forward_hook(hook, with_kwargs=True)
    trainer.train()
    handle.remove()
    steps = trainer.args.diffusion_steps
    sampler_calls = seen[:steps]  # one rollout batch of 8 rows, sampled first
    assert all(dtype == torch.bfloat16 and logits == torch.bfloat16 for _, dtype, logits in sampler_calls)
    rest = seen[steps:]
    assert rest and all(dtype is None and logits == torch.float32 for _, dtype, logits in rest)
    assert any(grad for grad, _, _ in rest)  # the policy pass is among the fp32 calls
    assert GDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                      rollout_autocast_dtype="none").rollout_autocast_dtype is None  # CLI spelling of None


def test_config_maps_completion_length_and_defaults(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    cfg = GDPOConfig(**base, max_completion_length=64, block_length=16)
    assert cfg.gen_length == 64 and cfg.diffusion_steps == 32 and cfg.sampler_config().num_blocks == 4
    cfg = DiffuGRPOConfig(**base, gen_length=48, block_length=16)
    assert cfg.max_completion_length == 48 and cfg.epsilon == 0.5 and cfg.beta == 0.04
    assert cfg.scale_rewards == "none" and cfg.estimator == "one_step_unmasking"
    cfg = DMPOConfig(**base)
    assert (cfg.alpha, cfg.num_generations, cfg.num_replicates, cfg.beta) == (0.04, 16, 4, 0.0)
    for cls in (GDPOConfig, DMPOConfig, DiffuGRPOConfig):
        import dataclasses

        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert not missing, f"{cls.__name__} fields without help: {missing}"


def test_no_telemetry_is_sent(tokenizer, dataset, tmp_path, monkeypatch):
    import trl.trainer.base_trainer as base_trainer

    def boom(*args, **kwargs):
        raise AssertionError("telemetry was sent")

    monkeypatch.setattr(base_trainer, "send_telemetry", boom)
    monkeypatch.delenv("CI", raising=False)
    with contextlib.nullcontext():
        make_trainer("gdpo", tokenizer, dataset, tmp_path)


def test_model_given_by_path_loads_model_and_tokenizer(tokenizer, dataset, tmp_path):
    path = tmp_path / "saved_policy"
    make_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    args = GDPOConfig(output_dir=str(tmp_path / "by_path"), **{**COMMON, "max_steps": 1})
    trainer = GDPOTrainer(model=str(path), reward_funcs=[text_reward], args=args, train_dataset=dataset)
    assert trainer.processing_class.padding_side == "left"
    assert trainer.mask_token_id == tokenizer.mask_token_id and trainer.model_family == "llada"
    trainer.train()


def test_honoured_trl_options_are_accepted(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    assert DiffuGRPOConfig(**base).use_bias_correction_kl is False  # TRL's default is True; d1 has no such factor
    cfg = DiffuGRPOConfig(**base, use_bias_correction_kl=True, delta=2.0, epsilon_high=0.7)
    assert cfg.use_bias_correction_kl and cfg.delta == 2.0
    cfg = GDPOConfig(**base)
    assert cfg.sequence_clip_range() == (3e-3, None) and cfg.kl_estimator == "token_k3"
    assert (cfg.loss_type, cfg.importance_sampling_level) == ("grpo", "sequence")
    cfg = GDPOConfig(**base, sequence_epsilon=None, epsilon=0.3, epsilon_high=0.4, delta=2.0)
    assert cfg.sequence_clip_range() == (0.3, 0.4)
    cfg = GDPOConfig(**base, sequence_epsilon=3e-4, sequence_epsilon_high=4e-4)  # GSPO's pair
    assert cfg.sequence_clip_range() == (3e-4, 4e-4)
    assert GDPOConfig(**base, after_eos="keep").sampler_config().after_eos == "keep"
    assert GDPOConfig(**base).sampler_config().after_eos == "eos"  # None: the family's default


@pytest.mark.parametrize("arg", ["tools", "rollout_func", "environment_factory"])
def test_trainer_refuses_tools_environments_and_rollout_functions(arg):
    with pytest.raises(ValueError, match=f"{arg}=.* is not supported: the diffusion sampler generates one turn"):
        GDPOTrainer(model=None, **{arg: [print] if arg == "tools" else print})


@pytest.mark.parametrize("kind", ["diffu_grpo", "gdpo"])
def test_ratio_metrics_are_logged_and_the_sequence_clip_binds(kind, tokenizer, dataset, tmp_path):
    """μ = 2: the second inner iteration is off-policy, so |log r| > 0 and (GDPO, ε = 3e-3 at lr 1e-2)
    some sequence ratios leave the clip range."""
    trainer = make_trainer(kind, tokenizer, dataset, tmp_path, max_steps=2, beta=0.04)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    names = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "log_ratio/abs_mean",
             "log_ratio/abs_max", "kl"]
    assert all(n in e for e in logs for n in names), logs
    assert max(e["log_ratio/abs_max"] for e in logs) > 0
    if kind == "gdpo":
        assert max(e["clip_ratio/region_mean"] for e in logs) > 0, logs


@pytest.mark.parametrize("kind", ["diffu_grpo", "gdpo", "dmpo"])
def test_drop_flat_groups_leaves_them_out_of_the_loss(kind, tokenizer, dataset, tmp_path):
    """drop_flat_groups: the rows of the flat group get keep_rows = 0, and every micro-batch's loss is
    the loss of its kept rows alone (same masks) — the normaliser counts only the kept groups."""

    def flat_then_varied(prompts, completions, **kwargs):
        return [0.1 if i < 4 else float(i % 2) for i in range(len(completions))]  # group 0 flat, group 1 not

    trainer_cls = {"diffu_grpo": DiffuGRPOTrainer, "gdpo": GDPOTrainer, "dmpo": DMPOTrainer}[kind]
    checked = []

    class Checking(trainer_cls):
        def compute_policy_loss(self, model, inputs):
            loss, metrics = super().compute_policy_loss(model, inputs)
            keep = inputs["keep_rows"].bool()
            if keep.any():
                rows = keep.shape[0]
                sub = {k: v[keep] if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v
                       for k, v in inputs.items() if k != "keep_rows"}
                with torch.no_grad():
                    alone, _ = super().compute_policy_loss(model, sub)
                checked.append((float(loss.detach()), float(alone)))
            return loss, metrics

    config_cls = {"diffu_grpo": DiffuGRPOConfig, "gdpo": GDPOConfig, "dmpo": DMPOConfig}[kind]
    args = config_cls(output_dir=str(tmp_path / kind), **{**COMMON, "max_steps": 1, "drop_flat_groups": True})
    trainer = Checking(model=make_model(tokenizer), reward_funcs=[flat_then_varied], args=args,
                       train_dataset=dataset, processing_class=tokenizer)
    seen = []
    original = trainer._score_rollout

    def recording(out):
        seen.append(out["keep_rows"].clone())
        original(out)

    trainer._score_rollout = recording
    trainer.train()
    assert torch.equal(seen[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert checked and all(a == pytest.approx(b, rel=1e-5, abs=1e-6) for a, b in checked), checked
    logged = {k: v for e in trainer.state.log_history for k, v in e.items()}
    assert logged["frac_flat_groups"] == 0.5


@pytest.mark.parametrize("after_eos", ["eos", "keep"])
def test_estimators_see_the_completion_ids_the_sampler_produced(after_eos, tokenizer, dataset, tmp_path,
                                                                monkeypatch):
    """Every estimator call (old, reference, current) gets exactly the sampler's completion rows: with
    after_eos='keep' tokens after the first EOS as drawn, with 'eos' rewritten to EOS."""
    import dlm_trl.trainers._base as base

    sampled = []
    real_generate = base.generate

    def recording_generate(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        sampled.append(out.completion_ids.clone())
        return out

    monkeypatch.setattr(base, "generate", recording_generate)
    model = make_model(tokenizer)
    eos = tokenizer.eos_token_id
    bias = torch.zeros(len(tokenizer))
    bias[eos] = 5.0  # EOS at ~30 % of positions: most rows have tokens after their first EOS

    def more_eos(module, args, kwargs, output):
        output.logits = output.logits + bias
        return output

    model.register_forward_hook(more_eos, with_kwargs=True)

    class Recording:
        def __init__(self, inner):
            self.inner, self.seen = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, model, prompt_ids, completion_ids, completion_mask, **kwargs):
            self.seen.append(completion_ids.clone())
            return self.inner(model, prompt_ids, completion_ids, completion_mask, **kwargs)

    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, model=model, max_steps=1, beta=0.04,
                           after_eos=after_eos)
    trainer._iteration0_on_policy = False  # an old estimate too
    trainer.estimator = recorder = Recording(trainer.estimator)
    trainer.train()
    assert trainer.sampler_config.after_eos == after_eos
    rows = sorted(tuple(r) for r in torch.cat(sampled).tolist())
    assert len(rows) == 8 and len(recorder.seen) >= 4  # old, reference and two current micro-batches
    for call in recorder.seen:
        got = sorted(tuple(r) for r in call.tolist())
        assert set(got) <= set(rows), "an estimator saw a completion the sampler did not produce"
    first = sorted(tuple(r) for c in recorder.seen[:2] for r in c.tolist())  # the first old estimate, 2 chunks
    assert first == rows  # the whole rollout batch, each row once
    after_first_eos = [r[r.index(eos) + 1:] for r in rows if eos in r]
    not_eos = sum(any(t != eos for t in tail) for tail in after_first_eos)
    if after_eos == "keep":
        assert not_eos > 0, rows  # the test would not tell the settings apart otherwise
    else:
        assert after_first_eos and not_eos == 0, rows


def test_lr_warmup_and_decay_follow_the_schedule(tokenizer, dataset, tmp_path):
    """transformers' lr_scheduler_type / warmup_steps drive the DLM trainers' optimizer unchanged."""
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, max_steps=4, gradient_accumulation_steps=1,
                           num_iterations=1, learning_rate=1e-3, lr_scheduler_type="linear", warmup_steps=2)
    trainer.train()
    lrs = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    # the rate each step used: warm-up 0 → 1e-3 over 2 steps, then linear decay to 0 at step 4
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_nfe_counts_what_an_estimator_ran_when_it_counts_itself(tokenizer, dataset, tmp_path):
    """JustGRPO-Fast's entropy selection forwards all L rows once per (row, seed) besides the k scored ones;
    ``nfe(L)`` is only k, so the trainer counts the estimator's own ``last_call_nfe``."""
    from dlm_trl.registry import load_estimator

    est = load_estimator("ar_order_exact", score_fraction=0.5, select="entropy")
    trainer = make_trainer("diffu_grpo", tokenizer, dataset, tmp_path, estimator=est, beta=0.0, num_iterations=1,
                           max_steps=1)
    trainer.train()
    L, k = 8, est.nfe(8)
    assert k == 4
    # 8 rows, each estimated once with grad (on-policy): the no-grad selection pass (L) + the k scored rows
    assert trainer.nfe_counts["policy"] + trainer.nfe_counts.get("old", 0) == 8 * (L + k)
