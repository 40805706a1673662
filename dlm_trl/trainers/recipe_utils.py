"""Building blocks of the runnable recipes in ``recipes/`` (kept here so the recipes stay linear).

* :class:`RecipeArguments` — task, data and held-out evaluation options (parsed by ``TrlParser``
  next to a trainer config and ``trl.ModelConfig``);
* :func:`load_policy` — model, tokenizer and optional LoRA config from ``ModelConfig``
  (``"tiny"`` = the embedded model, offline);
* :func:`heldout_eval` — d1-protocol accuracy (temperature 0) on a split of the task (default test);
* :class:`RecipeProtocol` — the evaluation protocol (below), distributed over all ranks;
* :class:`RewardCurveCallback` — the logged mean reward per step, with wall-clock and NFE;
* :class:`TimeBudgetCallback` — the wall-clock safety cap (``train_minutes``);
* :func:`write_report` — ``report.json`` and ``report.png`` (reward curve, validation curve, test accuracy).

**The protocol** (:class:`RecipeProtocol`). Nothing is chosen on test:

1. at the start of training: test accuracy of the starting model (``before``, ``eval_samples`` test prompts)
   and validation accuracy (``val_samples`` prompts of the task's validation split) at step 0;
2. every ``eval_every_steps`` optimizer steps and at the last step: validation accuracy — the learning curve,
   logged as ``val/accuracy`` and kept in ``report.json`` / ``report.png``. The best validation accuracy
   (ties → the earlier step) keeps an in-memory CPU copy of the trainable parameters (under ZeRO-3, this
   rank's shards);
3. after training: test accuracy of the final model (``test_final``) and of the best-on-validation model
   (``test_best``, step ``best_step``), which is also saved to ``output_dir/best``.

All evaluations are greedy (temperature 0, d1 protocol) and distributed: row ``i`` on rank ``i % N``, the
parameters gathered once per evaluation (:func:`dlm_trl.evaluation.evaluate` with ``accelerator=``), so they
work under DDP, DeepSpeed ZeRO-2/3 and LoRA; every rank runs the callbacks. They use no global randomness,
so a run with validation trains exactly as the same run without.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..evaluation import evaluate
from ..tasks import DataSource, data_kwargs, get_task


@dataclass
class RecipeArguments:
    """Task, data and evaluation options of a recipe."""

    task: str = field(default="countdown", metadata={"help": "Task: countdown, sudoku, gsm8k, math, humaneval or mbpp (see dlm_trl.tasks)."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward names (entry points of dlm_trl.rewards or 'module:attr'); default: the task's reward."},
    )
    num_train_prompts: int = field(default=256, metadata={"help": "Training prompts drawn from the task's train split."})
    prompt_seed: int = field(default=0, metadata={"help": "Seed of the training prompts."})
    data_path: str | None = field(default=None, metadata={"help": "Local data directory (GSM8K, MATH)."})
    # The dataset of a file task (dlm_trl.tasks.sources); default: data_path, ../shared/data, else the shipped fixture.
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hugging Face dataset name (e.g. openai/gsm8k) or a local .jsonl/.json/.parquet file or "
                  "folder, for gsm8k, math, humaneval or mbpp."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration (e.g. main)."})
    dataset_train_split: str = field(
        default="train", metadata={"help": "Dataset split for training; validation is its last tenth (≤ 500 rows)."}
    )
    dataset_test_split: str = field(default="test", metadata={"help": "Dataset split of the test evaluations."})
    dataset_columns: str | None = field(
        default=None,
        metadata={"help": "Task columns from differently named dataset columns: TASK=DATASET,... (e.g. text=prompt)."},
    )
    eval_samples: int = field(
        default=200,
        metadata={"help": "Test prompts evaluated before training and after it (final and best-on-validation "
                  "model); 0 skips the test evaluations."},
    )
    val_samples: int = field(
        default=200,
        metadata={"help": "Validation prompts (the task's validation split) evaluated at the start, every "
                  "eval_every_steps optimizer steps and at the end; the best checkpoint is chosen on them. "
                  "0 disables validation and the best checkpoint."},
    )
    keep_best: bool = field(
        default=True,
        metadata={"help": "Keep the best-on-validation model (an in-memory CPU copy of the trainable parameters, "
                  "this rank's shards under ZeRO-3), save it to output_dir/best and report its test accuracy. "
                  "False: the validation curve only."},
    )
    eval_every_steps: int = field(
        default=50,
        metadata={"help": "Validate every this many optimizer steps (0: only at the start and the end). The tiny "
                  "recipes' defaults use 5."},
    )
    eval_seed: int = field(default=0, metadata={"help": "Seed of the test and validation prompts."})
    eval_batch_size: int = field(default=50, metadata={"help": "Rows per sampler call in the evaluations (per rank)."})
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
        default=None,
        metadata={"help": "Safety cap: stop training after this many minutes of wall-clock (counted from the end of "
                  "the start-of-training evaluations, validation passes included). The budget is max_steps; "
                  "report.json says whether the cap bound (time_cap_hit)."},
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


def autocast_context(dtype_name: str | None, device_type: str = "cpu"):
    """``torch.autocast(device_type, dtype)`` for a rollout dtype name, or a null context.

    ``None`` / ``"none"`` / ``"float32"`` → no autocast; ``"auto"`` → :func:`cpu_rollout_autocast_dtype`
    (bf16 where this CPU has native bf16 matmuls, else none); any other name is a ``torch`` dtype
    (``"bfloat16"``, ``"float16"``). The trainers' rollouts and the self-train recipe's sampling share it.
    """
    import contextlib

    name = cpu_rollout_autocast_dtype() if dtype_name == "auto" else dtype_name
    if name is None or str(name).lower() in ("none", "float32", ""):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, name))


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


def task_data_kwargs(script_args: RecipeArguments) -> dict:
    """``data_path`` / ``dataset`` keyword arguments of the task's loader, from the recipe's data options."""
    a = script_args
    source = DataSource.from_options(
        a.dataset_name, a.dataset_config, columns=a.dataset_columns,
        train_split=None if a.dataset_train_split == "train" else a.dataset_train_split,
        test_split=None if a.dataset_test_split == "test" else a.dataset_test_split,
    )
    return data_kwargs(a.task, a.data_path, source)


def train_dataset(script_args: RecipeArguments):
    kwargs = task_data_kwargs(script_args)
    return get_task(script_args.task).dataset("train", script_args.num_train_prompts, seed=script_args.prompt_seed, **kwargs)


def _eval_sampler_kwargs(script_args: RecipeArguments, training_args) -> dict:
    gen_length = script_args.eval_gen_length or training_args.gen_length
    block = script_args.eval_block_length or min(training_args.block_length, gen_length)
    nb = gen_length // block
    steps = max(nb, int(round(gen_length * script_args.eval_steps_ratio)) // nb * nb)
    return {"gen_length": gen_length, "block_length": block, "steps": steps, "temperature": 0.0}


_REPORT_KEYS = ("task", "split", "num_samples", "accuracy", "mean_reward", "seconds", "sampler")


def heldout_eval(
    model, tokenizer, script_args: RecipeArguments, training_args, *, progress: bool = True,
    split: str = "test", num_samples: int | None = None, accelerator=None, family: str | None = None,
    mask_token_id: int | None = None,
) -> dict | None:
    """Accuracy on ``num_samples`` (default ``eval_samples``) prompts of ``split`` (temperature 0, d1
    protocol); ``None`` when that is 0. With ``accelerator`` (and ``model`` the trainer's
    ``model_wrapped``) every rank must call it; the evaluation is distributed over them."""
    n = script_args.eval_samples if num_samples is None else num_samples
    if n <= 0:
        return None
    result = evaluate(
        script_args.task,
        model=model,
        tokenizer=tokenizer,
        num_samples=n,
        seed=script_args.eval_seed,
        split=split,
        batch_size=script_args.eval_batch_size,
        progress=progress,
        **task_data_kwargs(script_args),
        load_kwargs={
            "family": family or getattr(training_args, "model_family", None),
            "mask_token_id": mask_token_id if mask_token_id is not None else getattr(training_args, "mask_token_id", None),
        },
        accelerator=accelerator,
        gather_deepspeed3_params=getattr(training_args, "ds3_gather_for_generation", True),
        gradient_checkpointing_kwargs=getattr(training_args, "gradient_checkpointing_kwargs", None),
        **_eval_sampler_kwargs(script_args, training_args),
    )
    return {k: result[k] for k in _REPORT_KEYS}


class ParameterSnapshot:
    """An in-memory CPU copy of a model's trainable parameters as this process holds them.

    Under DeepSpeed ZeRO-3 that is this rank's partition (``param.ds_tensor``) — plus the whole tensor of
    parameters ZeRO-3 keeps gathered (small "persistent" ones) — so every rank snapshots and restores its own
    part, with no communication. Under DDP / ZeRO-2 / one process it is the parameter itself; with LoRA only the
    adapter is trainable. :meth:`restore` writes the values back in place (the optimizer's state is not
    touched: restore after training, not during it).
    """

    def __init__(self, model):
        self._saved = [(p, *self._copy(p)) for p in self._params(model)]

    @staticmethod
    def _params(model) -> list:
        return [p for p in model.parameters() if p.requires_grad]

    @staticmethod
    def _copy(p):
        if hasattr(p, "ds_tensor"):
            whole = p.data.numel() == getattr(p, "ds_numel", -1)  # kept gathered (persistent) right now
            return p.ds_tensor.detach().to("cpu", copy=True), (p.data.detach().to("cpu", copy=True) if whole else None)
        return p.detach().to("cpu", copy=True), None

    def restore(self) -> None:
        with torch.no_grad():
            for p, part, whole in self._saved:
                if hasattr(p, "ds_tensor"):
                    p.ds_tensor.data.copy_(part)
                    if whole is not None and p.data.numel() == whole.numel():
                        p.data.copy_(whole)
                else:
                    p.data.copy_(part)

    @property
    def numel(self) -> int:
        return sum(part.numel() for _, part, _ in self._saved)


def save_model(trainer, output_dir: str) -> None:
    """``trainer.save_model(output_dir)``, except under DeepSpeed ZeRO-3, where the weights the model holds now
    are consolidated on rank 0 and saved as a model (or adapter) folder whatever
    ``stage3_gather_16bit_weights_on_model_save`` says (transformers would otherwise save a DeepSpeed checkpoint,
    whose weights are the optimizer's fp32 copy — not a restored best checkpoint). Every rank must call it."""
    engine = trainer.model_wrapped
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if not zero3 or not hasattr(engine, "_zero3_consolidated_16bit_state_dict"):
        trainer.save_model(output_dir)
        return
    state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective; the dict on rank 0 only
    if trainer.args.should_save:
        trainer._save(output_dir, state_dict=state_dict)
    trainer.accelerator.wait_for_everyone()


class RecipeProtocol(TrainerCallback):
    """The evaluation protocol of the recipes (module docstring): validation learning curve, best checkpoint
    chosen on validation, test accuracy before / final / best. Pass :attr:`callbacks` to the trainer, then
    :meth:`attach` it; after ``trainer.train()`` and :func:`save_model`, :meth:`report` (every rank) runs
    the final test evaluations and writes ``report.json`` / ``report.png``.
    """

    def __init__(self, script_args: RecipeArguments, training_args, *, progress: bool | None = None):
        self.script_args = script_args
        self.training_args = training_args
        self.progress = (not training_args.disable_tqdm) if progress is None else progress
        self.curve = RewardCurveCallback()
        self.budget = TimeBudgetCallback(script_args.train_minutes)
        self.trainer = None
        self.before: dict | None = None
        self.validation_curve: list[dict] = []
        self.best: ParameterSnapshot | None = None
        self.best_step: int | None = None
        self.best_accuracy: float | None = None
        self.eval_seconds = 0.0

    @property
    def callbacks(self) -> list[TrainerCallback]:
        """The callbacks a recipe passes to the trainer: this protocol, the reward curve, the time cap."""
        return [self, self.curve, self.budget]

    def attach(self, trainer) -> RecipeProtocol:
        self.trainer = trainer
        return self

    # ------------------------------------------------------------------ evaluations (every rank)

    def _model(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model_wrapped)

    def evaluate(self, split: str, num_samples: int) -> dict | None:
        t = self.trainer
        t0 = time.time()
        result = heldout_eval(
            t.model_wrapped, t.processing_class, self.script_args, self.training_args, progress=self.progress,
            split=split, num_samples=num_samples, accelerator=t.accelerator,
            family=getattr(t, "model_family", None), mask_token_id=getattr(t, "mask_token_id", None),
        )
        self.eval_seconds += time.time() - t0
        return result

    def validate(self, state) -> None:
        step = int(state.global_step)
        if self.script_args.val_samples <= 0 or any(p["step"] == step for p in self.validation_curve):
            return
        res = self.evaluate("validation", self.script_args.val_samples)
        point = {"step": step, "accuracy": res["accuracy"], "mean_reward": res["mean_reward"],
                 "num_samples": res["num_samples"], "seconds": res["seconds"]}
        self.validation_curve.append(point)
        if self.best_accuracy is None or res["accuracy"] > self.best_accuracy:  # ties → the earlier step
            self.best_step, self.best_accuracy = step, res["accuracy"]
            self.best = ParameterSnapshot(self._model()) if self.script_args.keep_best else None
        # transformers' Trainer.log (not TRL's override, which would take the pending training metrics with it);
        # logging clears control.should_log, which would drop this step's training log: keep it as it was.
        control = self.trainer.control
        should_log = control.should_log
        Trainer.log(self.trainer, {"val/accuracy": res["accuracy"], "val/mean_reward": res["mean_reward"]})
        self.trainer.control.should_log = should_log
        if self.trainer.accelerator.is_main_process:
            print(f"[validation] step {step}: {100 * res['accuracy']:.1f}% of {res['num_samples']} "
                  f"{self.script_args.task} validation prompts ({res['seconds']:.0f} s); best "
                  f"{100 * self.best_accuracy:.1f}% at step {self.best_step}", flush=True)

    # ------------------------------------------------------------------ callback events

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise RuntimeError("RecipeProtocol.attach(trainer) was not called")
        self.before = self.evaluate("test", self.script_args.eval_samples)
        self.validate(state)

    def on_step_end(self, args, state, control, **kwargs):
        every = self.script_args.eval_every_steps
        if every > 0 and state.global_step % every == 0:
            self.validate(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.validate(state)  # the last step, if it was not a multiple of eval_every_steps

    # ------------------------------------------------------------------ after training (every rank)

    def finish(self) -> dict:
        """Test accuracy of the final and of the best-on-validation model; saves the latter to
        ``output_dir/best``. Every rank must call it (the evaluations and ``save_model`` are collective)."""
        t = self.trainer
        final = self.evaluate("test", self.script_args.eval_samples)
        test_best = None
        if self.best is not None:
            step = int(t.state.global_step)
            current = None if self.best_step == step else ParameterSnapshot(self._model())
            if current is not None:
                self.best.restore()
            save_model(t, os.path.join(self.training_args.output_dir, "best"))
            if self.best_step == step:
                test_best = final
            elif self.best_step == self.validation_curve[0]["step"] and self.before is not None:
                test_best = self.before  # the starting weights, restored: the same deterministic evaluation
            else:
                test_best = self.evaluate("test", self.script_args.eval_samples)
            if current is not None:
                current.restore()  # the trainer's model is the final model again
        return {
            "before": self.before,
            "test_final": final,
            "test_best": test_best,
            "best_step": self.best_step,
            "best_validation_accuracy": self.best_accuracy,
            "validation_curve": self.validation_curve,
            "val_samples": self.script_args.val_samples,
            "eval_every_steps": self.script_args.eval_every_steps,
            "eval_seconds": round(self.eval_seconds, 2),
        }

    def report(self, *, title: str, algorithm: str) -> dict:
        """:meth:`finish`, then ``report.json`` / ``report.png`` (written by the main process) and a summary
        line; returns the report on every rank."""
        t = self.trainer
        results = self.finish()
        extra = {**run_summary(t), **self.budget.summary(t.state)}
        report = build_report(title=title, curve=self.curve.points, results=results, extra=extra)
        acc = t.accelerator
        if acc.is_main_process:
            write_report(self.training_args.output_dir, report)
            print(summary_line(report, self.script_args.task, algorithm))
            print(f"report: {os.path.join(self.training_args.output_dir, 'report.json')} (+ report.png)")
        acc.wait_for_everyone()
        return report


class RewardCurveCallback(TrainerCallback):
    """Records ``(step, seconds since train start, mean reward, cumulative NFE)`` at every log, plus the search
    metrics (``search/buffer_best_reward``, ``search/buffer_mean_reward``, ...) of trainers that log them."""

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
                    **{k: float(v) for k, v in logs.items() if k.startswith("search/")},
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
        over = self.seconds is not None and self._t0 is not None and time.time() - self._t0 > self.seconds
        if over and (state.max_steps <= 0 or state.global_step < state.max_steps):
            control.should_training_stop = True
            self.stopped_early = True

    def summary(self, state) -> dict:
        """``steps`` done of ``max_steps``, the cap and whether it bound (stopped training before ``max_steps``)."""
        return {"max_steps": int(state.max_steps), "train_minutes_cap": None if self.seconds is None else self.seconds / 60,
                "time_cap_hit": bool(self.stopped_early)}


def run_summary(trainer) -> dict:
    """What a recipe's report records about training: steps, NFE and seconds per bucket, train_runtime."""
    return {
        "steps": trainer.state.global_step,
        "nfe": dict(trainer.nfe_counts),
        "seconds": {k: round(v, 3) for k, v in trainer.seconds_counts.items()},
        "train_seconds": next(
            (e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e), None
        ),
    }


def build_report(*, title: str, curve: list[dict], results: dict, extra: dict | None = None) -> dict:
    """The report of a recipe run: reward curve, :meth:`RecipeProtocol.finish`'s results and ``extra``
    (training summary). ``heldout_before`` / ``heldout_after`` repeat ``before`` / ``test_final`` (older readers)."""
    return {
        "title": title, "reward_curve": curve, **results,
        "heldout_before": results.get("before"), "heldout_after": results.get("test_final"), **(extra or {}),
    }


def summary_line(report: dict, task: str, algorithm: str) -> str:
    def pct(r):
        return "n/a" if r is None else f"{100 * r['accuracy']:.1f}%"

    final = report.get("test_final")
    n = final["num_samples"] if final else 0
    line = (f"test accuracy on {task} ({n} prompts): {pct(report.get('before'))} before -> "
            f"{pct(final)} after {algorithm} ({report.get('steps')} steps)")
    if report.get("best_step") is not None:
        line += (f"; best on validation: step {report['best_step']} "
                 f"({100 * report['best_validation_accuracy']:.1f}% validation) -> {pct(report.get('test_best'))} test")
    if report.get("time_cap_hit"):
        line += f"; stopped by the {report['train_minutes_cap']:g}-minute cap before max_steps {report['max_steps']}"
    return line


def write_report(output_dir: str, report: dict) -> dict:
    """Write ``report`` (:func:`build_report`) as ``report.json`` and plot ``report.png`` under ``output_dir``:
    the training reward and the validation accuracy per optimizer step (best step marked), and the test
    accuracy before / final / best-on-validation."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1.6, 1.6, 1]})
    curve, val = report.get("reward_curve") or [], report.get("validation_curve") or []
    ax = axes[0]
    if curve:
        ax.plot([p["step"] for p in curve], [p["reward"] for p in curve], marker=".", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean training reward")
    ax.set_title(report.get("title", ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax = axes[1]
    if val:
        n = val[0]["num_samples"]
        ax.plot([p["step"] for p in val], [100 * p["accuracy"] for p in val], marker="o", lw=1, color="#2a7ab9")
        if report.get("best_step") is not None:
            ax.plot([report["best_step"]], [100 * report["best_validation_accuracy"]], marker="*", ms=14,
                    color="#d62728", ls="none", label=f"best (step {report['best_step']})")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"validation accuracy (n={n}, greedy)", fontsize=10)
    else:
        ax.set_title("validation accuracy (off)", fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    last = max([p["step"] for p in curve + val] + [1])
    for ax in axes[:2]:  # the two curves on the same step axis, from the start of training
        ax.set_xlim(-0.02 * last, 1.02 * last)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax = axes[2]
    labels, values = [], []
    for name, key in (("before", "before"), ("final", "test_final"), ("best on val", "test_best")):
        if report.get(key) is not None:
            labels.append(name)
            values.append(100 * report[key]["accuracy"])
    ax.bar(labels, values, color=["#999999", "#2a7ab9", "#d62728"][: len(values)])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}%", ha="center", va="bottom")
    n = (report.get("test_final") or report.get("before") or {}).get("num_samples", 0)
    ax.set_title(f"test accuracy (n={n}, greedy)", fontsize=10)
    ax.set_ylim(0, max(values + [1.0]) * 1.25)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=110)
    plt.close(fig)
    return report


__all__ = [
    "ParameterSnapshot", "RecipeArguments", "RecipeProtocol", "RewardCurveCallback", "TimeBudgetCallback",
    "build_report", "heldout_eval", "load_policy", "run_summary", "save_model", "summary_line", "train_dataset",
    "task_data_kwargs", "write_report",
]


def tiny_defaults(**overrides) -> dict:
    """The recipes' defaults for the embedded tiny model on 2 CPU cores (applied only without ``--config``),
    updated with each recipe's own ``overrides`` (its output folder, step budget, learning rate, algorithm fields).

    Shared by every recipe: Countdown; the protocol (test on 400 prompts before / final / best-on-validation,
    validation on 200 prompts every 5 steps; ``train_minutes`` only a safety cap); 256 completions per optimizer
    step (32 prompts x 8, each rollout used once: with 32 per step the update's noise outweighed its signal and
    held-out accuracy fell, README "RL on the tiny model"); the sampler at gen_length 48, block 16, 24 steps,
    temperature 1, bf16 rollouts where the CPU has native bf16; fp32 training on CPU, TRL logging every step.
    """
    defaults = dict(
        model_name_or_path="tiny",
        task="countdown",
        num_train_prompts=3000,
        eval_samples=400,  # test prompts: before, final, best-on-validation
        val_samples=200,  # validation prompts, every eval_every_steps and at the start and the end
        eval_every_steps=5,
        train_minutes=60.0,  # safety cap only
        torch_threads=None,
        num_generations=8,
        per_device_train_batch_size=64,
        gradient_accumulation_steps=4,
        num_iterations=1,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        gen_length=48,
        block_length=16,
        diffusion_steps=24,
        temperature=1.0,
        rollout_autocast_dtype=cpu_rollout_autocast_dtype(),  # bf16 rollouts where the CPU has native bf16
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    defaults.update(overrides)
    return defaults


def run_recipe(trainer_cls, config_cls, tiny_defaults: dict, argv: list[str] | None, *, name: str) -> dict:
    """What every ``recipes/<algo>_llada.py`` does: parse ``RecipeArguments`` + ``config_cls`` + ``ModelConfig``
    (the tiny defaults apply only without ``--config``), load the policy, train ``trainer_cls`` under the
    :class:`RecipeProtocol` (test before; validation every few steps; best-on-validation kept), save the final
    model and return ``report.json``'s dict (test accuracy of the final and of the best model)."""
    import sys

    from trl import ModelConfig, TrlParser

    from ..rewards import resolve_rewards
    from ..sampling import keep_freed_memory

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--config" not in argv:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model never needs the network
    parser = TrlParser((RecipeArguments, config_cls, ModelConfig))
    if "--config" not in argv:
        parser.set_defaults_with_config(**tiny_defaults)
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    set_torch_threads(script_args.torch_threads)
    keep_freed_memory()  # dlm_trl.sampling.memory: page faults were half of a rollout's time

    reward_funcs = resolve_rewards(script_args.reward_funcs or [get_task(script_args.task).reward])
    model, tokenizer, peft_config = load_policy(model_args, training_args)
    protocol = RecipeProtocol(script_args, training_args)
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset(script_args),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=protocol.callbacks,  # validation curve + best checkpoint, reward curve, time cap
    )
    protocol.attach(trainer)
    trainer.train()  # the protocol evaluates test (before) and validation at the start, then every few steps
    save_model(trainer, training_args.output_dir)  # the final model (ZeRO-3: consolidated, not a DS checkpoint)
    # test accuracy of the final and of the best-on-validation model (saved to output_dir/best); report.json
    report = protocol.report(title=f"{name} · {model_args.model_name_or_path} · {script_args.task}", algorithm=name)
    # accelerate's end of script: under a launch, tear the process group down before the interpreter exits (left to
    # interpreter shutdown, a ZeRO-3 rank was seen to abort after a finished run on a loaded CPU machine:
    # "terminate called without an active exception", exit code -6)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return report
