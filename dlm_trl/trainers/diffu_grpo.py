"""diffu-GRPO — d1 (Zhao, Gupta, Zheng & Grover, "d1: Scaling Reasoning in Diffusion Large
Language Models via Reinforcement Learning", arXiv 2504.12216).

Token-level PPO clip on ``ρ_{i,k} = exp(logp_θ − logp_old)`` where the per-token log-probs come
from the ``one_step_unmasking`` estimator (whole completion masked, each real prompt token
masked with probability 0.15 — a fresh prompt mask per inner iteration, shared by the old,
reference and current policies), advantages ``A = R − mean_group(R)`` (no std division:
``scale_rewards="none"``), k3 KL to the reference (β = 0.04; the adapter-disabled base under
PEFT), ε = 0.5, μ = ``num_iterations``; the loss is normalised over the valid tokens (up to and
including the first EOS) of the batch, as d1's code does (TRL's ``loss_type="bnpo"``).

TRL options it honours besides: ``epsilon_high`` (asymmetric clip), ``delta`` (two-sided
clipping: the unclipped ratio capped at δ), ``use_bias_correction_kl`` (k3 times the token ratio;
off by default, as in d1), ``loss_type`` ``bnpo`` / ``grpo`` / ``dr_grpo``. Logged for every
micro-batch: ``ratio/mean``, ``clip_ratio/{low,high,region}_mean``, ``log_ratio/abs_mean`` and
``log_ratio/abs_max`` (per valid token; all trivial at μ = 1, where every ratio is 1), ``kl``.
``rollout_correction`` (``token_*`` or ``sequence_*``, off by default) weights the surrogate by truncated or
masked importance weights from the sampler's commit-time token probabilities to the one-step estimate
(``rollout_correction/*`` metrics; :func:`dlm_trl.losses.rollout_correction_weights`).

Hooks: everything in :class:`~dlm_trl.trainers._base._DLMTrainerBase` (``_generate_single_turn``,
``_generate_and_score_completions``, ``_get_per_token_logps_and_entropies``, ``_compute_loss``,
``_send_telemetry``); this class only implements :meth:`DiffuGRPOTrainer.compute_policy_loss`.

Deliberate departures from d1's code: mask seeds are per row (d1 draws one seed per
iteration for the whole batch and stores it in a non-batch-first tensor, which TRL's shuffle
and split do not keep aligned with the rows); only real prompt tokens are masked, never
left padding; the old estimate of the first inner iteration is the current one detached
when the policy has not moved since the rollout (exactly as TRL does when μ = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import clipped_token_loss
from ._base import DLMConfig, _check_delta, _DLMTrainerBase

LOSS_TYPES = {"bnpo": "token", "grpo": "sequence", "dr_grpo": "constant"}


@dataclass
class DiffuGRPOConfig(DLMConfig):
    """Configuration of :class:`DiffuGRPOTrainer`; defaults are d1's (LLaDA-8B-Instruct, LoRA)."""

    estimator: str = field(
        default="one_step_unmasking",
        metadata={"help": "Likelihood estimator (d1: one_step_unmasking, p_mask_prompt 0.15)."},
    )
    epsilon: float = field(default=0.5, metadata={"help": "Clip range ε of the token ratio (d1: 0.5)."})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient β of the k3 term to the reference (d1: 0.04)."})
    num_iterations: int = field(
        default=12, metadata={"help": "Inner iterations μ per rollout batch (d1: 12; 8 for countdown / sudoku)."}
    )
    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW learning rate (d1: 3e-6)."})
    num_generations: int | None = field(default=6, metadata={"help": "Group size G (d1: 6)."})
    per_device_train_batch_size: int = field(
        default=6, metadata={"help": "Rows (completions) per device and micro-batch."}
    )
    max_completion_length: int | None = field(
        default=256, metadata={"help": "Completion length L (= gen_length; d1: 256)."}
    )
    loss_type: str = field(
        default="bnpo",
        metadata={
            "help": "Token aggregation: 'bnpo' (sum over valid tokens / their number in the batch — d1), "
            "'grpo' (mean per sequence, then over sequences) or 'dr_grpo' (sum / (B · L))."
        },
    )

    def _check_dlm_fields(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"DiffuGRPOConfig.loss_type={self.loss_type!r} is not supported; use one of {sorted(LOSS_TYPES)} "
                "('bnpo' is d1's token-mean)"
            )
        if self.importance_sampling_level != "token":
            raise self._unsupported(
                "importance_sampling_level", self.importance_sampling_level,
                "diffu-GRPO is token-level: leave importance_sampling_level='token' (use GDPOTrainer for a "
                "sequence-level ratio)",
            )
        _check_delta(self, self.epsilon, self.epsilon_high)
        super()._check_dlm_fields()


class DiffuGRPOTrainer(_DLMTrainerBase):
    """diffu-GRPO (d1, arXiv 2504.12216): token-level clipped ratio from ``one_step_unmasking``.

    Overrides, beyond the base's TRL hooks: :meth:`compute_policy_loss` only.
    """

    _name = "DiffuGRPO"
    _paper = {"title": "d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement Learning",
              "id": "2504.12216"}
    config_class = DiffuGRPOConfig

    def compute_policy_loss(self, model, inputs):
        logps = self.estimate_logps(model, inputs)  # [B, L], this iteration's prompt masks
        old = self.old_logps(inputs, logps)
        ref = inputs.get("ref_per_token_logps") if self.beta != 0.0 else None
        return clipped_token_loss(
            logps,
            old,
            inputs["advantages"],
            inputs["completion_mask"],
            epsilon=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            ref_logps=ref,
            beta=self.beta,
            normalization=LOSS_TYPES[self.args.loss_type],
            max_length=self.max_completion_length,
            delta=self.args.delta,
            kl_ratio_correction=self.args.use_bias_correction_kl,
            keep=inputs.get("keep_rows"),
            weights=self.rollout_correction(inputs, old),
        )


__all__ = ["DiffuGRPOConfig", "DiffuGRPOTrainer"]
