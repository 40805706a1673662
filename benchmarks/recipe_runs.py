"""The recipes exactly as a user runs them, under their own evaluation protocol: each trainer, several
seeds, the same ~30-minute CPU budget, the checkpoint chosen on validation only.

``accelerate launch recipes/<algo>_llada.py`` with no arguments but ``--seed`` and ``--output_dir``,
one run at a time (each has the whole machine). Each recipe trains a fixed number of optimizer steps
(``max_steps``, sized to ~30 minutes on 2 idle cores; ``train_minutes`` is only a safety cap), validates
every few steps and reports test accuracy before training, after it (final) and of the best-on-validation
checkpoint (``dlm_trl.trainers.recipe_utils.RecipeProtocol``: nothing is chosen on test).

    make recipe-runs                                       # 3 recipes × 3 seeds = 9 runs × ~30 min ≈ 4.5 h on 2 cores
                                                           # (--docs docs/recipe_runs: the committed tables)
    python benchmarks/recipe_runs.py --recipes gdpo --seeds 0           # tables: outputs/recipe_runs/summary.*
    python benchmarks/recipe_runs.py --summarize_only --out_dir /tmp/exp14 --docs docs/my_table   # from finished runs

Each run is its own process tree; its wall-clock and peak memory (max RSS over the launcher and
the recipe, from ``wait4``) go to ``<out_dir>/<algo>_s<seed>/run.json`` next to the recipe's own
``report.json``. A run whose ``report.json`` exists is not repeated (``--rerun`` repeats it).

Run folders (``--layout``): ``seeded`` = ``<out_dir>/<algo>_s<seed>`` for the ``--seeds`` asked for (what
this script writes); ``flat`` = ``<out_dir>/<algo>`` (one run per recipe launched by hand, e.g.
``--output_dir /tmp/exp14/gdpo``), whatever ``--seeds`` says, its seed read from ``run.json`` or
``report.json`` (key ``seed``) and otherwise assumed 0 (marked "0?" in the table); ``auto`` (default) =
both, a flat folder skipped when a seeded folder has the same recipe and seed. ``--layout flat`` only
tabulates (it implies ``--summarize_only``).

Writes ``<docs>.md`` with two tables, one row per recipe:

* test accuracy: seeds; test before → final and → best-on-validation (mean ± sd over seeds); the paired
  gain (after − before of the same seed, points) per seed for final and for best, their mean ± sd and a
  95 % t-interval over seeds (n stated; n/a with one seed); the best step (and its validation accuracy)
  per seed;
* budget: steps done / max_steps per seed and whether the time cap bound; row-forwards (NFE) per run;
  seconds per optimizer step
  (training only: the evaluations inside ``train_runtime`` are taken out); where ``train_runtime`` went
  (sampler / no-grad likelihoods / rewards etc. / evaluations / policy forward+backward+optimizer);
  wall-clock and peak RSS (max over seeds);

``<docs>.json`` (every run) and ``<docs>.png`` (left: validation accuracy vs optimizer step of every run,
one colour per recipe, one line style per seed, best step starred; middle: test accuracy before / final /
best per run; right: the mean training reward per step (running mean of 5) against the row-forwards spent, and for TR2-D2 also
the mean best reward in its buffers). Old-style reports (``heldout_before`` / ``heldout_after`` only) still tabulate: what they
lack is shown as "–".
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"diffu_grpo": "diffu-GRPO", "gdpo": "GDPO", "dmpo": "DMPO", "spg": "SPG", "tr2d2": "TR2-D2",
         "justgrpo": "JustGRPO-Fast", "espo": "ESPO"}
# Methods that are a recipe plus flags (docs/objectives.md "run it as"): name -> (recipe, its arguments). The
# recipe's tiny defaults (batch, learning rate, protocol) stay; only the method's own fields change. Arguments
# given to this script after its own options come later on the command line, so they override these.
VARIANTS = {
    # JustGRPO (arXiv 2601.15165) in miniature: left-to-right rollouts (one token per step, as its code), the
    # exact AR-order likelihood scored at the top-25 %-entropy positions (JustGRPO-Fast, §5.3), plain GRPO with
    # no KL (Table 3: beta 0, one update per rollout). Evaluation keeps every recipe's protocol (block 16, 24
    # steps), not the training rollout's block 1. Budget: the recipes' ~30 minutes. A 2-step timing run on one
    # thread (the other core busy) took 309 s per step, ~9x GDPO's: 96 s of left-to-right sampling (48 forwards)
    # and ~210 s of likelihood (a no-grad entropy pass over all 48 positions, then 12 with grad, per row) -> 8
    # steps, validated every 2. batch_size bounds memory (12.2 GB peak RSS without it; results are the same).
    # The NFE column counts only the 12 scored positions, not the 48-row selection pass: compare step times.
    "justgrpo": ("diffu_grpo", [
        "--estimator", "ar_order_exact",
        "--estimator_kwargs", '{"score_fraction": 0.25, "select": "entropy", "batch_size": 512}',
        "--beta", "0", "--block_length", "1", "--diffusion_steps", "48", "--eval_block_length", "16",
        "--max_steps", "8", "--eval_every_steps", "2",
    ]),
    # ESPO (arXiv 2512.03759): GDPO's sequence ratio exp(dE/L) with L padded, 2 antithetic (coupled) pairs of
    # stratified mask counts (4 forwards), k2 KL on the sequence ELBO with ESPO's beta 3e-3. GDPO's 55 steps: a
    # 2-step timing run took 52 s per step on one thread (GDPO's recipe runs: 36), within the ~30-minute budget.
    "espo": ("gdpo", [
        "--estimator", "stratified_elbo",
        "--estimator_kwargs", '{"num_samples": 4, "antithetic": true, "length": "padded"}',
        "--length_normalization", "padded", "--kl_estimator", "sequence_k2", "--beta", "3e-3",
    ]),
}
# report.json "seconds" buckets, in table order; evaluations inside train_runtime (test before, validation)
# come from the protocol's own timings; the remainder of train_seconds is the policy pass (forward +
# backward) and the optimizer step.
BUCKETS = ("sampler", "nograd_likelihoods", "rollout_other")
DASH = "–"
# two-sided 95 % quantiles of Student's t, by degrees of freedom (no scipy in the environment)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    """Two-sided 95 % Student-t quantile: exact for df ≤ 30; above, the next smaller tabulated df's value
    (slightly conservative)."""
    if df < 1:
        raise ValueError("df must be ≥ 1")
    return _T975[max(d for d in _T975 if d <= df)] if df <= 120 else 1.960


def run_one(algo: str, seed: int, out: Path, launcher: list[str], extra: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    recipe, flags = VARIANTS.get(algo, (algo, []))
    cmd = [*launcher, str(ROOT / "recipes" / f"{recipe}_llada.py"), "--seed", str(seed), "--output_dir", str(out),
           *flags, *extra]
    print(f"[recipe_runs] {' '.join(cmd)}", flush=True)
    start = time.time()
    with open(out / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    meta = {
        "algo": algo, "seed": seed, "command": " ".join(cmd), "returncode": proc.returncode,
        "wall_seconds": round(time.time() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    if meta["returncode"] != 0:
        raise SystemExit(f"{algo} seed {seed} failed (exit {meta['returncode']}); see {out / 'run.log'}")
    return meta


def _load(d: Path) -> tuple[dict, dict]:
    report = json.loads((d / "report.json").read_text())
    _search_curve_from_log(d, report)
    meta = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
    return report, meta


def _search_curve_from_log(d: Path, report: dict) -> None:
    """Reports written before the reward curve recorded the ``search/*`` metrics: take them from the logged
    metric dicts in ``run.log`` (one per optimizer step, in step order), when their count matches."""
    curve, log = report.get("reward_curve") or [], d / "run.log"
    if not curve or any(k.startswith("search/") for k in curve[0]) or not log.exists():
        return
    found = []
    for line in log.read_text(errors="replace").splitlines():
        i = line.find("{'")
        if i >= 0 and "'search/" in line:
            try:
                logs = ast.literal_eval(line[i:line.rindex("}") + 1])
            except (ValueError, SyntaxError):
                continue
            if "reward" in logs:
                found.append({k: float(v) for k, v in logs.items() if k.startswith("search/")})
    if len(found) == len(curve):
        for point, extra in zip(curve, found, strict=True):
            point.update(extra)


def collect(out_dir: Path, recipes: list[str], seeds: list[int], layout: str = "auto") -> list[dict]:
    """Finished runs (folders with a ``report.json``) under ``out_dir`` in ``layout`` (module docstring)."""
    runs = []
    for algo in recipes:
        found = []
        if layout in ("auto", "seeded"):
            for seed in seeds:
                d = out_dir / f"{algo}_s{seed}"
                if (d / "report.json").exists():
                    report, meta = _load(d)
                    found.append({"algo": algo, **meta, "seed": seed, "seed_known": True, "dir": str(d), "report": report})
        d = out_dir / algo
        if layout in ("auto", "flat") and (d / "report.json").exists():
            report, meta = _load(d)
            seed = meta.get("seed", report.get("seed"))
            run = {"algo": algo, **meta, "seed": 0 if seed is None else int(seed), "seed_known": seed is not None,
                   "dir": str(d), "report": report}
            if any(r["seed"] == run["seed"] for r in found):
                print(f"[recipe_runs] {d} skipped: {algo}_s{run['seed']} has the same recipe and seed", flush=True)
            else:
                found.append(run)
        runs += sorted(found, key=lambda r: r["seed"])
    return runs


# ---------------------------------------------------------------------- reading a report (old or new style)


def _acc(report: dict, *keys: str) -> float | None:
    """Accuracy in % of the first of ``keys`` the report holds (not None)."""
    for k in keys:
        if report.get(k):
            return 100 * report[k]["accuracy"]
    return None


def before_acc(report: dict) -> float | None:
    return _acc(report, "before", "heldout_before")


def final_acc(report: dict) -> float | None:
    return _acc(report, "test_final", "heldout_after")


def best_acc(report: dict) -> float | None:
    return _acc(report, "test_best")


def eval_seconds_in_training(report: dict) -> float:
    """Seconds of the evaluations that ran inside ``train_runtime``: the test evaluation before training and
    the validation passes (the protocol runs them from the trainer's callbacks). Old-style reports: 0."""
    if "validation_curve" not in report:
        return 0.0
    before = report.get("before") or {}
    return float(before.get("seconds") or 0.0) + sum(float(p.get("seconds") or 0.0) for p in report["validation_curve"])


# ---------------------------------------------------------------------- formatting


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return DASH
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def paired_gain(gains: list[float]) -> str:
    """Mean ± sd of the paired gains and their 95 % t-interval over seeds (n stated)."""
    if not gains:
        return DASH
    n, mean = len(gains), statistics.mean(gains)
    if n == 1:
        return f"{mean:+.2f} (n=1; sd, 95 % CI n/a)"
    sd = statistics.stdev(gains)
    half = t975(n - 1) * sd / math.sqrt(n)
    return f"{mean:+.2f} ± {sd:.2f} (n={n}; 95 % CI [{mean - half:+.2f}, {mean + half:+.2f}])"


def _bold(s: str) -> str:
    return s if s == DASH else f"**{s}**"


def _per_seed(values: list[str]) -> str:
    return ", ".join(values) if any(v != DASH for v in values) else DASH


def _seed_label(r: dict) -> str:
    return str(r["seed"]) if r.get("seed_known", True) else f"{r['seed']}?"


def accuracy_row(algo: str, rs: list[dict]) -> str:
    reps = [r["report"] for r in rs]
    before, final, best = ([f(rep) for rep in reps] for f in (before_acc, final_acc, best_acc))
    g_final = [None if a is None or b is None else a - b for a, b in zip(final, before, strict=True)]
    g_best = [None if a is None or b is None else a - b for a, b in zip(best, before, strict=True)]
    best_steps = []
    for rep in reps:
        if rep.get("best_step") is None:
            best_steps.append(DASH)
        else:
            val = rep.get("best_validation_accuracy")
            best_steps.append(f"{rep['best_step']}" + ("" if val is None else f" ({100 * val:.1f})"))

    def known(xs):
        return [x for x in xs if x is not None]

    def gains(xs):
        return _per_seed([DASH if g is None else f"{g:+.2f}" for g in xs])

    return (
        f"| {NAMES[algo]} | {','.join(_seed_label(r) for r in rs)} | {_mean_sd(known(before))} | "
        f"{_bold(_mean_sd(known(final)))} | {_bold(_mean_sd(known(best)))} | {gains(g_final)} | {gains(g_best)} | "
        f"{paired_gain(known(g_final))} | {paired_gain(known(g_best))} | {_per_seed(best_steps)} |"
    )


def budget_row(algo: str, rs: list[dict]) -> str:
    reps = [r["report"] for r in rs]
    steps = [f"{rep.get('steps', DASH)}/{rep.get('max_steps') if rep.get('max_steps') is not None else DASH}"
             for rep in reps]
    caps = [rep.get("time_cap_hit") for rep in reps]
    if all(c is None for c in caps):
        cap = DASH
    elif any(caps):
        cap = "yes: " + ", ".join(f"s{_seed_label(r)}" for r, c in zip(rs, caps, strict=True) if c)
    else:
        cap = "no"
    timed = [rep for rep in reps if rep.get("train_seconds") is not None and rep.get("steps")]
    evals = sum(eval_seconds_in_training(rep) for rep in timed)
    total = sum(rep["train_seconds"] for rep in timed)
    n_steps = sum(rep["steps"] for rep in timed)
    per_step = f"{(total - evals) / n_steps:.1f}" if timed and n_steps else DASH
    share = DASH
    bucketed = [rep for rep in timed if rep.get("seconds")]
    if bucketed:
        total_b = sum(rep["train_seconds"] for rep in bucketed)
        parts = [sum(rep["seconds"].get(b, 0.0) for rep in bucketed) for b in BUCKETS]
        parts.append(sum(eval_seconds_in_training(rep) for rep in bucketed))
        share = " / ".join(f"{100 * p / total_b:.0f}" for p in [*parts, total_b - sum(parts)]) + " %"
    walls = [r["wall_seconds"] for r in rs if "wall_seconds" in r]
    rss = [r["peak_rss_mb"] for r in rs if "peak_rss_mb" in r]
    nfes = [sum(rep["nfe"].values()) for rep in reps if rep.get("nfe")]
    nfe = f"{statistics.mean(nfes) / 1e3:.0f} k" if nfes else DASH
    return (
        f"| {NAMES[algo]} | {', '.join(steps)} | {cap} | {nfe} | {per_step} | {share} | "
        f"{f'{max(walls) / 60:.1f} min' if walls else DASH} | {f'{max(rss) / 1024:.1f} GB' if rss else DASH} |"
    )


ACCURACY_HEADER = (
    "| recipe | seeds | test before (%) | → final (%, mean ± sd) | → best on validation (%, mean ± sd) "
    "| paired gain per seed, final (pts) | paired gain per seed, best (pts) | mean paired gain, final (± sd, 95 % t-CI) "
    "| mean paired gain, best (± sd, 95 % t-CI) | best step per seed (validation %) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)
BUDGET_HEADER = (
    "| recipe | steps / max_steps per seed | time cap bound | row-forwards per run (NFE, mean) | s / step (training) "
    "| train_runtime: sampler / no-grad likelihoods / rewards etc. / evaluations / policy fwd+bwd+optimizer "
    "| wall-clock (max) | peak RSS (max) |\n"
    "|---|---|---|---|---|---|---|---|"
)


def paired_rows(runs: list[dict], reference: str) -> list[str]:
    """Each other recipe minus ``reference``, seed by seed (the seeds both have): test accuracy final and at the
    validation-chosen step, in points, with mean ± sd and the 95 % t-interval over those seeds."""
    by = {(r["algo"], r["seed"]): r["report"] for r in runs if r.get("seed_known", True)}
    rows = [
        f"| recipe | seeds | minus {NAMES[reference]}, final, per seed (pts) | mean (± sd, 95 % t-CI) "
        f"| minus {NAMES[reference]}, best on validation, per seed | mean (± sd, 95 % t-CI) |",
        "|---|---|---|---|---|---|",
    ]
    for algo in (a for a in NAMES if a != reference and any(r["algo"] == a for r in runs)):
        seeds = sorted(s for (a, s) in by if a == algo and (reference, s) in by)
        if not seeds:
            continue
        diffs = {}
        for name, f in (("final", final_acc), ("best", best_acc)):
            pairs = [(f(by[(algo, s)]), f(by[(reference, s)])) for s in seeds]
            diffs[name] = [a - b for a, b in pairs if a is not None and b is not None]
        rows.append(
            f"| {NAMES[algo]} | {','.join(map(str, seeds))} | {_per_seed([f'{d:+.2f}' for d in diffs['final']])} | "
            f"{paired_gain(diffs['final'])} | {_per_seed([f'{d:+.2f}' for d in diffs['best']])} | "
            f"{paired_gain(diffs['best'])} |")
    return rows


def summarize(runs: list[dict], docs: Path, conditions: str = "alone on the machine",
              reference: str | None = None) -> str:
    algos = [a for a in NAMES if any(r["algo"] == a for r in runs)]
    if reference is not None and reference not in algos:
        raise SystemExit(f"--paired_with {reference}: no finished runs of it among {algos}")
    acc = [ACCURACY_HEADER] + [accuracy_row(a, [r for r in runs if r["algo"] == a]) for a in algos]
    bud = [BUDGET_HEADER] + [budget_row(a, [r for r in runs if r["algo"] == a]) for a in algos]
    r0 = runs[0]["report"]
    test = r0.get("test_final") or r0.get("heldout_after") or r0.get("before") or r0.get("heldout_before") or {}
    task = r0.get("title", "").split("·")[-1].strip() or "task"
    val = next((r["report"] for r in runs if r["report"].get("validation_curve")), None)
    if val is not None:
        vc = val["validation_curve"]
        protocol = (
            f"Validation: {vc[0]['num_samples']} prompts of the {task} validation split, at step 0, every "
            f"{val.get('eval_every_steps', DASH)} optimizer steps and at the last step; the best step (ties → the "
            "earlier) is chosen on validation only, and its checkpoint's test accuracy is the \"best\" column. "
        )
    else:
        protocol = "No run has a validation curve (old-style reports): best-on-validation columns are \"–\". "
    unknown = [r for r in runs if not r.get("seed_known", True)]
    note = (
        f"\nTest: {test.get('num_samples', DASH)} {task} test prompts, temperature 0 (the same prompts and the same "
        "deterministic measurement for every run). " + protocol +
        "Paired gain: after − before of the same run, in points; its mean ± sd and 95 % t-interval are over seeds "
        "(n = the number of runs; the interval needs n ≥ 2). Each run: `accelerate launch recipes/<recipe>_llada.py "
        f"--seed S --output_dir …`, {conditions}. s / step is `train_runtime` less the evaluations inside it "
        "(test before, validation), per optimizer step; the shares come from the trainers' `time/*` metrics and the "
        "protocol's evaluation timings, the last one is the rest of `train_runtime`. Row-forwards: every model "
        "forward of one sequence during training (sampler or search, no-grad likelihoods, policy), the trainers' "
        "`nfe_counts`; evaluations excluded. Accuracy moves in steps of "
        "100/prompts points." + (" Seed \"0?\": not recorded with the run, assumed 0." if unknown else "") +
        " Raw runs: " + docs.with_suffix(".json").name + "."
    )
    paired = ""
    if reference is not None:
        paired = (f"\n## Against {NAMES[reference]}, seed by seed\n\n" + "\n".join(paired_rows(runs, reference)) +
                  "\n\nPaired by seed (every run is tested on the same prompts): the difference of the two runs' test "
                  "accuracies, in points; mean ± sd and 95 % t-interval over the seeds both recipes ran.\n")
    table = ("## Test accuracy\n\n" + "\n".join(acc) + "\n" + paired + "\n## Budget and cost\n\n" + "\n".join(bud) +
             "\n" + note)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.with_suffix(".md").write_text("# The recipes with no arguments, several seeds\n\n" + table + "\n")
    docs.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    _plot(runs, docs.with_suffix(".png"))
    return table


SMOOTH = 5  # steps in the running mean of the plotted training rewards


def _running_mean(ys: list[float], k: int = SMOOTH) -> list[float]:
    return [statistics.mean(ys[max(0, i + 1 - k):i + 1]) for i in range(len(ys))]


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    algos = [a for a in NAMES if any(r["algo"] == a for r in runs)]
    colour = {a: f"C{i}" for i, a in enumerate(algos)}
    seeds = sorted({r["seed"] for r in runs})
    styles = ["-", "--", ":", "-."]
    style = {s: styles[i % len(styles)] for i, s in enumerate(seeds)}
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(19, 4.5), gridspec_kw={"width_ratios": [1.4, 1, 1.4]})

    # left: validation learning curves
    curves = [r for r in runs if r["report"].get("validation_curve")]
    for r in curves:
        rep, c = r["report"], colour[r["algo"]]
        vc = rep["validation_curve"]
        ax.plot([p["step"] for p in vc], [100 * p["accuracy"] for p in vc], ls=style[r["seed"]], color=c,
                marker=".", lw=1.2)
        if rep.get("best_step") is not None and rep.get("best_validation_accuracy") is not None:
            ax.plot([rep["best_step"]], [100 * rep["best_validation_accuracy"]], marker="*", ms=13, color=c,
                    markeredgecolor="black", markeredgewidth=0.5, ls="none")
    if curves:
        n = curves[0]["report"]["validation_curve"][0]["num_samples"]
        handles = [Line2D([], [], color=colour[a], lw=2, label=NAMES[a]) for a in algos]
        handles += [Line2D([], [], color="gray", ls=style[s], label=f"seed {s}") for s in seeds]
        handles.append(Line2D([], [], color="gray", marker="*", ms=11, ls="none", label="best step"))
        ax.legend(handles=handles, fontsize=7, loc="best")
        ax.set_title(f"validation accuracy (n={n}, greedy) per optimizer step", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no validation curves\n(old-style reports)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("validation accuracy", fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)

    # middle: test accuracy before / final / best per run
    labels, xs = [], []
    for i, r in enumerate(runs):  # a gap between recipes
        x = i + 0.6 * algos.index(r["algo"])
        xs.append(x)
        rep, c = r["report"], colour[r["algo"]]
        b, f, s = before_acc(rep), final_acc(rep), best_acc(rep)
        if b is not None and f is not None:
            bx.plot([x, x], [b, f], color=c, lw=1.5)
        if b is not None:
            bx.plot([x], [b], "o", color="gray", ms=6)
        if f is not None:
            bx.plot([x], [f], "o", color=c, ms=7)
        if s is not None:
            bx.plot([x + 0.12], [s], "*", color=c, ms=12, markeredgecolor="black", markeredgewidth=0.5)
        labels.append(f"{NAMES[r['algo']]} s{_seed_label(r)}")
    bx.set_xticks(xs, labels, fontsize=7, rotation=35, ha="right")
    bx.legend(handles=[
        Line2D([], [], color="gray", marker="o", ls="none", label="before"),
        Line2D([], [], color="black", marker="o", ls="none", label="final"),
        Line2D([], [], color="black", marker="*", ms=10, ls="none", label="best on validation"),
    ], fontsize=7, loc="best")
    r0 = runs[0]["report"]
    n = (r0.get("test_final") or r0.get("heldout_after") or {}).get("num_samples", "?")
    bx.set_title(f"test accuracy (n={n}, greedy) per run", fontsize=10)
    bx.set_ylabel("accuracy (%)")
    bx.grid(alpha=0.3, axis="y")

    # right: the training reward against the row-forwards spent (TR2-D2: also the best reward in its buffers)
    searched = False
    for r in runs:
        pts = [p for p in r["report"].get("reward_curve") or [] if not math.isnan(p.get("nfe_total", math.nan))]
        if not pts:
            continue
        x = [p["nfe_total"] / 1e3 for p in pts]
        cx.plot(x, _running_mean([p["reward"] for p in pts]), ls=style[r["seed"]], color=colour[r["algo"]], lw=1.2)
        if "search/buffer_best_reward" in pts[0]:
            searched = True
            cx.plot(x, _running_mean([p["search/buffer_best_reward"] for p in pts]), ls=style[r["seed"]],
                    color=colour[r["algo"]], lw=2.5, alpha=0.45)
    cx.set_title(f"mean training reward, running mean of {SMOOTH} steps"
                 + ("\n(thick: TR2-D2's best reward in the buffer, mean over prompts)" if searched else ""), fontsize=10)
    cx.set_xlabel("row-forwards spent in training (thousands)")
    cx.set_ylabel("reward")
    cx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="diffu_grpo,gdpo,dmpo", help=f"comma-separated, from {list(NAMES)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out_dir", default="outputs/recipe_runs")
    p.add_argument("--docs", default=None,
                   help="path stem of the .md/.json/.png (default <out_dir>/summary; `make recipe-runs` writes "
                   "docs/recipe_runs, the committed tables)")
    p.add_argument("--launcher", default="accelerate launch", help="command that runs a recipe script")
    p.add_argument("--rerun", action="store_true", help="repeat runs that already have a report.json")
    p.add_argument("--summarize_only", action="store_true", help="only tabulate finished runs")
    p.add_argument("--layout", choices=("auto", "seeded", "flat"), default="auto",
                   help="run folders: <algo>_s<seed> (seeded), <algo> (flat, seed from run.json/report.json or 0), "
                   "or both (auto); flat only tabulates")
    p.add_argument("--conditions", default="alone on the machine",
                   help="how the runs shared the machine, for the table's note (wall-clock and s / step depend on it; "
                   "the step counts and accuracies do not), e.g. 'two at a time with --torch_threads 1'")
    p.add_argument("--paired_with", default=None,
                   help="a recipe of --recipes: add a table of every other recipe minus it, seed by seed")
    opts, extra = p.parse_known_args(argv)
    recipes = [r.strip() for r in opts.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in NAMES]
    if opts.paired_with is not None and opts.paired_with not in recipes:
        raise SystemExit(f"--paired_with {opts.paired_with!r} is not one of --recipes {recipes}")
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {list(NAMES)}")
    seeds = [int(s) for s in opts.seeds.split(",")]
    out_dir = Path(opts.out_dir)
    if not opts.summarize_only and opts.layout != "flat":
        launcher = opts.launcher.split()
        if launcher and launcher[0] == "accelerate":  # the one next to this interpreter (the venv's)
            launcher[0] = str(Path(sys.executable).with_name("accelerate"))
        for seed in seeds:  # seed-major: a partial sweep still covers every recipe
            for algo in recipes:
                d = out_dir / f"{algo}_s{seed}"
                if (d / "report.json").exists() and not opts.rerun:
                    continue
                run_one(algo, seed, d, launcher, extra)
    runs = collect(out_dir, recipes, seeds, opts.layout)
    if not runs:
        raise SystemExit(f"no finished runs under {out_dir} (layout {opts.layout})")
    print(summarize(runs, Path(opts.docs) if opts.docs else out_dir / "summary", opts.conditions, opts.paired_with))


if __name__ == "__main__":
    main()
