"""RL step time of the GDPO recipe, side by side: today's sampler (the code before the fast-rollouts work) and the
rollout decoders of :mod:`dlm_trl.sampling`, in one run on the same machine.

The fast-rollouts issue asks for an RL step ≤ 0.5× *today's*. ``today`` is not an option of the current code: it
is the repository as it was at ``--today_rev`` (default: the last commit with the one-function sampler, before it
became a package; that sampler computes the full ``[B, T, V]`` logits every step and leaves glibc handing freed
memory back to the kernel — the page faults the issue measured). This script extracts that revision with
``git archive`` into a scratch folder and runs *its* ``recipes/gdpo_llada.py`` with its own ``dlm_trl`` first on
``PYTHONPATH``; the other contenders run this checkout's recipe with a rollout flag:

* ``today``            — the recipe at ``--today_rev`` (24 forwards per rollout, full logits, no allocator fix);
* ``plain``            — ``--rollout plain`` (the same tokens as today; block-only logits, freed memory kept);
* ``fast``             — ``--rollout fast`` (threshold 0.9, the GDPO recipe's default);
* ``thr0.99+prefix``   — ``--rollout_threshold 0.99 --rollout_cache prefix``;
* ``thr0.85``          — ``--rollout_threshold 0.85``.

Every run is the tiny GDPO recipe's optimizer step (256 completions = 32 prompts × 8, 3 ELBO nodes) with no
evaluations (``--eval_samples 0 --val_samples 0``) for ``--steps`` steps; its step time is the mean of the step
durations in ``report.json``'s reward curve after the first (warm-up) step. Contenders are interleaved
(``--repeats`` rounds, the order rotated each round) so that machine load hits all alike; the table gives the median
over rounds, the ratio to ``today`` and to ``plain``, and the rollout (sampler) seconds per step. Accuracy is not
measured here (docs/rollout_speed*.md and the README's "Fast rollouts in RL" have it). Writes ``<out>.md``,
``<out>.json`` and ``<out>.png``::

    python benchmarks/rl_step_time.py                                   # ≈ 32 min on 2 idle cores
    python benchmarks/rl_step_time.py --contenders today,fast --steps 3 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlm_trl.sampling._names import _choice_error

ROOT = Path(__file__).resolve().parents[1]

# The commit that replaced the one-function sampler by the package of small parts (schedules, scorers, transfer
# rules, caches, block-only logits, the allocator fix). "today" is the commit two before it: the one in between
# (06f71c1, a rewards change) already lacks dlm_trl/sampling.py (the move into the package landed split), so its
# tree does not import.
SAMPLER_PACKAGE_COMMIT = "6e57e62"
TODAY_REV = f"{SAMPLER_PACKAGE_COMMIT}~2"

CONTENDERS: dict[str, list[str]] = {
    "today": [],
    "plain": ["--rollout", "plain"],
    "fast": ["--rollout", "fast"],
    "thr0.99+prefix": ["--rollout_threshold", "0.99", "--rollout_cache", "prefix"],
    "thr0.85": ["--rollout_threshold", "0.85"],
}
DEFAULT_CONTENDERS = "today,plain,fast,thr0.99+prefix"


def parse_contenders(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in CONTENDERS:
            raise SystemExit(str(_choice_error("contender", n, list(CONTENDERS))))
    if not names:
        raise SystemExit(f"--contenders is empty; choose from {list(CONTENDERS)}")
    if len(set(names)) != len(names):
        raise SystemExit(f"--contenders names a decoder twice: {names}")
    return names


def step_seconds(report: dict) -> list[float]:
    """Durations of the optimizer steps after the first, from the cumulative ``seconds`` of the reward curve."""
    curve = sorted(report.get("reward_curve") or [], key=lambda p: p["step"])
    times = [(p["step"], p["seconds"]) for p in curve if p.get("seconds") is not None]
    if len(times) < 2:
        raise ValueError(f"the report has {len(times)} timed step(s); at least 2 are needed (the first is warm-up)")
    out = []
    for (s0, t0), (s1, t1) in zip(times, times[1:], strict=False):
        if s1 != s0 + 1:
            raise ValueError(f"the reward curve skips from step {s0} to {s1}; log every step (logging_steps=1)")
        out.append(t1 - t0)
    return out


def resolve_today(rev: str | None) -> str:
    """The full hash of ``today``'s revision; a clear error outside a git checkout with that history."""
    rev = rev or TODAY_REV
    try:
        return subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(
            f"cannot resolve --today_rev {rev!r} in {ROOT} ({err}); 'today' needs a git clone with its history "
            "(not a shallow clone or a source archive). Leave 'today' out of --contenders to compare the current "
            "decoders only.") from err


