"""Recursive self-training with the three selections: ``none``, ``random``, ``entropy`` (arXiv 2509.16499).

Runs ``recipes/self_train_llada.py`` once per selection and seed — within a seed the same prompts, kept count
and every other setting, so the selection is the only difference — and tabulates the curves over rounds:
validation accuracy (greedy), the test accuracy at the start and after the last round, the entropy and
distinct-2 of all generated completions and of the kept set, and the memorisation scores (see the recipe's
docstring)::

    python benchmarks/self_train.py                                    # recipe defaults, 3 runs (seed 0)
    python benchmarks/self_train.py --seeds 0,1,2 --rounds 6 --keep 64 # any recipe flag is passed through
    python benchmarks/self_train.py --rounds 1 --prompts_per_round 8 --samples_per_prompt 2 --sft_steps 2 \\
        --val_samples 4 --eval_samples 4 --docs /tmp/st_docs --output_root /tmp/st_runs   # smoke run

With several seeds the tables are per selection (mean ± sd over seeds, per round) plus the *paired*
differences between selections of the final test accuracy (same seed = same prompts and starting model): mean
± sd over seeds and a 95 % t-interval.

Writes ``<docs>/self_train.md``, ``<docs>/self_train.png`` (validation accuracy, bigram entropy of the
generated data and memorisation over rounds, one line per selection, mean over seeds) and
``<docs>/self_train.json`` (every report); each run's own ``report.json`` / ``report.png`` are in
``<output_root>/s<seed>/<selection>``. A run whose ``report.json`` is already there with the same settings is
reused, not rerun (so an interrupted sweep resumes); one with different settings is an error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipe_runs (paired_gain)
from recipe_runs import paired_gain  # noqa: E402  (one definition of the paired-difference cell)

SELECTIONS = ("none", "random", "entropy")


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_self_train", ROOT / "recipes" / "self_train_llada.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def by_seed(runs: dict) -> dict[int, dict[str, dict]]:
    """``{seed: {selection: report}}``; a plain ``{selection: report}`` (one seed) is accepted and keyed by its seed."""
    if runs and all(isinstance(v, dict) and "args" in v for v in runs.values()):
        seed = next(iter(runs.values()))["args"]["seed"]
        return {seed: runs}
    return runs


def _stats(xs: list[float]) -> tuple[float, float | None]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _ms(xs: list, scale: float = 1.0, digits: int = 1) -> str:
    """mean ± sd of the non-None values (``–`` when none)."""
    xs = [scale * x for x in xs if x is not None]
    if not xs:
        return "–"
    m, sd = _stats(xs)
    return f"{m:.{digits}f}" if sd is None else f"{m:.{digits}f} ± {sd:.{digits}f}"


def _round_table(r: dict) -> list[str]:
    lines = [
        "| round | verified / generated | kept | val acc (%) | test acc (%) | H1 gen | H2 gen | dist-2 gen | "
        "distinct frac gen | H2 kept | dist-2 kept | mem-self dist | mem-self near-copy | mem-gold kept dist | "
        "SFT loss first→last | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["rounds"]:
        g, k = e["generated"], e["kept_diversity"]
        lines.append(
            f"| {e['round']} | {e['verified']} / {e['num_generated']} | {e['kept']} | {_pct(e['val_accuracy'])} | "
            f"{_pct(e['test_accuracy'])} | {g['entropy_1']:.3f} | {g['entropy_2']:.3f} | {g['distinct_2']:.3f} | "
            f"{g['distinct_fraction']:.3f} | {k['entropy_2']:.3f} | {k['distinct_2']:.3f} | "
            f"{_num(e['mem_self']['mean_distance'])} | {_num(e['mem_self']['near_copy'])} | "
            f"{_num(e['mem_gold_kept']['mean_distance'])} | {_num(e['sft_loss_first'])}→{_num(e['sft_loss_last'])} | "
            f"{e['seconds']['total']:.0f} |"
        )
    return lines


def markdown(runs: dict, command: str) -> str:
    runs = by_seed(runs)
    seeds = sorted(runs)
    selections = list(next(iter(runs.values())))
    a = next(iter(runs[seeds[0]].values()))["args"]
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    lines = [
        "# Recursive self-training: selection none vs random vs entropy",
        "",
        f"Command: `{command}`",
        "",
        f"Model `{a['model_name_or_path']}`, task `{a['task']}`, {a['rounds']} rounds of {a['prompts_per_round']} fresh "
        f"training prompts × {a['samples_per_prompt']} samples (temperature {a['temperature']}, `{a['rollout']}` sampler), "
        f"verified by the task's reward (≥ {a['success_reward']}), {a['keep']} kept per round"
        f"{' from the accumulated pool' if a['accumulate'] else ''}, then {a['sft_steps']} AdamW steps "
        f"(lr {a['learning_rate']:g}, batch {a['sft_batch_size']}) of LLaDA's masked-diffusion SFT loss; {seed_text} "
        "(the seed draws the training prompts, the samples, the selection and the SFT masks; within a seed the "
        f"selections share the prompts and the first round's samples). Validation: {a['val_samples']} prompts, test: "
        f"{a['eval_samples']} prompts (the same for every seed), both greedy (d1 protocol); nothing is chosen on test. "
        "H1 / H2: unigram / bigram entropy (nats) of the completion token ids; dist-2: distinct "
        "bigrams / bigrams; mem-self: mean nearest-neighbour distance (1 − cos, hashed uni+bigrams) of the round's "
        "generated completions to everything fine-tuned on in earlier rounds, and the near-copy fraction (< 0.05); "
        "mem-gold: the same for the kept set against the gold solutions of the other training prompts.",
        "",
    ]
    if len(seeds) == 1:
        reports = runs[seeds[0]]
        lines += ["| selection | test at start (%) | test after last round (%) | val at start (%) | val after last round (%) |",
                  "|---|---|---|---|---|"]
        for sel, r in reports.items():
            lines.append(f"| {sel} | {_pct(r['start']['test_accuracy'])} | {_pct(r['test_final'])} | "
                         f"{_pct(r['start']['val_accuracy'])} | {_pct(r['rounds'][-1]['val_accuracy'])} |")
        for sel, r in reports.items():
            lines += ["", f"## selection = {sel}", "", *_round_table(r)]
        total = sum(r["seconds"] for r in reports.values())
        lines += ["", f"Total wall-clock: {total / 60:.1f} min for {len(reports)} runs.", ""]
        return "\n".join(lines)

    def col(sel, get):
        return [get(runs[s][sel]) for s in seeds]

    last = lambda r: r["rounds"][-1]  # noqa: E731
    lines += [
        f"## Summary (mean ± sd over {len(seeds)} seeds; per-seed values in brackets)",
        "",
        "| selection | test at start (%) | test after last round (%) | test change (points) | val after last round (%) | "
        "verified in last round | H2 gen, last round | distinct frac gen, last round | mem-self dist, last round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sel in selections:
        start = col(sel, lambda r: r["start"]["test_accuracy"])
        final = col(sel, lambda r: r["test_final"])
        change = [100 * (f - s0) for f, s0 in zip(final, start, strict=True) if f is not None and s0 is not None]
        lines.append(
            f"| {sel} | {_ms(start, 100)} | {_ms(final, 100)} [{', '.join(_pct(x) for x in final)}] | "
            f"{_ms(change, 1.0, 2)} | {_ms(col(sel, lambda r: last(r)['val_accuracy']), 100)} | "
            f"{_ms(col(sel, lambda r: last(r)['verified']), 1.0, 0)} | "
            f"{_ms(col(sel, lambda r: last(r)['generated']['entropy_2']), 1.0, 3)} | "
            f"{_ms(col(sel, lambda r: last(r)['generated']['distinct_fraction']), 1.0, 3)} | "
            f"{_ms(col(sel, lambda r: last(r)['mem_self']['mean_distance']), 1.0, 3)} |"
        )
    lines += ["", "**Paired differences between selections** (same seed: same prompts and starting model), points:", "",
              "| pair | test after last round | val after last round |", "|---|---|---|"]
    for x, y in [("entropy", "random"), ("entropy", "none"), ("random", "none")]:
        if x in selections and y in selections:
            dt = [100 * (runs[s][x]["test_final"] - runs[s][y]["test_final"]) for s in seeds]
            dv = [100 * (last(runs[s][x])["val_accuracy"] - last(runs[s][y])["val_accuracy"]) for s in seeds]
            lines.append(f"| {x} − {y} | {paired_gain(dt)} | {paired_gain(dv)} |")
    lines += ["", "## Per round, mean ± sd over seeds", ""]
    for sel in selections:
        lines += [f"### selection = {sel}", "",
                  "| round | verified / generated | val acc (%) | H2 gen | distinct frac gen | H2 kept | mem-self dist | "
                  "mem-self near-copy |", "|---|---|---|---|---|---|---|---|"]
        for i in range(len(runs[seeds[0]][sel]["rounds"])):
            es = [runs[s][sel]["rounds"][i] for s in seeds]
            lines.append(
                f"| {es[0]['round']} | {_ms([e['verified'] for e in es], 1.0, 0)} / {es[0]['num_generated']} | "
                f"{_ms([e['val_accuracy'] for e in es], 100)} | {_ms([e['generated']['entropy_2'] for e in es], 1.0, 3)} | "
                f"{_ms([e['generated']['distinct_fraction'] for e in es], 1.0, 3)} | "
                f"{_ms([e['kept_diversity']['entropy_2'] for e in es], 1.0, 3)} | "
                f"{_ms([e['mem_self']['mean_distance'] for e in es], 1.0, 3)} | "
                f"{_ms([e['mem_self']['near_copy'] for e in es], 1.0, 3)} |"
            )
        lines.append("")
    lines += ["## Every run", ""]
    for s in seeds:
        for sel in selections:
            lines += [f"<details><summary>seed {s}, selection = {sel}</summary>", "", *_round_table(runs[s][sel]), "",
                      "</details>", ""]
    total = sum(r["seconds"] for s in seeds for r in runs[s].values())
    lines += [f"Total wall-clock: {total / 60:.1f} min for {sum(len(v) for v in runs.values())} runs.", ""]
    return "\n".join(lines)


def plot(runs: dict, path: Path) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = by_seed(runs)
    seeds = sorted(runs)
    selections = list(runs[seeds[0]])

    def curve(sel, get, with_start=None):
        """x, mean, sd over seeds of get(round entry) (None values skipped)."""
        n = len(runs[seeds[0]][sel]["rounds"])
        xs, ms, sds = [], [], []
        points = [(0, [with_start(runs[s][sel]) for s in seeds])] if with_start else []
        points += [(i + 1, [get(runs[s][sel]["rounds"][i]) for s in seeds]) for i in range(n)]
        for x, vals in points:
            vals = [v for v in vals if v is not None]
            if vals:
                m, sd = _stats(vals)
                xs.append(x), ms.append(m), sds.append(sd or 0.0)
        return xs, ms, sds

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = [
        (lambda e: e["val_accuracy"] and 100 * e["val_accuracy"],
         lambda r: r["start"]["val_accuracy"] and 100 * r["start"]["val_accuracy"], "validation accuracy (greedy)",
         "accuracy (%)"),
        (lambda e: e["generated"]["entropy_2"], None, "bigram entropy of all generated completions", "nats"),
        (lambda e: e["mem_self"]["mean_distance"], None,
         "memorisation: distance of generated data\nto earlier rounds' SFT data (lower = closer)", "mean 1 − cos"),
    ]
    for ax, (get, start, title, ylabel) in zip(axes, panels, strict=True):
        for sel in selections:
            xs, ms, sds = curve(sel, get, start)
            if xs:
                ax.errorbar(xs, ms, yerr=sds if len(seeds) > 1 else None, marker="o", capsize=3, label=sel)
        ax.set_title(title, fontsize=9 if "\n" in title else 10)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if len(seeds) > 1:
        fig.suptitle(f"mean ± sd over seeds {', '.join(map(str, seeds))}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RUN_ONLY = ("output_dir", "progress", "torch_threads")  # settings that do not change a run's results


def differing_settings(old: dict, want: dict) -> list[str]:
    """The recipe settings (other than :data:`RUN_ONLY`) in which a saved run differs from the one asked for."""
    return sorted(k for k in set(old) | set(want) if k not in RUN_ONLY and old.get(k) != want.get(k))


def main(argv: list[str] | None = None) -> dict[int, dict[str, dict]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--selections", default=",".join(SELECTIONS), help="comma list of none, random, entropy")
    ap.add_argument("--seeds", default=None, help="comma list of seeds (default: the recipe's --seed, else 0)")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="folder of self_train.md / .png / .json")
    ap.add_argument("--output_root", default="outputs/self_train",
                    help="each run's output_dir is <output_root>/s<seed>/<selection>")
    opts, recipe_argv = ap.parse_known_args(argv)
    if any(a in ("--selection", "--output_dir") or a.startswith(("--selection=", "--output_dir="))
           for a in recipe_argv):
        ap.error("--selection / --output_dir are set per run; use --selections / --output_root")
    seed_flag = [i for i, a in enumerate(recipe_argv) if a == "--seed" or a.startswith("--seed=")]
    if seed_flag and opts.seeds is not None:
        ap.error("give either --seeds (several runs) or the recipe's --seed, not both")
    if seed_flag:
        i = seed_flag[0]
        opts.seeds = recipe_argv[i].split("=", 1)[1] if "=" in recipe_argv[i] else recipe_argv[i + 1]
        del recipe_argv[i : i + (1 if "=" in recipe_argv[i] else 2)]
    try:
        seeds = [int(s) for s in (opts.seeds or "0").split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be a comma list of integers, got {opts.seeds!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        ap.error(f"--seeds must name distinct integers, got {opts.seeds!r}")
    selections = [s.strip() for s in opts.selections.split(",") if s.strip()]
    bad = [s for s in selections if s not in SELECTIONS]
    if bad or not selections:
        ap.error(f"--selections must name some of {list(SELECTIONS)}, got {opts.selections!r}")
    recipe = load_recipe()
    runs: dict[int, dict[str, dict]] = {}
    t0 = time.time()
    for seed in seeds:
        runs[seed] = {}
        for sel in selections:
            out = os.path.join(opts.output_root, f"s{seed}", sel)
            run_argv = [*recipe_argv, "--seed", str(seed), "--selection", sel, "--output_dir", out]
            done = Path(out) / "report.json"
            if done.exists():
                old = json.loads(done.read_text())
                want = asdict(recipe.parse_args(run_argv))
                diff = differing_settings(old["args"], want)
                if diff:
                    raise SystemExit(
                        f"[self_train benchmark] {done} was made with other settings ({', '.join(diff)}); "
                        "delete that folder or choose another --output_root"
                    )
                print(f"[self_train benchmark] seed={seed} selection={sel}: reusing {done}", flush=True)
                runs[seed][sel] = old
                continue
            print(f"[self_train benchmark] seed={seed} selection={sel}", flush=True)
            runs[seed][sel] = recipe.main(run_argv)
    docs = Path(opts.docs)
    docs.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/self_train.py", *(argv if argv is not None else sys.argv[1:])])
    (docs / "self_train.md").write_text(markdown(runs, command))
    (docs / "self_train.json").write_text(json.dumps({str(k): v for k, v in runs.items()}, indent=2))
    plot(runs, docs / "self_train.png")
    n = sum(len(v) for v in runs.values())
    print(f"[self_train benchmark] {n} runs in {(time.time() - t0) / 60:.1f} min; wrote "
          f"{docs / 'self_train.md'}, {docs / 'self_train.png'}", flush=True)
    return runs


if __name__ == "__main__":
    main()
