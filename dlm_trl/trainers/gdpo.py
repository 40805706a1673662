"""GDPO — Group Diffusion Policy Optimization (Rojas et al., arXiv 2510.08554).

Sequence-level ratio from the semi-deterministic Monte Carlo ELBO (``sdmc_elbo``: Gauss–Legendre
nodes in t, N = 3, one mask per node): ``r_g = exp((Ê_θ(y_g) − Ê_old(y_g)) / L)`` — the 1/|y|
sits inside the exponent as a per-token geometric mean (without it the clip saturates); ``L``
is the padded length (default, as GDPO's reference code) or the true length
(``length_normalization="true"``). Loss ``mean_g −min(r_g A_g, clip(r_g, 1−ε, 1+ε) A_g)`` with
``A_g = R_g − mean(R)`` — TRL's ``loss_type="grpo"`` with ``importance_sampling_level="sequence"``
(GSPO's form), which GDPOConfig fixes.

**Clip range.** ``log r_g`` is a per-token *mean* log-ratio, so it moves slowly: on the embedded
model, after 3 Adam steps at lr 1e-5, ``|log r|`` averaged 0.008 (max 0.057) and no ratio left
TRL's ``[0.8, 1.2]`` — the clip never bound, and μ inner steps were μ unclipped steps.
``sequence_epsilon`` (default 3e-3) is a range suited to such a ratio (GSPO uses 3e-4 / 4e-4 on
the same length-normalised quantity for autoregressive models); ``sequence_epsilon=None`` uses
TRL's ``epsilon`` / ``epsilon_high`` as the paper does. ``delta`` (two-sided clipping) caps the
unclipped ratio.

**KL.** β = 0 by default (the paper). With β > 0, ``kl_estimator="token_k3"`` (default) is a
per-token k3 of the estimator's per-token contributions, policy vs reference on the same masks,
averaged over each row's valid tokens: ≈ ``mean δ_i² / 2``, a real anchor. ``"sequence_k3"`` (the
earlier behaviour) is k3 of the mean difference, ≈ ``(mean δ_i)² / 2`` — about 100× weaker on the
embedded model, since per-token differences of both signs cancel in the mean.

Masks across the μ inner iterations (``mask_schedule``): ``"fresh"`` (default) draws new node
masks each iteration — the old estimate then costs μ·N forwards per sequence per rollout (N
fewer when the first iteration is on-policy) — or ``"fixed"`` keeps one set, so the old
estimate costs N forwards. Old, reference and current always share the iteration's masks, so
the ratio of the first inner step is exactly 1.

``rollout_correction`` (``sequence_truncate`` / ``sequence_mask``; off by default) weights each row's
surrogate by exp of the mean, over its valid tokens, of (the old ELBO contribution − the token's
log-probability when the sampler committed it), truncated or masked to ``[rollout_correction_min,
rollout_correction_max]`` (:func:`dlm_trl.losses.rollout_correction_weights`). Token modes are
refused: the ratio is per sequence.

Hooks: the base's (``_generate_single_turn``, ``_generate_and_score_completions``,
``_get_per_token_logps_and_entropies``, ``_compute_loss``, ``_send_telemetry``); this class only
implements :meth:`GDPOTrainer.compute_policy_loss`.

Not implemented (yet): the paper's optional memory trick (backprop node by node after a
no-grad pass); ``use_bias_correction_kl`` (refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..losses import KL_ESTIMATORS, LENGTH_MODES, RATIO_FORMS, sequence_clipped_loss
from ._base import DLMConfig, _check_delta, _DLMTrainerBase

#: TRL's default of ``GRPOConfig.epsilon`` — GDPO's ε when ``sequence_epsilon`` is None.
TRL_EPSILON = 0.2


@dataclass
class GDPOConfig(DLMConfig):
    """Configuration of :class:`GDPOTrainer`; defaults follow the paper (LLaDA-8B-Instruct, LoRA)
    except ``sequence_epsilon`` (a clip range that binds) and ``kl_estimator`` (per token)."""

    # One ratio per sequence: rollout_correction weights per sequence only.
    _ROLLOUT_CORRECTION_LEVELS: ClassVar[tuple[str, ...]] = ("sequence",)

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
    sequence_epsilon: float | None = field(
        default=3e-3,
        metadata={
            "help": "Clip range of the sequence ratio r = exp((E_theta - E_old)/L): r is clipped to [1 - eps, "
            "1 + eps_high], i.e. the length-normalised log-ratio to about [-eps, eps_high] (GSPO's form). Default "
            "3e-3: log r is a per-token mean, and with TRL's epsilon = 0.2 (the paper's setting) |log r| stayed "
            "near 0.008 (max 0.057) after 3 Adam steps on the embedded model, so the clip never bound; GSPO uses "
            "3e-4 / 4e-4 on the same quantity for autoregressive LMs. None: clip with TRL's epsilon / epsilon_high "
            "(the paper)."
        },
    )
    sequence_epsilon_high: float | None = field(
        default=None,
        metadata={"help": "Upper clip range of the sequence ratio (None: sequence_epsilon; GSPO uses 4e-4 with 3e-4)."},
    )
    kl_estimator: str = field(
        default="token_k3",
        metadata={
            "help": f"KL term used when beta > 0, one of {KL_ESTIMATORS}. 'token_k3' (default): k3 per token of the "
            "estimator's per-token contributions, policy vs reference on the same masks, averaged over the row's "
            "valid tokens (about mean(delta_i^2)/2: a per-token anchor). 'sequence_k3' (dlm-trl before; the paper "
            "uses beta = 0, so it has none): k3 of the mean per-token difference (about mean(delta_i)^2/2, ~100x "
            "weaker on the embedded model as differences of both signs cancel). 'sequence_k2' (ESPO, arXiv "
            "2512.03759, its reference code): 0.5 * (E_theta - E_ref)^2 / L on the sequence ELBOs. "
            "'sequence_k2_normalized': 0.5 * ((E_theta - E_ref) / L)^2 (L times smaller)."
        },
    )
    ratio_form: str = field(
        default="exp",
        metadata={
            "help": f"Sequence objective, one of {RATIO_FORMS}. 'exp' (default; GDPO, ESPO): the clipped ratio "
            "exp((E_theta - E_old)/L). 'bgpo_linear' (BGPO, arXiv 2510.11683): its lower bound A*(1 + x) for A >= 0 "
            "and A*exp(x) for A < 0 (x the length-normalised log-ratio; the trainer passes the estimate, not "
            "per-draw values, so the A < 0 branch is the exp form), unclipped; equal in value and gradient "
            "on-policy. Pair it with estimator_kwargs constant_memory: true for BGPO's memory profile."
        },
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (GDPO: 0, no reference model)."})
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "Fixed: GDPO's loss is TRL's 'grpo' aggregation (a mean over sequences) of one sequence-level "
            "ratio per completion; other values are refused."
        },
    )
    importance_sampling_level: str = field(
        default="sequence",
        metadata={"help": "Fixed: GDPO's ratio is sequence-level (GSPO's form); 'token' is refused."},
    )
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
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.ratio_form not in RATIO_FORMS:
            raise ValueError(f"ratio_form must be one of {RATIO_FORMS}, got {self.ratio_form!r}")
        if self.loss_type != "grpo":
            raise self._unsupported(
                "loss_type", self.loss_type,
                "GDPO's loss is one clipped sequence ratio per completion, averaged over sequences (TRL's 'grpo' "
                "with sequence-level ratios). Leave loss_type='grpo'; DiffuGRPOTrainer offers token-level losses.",
            )
        if self.importance_sampling_level != "sequence":
            raise self._unsupported(
                "importance_sampling_level", self.importance_sampling_level,
                "GDPO's ratio is sequence-level (a per-token geometric mean of ELBO ratios). Leave it at "
                "'sequence'; DiffuGRPOTrainer has token-level ratios.",
            )
        if self.use_bias_correction_kl:
            raise self._unsupported(
                "use_bias_correction_kl", True,
                "GDPO's ratio is an ELBO ratio per sequence, not the token importance weight the correction needs. "
                "Set use_bias_correction_kl=False (DiffuGRPOTrainer implements it).",
            )
        for name in ("sequence_epsilon", "sequence_epsilon_high"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1) or None, got {value}")
        if self.sequence_epsilon is None and self.sequence_epsilon_high is not None:
            raise ValueError("sequence_epsilon_high needs sequence_epsilon (set both, or use epsilon / epsilon_high)")
        if self.sequence_epsilon is not None and (self.epsilon != TRL_EPSILON or self.epsilon_high is not None):
            name, value = ("epsilon", self.epsilon) if self.epsilon != TRL_EPSILON else ("epsilon_high", self.epsilon_high)
            raise self._unsupported(
                name, value,
                f"GDPO clips its sequence ratio with sequence_epsilon={self.sequence_epsilon} (and "
                "sequence_epsilon_high); TRL's epsilon / epsilon_high are used only with sequence_epsilon=None. "
                "Set sequence_epsilon (or sequence_epsilon=None to clip with epsilon / epsilon_high, as the paper).",
            )
        epsilon, epsilon_high = self.sequence_clip_range()
        _check_delta(self, epsilon, epsilon_high)
        super()._check_dlm_fields()

    def sequence_clip_range(self) -> tuple[float, float | None]:
        """``(ε, ε_high)`` of the sequence ratio's clip: the ``sequence_epsilon`` pair, else TRL's."""
        if self.sequence_epsilon is not None:
            return self.sequence_epsilon, self.sequence_epsilon_high
        return self.epsilon, self.epsilon_high


class GDPOTrainer(_DLMTrainerBase):
    """GDPO (arXiv 2510.08554): sequence-level clipped ratio from ``sdmc_elbo`` estimates.

    Also runs ESPO (arXiv 2512.03759: ``kl_estimator="sequence_k2"``, antithetic ELBO draws) and
    BGPO (arXiv 2510.11683: ``ratio_form="bgpo_linear"``, many draws with ``constant_memory``);
    see ``recipes/configs/espo_llada_*.yaml`` and ``bgpo_llada_*.yaml``.

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
        epsilon, epsilon_high = self.args.sequence_clip_range()
        return sequence_clipped_loss(
            logps,
            old,
            inputs["advantages"],
            inputs["completion_mask"],
            epsilon=epsilon,
            epsilon_high=epsilon_high,
            length=self.args.length_normalization,
            ref_logps=ref,
            beta=self.beta,
            kl_estimator=self.args.kl_estimator,
            delta=self.args.delta,
            keep=inputs.get("keep_rows"),
            ratio_form=self.args.ratio_form,
            weights=self.rollout_correction(inputs, old),
        )


__all__ = ["GDPOConfig", "GDPOTrainer"]