def extract(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_recipe(name: str, tree: Path, out: Path, steps: int, threads: int, seed: int, extra: list[str]) -> dict:
    """One GDPO recipe run of ``steps`` optimizer steps without evaluations; its report and wall-clock."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, str(tree / "recipes" / "gdpo_llada.py"), "--output_dir", str(out), "--seed", str(seed),
           "--max_steps", str(steps), "--eval_samples", "0", "--val_samples", "0", "--keep_best", "False",
           "--torch_threads", str(threads), "--logging_steps", "1", "--save_strategy", "no",
           *CONTENDERS[name], *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    print(f"[rl_step_time] {name}: {' '.join(cmd)}", flush=True)
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out.parent / f'{out.name}.log'}")
    report = json.loads((out / "report.json").read_text())
    durations = step_seconds(report)
    steps_done = report.get("steps") or len(report.get("reward_curve") or [])
    sampler = (report.get("seconds") or {}).get("sampler")
    nfe = (report.get("nfe") or {}).get("sampler")
    return {
        "step_seconds": statistics.mean(durations), "durations": [round(d, 2) for d in durations],
        "sampler_seconds_per_step": round(sampler / steps_done, 2) if sampler and steps_done else None,
        "sampler_row_forwards_per_step": round(nfe / steps_done) if nfe and steps_done else None,
        "wall_seconds": round(time.time() - start, 1), "command": " ".join(cmd),
    }


def summarize(results: dict[str, list[dict]], meta: dict) -> tuple[str, dict]:
    rows = {}
    for name, runs in results.items():
        step = statistics.median(r["step_seconds"] for r in runs)
        sampler = [r["sampler_seconds_per_step"] for r in runs if r["sampler_seconds_per_step"] is not None]
        rows[name] = {"step_seconds": round(step, 2), "per_round": [round(r["step_seconds"], 2) for r in runs],
                      "sampler_seconds_per_step": round(statistics.median(sampler), 2) if sampler else None,
                      "sampler_row_forwards_per_step": runs[0].get("sampler_row_forwards_per_step")}
    for row in rows.values():
        for ref in ("today", "plain"):
            if ref in rows:
                row[f"vs_{ref}"] = round(row["step_seconds"] / rows[ref]["step_seconds"], 3)
    lines = [
        "# RL step time of the GDPO recipe, side by side",
        "",
        f"`python benchmarks/rl_step_time.py {meta['argv']}` — {meta['conditions']}. Tiny GDPO recipe step (256 "
        "completions = 32 Countdown prompts × 8, 3 ELBO nodes, fp32 training), no evaluations; step time = mean of "
        f"steps 2..{meta['steps']} of a run, median over {meta['repeats']} interleaved round(s); `today` = the "
        f"repository at `{meta['today_rev'][:10] if meta.get('today_rev') else '-'}` (before the sampler package), "
        "the others this checkout's recipe with the rollout flag. The sampler column is the recipe's `time/sampler` "
        "bucket per step (the first step included).",
        "",
        "| contender | step time (s) | × today | × plain | sampler s / step | sampler row-forwards / step | "
        "per round (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['step_seconds']:.2f} | {row.get('vs_today', '-')} | {row.get('vs_plain', '-')} | "
            f"{row['sampler_seconds_per_step'] if row['sampler_seconds_per_step'] is not None else '-'} | "
            f"{row['sampler_row_forwards_per_step'] or '-'} | "
            f"{', '.join(f'{x:.1f}' for x in row['per_round'])} |")
    return "\n".join(lines) + "\n", rows


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6))
    step = [rows[n]["step_seconds"] for n in names]
    sampler = [rows[n]["sampler_seconds_per_step"] or 0.0 for n in names]
    ax.bar(names, step, color="#9ab", label="step")
    ax.bar(names, sampler, color="#357", label="of which rollout (sampler)")
    if "today" in rows:
        ax.axhline(0.5 * rows["today"]["step_seconds"], color="#c33", ls="--", lw=1, label="0.5 × today")
    for i, n in enumerate(names):
        ax.text(i, step[i], f"{step[i]:.1f} s" + (f"\n{rows[n]['vs_today']}×" if "vs_today" in rows[n] else ""),
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds per RL step")
    ax.set_title("GDPO recipe step time (tiny model)")
    ax.legend(fontsize=8)
    ax.set_ylim(0, max(step) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contenders", default=DEFAULT_CONTENDERS, help=f"comma-separated, from {list(CONTENDERS)}")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each run (runs are sequential)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--today_rev", default=None, help=f"git revision of 'today' (default {TODAY_REV})")
    p.add_argument("--work_dir", default=None, help="scratch folder for the runs (default: a temporary one)")
    p.add_argument("--conditions", default="2 idle cores, one run at a time",
                   help="how the machine was shared, for the table's note")
    p.add_argument("--out", default="docs/rl_step_time")
    opts, extra = p.parse_known_args(argv)
    names = parse_contenders(opts.contenders)
    if opts.steps < 2:
        raise SystemExit("--steps must be ≥ 2 (the first step is warm-up and not timed)")
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    work = (Path(opts.work_dir) if opts.work_dir else Path(tempfile.mkdtemp(prefix="rl_step_time_"))).resolve()
    trees = {n: ROOT for n in names}
    today_rev = None
    if "today" in names:
        today_rev = resolve_today(opts.today_rev)
        trees["today"] = extract(today_rev, work / f"today_{today_rev[:10]}")
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(opts.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            res = run_recipe(n, trees[n], work / f"{n}_r{r}", opts.steps, opts.threads, opts.seed, extra)
            print(f"[rl_step_time] round {r}: {n} {res['step_seconds']:.2f} s / step {res['durations']}", flush=True)
            results[n].append(res)
    meta = {"argv": argv_text, "conditions": opts.conditions, "steps": opts.steps, "repeats": opts.repeats,
            "threads": opts.threads, "today_rev": today_rev, "extra": extra}
    table, rows = summarize(results, meta)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": results}, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(table)
    return rows


if __name__ == "__main__":
    main()
