"""Compare the three DLM trainers under the same wall-clock budget (ALGORITHMS.md §2).

Note: this is the older fixed-minutes comparison (accuracy after a wall-clock budget, no validation split).
The protocol of record is ``benchmarks/recipe_runs.py``: the recipes as a user runs them, fixed step budgets,
the checkpoint chosen on validation only, test accuracy final and best-on-validation over seeds.

Variants: ``diffu_grpo``, ``gdpo`` (fresh masks every inner iteration), ``gdpo_fixed`` (one set
of masks per rollout: the old estimate costs N forwards instead of μ·N; it differs from ``gdpo`` only
with ``--num_iterations`` > 1, and the recipes' default is 1) and ``dmpo``, each from
its recipe's tiny defaults (``recipes/*_llada.py``: embedded tiny model, Countdown, CPU), over
several seeds. Each run trains for ``--minutes`` of training wall-clock (held-out evaluations
are paused out of the clock) and evaluates held-out accuracy (temperature 0) at the start,
every ``--eval_every`` minutes and at the end.

    python benchmarks/rl_compare.py        # 3 trainers × 3 seeds × 8 min, 2 runs at a time, 1 thread each (~55 min)
    python benchmarks/rl_compare.py --variants gdpo --seeds 0 --minutes 2 --eval_samples 50

Writes ``docs/rl_compare.md`` (table: accuracy before/after as mean ± sd over seeds, steps,
seconds and NFE per step, old-estimate NFE per rollout, peak memory), ``docs/rl_compare.png``
(accuracy vs training wall-clock) and ``docs/rl_compare.json`` (every run). Each run is a
separate process (``--child``), so peak memory (max RSS; CUDA peak when on GPU) is per run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "diffu_grpo": ("diffu_grpo", "DiffuGRPOTrainer", "DiffuGRPOConfig", []),
    "gdpo": ("gdpo", "GDPOTrainer", "GDPOConfig", ["--mask_schedule", "fresh"]),
    "gdpo_fixed": ("gdpo", "GDPOTrainer", "GDPOConfig", ["--mask_schedule", "fixed"]),
    "dmpo": ("dmpo", "DMPOTrainer", "DMPOConfig", []),
}


def load_recipe(name: str):
    path = ROOT / "recipes" / f"{name}_llada.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(opts) -> None:
    """One training run; writes its results as JSON to ``opts.result``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch
    from transformers import TrainerCallback
    from trl import ModelConfig, TrlParser

    from dlm_trl.rewards import resolve_rewards
    from dlm_trl.tasks import get_task
    from dlm_trl.trainers.recipe_utils import (
        RecipeArguments,
        RewardCurveCallback,
        heldout_eval,
        load_policy,
        set_torch_threads,
        train_dataset,
    )

    set_torch_threads(opts.threads or 0)  # 0: torch's default
    recipe_name, trainer_name, config_name, extra = VARIANTS[opts.variant]
    recipe = load_recipe(recipe_name)
    parser = TrlParser((RecipeArguments, getattr(recipe, config_name), ModelConfig))
    parser.set_defaults_with_config(**recipe.TINY_DEFAULTS)
    argv = ["--seed", str(opts.seed), "--output_dir", opts.output_dir, "--max_steps", "100000",
            "--eval_samples", str(opts.eval_samples), "--disable_tqdm", "true", *extra, *opts.extra]
    if opts.model:
        argv += ["--model_name_or_path", opts.model]
    script_args, args, model_args = parser.parse_args_and_config(argv)
    script_args.train_minutes = None  # the budget below excludes evaluation time

    model, tokenizer, peft_config = load_policy(model_args, args)
    budget = 60.0 * opts.minutes

    class BudgetAndEval(TrainerCallback):
        def __init__(self):
            self.points, self.t0, self.paused, self.next_eval = [], None, 0.0, 60.0 * opts.eval_every

        def clock(self):
            return time.time() - self.t0 - self.paused

        def evaluate(self, trainer_model, step):
            t = time.time()
            res = heldout_eval(trainer_model, tokenizer, script_args, args, progress=False)
            self.paused += time.time() - t
            self.points.append({"train_seconds": round(self.clock(), 1), "step": step, "accuracy": res["accuracy"]})
            return res

        def on_train_begin(self, a, state, control, model=None, **kw):
            self.t0 = time.time()

        def on_step_end(self, a, state, control, model=None, **kw):
            if self.clock() >= budget:
                control.should_training_stop = True
            elif opts.eval_every and self.clock() >= self.next_eval:
                self.evaluate(model, state.global_step)
                self.next_eval += 60.0 * opts.eval_every

    trainer_cls = getattr(__import__("dlm_trl.trainers", fromlist=[trainer_name]), trainer_name)
    curve, clock = RewardCurveCallback(), BudgetAndEval()
    trainer = trainer_cls(
        model=model, reward_funcs=resolve_rewards(script_args.reward_funcs or [get_task(script_args.task).reward]),
        args=args, train_dataset=train_dataset(script_args), processing_class=tokenizer, peft_config=peft_config,
        callbacks=[curve, clock],
    )
    # The starting accuracy is deterministic (temperature 0, fixed prompts): every run of the same
    # model and evaluation settings shares one measurement, cached in the work folder.
    with torch.no_grad():  # a fingerprint of the weights, so a retrained model never reuses a stale entry
        fingerprint = f"{sum(float(p.float().abs().sum()) for p in trainer.model.parameters()):.6e}"
    key = json.dumps([model_args.model_name_or_path, fingerprint, script_args.task, script_args.eval_samples, script_args.eval_seed,
                      args.gen_length, args.block_length, script_args.eval_gen_length, script_args.eval_block_length,
                      script_args.eval_steps_ratio])
    cache = Path(opts.output_dir).parent / f"before_{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    t = time.time()
    if cache.exists():
        before = json.loads(cache.read_text())
    else:
        before = heldout_eval(trainer.model, tokenizer, script_args, args, progress=False)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(before))
        tmp.replace(cache)
    eval0 = time.time() - t
    trainer.train()
    train_seconds = clock.clock()
    clock.evaluate(trainer.model, trainer.state.global_step)
    after = clock.points[-1]
    steps = max(1, trainer.state.global_step)
    rollouts = max(1, trainer._rollout_index)
    nfe = dict(trainer.nfe_counts)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    result = {
        "variant": opts.variant, "seed": opts.seed, "minutes": opts.minutes, "steps": trainer.state.global_step,
        "rollouts": trainer._rollout_index, "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / steps, 2), "nfe": nfe,
        "nfe_per_step": round(sum(nfe.values()) / steps, 1),
        "old_nfe_per_rollout": round(nfe.get("old", 0) / rollouts, 1),
        "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
        "eval_seconds": round(eval0, 1), "peak_memory_mb": round(peak_mb, 1),
        "accuracy_curve": [{"train_seconds": 0.0, "step": 0, "accuracy": before["accuracy"]}, *clock.points],
        "reward_curve": curve.points, "eval_samples": opts.eval_samples,
        "config": {k: getattr(args, k) for k in ("learning_rate", "num_generations", "per_device_train_batch_size",
                                                 "gradient_accumulation_steps", "num_iterations", "gen_length",
                                                 "block_length", "diffusion_steps", "estimator", "mask_schedule")},
        "device": str(trainer.accelerator.device), "threads": torch.get_num_threads(),
    }
    Path(opts.result).write_text(json.dumps(result, indent=2))


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * sd:.1f}"


