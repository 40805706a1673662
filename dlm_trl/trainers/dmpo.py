"""DMPO — Distribution Matching Policy Optimization (arXiv 2510.08233), with the optional
proximal tempering of PDNS (arXiv 2510.03824).

Match the reward-tilted target ``p*(y|q) ∝ p_ref(y|q) exp(r(q, y)/α)`` by weighted denoising
cross-entropy (WDCE):

* at each rollout, per group of the ``G`` rollouts of a prompt — gathered across processes, as
  TRL gathers rewards, so the group is never a per-device slice — the importance weights
  ``w = softmax_G(c·(ℓ + r/α))`` with ``ℓ = log p_ref(y) − log p_v(y)`` (p_v = the policy that
  sampled; both ELBOs from the configured estimator on the *same* masks; ℓ = 0 at the start);
* baseline subtraction ``ŵ = w − b`` with ``b = softmax_G(c·(ℓ − r/α))`` (``"negative_tilt"``,
  default: weights sum to zero, best samples pushed up, worst pushed down), ``"mean"`` (1/G) or
  ``"none"``; the weights are detached and reused for the μ inner iterations;
* loss ``Σ_b ŵ_b (1/R) Σ_r (1/m_{b,r}) Σ_{i masked} CE_i`` with ``R`` replicates in antithetic
  pairs (replicate ``r + R/2`` masks the complement of replicate ``r``), mask rate
  ``λ = 0.1 + 0.9·U``, ``m`` the realised mask count (≥ 1); fresh masks every inner iteration;
* ``c`` < 1 (``target_ess``, on by default here, off in the paper): each refresh, per group, the
  largest ``c ≤ weight_temperature`` whose weights reach the target effective sample size
  ``1/(G Σ w²)`` (PDNS).

**α and the reward scale** go together: the weights see ``r/α``. With rewards in {0, 0.1, 1}
(Countdown's format / correct scores) and the paper's α = 0.04 the scores are {0, 2.5, 25}: a
group with one correct rollout puts all but ~e⁻²² of its weight on it (ESS ≈ 1/G) and a 0.1 weighs
e^2.5 ≈ 12 zeros. Tempering to ``target_ess = 0.7`` lowers ``c`` per group until the weights spread
(the same as a larger α for that group only). Logged each rollout: ``dmpo/ess_mean`` (after
tempering), ``dmpo/ess_untempered_mean`` (at ``c = weight_temperature``), ``dmpo/weight_max_mean``,
``dmpo/c_mean`` — over the groups whose rewards differ (all groups if none does).

Rewards enter through TRL's advantages with ``scale_rewards="none"`` (``R − mean_G R``): a
per-group shift leaves both softmaxes unchanged.

Hooks: the base's (``_generate_single_turn``, ``_generate_and_score_completions``,
``_get_per_token_logps_and_entropies``, ``_compute_loss``, ``_send_telemetry``); this class
overrides the base's ``_score_rollout`` (adds the weights to TRL's batch as
``dmpo_weights [B]``) and implements :meth:`DMPOTrainer.compute_policy_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..losses import (
    BASELINES,
    LENGTH_MODES,
    denoising_cross_entropy,
    dmpo_weights,
    ess,
    ess_temperature,
    wdce_loss,
)
from ..masking import apply_mask, token_log_probs
from ._base import DLMConfig, _DLMTrainerBase, derive_seeds

LIKELIHOOD_STREAM = 0x4C52
WDCE_STREAM = 0x5744


@dataclass
class DMPOConfig(DLMConfig):
    """Configuration of :class:`DMPOTrainer`; defaults follow the paper."""

    _ROLLOUT_CORRECTION_LEVELS: ClassVar[tuple[str, ...]] = ()  # WDCE has no importance ratio to correct

    estimator: str = field(
        default="sdmc_elbo",
        metadata={"help": "Estimator of the ELBOs in the log-ratio ℓ = log p_ref − log p_v (shared masks)."},
    )
    alpha: float = field(
        default=0.04,
        metadata={
            "help": "Temperature α of the target p_ref · exp(r/α) (DMPO: 0.04). Set it with the reward scale: the "
            "weights see r/α, so rewards in {0, 0.1, 1} give scores {0, 2.5, 25} and, untempered, one or two "
            "rollouts hold a group's weight (see target_ess)."
        },
    )
    weight_temperature: float = field(
        default=1.0, metadata={"help": "c in softmax_G(c·(ℓ + r/α)); with target_ess it is the largest c allowed."}
    )
    target_ess: float | None = field(
        default=0.7,
        metadata={
            "help": "PDNS tempering (arXiv 2510.03824): at each refresh, per group, the largest c <= "
            "weight_temperature whose weights have normalised effective sample size 1/(G Σ w²) >= this target. "
            "Default 0.7 (the target in ALGORITHMS.md §2): with α = 0.04 and rewards in {0, 0.1, 1} the untempered "
            "weights of a group with one correct rollout have ESS ≈ 1/G (all weight on one sample), so each group's "
            "update is essentially that of a single rollout. None: fixed c = weight_temperature (the DMPO paper)."
        },
    )
    weight_baseline: str = field(
        default="negative_tilt",
        metadata={"help": f"Baseline subtracted from the weights, one of {BASELINES}."},
    )
    num_replicates: int = field(default=4, metadata={"help": "R masked replicates per rollout in the WDCE loss."})
    antithetic: bool = field(
        default=True, metadata={"help": "Replicate r + R/2 masks the complement of replicate r (R must be even)."}
    )
    min_mask_rate: float = field(
        default=0.1, metadata={"help": "Mask rate λ = min_mask_rate + (1 - min_mask_rate)·U of each replicate."}
    )
    wdce_length: str = field(
        default="padded",
        metadata={
            "help": f"Maskable positions of the WDCE loss, one of {LENGTH_MODES}: 'padded' (all L sampled positions, "
            "EOS padding included) or 'true' (up to and including the first EOS)."
        },
    )
    beta: float = field(default=0.0, metadata={"help": "Must stay 0: DMPO has no KL term (see alpha)."})
    loss_type: str = field(
        default="wdce",
        metadata={"help": "Fixed: DMPO's loss is the weighted denoising cross-entropy; TRL's loss types are refused."},
    )
    num_iterations: int = field(default=8, metadata={"help": "Inner iterations μ reusing the detached weights."})
    num_generations: int | None = field(default=16, metadata={"help": "Group size G (DMPO: 16)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Rows per device and micro-batch."})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (DMPO: 1e-6)."})
    max_grad_norm: float = field(default=0.2, metadata={"help": "Gradient clipping norm (DMPO: 0.2)."})
    max_completion_length: int | None = field(
        default=256, metadata={"help": "Completion length L (= gen_length)."}
    )

    def _check_dlm_fields(self) -> None:
        if self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: DMPO's weights are a softmax over the G rollouts of a prompt, "
                "so G = 1 carries no signal (every weight is 1, and 0 after the baseline); use num_generations ≥ 2 "
                "(the paper uses 16)"
            )
        if self.beta != 0.0:
            raise ValueError(
                f"beta={self.beta}: DMPO has no KL penalty — the reference enters through the target "
                "p_ref · exp(r/alpha); set beta=0 and tune alpha instead"
            )
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.weight_temperature <= 0:
            raise ValueError(f"weight_temperature (c) must be > 0, got {self.weight_temperature}")
        if self.target_ess is not None and not 0.0 < self.target_ess <= 1.0:
            raise ValueError(f"target_ess is a fraction in (0, 1] (e.g. 0.7), got {self.target_ess}")
        if self.weight_baseline not in BASELINES:
            raise ValueError(f"weight_baseline must be one of {BASELINES}, got {self.weight_baseline!r}")
        if self.num_replicates < 1 or (self.antithetic and self.num_replicates % 2):
            raise ValueError(
                f"num_replicates={self.num_replicates}: use a positive even number with antithetic=True "
                "(pairs of complementary masks), or set antithetic=False"
            )
        if not 0.0 <= self.min_mask_rate < 1.0:
            raise ValueError(f"min_mask_rate must be in [0, 1), got {self.min_mask_rate}")
        if self.wdce_length not in LENGTH_MODES:
            raise ValueError(f"wdce_length must be one of {LENGTH_MODES}, got {self.wdce_length!r}")
        if self.scale_rewards not in ("none", False):
            raise ValueError(
                f"scale_rewards={self.scale_rewards!r}: DMPO tilts by the raw reward r/alpha, so the advantages must "
                "be R - mean(R) only; set scale_rewards='none' (scale the reward through alpha instead)"
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError("DMPO needs multi_objective_aggregation='sum_then_normalize' (a weighted reward sum)")
        no_ratio = "DMPO's WDCE loss has no importance ratio to clip or weight"
        for name, neutral, fix in (
            ("loss_type", "wdce", f"{no_ratio}: its loss is fixed (weighted denoising cross-entropy). Leave loss_type='wdce'."),
            ("importance_sampling_level", "token", f"{no_ratio}. Leave it at 'token' (unused)."),
            ("epsilon", 0.2, f"{no_ratio}; the step size is set by alpha, target_ess and the learning rate. Leave it at 0.2 (unused)."),
            ("epsilon_high", None, f"{no_ratio}. Leave it unset."),
            ("delta", None, f"{no_ratio}. Leave it unset."),
            ("use_bias_correction_kl", False, "DMPO has no KL term (beta = 0). Set it to False."),
        ):
            value = getattr(self, name)
            if value != neutral:
                raise self._unsupported(name, value, fix)
        super()._check_dlm_fields()


def wdce_masks(
    seeds: torch.Tensor,  # [B] one seed per row
    maskable: torch.Tensor,  # [B, L] bool
    *,
    num_replicates: int = 4,
    antithetic: bool = True,
    min_mask_rate: float = 0.1,
) -> torch.Tensor:  # [B, R, L] bool
    """WDCE's replicate masks: per row, from a generator seeded by its seed, ``R`` masks at rates
    ``λ = min_mask_rate + (1 − min_mask_rate)·U`` over the maskable positions; with ``antithetic``
    only ``R/2`` are drawn and replicate ``r + R/2`` masks the complement of replicate ``r``."""
    draws = num_replicates // 2 if antithetic else num_replicates
    rows = []
    for s, can in zip(seeds.tolist(), maskable.cpu(), strict=True):
        g = torch.Generator().manual_seed(int(s))
        reps = []
        for _ in range(draws):
            lam = min_mask_rate + (1.0 - min_mask_rate) * torch.rand((), generator=g).item()
            reps.append((torch.rand(can.shape, generator=g) < lam) & can)
        if antithetic:
            reps += [can & ~m for m in reps]
        rows.append(torch.stack(reps))
    return torch.stack(rows).to(maskable.device)


class DMPOTrainer(_DLMTrainerBase):
    """DMPO (arXiv 2510.08233): WDCE with group-softmax importance weights toward
    ``p_ref · exp(r/α)``; optional ESS-targeted tempering (PDNS, arXiv 2510.03824).

    Overrides, beyond the base's TRL hooks: ``_score_rollout`` (the weights) and
    :meth:`compute_policy_loss` (the WDCE loss).
    """

    _name = "DMPO"
    _paper = {"title": "Distribution Matching Policy Optimization for diffusion language models", "id": "2510.08233"}
    config_class = DMPOConfig

    def _uses_reference(self, args) -> bool:
        return args.reference == "initial"

    def _needs_old_estimates(self) -> bool:
        return False  # no ratio: the weights are computed once per rollout

    def _sequence_elbo(self, model, out: dict, seeds: torch.Tensor) -> torch.Tensor:  # [B]
        bs = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        logps = self._estimate_chunked(model, out, seeds, bs)  # [B, L]
        return (logps * out["completion_mask"]).sum(1)

    def _log_ratio(self, out: dict) -> torch.Tensor:  # [B]
        """``ℓ = log p_ref(y) − log p_v(y)`` of this process's rows: ELBOs of the policy that sampled and of the
        reference on the same masks (0 without a reference)."""
        B = out["completion_ids"].shape[0]
        if self.args.reference != "initial":
            return torch.zeros(B, device=self.accelerator.device)
        seeds = derive_seeds(out["mask_seeds"][:, 0], LIKELIHOOD_STREAM)  # shared by p_v and p_ref
        logp_v = self._sequence_elbo(self.model, out, seeds)
        self.nfe_counts["old"] += self._last_estimate_nfe
        with self._reference_policy() as ref:
            logp_ref = self._sequence_elbo(ref, out, seeds)
        self.nfe_counts["ref"] += self._last_estimate_nfe
        return (logp_ref - logp_v).float()

    def _score_rollout(self, out: dict) -> None:
        super()._score_rollout(out)
        device = self.accelerator.device
        B = out["completion_ids"].shape[0]
        G = self.num_generations if self.model.training else self.num_generations_eval
        ell = self._log_ratio(out)  # [B]
        ell_all = self.accelerator.gather(ell)  # [N] process order = TRL's global order
        reward_all = self.accelerator.gather(out["advantages"].float())  # R - mean_G(R)
        alpha, c_max = self.args.alpha, self.args.weight_temperature
        flat = self._flat_rows  # [N] rows of groups whose rewards are all equal (None: unknown)
        informative = None if flat is None else ~flat.view(-1, G)[:, 0].to(ell_all.device)  # [N/G]
        c: float | torch.Tensor = c_max
        scores = (ell_all + reward_all / alpha).view(-1, G)  # [N/G, G]
        if self.args.target_ess is not None:
            c = ess_temperature(scores, self.args.target_ess, c_max=c_max)  # [N/G]
        w_hat, metrics = dmpo_weights(
            ell_all, reward_all, group_size=G, alpha=alpha, c=c, baseline=self.args.weight_baseline,
            metric_groups=informative,
        )
        start = self.accelerator.process_index * B
        out["dmpo_weights"] = w_hat[start : start + B].to(device)  # [B]
        mode = "train" if self.model.training else "eval"
        sel = informative if informative is not None and bool(informative.any()) else slice(None)
        c_groups = torch.as_tensor(c, dtype=torch.float32, device=scores.device).expand(scores.shape[0])
        metrics["c_mean"] = c_groups[sel].mean()
        metrics["ess_untempered_mean"] = ess(torch.softmax(c_max * scores[sel].double(), -1)).mean().float()
        for name, value in sorted(metrics.items()):
            self._metrics[mode][f"dmpo/{name}"].append(float(value))

    def wdce_masks(self, seeds: torch.Tensor, maskable: torch.Tensor) -> torch.Tensor:  # [B, R, L] bool
        """The R replicate masks of each row from its own generator (seeded by ``seeds [B]``)."""
        return wdce_masks(
            seeds, maskable, num_replicates=self.args.num_replicates, antithetic=self.args.antithetic,
            min_mask_rate=self.args.min_mask_rate,
        )

    def compute_policy_loss(self, model, inputs):
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]  # [B, P], [B, L]
        B, P = prompt_ids.shape
        L = completion_ids.shape[1]
        R = self.args.num_replicates
        if self.args.wdce_length == "padded":
            maskable = torch.ones(B, L, dtype=torch.bool, device=completion_ids.device)
        else:
            maskable = inputs["completion_mask"].bool()
        noise = self.wdce_masks(derive_seeds(inputs["mask_seeds"], WDCE_STREAM), maskable)  # [B, R, L]
        ids = torch.cat([prompt_ids, completion_ids], 1).repeat_interleave(R, 0)  # [B*R, P+L]
        full_noise = torch.cat(
            [torch.zeros(B * R, P, dtype=torch.bool, device=ids.device), noise.reshape(B * R, L)], 1
        )  # [B*R, P+L]
        noisy = apply_mask(ids, full_noise, self.mask_token_id)
        attn = torch.cat([inputs["prompt_mask"], torch.ones_like(inputs["completion_mask"])], 1)
        attn = attn.repeat_interleave(R, 0)  # [B*R, P+L]
        with self.accelerator.autocast():
            # the completion's logits only: no vocabulary projection of the prompt's positions
            logits = self.as_dlm(model)(noisy, attention_mask=attn, logits_to_keep=L)  # [B*R, L, V]
        logps = token_log_probs(logits, completion_ids.repeat_interleave(R, 0)).view(B, R, L)
        self.nfe_counts["policy"] += B * R
        ce = denoising_cross_entropy(logps, noise)  # [B]
        G = self.num_generations if self.model.training else self.num_generations_eval
        return wdce_loss(ce, inputs["dmpo_weights"], group_size=G, keep=inputs.get("keep_rows"))


__all__ = ["DMPOConfig", "DMPOTrainer", "wdce_masks"]
