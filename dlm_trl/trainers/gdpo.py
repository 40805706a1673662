"""GDPO — Group Diffusion Policy Optimization (Rojas et al., arXiv 2510.08554).

Sequence-level ratio from the semi-deterministic Monte Carlo ELBO (``sdmc_elbo``: Gauss–Legendre
nodes in t, N = 3, one mask per node): ``r_g = exp((Ê_θ(y_g) − Ê_old(y_g)) / L)`` — the 1/|y|
sits inside the exponent as a per-token geometric mean (without it the clip saturates); ``L``
is the padded length (default, as GDPO's reference code) or the true length
(``length_normalization="true"``). Loss ``mean_g −min(r_g A_g, clip(r_g, 1−ε, 1+ε) A_g)`` with
``A_g = R_g − mean(R)``; β = 0 by default (a sequence-level k3 term is used when β > 0).

Masks across the μ inner iterations (``mask_schedule``): ``"fresh"`` (default) draws new node
masks each iteration — the old estimate then costs μ·N forwards per sequence per rollout (N
fewer when the first iteration is on-policy) — or ``"fixed"`` keeps one set, so the old
estimate costs N forwards. Old and current always share the iteration's masks, so the ratio
of the first inner step is exactly 1.

Hooks: the base's (``_generate_single_turn``, ``_generate_and_score_completions``,
``_get_per_token_logps_and_entropies``, ``_compute_loss``, ``_send_telemetry``); this class only
implements :meth:`GDPOTrainer.compute_policy_loss`.

Not implemented (yet): the paper's optional memory trick (backprop node by node after a
no-grad pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import LENGTH_MODES, sequence_clipped_loss
from ._base import DLMConfig, _DLMTrainerBase


@dataclass
class GDPOConfig(DLMConfig):
    """Configuration of :class:`GDPOTrainer`; defaults follow the paper (LLaDA-8B-Instruct, LoRA)."""

    estimator: str = field(
        default="sdmc_elbo",
        metadata={"help": "Likelihood estimator (GDPO: sdmc_elbo with N=3 Gauss-Legendre nodes, 1 mask per node)."},
    )
    length_normalization: str = field(
        default="padded",
        metadata={
            "help": f"Length L inside the ratio exp((E_theta - E_old)/L), one of {LENGTH_MODES}: 'padded' (the "
            "generation length, as GDPO's reference code) or 'true' (tokens up to and including the first EOS)."
        },
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (GDPO: 0, no reference model)."})
    learning_rate: float = field(
        default=1e-6, metadata={"help": "AdamW learning rate (GDPO: 5e-7 to 1e-6; larger diverges on LLaDA-8B)."}
    )
    num_iterations: int = field(default=12, metadata={"help": "Inner iterations μ per rollout batch."})
    num_generations: int | None = field(default=6, metadata={"help": "Group size G."})
    per_device_train_batch_size: int = field(default=6, metadata={"help": "Rows per device and micro-batch."})
    max_completion_length: int | None = field(
        default=256, metadata={"help": "Completion length L (= gen_length)."}
    )

    def _check_dlm_fields(self) -> None:
        if self.length_normalization not in LENGTH_MODES:
            raise ValueError(
                f"length_normalization must be one of {LENGTH_MODES}, got {self.length_normalization!r}"
            )
        super()._check_dlm_fields()


class GDPOTrainer(_DLMTrainerBase):
    """GDPO (arXiv 2510.08554): sequence-level clipped ratio from ``sdmc_elbo`` estimates.

    Overrides, beyond the base's TRL hooks: :meth:`compute_policy_loss` only.
    """

    _name = "GDPO"
    _paper = {"title": "Improving Reasoning for Diffusion Language Models via Group Diffusion Policy Optimization",
              "id": "2510.08554"}
    config_class = GDPOConfig

    def compute_policy_loss(self, model, inputs):
        logps = self.estimate_logps(model, inputs)  # [B, L] ELBO contributions, this iteration's masks
        old = self.old_logps(inputs, logps)
        ref = inputs.get("ref_per_token_logps") if self.beta != 0.0 else None
        return sequence_clipped_loss(
            logps,
            old,
            inputs["advantages"],
            inputs["completion_mask"],
            epsilon=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            length=self.args.length_normalization,
            ref_logps=ref,
            beta=self.beta,
        )


__all__ = ["GDPOConfig", "GDPOTrainer"]
