"""The recipes exactly as a user runs them: ``accelerate launch recipes/<algo>_llada.py`` with no
arguments but ``--seed`` and ``--output_dir``, one run at a time (each has the whole machine), over
several seeds.

    python benchmarks/recipe_runs.py                       # 3 recipes × 3 seeds, ~12 min each (~110 min on 2 cores)
    python benchmarks/recipe_runs.py --recipes gdpo --seeds 0
    python benchmarks/recipe_runs.py --summarize_only --out_dir outputs/recipe_runs   # tables from finished runs

Each run is its own process tree; its wall-clock and peak memory (max RSS over the launcher and
the recipe, from ``wait4``) go to ``<out_dir>/<algo>_s<seed>/run.json`` next to the recipe's own
``report.json``. A run whose ``report.json`` exists is not repeated (``--rerun`` repeats it).

Writes ``<docs>.md`` (held-out accuracy before → after as mean ± sd over seeds, gain per seed,
steps, seconds per step, where the training time went, wall-clock, peak memory), ``<docs>.json``
(every run) and ``<docs>.png`` (held-out accuracy before/after per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"diffu_grpo": "diffu-GRPO", "gdpo": "GDPO", "dmpo": "DMPO"}
# report.json "seconds" buckets, in table order; the remainder of train_seconds is the policy pass
# (forward + backward) and the optimizer step.
BUCKETS = ("sampler", "nograd_likelihoods", "rollout_other")


def run_one(algo: str, seed: int, out: Path, launcher: list[str], extra: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*launcher, str(ROOT / "recipes" / f"{algo}_llada.py"), "--seed", str(seed), "--output_dir", str(out), *extra]
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


def collect(out_dir: Path, recipes: list[str], seeds: list[int]) -> list[dict]:
    runs = []
    for algo in recipes:
        for seed in seeds:
            d = out_dir / f"{algo}_s{seed}"
            if not (d / "report.json").exists():
                continue
            report = json.loads((d / "report.json").read_text())
            meta = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
            runs.append({"algo": algo, "seed": seed, **meta, "report": report})
    return runs


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def summarize(runs: list[dict], docs: Path) -> str:
    lines = [
        "| recipe | seeds | held-out before → after (%, mean ± sd) | gain per seed (pts) | mean gain | steps | s / step "
        "| training time: sampler / no-grad likelihoods / rewards etc. / policy fwd+bwd+optimizer | wall-clock (max) "
        "| peak RSS (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for algo in NAMES:
        rs = [r for r in runs if r["algo"] == algo]
        if not rs:
            continue
        before = [100 * r["report"]["heldout_before"]["accuracy"] for r in rs]
        after = [100 * r["report"]["heldout_after"]["accuracy"] for r in rs]
        gains = [a - b for a, b in zip(after, before, strict=True)]
        steps = [r["report"]["steps"] for r in rs]
        train = [r["report"]["train_seconds"] for r in rs]
        timed = [r for r in rs if "seconds" in r["report"]]
        share = "n/a"
        if timed:
            total = sum(r["report"]["train_seconds"] for r in timed)
            parts = [sum(r["report"]["seconds"].get(b, 0.0) for r in timed) for b in BUCKETS]
            share = " / ".join(f"{100 * p / total:.0f}" for p in [*parts, total - sum(parts)]) + " %"
        walls = [r["wall_seconds"] for r in rs if "wall_seconds" in r]
        rss = [r["peak_rss_mb"] for r in rs if "peak_rss_mb" in r]
        lines.append(
            f"| {NAMES[algo]} | {','.join(str(r['seed']) for r in rs)} | {_mean_sd(before)} → **{_mean_sd(after)}** | "
            f"{', '.join(f'{g:+.2f}' for g in gains)} | {statistics.mean(gains):+.2f} | {statistics.mean(steps):.1f} | "
            f"{sum(train) / sum(steps):.1f} | {share} | "
            f"{f'{max(walls) / 60:.1f} min' if walls else 'n/a'} | {f'{max(rss) / 1024:.1f} GB' if rss else 'n/a'} |"
        )
    r0 = runs[0]["report"]
    note = (
        f"\nHeld-out: {r0['heldout_after']['num_samples']} {r0['title'].split('·')[-1].strip()} test prompts, "
        "temperature 0 (the same prompts and the same deterministic measurement for every run). Each run: "
        "`accelerate launch recipes/<recipe>_llada.py --seed S --output_dir …`, alone on the machine. "
        "Training-time shares come from the trainers' `time/*` metrics; the last share is the rest of "
        "`train_runtime`. Accuracy moves in steps of 100/prompts points. Raw runs: " + docs.with_suffix(".json").name + "."
    )
    table = "\n".join(lines) + "\n" + note
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.with_suffix(".md").write_text("# The recipes with no arguments, several seeds\n\n" + table + "\n")
    docs.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    _plot(runs, docs.with_suffix(".png"))
    return table


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = [a for a in NAMES if any(r["algo"] == a for r in runs)]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, algo in enumerate(algos):
        rs = [r for r in runs if r["algo"] == algo]
        for j, r in enumerate(rs):
            x = i + (j - (len(rs) - 1) / 2) * 0.18
            b, a = (100 * r["report"][k]["accuracy"] for k in ("heldout_before", "heldout_after"))
            ax.annotate("", xy=(x, a), xytext=(x, b), arrowprops=dict(arrowstyle="->", color=f"C{i}", lw=2))
            ax.plot([x], [a], "o", color=f"C{i}")
            ax.text(x, a + 0.15, f"s{r['seed']}", ha="center", fontsize=7)
        ax.axhline(100 * rs[0]["report"]["heldout_before"]["accuracy"], color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(algos)), [NAMES[a] for a in algos])
    ax.set_ylabel("held-out accuracy (%); dashed: before")
    ax.set_title("Recipes with no arguments: held-out accuracy before → after, per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="diffu_grpo,gdpo,dmpo", help=f"comma-separated, from {list(NAMES)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out_dir", default="outputs/recipe_runs")
    p.add_argument("--docs", default=str(ROOT / "docs" / "recipe_runs"), help="path stem of the .md/.json/.png")
    p.add_argument("--launcher", default="accelerate launch", help="command that runs a recipe script")
    p.add_argument("--rerun", action="store_true", help="repeat runs that already have a report.json")
    p.add_argument("--summarize_only", action="store_true", help="only tabulate finished runs")
    opts, extra = p.parse_known_args(argv)
    recipes = [r.strip() for r in opts.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in NAMES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {list(NAMES)}")
    seeds = [int(s) for s in opts.seeds.split(",")]
    out_dir = Path(opts.out_dir)
    if not opts.summarize_only:
        launcher = opts.launcher.split()
        if launcher and launcher[0] == "accelerate":  # the one next to this interpreter (the venv's)
            launcher[0] = str(Path(sys.executable).with_name("accelerate"))
        for seed in seeds:  # seed-major: a partial sweep still covers every recipe
            for algo in recipes:
                d = out_dir / f"{algo}_s{seed}"
                if (d / "report.json").exists() and not opts.rerun:
                    continue
                run_one(algo, seed, d, launcher, extra)
    runs = collect(out_dir, recipes, seeds)
    if not runs:
        raise SystemExit(f"no finished runs under {out_dir}")
    print(summarize(runs, Path(opts.docs)))


if __name__ == "__main__":
    main()
