"""Durability: atomic checkpoints, the rollout state that makes a resumed run match an uninterrupted
one, and the non-finite guard (docs/scaleout.md).

* **Atomic checkpoints** (:meth:`_DurabilityMixin._save_checkpoint_atomically`): each checkpoint
  is written under ``tmp-checkpoint-N`` and renamed once every rank is done.
* **Rollout state** (:data:`ROLLOUT_STATE_NAME`, one file per rank): the rollout counter (the
  seeds of ``seeds.py`` depend on it), TRL's micro-step and, mid-rollout, the buffered rollout
  batch; restored on resume by :meth:`~_DurabilityMixin._load_rollout_state`.
* **Non-finite guard** (``args.nonfinite``): infinite rewards are rejected or made unscorable
  (:meth:`~_DurabilityMixin._check_rewards`); a NaN/inf loss stops every rank before the backward
  pass, or its optimizer step is skipped on every rank (:meth:`~_DurabilityMixin._check_finite_loss`,
  :meth:`~_DurabilityMixin._guard_optimizer`, :class:`_ResetSkipFlag`).

The transformers / TRL methods these serve (``_calculate_rewards``, ``create_optimizer``,
``_save_checkpoint``, ``_get_output_dir``, ``_load_optimizer_and_scheduler``) are overridden in
``_base.py``, which calls the methods here; ``_DurabilityMixin`` must precede ``GRPOTrainer`` in the
trainer's bases (its ``super()`` calls reach transformers' checkpoint code).
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

try:  # transformers >= 5; 4.x has it as Trainer._rotate_checkpoints
    from transformers.trainer_utils import rotate_checkpoints
except ImportError:  # pragma: no cover - exercised under transformers 4.x
    rotate_checkpoints = None
from transformers.utils import logging as hf_logging

if TYPE_CHECKING:
    from ._base import _DLMTrainerBase

logger = hf_logging.get_logger(__name__)
#: Per-rank file in a checkpoint with the rollout state (rollout counter, TRL's micro-step and
#: its buffered rollout batch when the checkpoint falls inside a rollout's inner iterations).
ROLLOUT_STATE_NAME = "dlm_trl_rollout_state_{rank}.pt"
#: Where a checkpoint is written before it is renamed to ``checkpoint-N`` (atomic save).
STAGING_PREFIX = "tmp-"


class _DurabilityMixin:
    """Checkpoints that survive a crash mid-save, exact resumption, and no update from a non-finite number."""

    # ------------------------------------------------------------------ non-finite rewards and losses

    def _check_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """TRL's rewards ``[N, F]`` (gathered over processes), checked for infinities (``args.nonfinite``).

        NaN keeps TRL's meaning (a reward function returned None: unscorable, advantage 0). The
        values are gathered, so every rank takes the same decision (no rank is left waiting).
        """
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
        return rewards

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

    def _guard_optimizer(self, optimizer):
        """``optimizer`` (TRL's), whose ``step`` is not taken while a non-finite loss is being skipped.

        The guard sits on the torch optimizer itself, so it holds under accelerate and inside
        DeepSpeed's ZeRO optimizer (which calls the wrapped optimizer's ``step``)."""
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

    # ------------------------------------------------------------------ checkpoints and resuming

    def _save_checkpoint_atomically(self, model, trial):
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
        pool = getattr(self, "_curriculum_pool", None)
        if pool is not None:  # curriculum="replay": the informative prompts found so far
            state["curriculum_pool"] = pool.state_dict()
        torch.save(state, os.path.join(output_dir, ROLLOUT_STATE_NAME.format(rank=self.accelerator.process_index)))

    def _load_rollout_state(self, checkpoint) -> None:
        """Restore this rank's rollout state from ``checkpoint`` (after transformers restored the rest)."""
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, ROLLOUT_STATE_NAME.format(rank=self.accelerator.process_index))
        if not os.path.isfile(path):
            warnings.warn(
                f"{checkpoint} has no dlm-trl rollout state ({os.path.basename(path)}): the rollout counter restarts "
                "at 0, so the resumed run samples with other seeds than an uninterrupted one", stacklevel=3,
            )
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        self._rollout_index = int(state["rollout_index"])
        self.nfe_counts.clear()
        self.nfe_counts.update(state["nfe_counts"])
        pool = getattr(self, "_curriculum_pool", None)
        if pool is not None and state.get("curriculum_pool") is not None:
            # The pool comes back; the replay draws of the batches the resumed dataloader skips are not
            # replayed, so a resumed curriculum run is not token-identical to an uninterrupted one.
            pool.load_state_dict(state["curriculum_pool"])
        if state["world_size"] != self.accelerator.num_processes:
            warnings.warn(
                f"checkpoint written by {state['world_size']} processes, resumed on {self.accelerator.num_processes}: "
                "a partly used rollout batch is dropped and a new one is sampled", stacklevel=3,
            )
            return
        self._step = int(state["step"])
        if state["buffered_inputs"] is not None:
            self._buffered_inputs = _to_device(state["buffered_inputs"], self.accelerator.device)


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

