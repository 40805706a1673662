"""SPG — Sandwiched Policy Gradient (Wang et al., arXiv 2510.09541).

For each completion ``y_g`` with advantage ``A_g = R_g − mean(R)``, SPG ascends
``J = (1/G) Σ_g [1[A_g ≥ 0] A_g ELBO(y_g) + 1[A_g < 0] A_g · B⁻(y_g)]`` (Algorithm 1), where the
negative side ``B⁻ = ω·EUBO + (1 − ω)·ELBO`` (``mixture`` = ω; 1 = "SPG w/ EUBO", 0.5 = "SPG w/
Mixture", the reference scripts' setting) is an evidence *upper* bound: pushing the lower bound of good
samples up and the upper bound of bad ones down sandwiches the true ``log π_θ``. Both bounds come from
the ``eubo`` estimator (``plugins/dlm_trl_estimators/eubo.py``: the math, β, SPG's block-wise masking
and where the reference code differs) through :meth:`EUBO.bounds` — **one** set of K forward passes
gives the ELBO and the EUBO on the same masks, so each row costs K forwards whatever its side.

**Loss** (:func:`dlm_trl.losses.sandwiched_loss`): as the paper and its code, no importance ratio —
``Σ_g −A_g S_g / Σ_g n_g`` (``spg_normalization="token"``, the reference code) or ``mean_g −A_g S_g``
(``"sequence"``, Algorithm 1), with S the row's bound on this inner iteration's masks, recomputed by the
current policy at each of the μ inner steps (μ = 4 in the reference scripts). ``spg_clip=True`` adds
GDPO's sequence-level ratio ``exp((S_θ − S_old)/L)`` clipped to ``[1−ε, 1+ε_high]`` (TRL's
``epsilon`` / ``epsilon_high`` / ``delta``); only then are old estimates computed — once per rollout,
without gradient, on the same per-row mask seeds as the current estimate (common random numbers), and
stored batch-first as ``old_per_token_logps`` (ELBO) and ``old_eubo_per_token_logps`` (EUBO), ``[B, μ, L]``.

How the two estimates per row are obtained (the least invasive route): the base's hook
``_get_per_token_logps_and_entropies`` returns one ``[B, L]`` tensor per estimator call, so
:meth:`SPGTrainer.spg_bounds` mirrors it (same mask seeds → per-row generators, chunking, autocast,
NFE count, ``_estimating_seeds`` for the tests' forward hooks) but calls the estimator's ``bounds``;
``_score_rollout`` and :meth:`compute_policy_loss` use it. ``estimate_logps`` (the base API) still works
and returns the estimator's own output (the EUBO for ``eubo``, the ELBO for ``spg_elbo``).

Not implemented: a KL penalty (the reference code raises for β ≠ 0; ``beta`` must stay 0);
``use_bias_correction_kl``; token-level ratios. TRL's ``loss_type`` / ``importance_sampling_level`` are
fixed, and ``epsilon`` / ``epsilon_high`` / ``delta`` are refused unless ``spg_clip=True``.

Reference training settings (LLaDA-8B-Instruct, LoRA r=128/α=64): lr 3e-6, G = 6, μ = 4, generation
length 256, block 32, 128 diffusion steps, K = 2 block-wise draws, β = 1.5 (sudoku 1.0), ω = 0.5,
max_grad_norm 0.2, weight decay 0.1, Adam β₂ 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..losses import LENGTH_MODES, SPG_NORMALIZATIONS, sandwiched_loss
from ._base import DLMConfig, _check_delta, _DLMTrainerBase
from .config import _parse_dict

#: TRL's default of ``GRPOConfig.epsilon``.
TRL_EPSILON = 0.2
SPG_MASKINGS = ("block", "random")
#: estimator_kwargs that SPGConfig sets from its own fields for the first-party SPG estimators.
_OWNED_KWARGS = {"beta": "spg_beta", "masking": "spg_masking", "num_samples": "spg_num_samples", "block_length": "block_length"}


@dataclass
class SPGConfig(DLMConfig):
    """Configuration of :class:`SPGTrainer`; defaults follow the paper's reference scripts (SPG w/ Mixture)."""

    _ROLLOUT_CORRECTION_LEVELS: ClassVar[tuple[str, ...]] = ()  # not implemented for the sandwiched loss

    estimator: str = field(
        default="eubo",
        metadata={
            "help": "Likelihood estimator; it must have bounds(...) -> (ELBO, EUBO) on shared masks: 'eubo' (default) "
            "or 'spg_elbo' (same masks), or your own."
        },
    )
    spg_beta: float = field(
        default=1.5,
        metadata={
            "help": "EUBO exponent beta > 0 (paper / reference scripts: 1.5 for GSM8K and MATH500, 1.5 for countdown "
            "with the mixture (2.0 with the pure EUBO), 1.0 for sudoku)."
        },
    )
    mixture: float = field(
        default=0.5,
        metadata={
            "help": "omega in [0, 1]: rows with A < 0 use omega*EUBO + (1 - omega)*ELBO (0.5: 'SPG w/ Mixture', the "
            "reference scripts; 1: 'SPG w/ EUBO'; 0: the ELBO for every row)."
        },
    )
    spg_masking: str = field(
        default="block",
        metadata={
            "help": f"Masks of the bound estimates, one of {SPG_MASKINGS}: 'block' (SPG's block-wise masking over "
            "the sampler's blocks of block_length: earlier blocks clean, later fully masked, a random count in the "
            "chosen block) or 'random' (count-form masks over the whole completion)."
        },
    )
    spg_num_samples: int = field(
        default=2, metadata={"help": "Monte Carlo draws K per sequence and estimate (reference code: num_t = 2)."}
    )
    spg_normalization: str = field(
        default="token",
        metadata={
            "help": f"Aggregation of -A*S over rows, one of {SPG_NORMALIZATIONS}: 'token' (sum / number of counted "
            "tokens, the reference code) or 'sequence' (mean over rows, Algorithm 1). Ignored with spg_clip."
        },
    )
    spg_clip: bool = field(
        default=False,
        metadata={
            "help": "False (the paper): no importance ratio. True: GDPO's sequence ratio exp((S - S_old)/L), "
            "clipped with epsilon / epsilon_high (and delta); old estimates are then computed per rollout."
        },
    )
    length_normalization: str = field(
        default="padded",
        metadata={"help": f"L inside the ratio with spg_clip, one of {LENGTH_MODES} (padded or true length)."},
    )
    beta: float = field(default=0.0, metadata={"help": "Must stay 0: SPG has no KL term (the reference code refuses one)."})
    loss_type: str = field(
        default="grpo",
        metadata={"help": "Fixed: SPG's aggregation is spg_normalization; other TRL loss types are refused."},
    )
    importance_sampling_level: str = field(
        default="sequence",
        metadata={"help": "Fixed: with spg_clip the ratio is sequence-level; 'token' is refused."},
    )
    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW learning rate (SPG: 3e-6)."})
    num_iterations: int = field(default=4, metadata={"help": "Inner iterations mu per rollout batch (SPG: 4)."})
    num_generations: int | None = field(default=6, metadata={"help": "Group size G (SPG: 6)."})
    per_device_train_batch_size: int = field(default=6, metadata={"help": "Rows per device and micro-batch."})
    max_grad_norm: float = field(default=0.2, metadata={"help": "Gradient clipping norm (SPG: 0.2)."})
    max_completion_length: int | None = field(default=256, metadata={"help": "Completion length L (= gen_length)."})

    def _check_dlm_fields(self) -> None:
        if self.beta != 0.0:
            raise self._unsupported(
                "beta", self.beta,
                "SPG has no KL penalty (its reference code raises for beta != 0). Set beta=0.0.",
            )
        if not (isinstance(self.spg_beta, (int, float)) and self.spg_beta > 0):
            raise ValueError(f"spg_beta (the EUBO exponent) must be > 0 (SPG: 1.5), got {self.spg_beta!r}")
        if not 0.0 <= self.mixture <= 1.0:
            raise ValueError(f"mixture (omega) must be in [0, 1] (SPG: 0.5), got {self.mixture!r}")
        if self.spg_masking not in SPG_MASKINGS:
            raise ValueError(f"spg_masking must be one of {SPG_MASKINGS}, got {self.spg_masking!r}")
        if not isinstance(self.spg_num_samples, int) or self.spg_num_samples < 1:
            raise ValueError(f"spg_num_samples must be a positive int (SPG: 2), got {self.spg_num_samples!r}")
        if self.spg_normalization not in SPG_NORMALIZATIONS:
            raise ValueError(f"spg_normalization must be one of {SPG_NORMALIZATIONS}, got {self.spg_normalization!r}")
        if self.length_normalization not in LENGTH_MODES:
            raise ValueError(f"length_normalization must be one of {LENGTH_MODES}, got {self.length_normalization!r}")
        if self.loss_type != "grpo":
            raise self._unsupported(
                "loss_type", self.loss_type,
                "SPG aggregates -A * bound with spg_normalization ('token' or 'sequence'). Leave loss_type='grpo'.",
            )
        if self.importance_sampling_level != "sequence":
            raise self._unsupported(
                "importance_sampling_level", self.importance_sampling_level,
                "SPG's optional ratio (spg_clip=True) is one per sequence. Leave it at 'sequence'.",
            )
        if self.use_bias_correction_kl:
            raise self._unsupported("use_bias_correction_kl", True, "SPG has no KL term. Set it to False.")
        if not self.spg_clip:
            no_ratio = "SPG's loss (spg_clip=False, the paper) has no importance ratio to clip"
            for name, neutral in (("epsilon", TRL_EPSILON), ("epsilon_high", None), ("delta", None)):
                value = getattr(self, name)
                if value != neutral:
                    raise self._unsupported(
                        name, value, f"{no_ratio}. Set spg_clip=True to clip GDPO's sequence ratio, or leave {name}={neutral!r}."
                    )
        else:
            _check_delta(self, self.epsilon, self.epsilon_high)
        # The first-party estimators take beta / masking / K / block length from the SPG fields.
        if self.estimator in ("eubo", "spg_elbo"):
            kwargs = _parse_dict(self.estimator_kwargs, "estimator_kwargs")
            for key, owner in _OWNED_KWARGS.items():
                value = getattr(self, owner)
                if key in kwargs and kwargs[key] != value:
                    raise ValueError(
                        f"estimator_kwargs[{key!r}]={kwargs[key]!r} conflicts with {owner}={value!r}: set {owner} "
                        f"instead (SPGConfig passes it to the {self.estimator} estimator)"
                    )
                kwargs[key] = value
            self.estimator_kwargs = kwargs
        super()._check_dlm_fields()


