"""The private base of the DLM trainers: ``trl.GRPOTrainer`` with a diffusion sampler and a
likelihood estimator in place of autoregressive generation and causal log-probs.

What it overrides (TRL 1.16; ``tests/test_trl_hooks.py`` fails, naming the hook, if any of
these signatures changes):

``_generate_single_turn``
    Runs the LLaDA block sampler (:func:`dlm_trl.sampling.generate`) inside TRL's
    ``unwrap_model_for_generation`` (so DeepSpeed ZeRO-3 gathers the weights once per
    rollout), with one ``torch.Generator`` per row seeded from (seed, rollout, row). It
    returns TRL's lists of completion ids (cut after the first EOS) and keeps the full
    ``[B, L]`` sampler output (EOS-padded, or as sampled with ``after_eos="keep"``) for the
    likelihood estimates.
``_generate_and_score_completions``
    Calls TRL's (prompts, rewards, advantages, logging) with TRL's own log-prob calls
    switched off, puts back the full-length completion and its mask, adds
    ``mask_seeds [B, μ]`` (one seed per row and inner iteration) and computes the old and
    reference estimates ``[B, μ, L]`` for the inner iterations that need them — every
    value is batch-first, so TRL's shuffle and split along dim 0 keep each row's seeds and
    estimates together. Rows of flat groups (all rewards equal) get advantage exactly 0, and
    with ``drop_flat_groups`` a ``keep_rows [B]`` flag that takes them out of the loss and its
    normaliser; ``frac_flat_groups`` is logged.
``_get_per_token_logps_and_entropies``
    The single place where likelihoods are estimated: the configured estimator plugin
    with per-row generators built from the active mask seeds. Old, reference and current
    estimates of a row in an inner iteration therefore draw identical masks (common
    random numbers, ALGORITHMS.md §0). Entropies are not computed (``None``).
``_compute_loss``
    Selects the current inner iteration's seeds and old/reference estimates and calls
    :meth:`compute_policy_loss` — the method subclasses (and users) override — then
    scales for gradient accumulation and logs the returned metrics.
``_send_telemetry``
    A no-op: nothing is sent anywhere (TRL would ping the Hub from ``__init__``).

Checkpoints and failures (docs/scaleout.md; signatures guarded by tests/test_resume.py and
tests/test_failures.py): ``_save_checkpoint`` / ``_get_output_dir`` write each checkpoint under
``tmp-checkpoint-N`` and rename it once every rank is done (atomic), adding the per-rank rollout
state that ``_load_optimizer_and_scheduler`` restores on resume; ``_calculate_rewards`` rejects (or
skips) infinite rewards; ``_compute_loss`` stops every rank before the backward pass on a
non-finite loss; ``_generate_single_turn`` turns an out-of-memory error into advice.

Seeds: ``mask_seeds[b, k] = mix(seed, rollout, global row b, k)`` (``k`` = inner iteration;
``0`` for every ``k`` with ``mask_schedule="fixed"``). The quadrature node / Monte Carlo
draw index is not part of the seed: an estimator draws all of a row's masks from that
row's generator in a fixed order, so (seed, node) → mask is deterministic.

Reference policy: built here, not by TRL (β is hidden from ``GRPOTrainer.__init__``, which
would otherwise reload the model from its hub id): an explicit ``ref_model``; under PEFT
the adapter-disabled base (or a frozen copy of a pre-existing adapter, as TRL does); else a
frozen copy of the initial policy (reloaded from its path under DeepSpeed ZeRO-3).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
import shutil
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

try:  # transformers >= 5; 4.x has it as Trainer._rotate_checkpoints
    from transformers.trainer_utils import rotate_checkpoints
except ImportError:  # pragma: no cover - exercised under transformers 4.x
    rotate_checkpoints = None
from transformers.utils import logging as hf_logging
from trl import GRPOConfig, GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.models import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import disable_dropout_in_model, pad, use_adapter

from ..estimators import row_generators
from ..models import DLM, FAMILIES
from ..registry import ESTIMATORS, PluginNotFoundError, load_estimator
from ..registry import load as load_plugin
from ..sampling import AFTER_EOS, REMASKING_STRATEGIES, SamplerConfig, generate

MASK_SCHEDULES = ("fresh", "fixed")
REFERENCES = ("initial", "none")
logger = hf_logging.get_logger(__name__)
NONFINITE_POLICIES = ("error", "skip")
ROLLOUT_AUTOCAST_DTYPES = (None, "bfloat16", "float16")
#: Per-rank file in a checkpoint with the rollout state (rollout counter, TRL's micro-step and
#: its buffered rollout batch when the checkpoint falls inside a rollout's inner iterations).
ROLLOUT_STATE_NAME = "dlm_trl_rollout_state_{rank}.pt"
#: Where a checkpoint is written before it is renamed to ``checkpoint-N`` (atomic save).
STAGING_PREFIX = "tmp-"

OOM_HINT = (
    "out of memory while generating rollouts with the diffusion sampler. Knobs that reduce its memory, "
    "roughly in order of effect: a smaller generation batch (per_device_train_batch_size x "
    "steps_per_generation rows are sampled at once: lower per_device_train_batch_size, or lower "
    "steps_per_generation / gradient_accumulation_steps), a shorter gen_length (activations grow with "
    "prompt + gen_length), LoRA (--use_peft) instead of full "
    "fine-tuning, and DeepSpeed ZeRO-3 (recipes/accelerate/zero3.yaml; with ds3_gather_for_generation=False "
    "the full weights are never materialised at once, slower) or ZeRO-3 with CPU offload "
    "(recipes/accelerate/zero3_offload.yaml). See docs/scaleout.md."
)

_MASK64 = (1 << 64) - 1
# Stream tags keep the seeds of different uses of randomness apart.
SAMPLER_STREAM = 0x5A4D
MASK_STREAM = 0x4D41


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 chain): distinct inputs → unrelated seeds."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def derive_seeds(seeds: torch.Tensor, *tags: int) -> torch.Tensor:
    """Per-row seeds ``[B]`` for another use of randomness (a different stream) → ``[B]`` long."""
    return torch.tensor([mix_seed(int(s), *tags) for s in seeds.tolist()], dtype=torch.long, device=seeds.device)


def _require_transformers_5() -> None:
    """The trainers use transformers 5's Trainer (``activation_checkpointing``, ``rotate_checkpoints``, ...)."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__).major < 5:
        raise ImportError(
            f"dlm-trl's trainers need transformers >= 5 (installed: {transformers.__version__}); "
            "`pip install -U 'transformers>=5'`. The models, the sampler and `dlm-trl eval` also run on 4.56+."
        )


