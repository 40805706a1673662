"""The TRL hook layer of the DLM trainers: ``trl.GRPOTrainer`` with a diffusion sampler and a
likelihood estimator in place of autoregressive generation and causal log-probs.

This module holds :class:`_DLMTrainerBase` — its ``__init__`` and every method of
``GRPOTrainer`` / ``transformers.Trainer`` it overrides — and nothing else. What those hooks call
lives in one module per concern (each a mixin of :class:`_DLMTrainerBase`):

=====================  ===========================================================================
``config.py``          :class:`DLMConfig`, its option tables and validation (refused TRL options)
``seeds.py``           :func:`mix_seed` / :func:`derive_seeds`, per-row mask seeds, inner iterations
``reference.py``       the reference policy: set-up and access
``estimation.py``      the estimator plugin; ``estimate_logps`` / ``old_logps`` /
                       ``compute_policy_loss`` (for subclasses and users); old / reference estimates
``flat_groups.py``     advantage 0 (and ``keep_rows`` with ``drop_flat_groups``) for flat groups
``curriculum.py``      ``curriculum="replay"``: the sampler that replays informative prompts, its pool
``durability.py``      atomic checkpoints, rollout state save / restore, the non-finite guard
=====================  ===========================================================================

What it overrides (TRL 1.16; ``tests/test_trl_hooks.py`` fails, naming the hook, if any of
these signatures changes):

``_generate_single_turn``
    Runs the LLaDA block sampler (:func:`dlm_trl.sampling.generate`) inside TRL's
    ``unwrap_model_for_generation`` (so DeepSpeed ZeRO-3 gathers the weights once per
    rollout), with one ``torch.Generator`` per row seeded from (seed, rollout, row). It
    returns TRL's lists of completion ids (cut after the first EOS) and keeps the full
    ``[B, L]`` sampler output (EOS-padded, or as sampled with ``after_eos="keep"``) for the
    likelihood estimates. An out-of-memory error becomes advice (:data:`OOM_HINT`).
``_generate_and_score_completions``
    Calls TRL's (prompts, rewards, advantages, logging) with TRL's own log-prob calls
    switched off, puts back the full-length completion and its mask, adds
    ``mask_seeds [B, μ]`` (one seed per row and inner iteration) and computes the old and
    reference estimates ``[B, μ, L]`` for the inner iterations that need them — every
    value is batch-first, so TRL's shuffle and split along dim 0 keep each row's seeds and
    estimates together. Rows of flat groups (all rewards equal) get advantage exactly 0, and
    with ``drop_flat_groups`` a ``keep_rows [B]`` flag that takes them out of the loss and its
    normaliser; ``frac_flat_groups`` is logged. With a curriculum, the rows' dataset indices
    (an extra column) are stripped before TRL sees the rows and, after the rollout, every
    group's solve rate updates the curriculum pool (``curriculum/*`` metrics).
``_get_train_sampler``
    TRL's ``RepeatSampler``, or with ``curriculum="replay"`` a sampler with its index structure
    that fills part of each generation batch with prompts from the curriculum pool.
``_get_per_token_logps_and_entropies``
    The single place where likelihoods are estimated: the configured estimator plugin
    with per-row generators built from the active mask seeds. Old, reference and current
    estimates of a row in an inner iteration therefore draw identical masks (common
    random numbers, ALGORITHMS.md §0). Entropies are not computed (``None``).
``_compute_loss``
    Selects the current inner iteration's seeds and old/reference estimates and calls
    :meth:`compute_policy_loss` — the method subclasses (and users) override — then stops
    every rank before the backward pass on a non-finite loss, scales for gradient accumulation
    and logs the returned metrics.
``_send_telemetry``
    A no-op: nothing is sent anywhere (TRL would ping the Hub from ``__init__``).

Checkpoints and failures (``durability.py``, docs/scaleout.md; signatures guarded by
tests/test_resume.py and tests/test_failures.py): ``_save_checkpoint`` / ``_get_output_dir`` write
each checkpoint under ``tmp-checkpoint-N`` and rename it once every rank is done (atomic), adding
the per-rank rollout state that ``_load_optimizer_and_scheduler`` restores on resume;
``_calculate_rewards`` rejects (or skips) infinite rewards; ``create_optimizer`` wraps the
optimizer's ``step`` so that a non-finite loss under ``nonfinite="skip"`` drops the step.

The constants, functions and classes defined here before the split into these modules
(``DLMConfig``, ``mix_seed``, ``derive_seeds``, ``_check_delta``, ``ROLLOUT_STATE_NAME`` …) are
re-exported, so imports from ``dlm_trl.trainers._base`` keep working.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections import defaultdict

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.models import unwrap_model_for_generation
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import pad

from ..estimators import row_generators
from ..models import DLM
from ..sampling import generate
from .config import (
    MASK_SCHEDULES,
    NONFINITE_POLICIES,
    REFERENCES,
    ROLLOUT_AUTOCAST_DTYPES,  # noqa: F401  (re-exported)
    DLMConfig,
    _check_delta,  # noqa: F401  (re-exported)
    _parse_dict,
    _require_transformers_5,  # noqa: F401  (re-exported)
)
from .curriculum import _CurriculumMixin
from .durability import (
    ROLLOUT_STATE_NAME,  # noqa: F401  (re-exported)
    STAGING_PREFIX,  # noqa: F401  (re-exported)
    _DurabilityMixin,
    _ResetSkipFlag,
    _to_device,  # noqa: F401  (re-exported)
)
from .estimation import _EstimationMixin
from .flat_groups import _FlatGroupsMixin
from .reference import _ReferenceMixin
from .seeds import (
    _MASK64,  # noqa: F401  (re-exported)
    MASK_STREAM,  # noqa: F401  (re-exported)
    SAMPLER_STREAM,
    _MaskSeedsMixin,
    _splitmix64,  # noqa: F401  (re-exported)
    derive_seeds,
    mix_seed,
)

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


def _destroy_process_group_at_exit() -> None:
    """Tear torch.distributed down while the interpreter is still whole. Left to interpreter finalization,
    gloo's worker threads can still hold work objects whose tensors reference Python objects, and the rank
    aborts after a finished run ("terminate called without an active exception", exit code -6; seen under
    ZeRO-3 on a loaded CPU machine; the same cause is described in pytorch/pytorch PR 179291). A no-op when
    the script already destroyed the group (``accelerator.end_training()``). No barrier: a rank that failed
    must not leave the others waiting here."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