def summarise(results: list[dict], out_dir: Path, title: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rl_compare.json").write_text(json.dumps(results, indent=2))
    by = {}
    for r in results:
        by.setdefault(r["variant"], []).append(r)
    lines = [
        f"# {title}",
        "",
        "| variant | seeds | accuracy before (%) | accuracy after (%) | gain (pts) | steps | s / step | NFE / step "
        "| old-estimate NFE / rollout | peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, rs in by.items():
        gains = [r["accuracy_after"] - r["accuracy_before"] for r in rs]
        lines.append(
            f"| {v} | {len(rs)} | {mean_sd([r['accuracy_before'] for r in rs])} | "
            f"{mean_sd([r['accuracy_after'] for r in rs])} | {mean_sd(gains)} | "
            f"{statistics.mean(r['steps'] for r in rs):.1f} | {statistics.mean(r['seconds_per_step'] for r in rs):.1f} | "
            f"{statistics.mean(r['nfe_per_step'] for r in rs):.0f} | "
            f"{statistics.mean(r['old_nfe_per_rollout'] for r in rs):.0f} | "
            f"{max(r['peak_memory_mb'] for r in rs):.0f} |"
        )
    r0 = results[0] if results else {}
    lines += [
        "",
        f"Budget: {r0.get('minutes')} min of training wall-clock per run (evaluations paused out of the clock); "
        f"held-out accuracy on {r0.get('eval_samples')} Countdown test prompts, temperature 0, steps = L/2. "
        "NFE counts sequence forward passes (rows × forwards) of sampling and all likelihood estimates. "
        f"Device: {r0.get('device')}, {r0.get('threads')} thread(s), {r0.get('jobs', 1)} run(s) at a time. "
        "Raw runs: rl_compare.json.",
    ]
    table = "\n".join(lines) + "\n"
    (out_dir / "rl_compare.md").write_text(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (v, rs) in enumerate(by.items()):
        color = f"C{i}"
        for j, r in enumerate(rs):
            xs = [p["train_seconds"] / 60 for p in r["accuracy_curve"]]
            ys = [100 * p["accuracy"] for p in r["accuracy_curve"]]
            ax.plot(xs, ys, color=color, alpha=0.8, marker=".", lw=1, label=v if j == 0 else None)
    ax.set_xlabel("training wall-clock (min)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "rl_compare.png", dpi=110)
    plt.close(fig)
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="diffu_grpo,gdpo,dmpo", help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget per run")
    p.add_argument("--eval_every", type=float, default=4.0, help="minutes of training between held-out evaluations")
    p.add_argument("--eval_samples", type=int, default=400)
    p.add_argument("--model", default=None, help="model path (default: the recipe's, i.e. the embedded tiny model)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run (0: torch's default)")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs at a time (e.g. 2 on 2 cores with --threads 1; every run then shares the machine alike)")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where rl_compare.{md,png,json} go")
    p.add_argument("--work", default=str(ROOT / "outputs" / "rl_compare"), help="per-run output folders")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--output_dir", help=argparse.SUPPRESS)
    opts, extra = p.parse_known_args(argv)
    opts.extra = extra  # anything else goes to the recipe's parser, e.g. --learning_rate 5e-5
    if opts.child:
        run_child(opts)
        return
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for variant in opts.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
        for seed in [int(s) for s in opts.seeds.split(",")]:
            result = work / f"{variant}_seed{seed}.json"
            cmd = [sys.executable, __file__, "--child", "--variant", variant, "--seed", str(seed),
                   "--minutes", str(opts.minutes), "--eval_every", str(opts.eval_every),
                   "--eval_samples", str(opts.eval_samples), "--result", str(result),
                   "--output_dir", str(work / f"{variant}_seed{seed}")]
            if opts.model:
                cmd += ["--model", opts.model]
            if opts.threads:
                cmd += ["--threads", str(opts.threads)]
            runs.append((variant, seed, result, cmd + extra))

    def one(run):
        variant, seed, result, cmd = run
        t = time.time()
        print(f"[rl_compare] {variant} seed {seed} …", flush=True)
        log = result.with_suffix(".log")
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"[rl_compare] {variant} seed {seed} failed (exit {proc.returncode}); see {log}")
        r = json.loads(result.read_text())
        r["jobs"] = opts.jobs
        print(f"[rl_compare] {variant} seed {seed}: {100 * r['accuracy_before']:.1f}% -> "
              f"{100 * r['accuracy_after']:.1f}% in {r['steps']} steps ({time.time() - t:.0f} s)", flush=True)
        return r

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        results = list(pool.map(one, runs))
    title = f"RL trainers on the tiny model, Countdown, {opts.minutes:g} min each"
    print(summarise(results, Path(opts.out), title))


if __name__ == "__main__":
    main()