class SPGTrainer(_DLMTrainerBase):
    """SPG (arXiv 2510.09541): ELBO for ``A ≥ 0``, ω·EUBO + (1−ω)·ELBO for ``A < 0``, block-wise masks.

    Overrides, beyond the base's TRL hooks: :meth:`compute_policy_loss`, ``_score_rollout`` and
    ``_needs_old_estimates`` (old estimates only with ``spg_clip``).
    """

    _name = "SPG"
    _paper = {"title": "SPG: Sandwiched Policy Gradient for Masked Diffusion Language Models", "id": "2510.09541"}
    config_class = SPGConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not callable(getattr(self.estimator, "bounds", None)):
            raise TypeError(
                f"SPGTrainer needs an estimator with bounds(model, prompt_ids, completion_ids, completion_mask, *, "
                f"generator, prompt_attention_mask) -> (ELBO, EUBO) per token on shared masks; {self.estimator!r} has "
                "none. Use estimator='eubo' (or 'spg_elbo')."
            )

    def _needs_old_estimates(self) -> bool:
        return bool(self.args.spg_clip)

    def spg_bounds(self, model, batch: dict, seeds: torch.Tensor, batch_size: int | None = None):
        """``(ELBO, EUBO)`` per token ``[B, L]`` of ``model`` on the masks of ``seeds`` ``[B]``: the base's
        :meth:`run_estimator` (per-row generators, chunks of ``batch_size`` rows, autocast, NFE) around
        ``estimator.bounds``."""
        return self.run_estimator(
            model, batch["prompt_ids"], batch["completion_ids"], batch["prompt_mask"], batch["completion_mask"],
            seeds, batch_size=batch_size, method=self.estimator.bounds,
        )

    def _score_rollout(self, out: dict) -> None:
        """Old ELBO and EUBO ``[B, μ, L]`` (no grad) for the inner iterations that need them, with ``spg_clip``."""
        if not self._needs_old_estimates():
            return
        need = self._old_iterations(out["mask_seeds"].shape[1])
        if not need:
            return
        bs = self._rollout_batch_size()
        out["old_per_token_logps"], out["old_eubo_per_token_logps"] = self._per_iteration_estimates(
            out, need, "old", lambda seeds: self.spg_bounds(self.model, out, seeds, bs)
        )

    def compute_policy_loss(self, model, inputs):
        elbo, eubo = self.spg_bounds(model, inputs, inputs["mask_seeds"])  # [B, L] each, this iteration's masks
        self.nfe_counts["policy"] += self._last_estimate_nfe
        old_elbo = inputs.get("old_per_token_logps")  # None: on-policy (or spg_clip=False)
        old_eubo = None
        if old_elbo is not None:
            old_eubo = inputs.get("old_eubo_per_token_logps")
            if old_eubo is not None and old_eubo.dim() == 3:
                old_eubo = old_eubo[:, inputs["inner_iteration"]]
        return sandwiched_loss(
            elbo,
            eubo,
            old_elbo,
            old_eubo,
            inputs["advantages"],
            inputs["completion_mask"],
            mixture=self.args.mixture,
            normalization=self.args.spg_normalization,
            clip=self.args.spg_clip,
            epsilon=self.args.epsilon,
            epsilon_high=self.args.epsilon_high,
            length=self.args.length_normalization,
            delta=self.args.delta,
            keep=inputs.get("keep_rows"),
        )


__all__ = ["SPGConfig", "SPGTrainer"]