_EXIT_HANDLER = {"registered": False}


def _register_distributed_teardown() -> None:
    import atexit

    import torch.distributed as dist

    if not _EXIT_HANDLER["registered"] and dist.is_available() and dist.is_initialized():
        atexit.register(_destroy_process_group_at_exit)
        _EXIT_HANDLER["registered"] = True


def _is_iterable_dataset(dataset) -> bool:
    import datasets

    return isinstance(dataset, (torch.utils.data.IterableDataset, datasets.IterableDataset))


class _DLMTrainerBase(
    _MaskSeedsMixin, _ReferenceMixin, _EstimationMixin, _FlatGroupsMixin, _CurriculumMixin, _DurabilityMixin,
    GRPOTrainer,
):
    """Private base of :class:`DiffuGRPOTrainer`, :class:`GDPOTrainer` and :class:`DMPOTrainer`
    (see the module docstring for the hooks it overrides and the mixins that implement the rest).

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
        if args.curriculum != "none" and _is_iterable_dataset(train_dataset):
            raise ValueError(
                f"curriculum={args.curriculum!r} needs a map-style training set (a datasets.Dataset); got "
                f"{type(train_dataset).__name__}, which cannot revisit a prompt. Load it without streaming "
                "(or materialise it), or set curriculum='none'."
            )

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
        _register_distributed_teardown()  # launched runs: destroy the process group before interpreter shutdown

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
        self._rollout_correction_asked, self._rollout_correction_metrics = False, None  # per loss call
        self._active_mask_seeds: torch.Tensor | None = None
        self._estimating_seeds: torch.Tensor | None = None
        self._trl_logps_off = False
        self._last_estimate_nfe = 0
        self._checkpoint_staging: str | None = None
        #: Set when a micro-batch's loss was non-finite under ``nonfinite="skip"``: the optimizer step
        #: of that accumulation cycle is not taken (see :meth:`create_optimizer`); reset at step end.
        self._skip_optimizer_step = False
        self.add_callback(_ResetSkipFlag(self))
        self._setup_curriculum()  # curriculum="replay": index column on the training set, the pool
        #: Forward passes spent on this process, counted per sequence (rows × NFE per sequence).
        self.nfe_counts: dict[str, int] = defaultdict(int)
        # Wall-clock seconds of this process: 'sampler' (rollouts), 'nograd_likelihoods' (old / reference /
        # DMPO weights), 'rollout_other' (rewards, advantages, TRL's bookkeeping). The rest of train_runtime is
        # the policy pass with its backward and the optimizer step. Logged as time/<name> (cumulative).
        self.seconds_counts: dict[str, float] = defaultdict(float)

    # ------------------------------------------------------------------ small helpers

    def _send_telemetry(self):
        """No telemetry: dlm-trl never phones home (TRL's version pings the Hub from ``__init__``)."""
        return None

    def as_dlm(self, model) -> DLM:
        """``model`` (possibly wrapped by DDP / DeepSpeed / PEFT) seen through the DLM interface."""
        return DLM(module=model, mask_token_id=self.mask_token_id, family=self.model_family, eos_token_id=self.eos_token_id)

    def _rollout_autocast(self, device: torch.device):
        """``torch.autocast`` in ``args.rollout_autocast_dtype`` for the sampler (a null context when unset)."""
        from .recipe_utils import autocast_context

        return autocast_context(self.args.rollout_autocast_dtype, torch.device(device).type)

    # ------------------------------------------------------------------ TRL hooks

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None or multimodal_fields:
            raise ValueError("the diffusion sampler takes text prompts only (no images / multimodal fields)")
        device = self.accelerator.device
        ids, attn = self._left_pad(prompt_ids)  # [B, P], [B, P]
        B = ids.shape[0]
        mode = 0 if self.model.training else 1
        gens = [
            torch.Generator(device=device).manual_seed(
                mix_seed(self.args.seed, SAMPLER_STREAM, mode, self._rollout_index, r)
            )
            for r in self._global_rows(B)
        ]
        try:
            with self._rollout_model() as unwrapped:
                t0 = time.perf_counter()
                out = generate(
                    self.as_dlm(unwrapped), ids, config=self.sampler_config, prompt_attention_mask=attn,
                    generator=gens, sync_ranks=self.accelerator.num_processes > 1,
                )
        except torch.OutOfMemoryError as err:
            raise torch.OutOfMemoryError(
                f"{OOM_HINT} (this rank sampled {B} rows of prompt width {ids.shape[1]} + gen_length "
                f"{self.sampler_config.gen_length}, {self.sampler_config.steps} steps). Original error: {err}"
            ) from err
        self.seconds_counts["sampler"] += time.perf_counter() - t0
        self.nfe_counts["sampler"] += int(out.row_nfe.sum()) if out.row_nfe is not None else out.nfe * B
        self._log_rollout_metrics(out)
        self._rollout = out
        lengths = out.completion_mask.sum(1).tolist()
        completion_ids = [row[: int(n)] for row, n in zip(out.completion_ids.cpu().tolist(), lengths, strict=True)]
        return completion_ids, None

    def _left_pad(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-id lists → left-padded ``ids [B, P]`` and their attention mask ``[B, P]`` on this process's device."""
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        kwargs = {"padding_side": "left", "pad_to_multiple_of": self.pad_to_multiple_of}
        ids = pad(tensors, padding_value=self._tokenizer.pad_token_id, **kwargs)
        attn = pad([torch.ones_like(t) for t in tensors], padding_value=0, **kwargs)
        return ids.to(self.accelerator.device), attn.to(self.accelerator.device)

    @contextlib.contextmanager
    def _rollout_model(self):
        """The policy to roll out with, for the duration of the block: gathered once under ZeRO-3 (TRL's
        ``unwrap_model_for_generation``), whole under FSDP, in eval mode (restored after), without gradients,
        under the accelerator's and the rollout's autocast."""
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
                with self.accelerator.autocast(), self._rollout_autocast(self.accelerator.device):
                    yield unwrapped
            finally:
                unwrapped.train(was_training)

    def _log_rollout_metrics(self, out) -> None:
        """Per-rollout sampler diagnostics: forwards per row, completion tokens committed per forward, and the
        mean log-probability a token had when it was committed (falls when parallel decoding commits
        low-confidence tokens; rises towards 0 when the policy sharpens)."""
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["sampler/nfe_per_row"].append(out.mean_nfe)
        mask = out.completion_mask.bool()  # [B, L]
        if out.row_nfe is not None:
            tokens = mask.sum(1).float()  # [B]
            metrics["sampler/tokens_per_forward"].append(float((tokens / out.row_nfe.clamp_min(1)).mean()))
        if out.commit_logprob is not None:
            lp = out.commit_logprob[mask]
            lp = lp[torch.isfinite(lp)]
            if lp.numel():
                metrics["sampler/commit_logprob"].append(float(lp.mean()))

    def _get_train_sampler(self, dataset=None):
        """TRL's ``RepeatSampler``, or the curriculum's (same structure, replays from the pool)."""
        if self.args.curriculum == "none":
            return super()._get_train_sampler(dataset)
        return self._curriculum_sampler(self.train_dataset if dataset is None else dataset)

    def _generate_and_score_completions(self, inputs):
        inputs, prompt_indices = self._strip_curriculum_index(inputs)
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
        self._update_curriculum(prompt_indices)
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
        if self.args.rollout_correction != "none":
            if rollout.commit_logprob is None:
                raise RuntimeError(
                    f"rollout_correction={self.args.rollout_correction!r} needs the sampler's per-token "
                    "log-probabilities, but this rollout recorded none (SamplerOutput.commit_logprob is None)"
                )
            out["sampler_logps"] = rollout.commit_logprob.to(device).float()  # [B, L] NaN where none
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
        out = self.run_estimator(
            model, prompt_ids, completion_ids, prompt_mask, completion_mask, seeds, batch_size=batch_size
        )
        return out, None, None

    def run_estimator(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P]
        completion_ids: torch.Tensor,  # [B, L]
        prompt_mask: torch.Tensor,  # [B, P]
        completion_mask: torch.Tensor,  # [B, L]
        seeds: torch.Tensor,  # [B]
        *,
        batch_size: int | None = None,
        method=None,
    ):
        """``method(dlm, prompt_ids, completion_ids, completion_mask, generator=, prompt_attention_mask=)``
        (default: the estimator itself) over the rows in chunks of ``batch_size``, each chunk under autocast
        with its rows' mask generators; the float32 result(s) concatenated over rows — one ``[B, L]`` tensor,
        or a tuple of them for a method that returns several (e.g. SPG's ``bounds``). Sets the NFE count."""
        B, L = completion_ids.shape
        if seeds.shape[0] != B:
            raise RuntimeError(f"{seeds.shape[0]} mask seeds for {B} rows")
        method = self.estimator if method is None else method
        dlm = self.as_dlm(model)
        step = batch_size or max(B, 1)
        chunks = []
        counted = 0  # row-forwards reported by an estimator that counts its own (``last_call_nfe``)
        counts_itself = method is self.estimator and hasattr(self.estimator, "last_call_nfe")
        for s in range(0, B, step):
            e = min(s + step, B)
            self._estimating_seeds = seeds[s:e]  # rows in flight (read by tests' forward hooks)
            try:
                with self.accelerator.autocast():
                    chunks.append(
                        method(
                            dlm,
                            prompt_ids[s:e],
                            completion_ids[s:e],
                            completion_mask[s:e],
                            generator=row_generators(seeds[s:e].cpu()),
                            prompt_attention_mask=prompt_mask[s:e],
                        )
                    )
            finally:
                self._estimating_seeds = None
            if counts_itself:
                counted += int(self.estimator.last_call_nfe)
        # what was run where the estimator counts it (e.g. ar_order_exact's one-off entropy selection pass), else
        # the estimator's per-sequence count
        self._last_estimate_nfe = counted if counts_itself else int(self.estimator.nfe(L)) * B
        if chunks and isinstance(chunks[0], tuple):
            return tuple(torch.cat([c[j].float() for c in chunks], 0) for j in range(len(chunks[0])))
        return torch.cat([c.float() for c in chunks], 0)

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
        self._rollout_correction_asked, self._rollout_correction_metrics = False, None
        loss, metrics = self.compute_policy_loss(model, batch)
        if self.args.rollout_correction != "none":
            if not self._rollout_correction_asked:
                raise RuntimeError(
                    f"{type(self).__name__}.compute_policy_loss ignores rollout_correction="
                    f"{self.args.rollout_correction!r}: call self.rollout_correction(inputs, old_logps) and pass the "
                    "weights to the loss, or set rollout_correction='none'"
                )
            metrics = {**metrics, **(self._rollout_correction_metrics or {})}
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

    # ------------------------------------------------------------------ durability: checkpoints and failures

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards ``[N, F]`` (gathered over processes), checked for infinities (``args.nonfinite``,
        :meth:`~dlm_trl.trainers.durability._DurabilityMixin._check_rewards`)."""
        local = self._rewards_from_cache(inputs, completion_ids_list)
        if local is None:
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        else:  # the same gather as TRL's, so every process still takes part in it
            rewards = self.accelerator.gather(local.to(self.accelerator.device, torch.float32))
        rewards = self._check_rewards(rewards)
        self._last_rewards = rewards  # [N, F], all processes (see _zero_flat_group_advantages)
        return rewards

    def _rewards_from_cache(self, inputs, completion_ids_list) -> torch.Tensor | None:
        """This process's rewards ``[n, F]`` (one column per reward function, NaN where it returned None) when the
        rollout already computed them for exactly these completions, else ``None`` (TRL computes them). The tree
        search of :class:`~dlm_trl.trainers.tr2d2.TR2D2Trainer` fills it."""
        return None

    def create_optimizer(self, *args, **kwargs):
        """TRL's optimizer, whose ``step`` is not taken while a non-finite loss is being skipped
        (:meth:`~dlm_trl.trainers.durability._DurabilityMixin._guard_optimizer`)."""
        return self._guard_optimizer(super().create_optimizer(*args, **kwargs))

    def _get_output_dir(self, trial) -> str:
        """The run directory, or the staging directory while a checkpoint is being written."""
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Atomic checkpoint under ``tmp-checkpoint-N``, renamed to ``checkpoint-N`` once every rank is done
        (:meth:`~dlm_trl.trainers.durability._DurabilityMixin._save_checkpoint_atomically`)."""
        self._save_checkpoint_atomically(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """transformers' restore, then this rank's rollout state
        (:meth:`~dlm_trl.trainers.durability._DurabilityMixin._load_rollout_state`)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        self._load_rollout_state(checkpoint)


__all__ = ["DLMConfig", "MASK_SCHEDULES", "NONFINITE_POLICIES", "OOM_HINT", "REFERENCES", "derive_seeds", "mix_seed"]

# Documented for users: the environment variables that also keep TRL / the Hub client quiet.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def ensure_offline_env() -> None:
    """Set ``HF_HUB_DISABLE_TELEMETRY=1`` (and ``HF_HUB_OFFLINE=1`` unless already set)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
