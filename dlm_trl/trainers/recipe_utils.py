"""Building blocks of the runnable recipes in ``recipes/`` (kept here so the recipes stay linear).

* :class:`RecipeArguments` — task, data and held-out evaluation options (parsed by ``TrlParser``
  next to a trainer config and ``trl.ModelConfig``);
* :func:`load_policy` — model, tokenizer and optional LoRA config from ``ModelConfig``
  (``"tiny"`` = the embedded model, offline);
* :func:`heldout_eval` — d1-protocol accuracy (temperature 0) on the task's test split;
* :class:`RewardCurveCallback` — the logged mean reward per step, with wall-clock and NFE;
* :func:`write_report` — ``report.json`` and ``report.png`` (reward curve, accuracy before/after).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..evaluation import evaluate
from ..tasks import get_task


@dataclass
class RecipeArguments:
    """Task, data and evaluation options of a recipe."""

    task: str = field(default="countdown", metadata={"help": "Task: countdown, sudoku, gsm8k or math (see dlm_trl.tasks)."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward names (entry points of dlm_trl.rewards or 'module:attr'); default: the task's reward."},
    )
    num_train_prompts: int = field(default=256, metadata={"help": "Training prompts drawn from the task's train split."})
    prompt_seed: int = field(default=0, metadata={"help": "Seed of the training prompts."})
    data_path: str | None = field(default=None, metadata={"help": "Local data directory (GSM8K, MATH)."})
    eval_samples: int = field(
        default=200, metadata={"help": "Held-out prompts evaluated before and after training (0 skips evaluation)."}
    )
    eval_seed: int = field(default=0, metadata={"help": "Seed of the held-out prompts."})
    eval_batch_size: int = field(default=50, metadata={"help": "Rows per batch in the held-out evaluation."})
    eval_gen_length: int | None = field(
        default=None, metadata={"help": "Generation length of the evaluation (default: the training gen_length)."}
    )
    eval_block_length: int | None = field(
        default=None, metadata={"help": "Block length of the evaluation (default: the training block_length)."}
    )
    eval_steps_ratio: float = field(
        default=0.5, metadata={"help": "Evaluation sampler steps = ratio × eval_gen_length (d1: 0.5)."}
    )
    torch_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch intra-op threads per process. Default: this machine's cores divided by the processes on "
            "it (`accelerate launch` sets OMP_NUM_THREADS=1, which would leave cores idle); 0 keeps torch's own "
            "setting (OMP_NUM_THREADS); use 1 per run when several runs share the machine."
        },
    )
    train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training after this many minutes of wall-clock (besides max_steps)."}
    )


def set_torch_threads(requested: int | None) -> int:
    """Set torch's intra-op threads for this process and return the number in use.

    ``None``: the cores this process may run on, divided by the processes of this node
    (``LOCAL_WORLD_SIZE``), because ``accelerate launch`` exports ``OMP_NUM_THREADS=1`` and a
    single-process CPU run would otherwise use one core. ``0``: leave torch's setting alone.
    """
    import torch

    if requested is not None and requested < 0:
        raise ValueError(f"torch_threads must be ≥ 0 (0 keeps torch's setting), got {requested}")
    if requested == 0:
        return torch.get_num_threads()
    if requested is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        requested = max(1, cores // max(1, local))
    torch.set_num_threads(requested)
    return requested


def cpu_rollout_autocast_dtype() -> str | None:
    """``"bfloat16"`` when this CPU has native bf16 matmuls (AVX512-BF16 / AMX), else ``None``.

    The tiny recipes sample rollouts under bf16 autocast there: ~1.5x faster rollouts, the same
    held-out accuracy and reward of the starting model (README); likelihoods and gradients stay fp32.
    """
    import torch

    try:
        return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return None


def load_policy(model_args, training_args):
    """``(model, tokenizer, peft_config)`` for ``ModelConfig`` (``model_name_or_path`` unset → the tiny model).

    LLaDA and Dream checkpoints load into dlm-trl's native classes (``--remote_code`` runs their own
    code instead); ``--lora_target_modules`` accepts the presets of :mod:`dlm_trl.models.lora`
    (``llada``, ``dream``, ``tiny``, ``auto``) and fails on names that match no module.
    """
    from trl import get_peft_config, get_quantization_config

    from ..models import load_model, load_tokenizer
    from ..models.lora import model_preset, resolve_lora_targets

    name = model_args.model_name_or_path or "tiny"
    model_args.model_name_or_path = name
    kwargs: dict[str, Any] = {}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    remote = bool(getattr(training_args, "remote_code", False))
    trust = bool(training_args.trust_remote_code) or remote
    model = load_model(
        name, trust_remote_code=trust or None, remote_code=remote,
        family=getattr(training_args, "model_family", None), **kwargs,
    )
    tokenizer = load_tokenizer(name, trust_remote_code=trust)
    tokenizer.padding_side = "left"
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        targets = model_args.lora_target_modules or ("auto" if model_preset(model) else None)
        peft_config.target_modules = resolve_lora_targets(model, targets)
    return model, tokenizer, peft_config


def train_dataset(script_args: RecipeArguments):
    kwargs = {"data_path": script_args.data_path} if script_args.data_path else {}
    return get_task(script_args.task).dataset("train", script_args.num_train_prompts, seed=script_args.prompt_seed, **kwargs)


def heldout_eval(model, tokenizer, script_args: RecipeArguments, training_args, *, progress: bool = True) -> dict | None:
    """Accuracy on ``eval_samples`` test prompts (temperature 0, d1 protocol); ``None`` when disabled."""
    if script_args.eval_samples <= 0:
        return None
    gen_length = script_args.eval_gen_length or training_args.gen_length
    block = script_args.eval_block_length or min(training_args.block_length, gen_length)
    nb = gen_length // block
    steps = max(nb, int(round(gen_length * script_args.eval_steps_ratio)) // nb * nb)
    result = evaluate(
        script_args.task,
        model=model,
        tokenizer=tokenizer,
        num_samples=script_args.eval_samples,
        seed=script_args.eval_seed,
        gen_length=gen_length,
        block_length=block,
        steps=steps,
        temperature=0.0,
        batch_size=script_args.eval_batch_size,
        progress=progress,
        data_path=script_args.data_path,
        load_kwargs={
            "family": getattr(training_args, "model_family", None),
            "mask_token_id": getattr(training_args, "mask_token_id", None),
        },
    )
    return {k: result[k] for k in ("task", "num_samples", "accuracy", "mean_reward", "seconds", "sampler")}


class RewardCurveCallback(TrainerCallback):
    """Records ``(step, seconds since train start, mean reward, cumulative NFE)`` at every log."""

    def __init__(self):
        self.points: list[dict[str, float]] = []
        self._t0: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.points.append(
                {
                    "step": int(state.global_step),
                    "seconds": round(time.time() - (self._t0 or time.time()), 2),
                    "reward": float(logs["reward"]),
                    "nfe_total": float(logs.get("nfe/total", float("nan"))),
                }
            )


class TimeBudgetCallback(TrainerCallback):
    """Stops training once ``minutes`` of wall-clock have passed since it began (checked every step)."""

    def __init__(self, minutes: float | None):
        self.seconds = None if minutes is None else 60.0 * float(minutes)
        self._t0: float | None = None
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is not None and self._t0 is not None and time.time() - self._t0 > self.seconds:
            control.should_training_stop = True
            self.stopped_early = True


def run_summary(trainer) -> dict:
    """What a recipe's report records about training: steps, NFE and seconds per bucket, train_runtime."""
    return {
        "steps": trainer.state.global_step,
        "nfe": dict(trainer.nfe_counts),
        "seconds": {k: round(v, 3) for k, v in trainer.seconds_counts.items()},
        "train_seconds": trainer.state.log_history[-1].get("train_runtime"),
    }


def write_report(output_dir: str, *, title: str, curve: list[dict], before: dict | None, after: dict | None,
                 extra: dict | None = None) -> dict:
    """Write ``report.json`` and ``report.png`` under ``output_dir``; return the report."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"title": title, "reward_curve": curve, "heldout_before": before, "heldout_after": after, **(extra or {})}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2.2, 1]})
    ax = axes[0]
    if curve:
        ax.plot([p["step"] for p in curve], [p["reward"] for p in curve], marker=".", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean training reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax = axes[1]
    labels, values = [], []
    for name, r in (("before", before), ("after", after)):
        if r is not None:
            labels.append(name)
            values.append(100 * r["accuracy"])
    ax.bar(labels, values, color=["#999999", "#2a7ab9"][: len(values)])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}%", ha="center", va="bottom")
    n = (after or before or {}).get("num_samples", 0)
    ax.set_title(f"held-out accuracy (n={n})")
    ax.set_ylim(0, max(values + [1.0]) * 1.25)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=110)
    plt.close(fig)
    return report


__all__ = ["RecipeArguments", "RewardCurveCallback", "TimeBudgetCallback", "heldout_eval", "load_policy", "train_dataset", "write_report"]