def _parse_dict(value: Any, name: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be a JSON object such as '{{\"num_nodes\": 3}}', got {value!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict (or a JSON object string), got {type(value).__name__}")
    return dict(value)


@dataclass
class DLMConfig(GRPOConfig):
    """``trl.GRPOConfig`` plus the diffusion sampler and the likelihood estimator.

    The completion length is ``gen_length``; TRL's ``max_completion_length`` is kept equal
    to it (set either one). ``temperature`` (TRL's field) is the sampler's temperature.
    """

    model_family: str | None = field(
        default=None,
        metadata={"help": f"Diffusion-LM family, one of {FAMILIES}; detected from the model config when unset."},
    )
    mask_token_id: int | None = field(
        default=None,
        metadata={"help": "Mask token id; read from the model config / tokenizer (LLaDA: 126336) when unset."},
    )
    remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the checkpoint's own modeling code (trust_remote_code) instead of dlm-trl's native LLaDA / "
            "Dream implementation. The hub code of LLaDA ignores padding and neither family's loads under "
            "transformers 5 unpatched; use it only to compare against the native classes."
        },
    )
    gen_length: int | None = field(
        default=None,
        metadata={
            "help": "Completion length L generated by the diffusion sampler. When unset, max_completion_length is "
            "used; when set, max_completion_length is set to it."
        },
    )
    block_length: int = field(
        default=32, metadata={"help": "Semi-autoregressive block length of the sampler; must divide gen_length."}
    )
    diffusion_steps: int | None = field(
        default=None,
        metadata={
            "help": "Sampler steps (forward passes per rollout), a multiple of gen_length/block_length and at most "
            "gen_length. Default: gen_length / 2 (d1)."
        },
    )
    remasking: str | None = field(
        default=None,
        metadata={
            "help": f"Sampler remasking strategy, one of {REMASKING_STRATEGIES}. Default: the model family's "
            "(LLaDA and the tiny model: low_confidence; Dream: entropy)."
        },
    )
    schedule: str | None = field(
        default=None,
        metadata={
            "help": "Tokens committed per sampler step: 'even' (LLaDA) or 'dream_linspace' (Dream's "
            "int(n(1 - s/t)) over linspace(1, eps, steps + 1), per block). Default: the model family's."
        },
    )
    cfg_scale: float = field(
        default=0.0,
        metadata={
            "help": "Classifier-free guidance scale of the rollout sampler. Must stay 0 in training: the likelihood "
            "estimators score the unguided model, so with guidance every ratio (and DMPO's log-ratio) would compare "
            "a policy that did not sample the rollouts. Guidance at evaluation is an option of dlm_trl.evaluation / "
            "dlm-trl eval."
        },
    )
    temperature: float = field(
        default=0.9,
        metadata={
            "help": "Sampler temperature for rollouts (d1: 0.9); 0 is greedy. Only the sampler uses it: the "
            "likelihood estimators (old, reference and current policy) score the model at temperature 1, as d1's "
            "and GDPO's code do, so at T != 1 the rollouts come from a tempered version of the policy whose ratios "
            "are computed."
        },
    )
    after_eos: str | None = field(
        default=None,
        metadata={
            "help": f"Completion tokens after a row's first EOS, one of {AFTER_EOS}: 'eos' rewrites them to EOS (the "
            "EOS-padded completion TRL's code expects), 'keep' keeps what the sampler drew. The likelihood "
            "estimators and DMPO's loss see exactly these ids (padded ELBOs and WDCE condition on, or predict, "
            "the positions after the EOS), and completion_mask ends at the first EOS either way. None: the "
            "sampler's default for the model family (today 'eos' for every family)."
        },
    )
    drop_flat_groups: bool = field(
        default=False,
        metadata={
            "help": "Dynamic sampling (DAPO, arXiv 2503.14476) without the resampling: leave the groups whose "
            "rewards are all equal (no learning signal) out of the loss and out of its normaliser, so a batch "
            "with many flat groups does not shrink the step of the others. False (default, and the papers' "
            "d1 / GDPO / DMPO setting): such rows keep advantage 0 (DMPO: weight 0 with the negative-tilt "
            "baseline) but still count in the normaliser. The fraction is logged as frac_flat_groups either way."
        },
    )
    rollout_autocast_dtype: str | None = field(
        default=None,
        metadata={
            "help": f"Run the sampler's forward passes under torch.autocast in this dtype, one of "
            f"{ROLLOUT_AUTOCAST_DTYPES}, while likelihoods, losses and gradients keep the training precision (as "
            "a bf16 vLLM server does for an fp32 trainer). 'bfloat16' makes rollouts ~1.5x faster on CPUs with "
            "AVX512-BF16 / AMX (the tiny recipes turn it on there). None: the training precision."
        },
    )
    estimator: str = field(
        default="sdmc_elbo",
        metadata={
            "help": "Likelihood estimator: an entry point of the group dlm_trl.estimators (e.g. one_step_unmasking, "
            "sdmc_elbo, double_mc_elbo, stratified_elbo) or an import path 'package.module:Class'."
        },
    )
    estimator_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of the estimator, e.g. '{\"num_nodes\": 3}' (a dict or JSON string)."},
    )
    mask_schedule: str = field(
        default="fresh",
        metadata={
            "help": "Masks across the num_iterations inner iterations of a rollout batch: 'fresh' (new masks each "
            "iteration; the old estimate costs one estimator call per iteration) or 'fixed' (the same masks in "
            "every iteration; the old estimate is computed once). Old / reference / current always share masks."
        },
    )
    reference: str = field(
        default="initial",
        metadata={
            "help": "Reference policy for the KL term (beta > 0) or DMPO's likelihood ratio: 'initial' (the starting "
            "policy: adapter-disabled base under PEFT, else a frozen copy) or 'none'."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing (off by default; LLaDA-8B recipes turn it on)."},
    )
    scale_rewards: str = field(
        default="none",
        metadata={"help": "Advantage scaling: 'none' (A = R - mean of the group, as d1 and GDPO), 'group' or 'batch'."},
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={
            "help": "Multiply the per-token KL term by the importance ratio to the rollout policy (TRL's option, "
            "DeepSeek-V3.2; TRL's default is True). Only DiffuGRPOTrainer implements it (its token ratio); GDPO "
            "and DMPO refuse True. Default False: d1's loss has no such factor, and with the biased one-step "
            "estimator the 'unbiased reverse-KL gradient' it is meant to give does not hold anyway."
        },
    )
    nonfinite: str = field(
        default="error",
        metadata={
            "help": f"What to do with an infinite reward or a NaN/inf loss, one of {NONFINITE_POLICIES}: 'error' "
            "stops training (naming the reward function, or before the loss's backward pass and optimizer step, on "
            "every rank); 'skip' treats such a completion as unscorable (advantage 0, as TRL does for a reward of "
            "None / NaN) and drops an optimizer step whose loss is non-finite (logged as nonfinite/loss_skipped). "
            "Either way the weights are never updated with a non-finite loss."
        },
    )

    # Options of GRPOConfig that the DLM trainers do not implement: their neutral values and what to do instead.
    _SAMPLER = "the diffusion sampler has no such option (its knobs: temperature, remasking, schedule, block_length, diffusion_steps)"
    _UNSUPPORTED = {
        "use_vllm": (False, "rollouts come from the diffusion sampler (dlm_trl.sampling); vLLM cannot sample a masked diffusion LM"),
        "use_transformers_continuous_batching": (False, "rollouts come from the diffusion sampler, not transformers' generate"),
        "use_transformers_paged": (False, "rollouts come from the diffusion sampler, not transformers' generate"),
        "top_p": (1.0, _SAMPLER),
        "top_k": (0, _SAMPLER),
        "min_p": (None, _SAMPLER),
        "repetition_penalty": (1.0, _SAMPLER),
        "generation_kwargs": (None, _SAMPLER),
        "cache_implementation": (None, _SAMPLER + "; its KV cache is internal"),
        "max_tool_calling_iterations": (None, "the diffusion sampler generates one turn: no tools or environments"),
        "top_entropy_quantile": (1.0, "the likelihood estimators return no per-token entropies"),
        "entropy_coef": (0.0, "the likelihood estimators return no per-token entropies"),
        "use_adaptive_entropy": (False, "the likelihood estimators return no per-token entropies"),
        "off_policy_mask_threshold": (None, "off-policy sequence masking is not implemented for diffusion likelihoods"),
        "router_aux_loss_coef": (None, "the likelihood estimators do not return router logits (no MoE auxiliary loss)"),
    }

    def __post_init__(self):
        _require_transformers_5()
        self._check_dlm_fields()
        super().__post_init__()

    def _unsupported(self, name: str, value: Any, fix: str) -> ValueError:
        """The error for an option this trainer does not honour: its name, its value and what to do."""
        return ValueError(f"{type(self).__name__}: {name}={value!r} is not supported: {fix}")

    def _check_dlm_fields(self) -> None:
        for name, (neutral, why) in self._UNSUPPORTED.items():
            value = getattr(self, name, neutral)
            if value in ({}, "") and neutral is None:
                continue  # an empty generation_kwargs / cache name is the neutral value
            if value != neutral:
                raise self._unsupported(name, value, f"{why}. Leave it at {neutral!r}.")
        if self.cfg_scale != 0:
            raise self._unsupported(
                "cfg_scale", self.cfg_scale,
                "the likelihood estimators score the unguided model, so with guided rollouts every ratio (and "
                "DMPO's log-ratio) would be computed for a policy that did not sample them. Set cfg_scale=0 for "
                "training (guidance at evaluation: dlm_trl.evaluation / dlm-trl eval --cfg_scale).",
            )
        if self.after_eos is not None and self.after_eos not in AFTER_EOS:
            raise ValueError(f"after_eos must be one of {AFTER_EOS} (or None: the family's default), got {self.after_eos!r}")
        if self.model_family is not None and self.model_family not in FAMILIES:
            raise ValueError(f"model_family={self.model_family!r} is unknown; use one of {FAMILIES} or leave it unset")
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {MASK_SCHEDULES}, got {self.mask_schedule!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if isinstance(self.rollout_autocast_dtype, str) and self.rollout_autocast_dtype.lower() in ("none", ""):
            self.rollout_autocast_dtype = None  # the command line's spelling of "unset"
        if self.rollout_autocast_dtype not in ROLLOUT_AUTOCAST_DTYPES:
            close = difflib.get_close_matches(str(self.rollout_autocast_dtype), ROLLOUT_AUTOCAST_DTYPES[1:], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"rollout_autocast_dtype must be one of {ROLLOUT_AUTOCAST_DTYPES}, got "
                f"{self.rollout_autocast_dtype!r}.{hint}"
            )
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}")
        if self.beta != 0.0 and self.reference == "none":
            raise ValueError(
                f"beta={self.beta} needs a reference policy but reference='none'; set reference='initial' "
                "(the starting policy) or beta=0.0"
            )
        # Completion length: one number for TRL and the sampler.
        if self.gen_length is None:
            if self.max_completion_length is None:
                raise ValueError("set gen_length (the diffusion completion length)")
            self.gen_length = int(self.max_completion_length)
        self.max_completion_length = int(self.gen_length)
        if self.diffusion_steps is None:
            nb = max(1, self.gen_length // self.block_length) if self.block_length > 0 else 1
            half = max(nb, (self.gen_length // 2) // nb * nb)
            self.diffusion_steps = half
        try:
            self.sampler_config()
        except ValueError as err:
            raise ValueError(
                f"invalid sampler settings gen_length={self.gen_length} (= max_completion_length), "
                f"block_length={self.block_length}, diffusion_steps={self.diffusion_steps} (the sampler's "
                f"'steps'): {err}"
            ) from None
        # Estimator: fail now, with suggestions, rather than after the model is loaded.
        self.estimator_kwargs = _parse_dict(self.estimator_kwargs, "estimator_kwargs")
        try:
            load_estimator(self.estimator, **self.estimator_kwargs)
        except PluginNotFoundError as err:
            raise ValueError(f"{type(self).__name__}.estimator: {err}") from None
        except TypeError as err:
            raise ValueError(
                f"estimator {self.estimator!r} does not accept estimator_kwargs={self.estimator_kwargs}: {err}"
            ) from None

    def sampler_config(self, family: str | None = None) -> SamplerConfig:
        """The rollout sampler's settings: the family's defaults (:meth:`SamplerConfig.for_family`;
        ``model_family`` or LLaDA's when unknown) updated by ``remasking`` / ``schedule`` when set."""
        overrides = {
            k: v
            for k, v in (("remasking", self.remasking), ("schedule", self.schedule), ("after_eos", self.after_eos))
            if v is not None
        }
        return SamplerConfig.for_family(
            family or self.model_family or "llada",
            gen_length=int(self.gen_length),
            block_length=int(self.block_length),
            steps=int(self.diffusion_steps),
            temperature=float(self.temperature),
            cfg_scale=float(self.cfg_scale),
            **overrides,
        )


def _check_delta(config: DLMConfig, epsilon: float, epsilon_high: float | None) -> None:
    """``delta`` (two-sided clipping) must lie above the clip range's upper bound ``1 + ε_high``."""
    hi = 1.0 + (epsilon if epsilon_high is None else epsilon_high)
    if config.delta is not None and not config.delta > hi:
        raise config._unsupported(
            "delta", config.delta,
            f"two-sided clipping caps the unclipped ratio at delta, which must exceed the clip range's upper bound "
            f"1 + epsilon_high = {hi:g}. Raise it, or leave delta=None.",
        )


class _DLMTrainerBase(GRPOTrainer):
    """Private base of :class:`DiffuGRPOTrainer`, :class:`GDPOTrainer` and :class:`DMPOTrainer`
    (see the module docstring for the hooks it overrides).

    Subclasses implement :meth:`compute_policy_loss`. Extra constructor arguments over
    ``GRPOTrainer``: ``ref_model`` (an explicit reference policy) and ``estimator`` (an
    estimator instance or name, overriding ``args.estimator``). ``model`` may be a name
    (``"tiny"``, a path or a hub id), a transformers model, a PEFT model or a
    :class:`~dlm_trl.models.DLM`.
    """

    _tag_names = ["trl", "dlm-trl"]
    _name = "DLM"
    config_class: type[DLMConfig] = DLMConfig

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DLMConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        *,
        ref_model=None,
        estimator=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        for name, value in (("tools", tools), ("rollout_func", rollout_func), ("environment_factory", environment_factory)):
            if value is not None:
                raise ValueError(
                    f"{type(self).__name__}: {name}={value!r} is not supported: the diffusion sampler generates one "
                    "turn per prompt (no tool calls, environments or custom rollout functions). Leave it unset."
                )
        if args is None:
            args = self.config_class(output_dir=f"{self._name}-trainer")
        if not isinstance(args, DLMConfig):
            raise TypeError(f"args must be a {self.config_class.__name__} (a DLMConfig), got {type(args).__name__}")

        family, mask_id = args.model_family, args.mask_token_id
        if isinstance(model, DLM):
            family, mask_id = family or model.family, mask_id if mask_id is not None else model.mask_token_id
            model = model.module
        if isinstance(model, str):
            from ..models import load_model, load_tokenizer

            init_kwargs = _parse_dict(args.model_init_kwargs, "model_init_kwargs")
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code or args.remote_code or None)
            init_kwargs.setdefault("remote_code", args.remote_code)
            init_kwargs.setdefault("family", args.model_family)
            if processing_class is None:
                processing_class = load_tokenizer(model, trust_remote_code=init_kwargs["trust_remote_code"])
                processing_class.padding_side = "left"
            model = load_model(model, **init_kwargs)
        if getattr(model, "generation_config", None) is None:
            # TRL reads generation_config; LLaDA's remote code has no GenerationMixin.
            from transformers import GenerationConfig

            cfg = model.config
            model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
        if args.activation_checkpointing and not getattr(model, "supports_gradient_checkpointing", True):
            warnings.warn(
                f"{type(model).__name__} does not support activation (gradient) checkpointing; training without it",
                stacklevel=2,
            )
            args.activation_checkpointing = args.gradient_checkpointing = False

        self.estimator = self._resolve_estimator(estimator, args)
        self.sampler_config = args.sampler_config()

        beta = args.beta
        needs_ref = beta != 0.0 or self._uses_reference(args)
        if needs_ref and peft_config is None and is_peft_model(model) and "ref" not in model.peft_config:
            # A pre-existing adapter: its frozen copy is the reference (as TRL does).
            model.add_adapter("ref", model.peft_config["default"])
            for name, param in model.named_parameters():
                if ".default." in name:
                    model.get_parameter(name.replace(".default.", ".ref.")).data.copy_(param.data)
        sync_ref = args.sync_ref_model
        # TRL would build its own reference in __init__ (reloading the model from its hub id); hide β from it.
        args.beta, args.sync_ref_model = 0.0, False
        try:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref
        self.beta = beta

        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if is_peft_model(base) else base
        spec = DLM.wrap(base, tokenizer=self._tokenizer, family=family, mask_token_id=mask_id)
        self.mask_token_id, self.model_family = spec.mask_token_id, spec.family
        self.sampler_config = args.sampler_config(self.model_family)  # the family's schedule and rule
        self.eos_token_id = self._tokenizer.eos_token_id if self._tokenizer.eos_token_id is not None else spec.eos_token_id

        self.ref_model = self._setup_reference(ref_model, needs_ref)
        if sync_ref:
            if self.ref_model is None:
                raise ValueError("sync_ref_model=True needs a separate reference model (not PEFT, beta > 0)")
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

        ga, spg, mu = args.gradient_accumulation_steps, args.steps_per_generation, self.num_iterations
        every = spg * mu
        #: True when the policy is unchanged between a rollout and its first inner iteration, so the
        #: old estimate of iteration 0 is the current one, detached (its ratio is exactly 1).
        self._iteration0_on_policy = (ga % every == 0) or (every % ga == 0 and spg <= ga)
        self._rollout_index = 0
        self._last_rewards: torch.Tensor | None = None  # [N, F] rewards of the last rollout, all processes
        self._flat_rows: torch.Tensor | None = None  # [N] bool: row of a flat group (last rollout, all processes)
        self._rollout = None
        self._active_mask_seeds: torch.Tensor | None = None
        self._estimating_seeds: torch.Tensor | None = None
        self._trl_logps_off = False
        self._last_estimate_nfe = 0
        self._checkpoint_staging: str | None = None
        #: Set when a micro-batch's loss was non-finite under ``nonfinite="skip"``: the optimizer step
        #: of that accumulation cycle is not taken (see :meth:`create_optimizer`); reset at step end.
        self._skip_optimizer_step = False
        self.add_callback(_ResetSkipFlag(self))
        #: Forward passes spent on this process, counted per sequence (rows × NFE per sequence).
        self.nfe_counts: dict[str, int] = defaultdict(int)
        # Wall-clock seconds of this process: 'sampler' (rollouts), 'nograd_likelihoods' (old / reference /
        # DMPO weights), 'rollout_other' (rewards, advantages, TRL's bookkeeping). The rest of train_runtime is
        # the policy pass with its backward and the optimizer step. Logged as time/<name> (cumulative).
        self.seconds_counts: dict[str, float] = defaultdict(float)

    # ------------------------------------------------------------------ construction helpers

    @staticmethod
    def _resolve_estimator(estimator, args: DLMConfig):
        if estimator is None:
            estimator = args.estimator
        if isinstance(estimator, str):
            obj = load_plugin(ESTIMATORS, estimator)
            estimator = obj(**args.estimator_kwargs) if isinstance(obj, type) else obj
        if not callable(estimator) or not callable(getattr(estimator, "nfe", None)):
            raise TypeError(
                f"{estimator!r} is not a likelihood estimator: it must be callable as "
                "est(model, prompt_ids, completion_ids, completion_mask, *, generator, prompt_attention_mask) "
                "and have nfe(completion_length) (see dlm_trl.estimators.LikelihoodEstimator)"
            )
        return estimator

    def _uses_reference(self, args: DLMConfig) -> bool:
        """Whether the algorithm itself needs the reference policy (besides a KL term)."""
        return False

    def _setup_reference(self, ref_model, needs_ref: bool):
        if ref_model is None and not needs_ref:
            return None
        if ref_model is None and is_peft_model(self.model):
            return None  # adapter disabled (or the frozen "ref" adapter) is the reference
        if isinstance(ref_model, DLM):
            ref_model = ref_model.module
        if isinstance(ref_model, str):
            from ..models import load_model

            ref_model = load_model(ref_model, dtype=self.model.dtype, **self._reload_kwargs())
        if ref_model is None:
            zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            source = getattr(self.model.config, "_name_or_path", "")
            if zero3:
                if not source:
                    raise ValueError(
                        "DeepSpeed ZeRO-3 needs the reference reloaded from a path, but the model has none; "
                        "pass ref_model=... or use PEFT"
                    )
                from ..models import load_model

                ref_model = load_model(source, dtype=self.model.dtype, **self._reload_kwargs())
            else:
                ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
                # GRPOTrainer.__init__ replaced the policy's `forward` by an instance attribute (TRL's fused
                # LM head) whose closure holds the *policy's* bound forward. A deep copy keeps that closure,
                # so the copy would silently run the policy's weights (KL to the reference ≡ 0). Drop such
                # instance-level forwards: the copy runs its own class forward on its own weights.
                for module in ref_model.modules():
                    module.__dict__.pop("forward", None)
        ref_model.eval()
        ref_model.requires_grad_(False)
        if self.args.disable_dropout:
            disable_dropout_in_model(ref_model)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def _reload_kwargs(self) -> dict:
        """How to load the reference from a path: the same implementation (native or remote code) as the policy."""
        remote = bool(self.args.remote_code)
        return {"remote_code": remote, "trust_remote_code": (self.args.trust_remote_code or remote) or None}

    def _send_telemetry(self):
        """No telemetry: dlm-trl never phones home (TRL's version pings the Hub from ``__init__``)."""
        return None

    # ------------------------------------------------------------------ seeds and small helpers

    def as_dlm(self, model) -> DLM:
        """``model`` (possibly wrapped by DDP / DeepSpeed / PEFT) seen through the DLM interface."""
        return DLM(module=model, mask_token_id=self.mask_token_id, family=self.model_family, eos_token_id=self.eos_token_id)

    def _global_rows(self, B: int) -> list[int]:
        start = self.accelerator.process_index * B
        return list(range(start, start + B))

    def _rollout_autocast(self, device: torch.device):
        """``torch.autocast`` in ``args.rollout_autocast_dtype`` for the sampler (a null context when unset)."""
        name = self.args.rollout_autocast_dtype
        if name is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, name))

    def _num_inner_iterations(self) -> int:
        return self.num_iterations if self.model.training else 1

    def _inner_iteration(self) -> int:
        """Index ``k ∈ [0, μ)`` of the current pass over the buffered rollout batch."""
        if not self.model.training:
            return 0
        every = self.args.steps_per_generation * self.num_iterations
        return (self._step % every) // self.args.steps_per_generation

    def _make_mask_seeds(self, B: int) -> torch.Tensor:  # [B, μ] long
        mu = self._num_inner_iterations()
        fixed = self.args.mask_schedule == "fixed"
        mode = 0 if self.model.training else 1
        rows = [
            [
                mix_seed(self.args.seed, MASK_STREAM, mode, self._rollout_index, r, 0 if fixed else k)
                for k in range(mu)
            ]
            for r in self._global_rows(B)
        ]
        return torch.tensor(rows, dtype=torch.long, device=self.accelerator.device)

    def _shared_masks(self) -> bool:
        """True when every inner iteration uses the same masks (fixed schedule or a deterministic estimator)."""
        return self.args.mask_schedule == "fixed" or bool(getattr(self.estimator, "deterministic", False))

    @contextlib.contextmanager
    def mask_seeds(self, seeds: torch.Tensor):
        """Within this context, likelihood estimates use one generator per row seeded by ``seeds [B]``."""
        previous = self._active_mask_seeds
        self._active_mask_seeds = seeds
        try:
            yield
        finally:
            self._active_mask_seeds = previous

    @contextlib.contextmanager
    def _reference_policy(self):
        """Yield the model to call for the reference policy (adapter disabled under PEFT)."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not is_peft_model(unwrapped):
            raise RuntimeError("no reference policy: set beta > 0 or reference='initial', or pass ref_model")
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            yield self.model

    # ------------------------------------------------------------------ TRL hooks

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None or multimodal_fields:
            raise ValueError("the diffusion sampler takes text prompts only (no images / multimodal fields)")
        device = self.accelerator.device
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        ids = pad(
            tensors, padding_value=self._tokenizer.pad_token_id, padding_side="left",
            pad_to_multiple_of=self.pad_to_multiple_of,
        ).to(device)  # [B, P]
        attn = pad(
            [torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left",
            pad_to_multiple_of=self.pad_to_multiple_of,
        ).to(device)  # [B, P]
        B = ids.shape[0]
        mode = 0 if self.model.training else 1
        gens = [
            torch.Generator(device=device).manual_seed(
                mix_seed(self.args.seed, SAMPLER_STREAM, mode, self._rollout_index, r)
            )
            for r in self._global_rows(B)
        ]
        with (
            profiling_context(self, "dlm_trl.generate"),
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                t0 = time.perf_counter()
                with self.accelerator.autocast(), self._rollout_autocast(device):
                    out = generate(
                        self.as_dlm(unwrapped), ids, config=self.sampler_config, prompt_attention_mask=attn,
                        generator=gens,
                    )
            except torch.OutOfMemoryError as err:
                raise torch.OutOfMemoryError(
                    f"{OOM_HINT} (this rank sampled {B} rows of prompt width {ids.shape[1]} + gen_length "
                    f"{self.sampler_config.gen_length}, {self.sampler_config.steps} steps). Original error: {err}"
                ) from err
            finally:
                unwrapped.train(was_training)
        self.seconds_counts["sampler"] += time.perf_counter() - t0
        self.nfe_counts["sampler"] += out.nfe * B
        self._rollout = out
        lengths = out.completion_mask.sum(1).tolist()
        completion_ids = [row[: int(n)] for row, n in zip(out.completion_ids.cpu().tolist(), lengths, strict=True)]
        return completion_ids, None

    def _generate_and_score_completions(self, inputs):
        self._rollout_index += 1
        self._rollout = None
        self._last_rewards = None
        self._trl_logps_off = True  # TRL's old / reference calls: computed below, per inner iteration
        t_start, sampler_before = time.perf_counter(), self.seconds_counts["sampler"]
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self._trl_logps_off = False
        self._zero_flat_group_advantages(out)
        rollout, self._rollout = self._rollout, None
        if rollout is None:
            raise RuntimeError("no diffusion rollout was recorded; _generate_single_turn was bypassed")
        device = self.accelerator.device
        completion_ids = rollout.completion_ids.to(device)  # [B, L] EOS-padded, as sampled
        completion_mask = rollout.completion_mask.to(device).long()  # [B, L] 1 up to and including first EOS
        if completion_ids.shape[0] != out["prompt_ids"].shape[0]:
            raise RuntimeError("rollout rows do not match TRL's batch")
        if self.mask_truncated_completions:
            has_eos = (completion_ids == self.eos_token_id).any(1, keepdim=True)
            completion_mask = completion_mask * has_eos.long()
        out["completion_ids"], out["completion_mask"] = completion_ids, completion_mask
        out["num_items_in_batch"] = self.accelerator.gather(completion_mask.sum()).sum()
        out["mask_seeds"] = self._make_mask_seeds(completion_ids.shape[0])  # [B, μ]
        t_score = time.perf_counter()
        with torch.no_grad():
            self._score_rollout(out)
        t_end = time.perf_counter()
        self.seconds_counts["nograd_likelihoods"] += t_end - t_score
        self.seconds_counts["rollout_other"] += (t_score - t_start) - (self.seconds_counts["sampler"] - sampler_before)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["nfe/total"] = [
            self.accelerator.gather(torch.tensor(sum(self.nfe_counts.values()), device=device)).sum().item()
        ]
        for name, seconds in self.seconds_counts.items():
            self._metrics[mode][f"time/{name}"] = [round(seconds, 2)]
        return out

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        pixel_values=None,
        image_grid_thw=None,
        num_images=None,
        pixel_attention_mask=None,
        spatial_shapes=None,
        num_tiles=None,
        image_sizes=None,
        token_type_ids=None,
        mm_token_type_ids=None,
        image_position_ids=None,
    ):
        """Per-token likelihood contributions ``[B, L]`` from the estimator, with the active mask seeds."""
        if self._trl_logps_off:
            return None, None, None
        seeds = self._active_mask_seeds
        if seeds is None:
            raise RuntimeError(
                "a likelihood estimate was requested without mask seeds; wrap the call in `with trainer.mask_seeds(...)`"
            )
        L = int(logits_to_keep)
        prompt_ids, completion_ids = input_ids[:, :-L], input_ids[:, -L:]  # [B, P], [B, L]
        prompt_mask, completion_mask = attention_mask[:, :-L], attention_mask[:, -L:]
        B = input_ids.shape[0]
        if seeds.shape[0] != B:
            raise RuntimeError(f"{seeds.shape[0]} mask seeds for {B} rows")
        dlm = self.as_dlm(model)
        step = batch_size or B
        chunks = []
        for s in range(0, B, step):
            e = min(s + step, B)
            self._estimating_seeds = seeds[s:e]  # rows in flight (read by tests' forward hooks)
            try:
                with self.accelerator.autocast():
                    chunks.append(
                        self.estimator(
                            dlm,
                            prompt_ids[s:e],
                            completion_ids[s:e],
                            completion_mask[s:e],
                            generator=row_generators(seeds[s:e].cpu()),
                            prompt_attention_mask=prompt_mask[s:e],
                        ).float()
                    )
            finally:
                self._estimating_seeds = None
        self._last_estimate_nfe = int(self.estimator.nfe(L)) * B
        return torch.cat(chunks, 0), None, None

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        k = self._inner_iteration()
        batch = dict(inputs)
        batch["inner_iteration"] = k
        seeds = inputs["mask_seeds"]
        batch["mask_seeds"] = seeds[:, k] if seeds.dim() == 2 else seeds
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            value = inputs.get(key)
            if value is not None and value.dim() == 3:
                batch[key] = value[:, k]
        if k == 0 and (self._iteration0_on_policy or mode == "eval"):
            batch["old_per_token_logps"] = None  # the current estimate, detached
        loss, metrics = self.compute_policy_loss(model, batch)
        loss = self._check_finite_loss(loss, metrics, k)
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps
        self._log_metrics(mode, metrics)
        self._metrics[mode]["nfe/total"] = [
            self.accelerator.gather(
                torch.tensor(sum(self.nfe_counts.values()), device=self.accelerator.device)
            ).sum().item()
        ]
        return loss

    # ------------------------------------------------------------------ failures, checkpoints and resuming

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards ``[N, F]`` (gathered over processes), checked for infinities (``args.nonfinite``).

        NaN keeps TRL's meaning (a reward function returned None: unscorable, advantage 0). The
        values are gathered, so every rank takes the same decision (no rank is left waiting).
        """
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        bad = torch.isinf(rewards)
        if bad.any():
            funcs = [self.reward_func_names[i] for i in bad.any(0).nonzero().flatten().tolist()]
            if self.args.nonfinite == "error":
                raise FloatingPointError(
                    f"reward function(s) {funcs} returned an infinite reward for {int(bad.any(1).sum())} of "
                    f"{rewards.shape[0]} completions (rollout {self._rollout_index}, step {self.state.global_step}); "
                    "no update was made. Fix the reward (return None for an unscorable completion) or set "
                    "nonfinite='skip' to give such completions advantage 0."
                )
            rewards = rewards.masked_fill(bad.any(1, keepdim=True), float("nan"))  # the whole row: unscorable
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["nonfinite/rewards_skipped"].append(float(bad.any(1).sum()))
        self._last_rewards = rewards  # [N, F], all processes (see _zero_flat_group_advantages)
        return rewards

    def _zero_flat_group_advantages(self, out: dict) -> None:
        """Advantage exactly 0 for every row of a group whose rewards are all equal (a *flat* group);
        with ``drop_flat_groups`` also ``out["keep_rows"]`` ``[B]`` (0 for those rows), which leaves
        them out of the loss and its normaliser. Logs ``frac_flat_groups`` (of all processes' groups).

        TRL computes ``R - mean(R)`` in float32, which leaves ±1e-9 residues in such groups, all of
        one sign; Adam normalises gradients by their running scale, so on the first steps (or when
        every group of a batch is flat) those residues become full-size updates that lower (or raise)
        the likelihood of everything the policy sampled. A flat group carries no signal, so it gets
        none. (On the tiny model's 40-step runs mixed batches dominate and the change was not
        measurable; it matters when whole batches are flat, e.g. early in training on a hard task.)
        """
        self._flat_rows = None
        rewards = self._last_rewards
        if rewards is None or "advantages" not in out:
            return
        G = self.num_generations if self.model.training else self.num_generations_eval
        if G is None or G <= 1 or rewards.numel() % G:
            return
        weights = self.reward_weights.to(rewards.device)
        total = (rewards * weights.unsqueeze(0)).nansum(1)  # [N] TRL's reward sum (NaN: unscorable)
        total = torch.where(torch.isnan(rewards).all(1), torch.full_like(total, float("nan")), total)
        grouped = total.view(-1, G)
        hi = grouped.masked_fill(grouped.isnan(), float("-inf")).max(1).values
        lo = grouped.masked_fill(grouped.isnan(), float("inf")).min(1).values
        flat_groups = (hi == lo) | (hi < lo)  # [N/G] all equal, or all unscorable
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["frac_flat_groups"].append(flat_groups.float().mean().item())
        flat = flat_groups.repeat_interleave(G)  # [N], every process's rows in TRL's global order
        self._flat_rows = flat
        B = out["advantages"].shape[0]
        start = self.accelerator.process_index * B
        local = flat[start : start + B].to(out["advantages"].device)
        if local.shape[0] != B:
            return
        out["advantages"] = out["advantages"].masked_fill(local, 0.0)
        if self.args.drop_flat_groups:
            out["keep_rows"] = (~local).to(out["advantages"].dtype)  # [B] batch-first: shuffled with its rows

    def _check_finite_loss(self, loss: torch.Tensor, metrics: dict, inner_iteration: int) -> torch.Tensor:
        """The loss to back-propagate. If it is NaN/inf on any rank: raise on every rank before the
        backward pass (``nonfinite="error"``), or (``"skip"``) zero it and drop this optimizer step on
        every rank, so the weights and the optimizer state stay those of the last completed step."""
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.gather(bad)  # [world]
        if not bad.any():
            return loss
        ranks = bad.nonzero().flatten().tolist()
        where = f"on rank(s) {ranks} at optimizer step {self.state.global_step + 1}, inner iteration {inner_iteration}"
        if self.args.nonfinite == "skip":
            mode = "train" if self.model.training else "eval"
            if mode == "train":  # an evaluation loss has no optimizer step to drop
                if not self._skip_optimizer_step:
                    logger.warning(f"non-finite loss {where}: skipping this optimizer step (nonfinite='skip')")
                self._skip_optimizer_step = True
            self._metrics[mode]["nonfinite/loss_skipped"].append(1.0)
            # Back-propagating zero keeps every rank's collective calls in step; the (possibly
            # non-finite) gradients it leaves are discarded with the skipped step.
            return loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
        finite = {k: round(float(v.detach().float().mean()), 6) for k, v in sorted(metrics.items())}
        raise FloatingPointError(
            f"non-finite loss ({float(loss.detach())} here) {where}; training stopped before the backward "
            "pass, so the weights and the optimizer state are those of the last completed step. Metrics of this "
            f"micro-batch: {finite}. Usual causes: a learning rate too large for the algorithm (GDPO: 5e-7 to 1e-6 on "
            "LLaDA-8B), bf16 overflow in exp(ratio) (try bf16=False / fp32 log-softmax estimators), or non-finite "
            "weights from an earlier step (resume from the last checkpoint with a lower learning rate). Set "
            "nonfinite='skip' to drop such steps and go on."
        )

    def create_optimizer(self, *args, **kwargs):
        """TRL's optimizer, whose ``step`` is not taken while a non-finite loss is being skipped.

        The guard sits on the torch optimizer itself, so it holds under accelerate and inside
        DeepSpeed's ZeRO optimizer (which calls the wrapped optimizer's ``step``)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if optimizer is not None and not getattr(optimizer, "_dlm_trl_guarded", False):
            step = optimizer.step

            def guarded_step(*a, **k):
                if self._skip_optimizer_step:
                    for group in optimizer.param_groups:  # leave no non-finite gradient behind
                        for p in group["params"]:
                            p.grad = None
                    return None
                return step(*a, **k)

            optimizer.step = guarded_step
            optimizer._dlm_trl_guarded = True
        return optimizer

    def _get_output_dir(self, trial) -> str:
        """The run directory, or the staging directory while a checkpoint is being written."""
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Atomic checkpoint: everything (model, optimizer, scheduler, RNG, trainer and rollout state; every
        rank's DeepSpeed shards) is written under ``<output_dir>/tmp-checkpoint-N/``, then renamed to
        ``checkpoint-N`` by the saving process once every rank has finished. A crash mid-save leaves only a
        ``tmp-`` directory, which ``--resume_from_checkpoint`` (latest ``checkpoint-N``) never picks.
        transformers 5 writes straight into ``checkpoint-N``, which a crash can leave half-written.
        """
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = os.path.join(run_dir, STAGING_PREFIX + name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staging):
            shutil.rmtree(staging)  # left by an earlier crash
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging = staging
        try:
            super()._save_checkpoint(model, trial)  # → staging/checkpoint-N (HF's rotation sees only staging)
            written = os.path.join(staging, name)
            if not self.args.save_only_model:
                self._save_rollout_state(written)
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save and os.path.isdir(written):
            best = self.state.best_model_checkpoint
            if best is not None and os.path.abspath(best).startswith(os.path.abspath(staging) + os.sep):
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(written, "trainer_state.json"))
            if os.path.isdir(final):  # an older run's checkpoint of the same step: replace it
                shutil.rmtree(final)
            os.replace(written, final)
            shutil.rmtree(staging, ignore_errors=True)
            if rotate_checkpoints is not None:
                rotate_checkpoints(
                    output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True,
                )
            else:
                self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
        self.accelerator.wait_for_everyone()

    def _save_rollout_state(self, output_dir: str) -> None:
        generate_every = self.args.steps_per_generation * self.num_iterations
        mid_rollout = self._step % generate_every != 0
        state = {
            "rollout_index": self._rollout_index,
            "step": self._step,
            "nfe_counts": dict(self.nfe_counts),
            "world_size": self.accelerator.num_processes,
            # The rest of the current rollout batch: needed only when the checkpoint falls between its inner
            # iterations (TRL would otherwise sample a new one, and the run would diverge from an uninterrupted one).
            "buffered_inputs": _to_device(self._buffered_inputs, "cpu") if mid_rollout else None,
        }
        torch.save(state, os.path.join(output_dir, ROLLOUT_STATE_NAME.format(rank=self.accelerator.process_index)))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, ROLLOUT_STATE_NAME.format(rank=self.accelerator.process_index))
        if not os.path.isfile(path):
            warnings.warn(
                f"{checkpoint} has no dlm-trl rollout state ({os.path.basename(path)}): the rollout counter restarts "
                "at 0, so the resumed run samples with other seeds than an uninterrupted one", stacklevel=2,
            )
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        self._rollout_index = int(state["rollout_index"])
        self.nfe_counts.clear()
        self.nfe_counts.update(state["nfe_counts"])
        if state["world_size"] != self.accelerator.num_processes:
            warnings.warn(
                f"checkpoint written by {state['world_size']} processes, resumed on {self.accelerator.num_processes}: "
                "a partly used rollout batch is dropped and a new one is sampled", stacklevel=2,
            )
            return
        self._step = int(state["step"])
        if state["buffered_inputs"] is not None:
            self._buffered_inputs = _to_device(state["buffered_inputs"], self.accelerator.device)

    # ------------------------------------------------------------------ for subclasses and users

    def estimate_logps(self, model, inputs: dict, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token estimates ``[B, L]`` of ``model`` (grad enabled if it is) for the batch rows,
        on the masks of ``seeds`` (default: this inner iteration's ``inputs["mask_seeds"]``)."""
        seeds = inputs["mask_seeds"] if seeds is None else seeds
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)  # [B, P+L]
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        with self.mask_seeds(seeds):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, inputs["completion_ids"].shape[1]
            )
        self.nfe_counts["policy"] += self._last_estimate_nfe
        return logps

    def old_logps(self, inputs: dict, logps: torch.Tensor) -> torch.Tensor:
        """The rollout policy's estimate ``[B, L]`` on this iteration's masks (``logps.detach()`` when on-policy)."""
        old = inputs.get("old_per_token_logps")
        return logps.detach() if old is None else old

    def compute_policy_loss(self, model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch → ``(loss, metrics)``; override this to change the objective.

        ``inputs`` holds TRL's batch for this inner iteration: ``prompt_ids``, ``prompt_mask``,
        ``completion_ids``, ``completion_mask`` ``[B, L]``, ``advantages`` ``[B]``,
        ``mask_seeds`` ``[B]``, ``old_per_token_logps`` ``[B, L]`` (``None`` when on-policy:
        use :meth:`old_logps`), ``ref_per_token_logps`` ``[B, L]`` (with β > 0),
        ``keep_rows`` ``[B]`` (with ``drop_flat_groups``: 0 for rows of flat groups, which the
        loss and its normaliser must leave out), ``inner_iteration``. Use :meth:`estimate_logps` for the current policy's estimate.
        The returned loss is scaled for gradient accumulation by the caller.
        """
        raise NotImplementedError

    def _needs_old_estimates(self) -> bool:
        return True

    def _score_rollout(self, out: dict) -> None:
        """Old and reference estimates ``[B, μ, L]`` for the iterations that need them (no grad)."""
        seeds = out["mask_seeds"]  # [B, μ]
        B, mu = seeds.shape
        L = out["completion_ids"].shape[1]
        shared = self._shared_masks()
        canon = (lambda k: 0) if shared else (lambda k: k)
        on_policy0 = self._iteration0_on_policy or not self.model.training
        batch = {
            "prompt_ids": out["prompt_ids"], "prompt_mask": out["prompt_mask"],
            "completion_ids": out["completion_ids"], "completion_mask": out["completion_mask"],
        }
        bs = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size

        def estimates(model, ks, counter):
            table = {}
            for k in sorted({canon(k) for k in ks}):
                table[k] = self._estimate_chunked(model, batch, seeds[:, k], bs)
                self.nfe_counts[counter] += self._last_estimate_nfe
            full = torch.full((B, mu, L), float("nan"), device=out["completion_ids"].device)
            for k in ks:
                full[:, k] = table[canon(k)]
            return full

        if self._needs_old_estimates():
            need_old = [k for k in range(mu) if not (k == 0 and on_policy0)]
            if need_old:
                out["old_per_token_logps"] = estimates(self.model, need_old, "old")
        if self.beta != 0.0:
            with self._reference_policy() as ref:
                out["ref_per_token_logps"] = estimates(ref, list(range(mu)), "ref")

    def _estimate_chunked(self, model, batch: dict, seeds: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        with self.mask_seeds(seeds):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, batch["completion_ids"].shape[1], batch_size=batch_size
            )
        return logps

    def _log_metrics(self, mode: str, metrics: dict[str, torch.Tensor]) -> None:
        """Append each metric of this micro-batch, reduced over processes: the largest value for a name
        ending in ``max``, the smallest for ``min``, else the mean (TRL then averages the micro-batches
        of a logging step)."""
        device = self.accelerator.device
        for name in sorted(metrics):
            value = metrics[name].detach().float().reshape(-1).mean().reshape(1).to(device)
            values = self.accelerator.gather(value)
            if name.endswith("max"):
                reduced = values.max()
            elif name.endswith("min"):
                reduced = values.min()
            else:
                reduced = values.nanmean()
            self._metrics[mode][name].append(reduced.item())


class _ResetSkipFlag(TrainerCallback):
    """Clears the trainer's skip flag once the (skipped) optimizer step is over."""

    def __init__(self, trainer: _DLMTrainerBase) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._skip_optimizer_step = False


def _to_device(value, device):
    """``value`` (tensors in nested lists / dicts) with every tensor moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


__all__ = ["DLMConfig", "MASK_SCHEDULES", "NONFINITE_POLICIES", "OOM_HINT", "REFERENCES", "derive_seeds", "mix_seed"]

# Documented for users: the environment variables that also keep TRL / the Hub client quiet.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def ensure_offline_env() -> None:
    """Set ``HF_HUB_DISABLE_TELEMETRY=1`` (and ``HF_HUB_OFFLINE=1`` unless already set)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
