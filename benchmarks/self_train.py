"""Recursive self-training with the three selections: ``none``, ``random``, ``entropy`` (arXiv 2509.16499).

Runs ``recipes/self_train_llada.py`` once per selection — the same seed, prompts, kept count and every other
setting, so the selection is the only difference — and tabulates the curves over rounds: validation accuracy
(greedy), the test accuracy at the start and after the last round, the entropy and distinct-2 of all
generated completions and of the kept set, and the memorisation scores (see the recipe's docstring)::

    python benchmarks/self_train.py                                    # recipe defaults, 3 runs
    python benchmarks/self_train.py --seed 1 --rounds 6 --keep 64      # any recipe flag is passed through
    python benchmarks/self_train.py --rounds 1 --prompts_per_round 8 --samples_per_prompt 2 --sft_steps 2 \\
        --val_samples 4 --eval_samples 4 --docs /tmp/st_docs --output_root /tmp/st_runs   # smoke run

Writes ``<docs>/self_train.md`` (one table per selection, one row per round), ``<docs>/self_train.png``
(validation accuracy, bigram entropy of the generated data and memorisation over rounds, one line per
selection) and ``<docs>/self_train.json`` (every report); each run's own ``report.json`` / ``report.png`` are in
``<output_root>/<selection>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def markdown(reports: dict[str, dict], command: str) -> str:
    first = next(iter(reports.values()))
    a = first["args"]
    lines = [
        "# Recursive self-training: selection none vs random vs entropy",
        "",
        f"Command: `{command}`",
        "",
        f"Model `{a['model_name_or_path']}`, task `{a['task']}`, {a['rounds']} rounds of {a['prompts_per_round']} fresh "
        f"training prompts × {a['samples_per_prompt']} samples (temperature {a['temperature']}, `{a['rollout']}` sampler), "
        f"verified by the task's reward (≥ {a['success_reward']}), {a['keep']} kept per round"
        f"{' from the accumulated pool' if a['accumulate'] else ''}, then {a['sft_steps']} AdamW steps "
        f"(lr {a['learning_rate']:g}, batch {a['sft_batch_size']}) of LLaDA's masked-diffusion SFT loss; seed {a['seed']}. "
        f"Validation: {a['val_samples']} prompts, test: {a['eval_samples']} prompts, both greedy (d1 protocol); nothing "
        "is chosen on test. H1 / H2: unigram / bigram entropy (nats) of the completion token ids; dist-2: distinct "
        "bigrams / bigrams; mem-self: mean nearest-neighbour distance (1 − cos, hashed uni+bigrams) of the round's "
        "generated completions to everything fine-tuned on in earlier rounds, and the near-copy fraction (< 0.05); "
        "mem-gold: the same for the kept set against the gold solutions of the other training prompts.",
        "",
        "| selection | test at start (%) | test after last round (%) | val at start (%) | val after last round (%) |",
        "|---|---|---|---|---|",
    ]
    for sel, r in reports.items():
        lines.append(f"| {sel} | {_pct(r['start']['test_accuracy'])} | {_pct(r['test_final'])} | "
                     f"{_pct(r['start']['val_accuracy'])} | {_pct(r['rounds'][-1]['val_accuracy'])} |")
    for sel, r in reports.items():
        lines += [
            "",
            f"## selection = {sel}",
            "",
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
    total = sum(r["seconds"] for r in reports.values())
    lines += ["", f"Total wall-clock: {total / 60:.1f} min for {len(reports)} runs.", ""]
    return "\n".join(lines)


def plot(reports: dict[str, dict], path: Path) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for sel, r in reports.items():
        rounds = r["rounds"]
        xs = [0] + [e["round"] for e in rounds]
        val = [r["start"]["val_accuracy"]] + [e["val_accuracy"] for e in rounds]
        if all(v is not None for v in val):
            axes[0].plot(xs, [100 * v for v in val], marker="o", label=sel)
        xr = [e["round"] for e in rounds]
        axes[1].plot(xr, [e["generated"]["entropy_2"] for e in rounds], marker="o", label=sel)
        pts = [(e["round"], e["mem_self"]["mean_distance"]) for e in rounds if e["mem_self"]["mean_distance"] is not None]
        if pts:
            axes[2].plot([x for x, _ in pts], [v for _, v in pts], marker="o", label=sel)
    axes[0].set_title("validation accuracy (greedy)", fontsize=10)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].set_title("bigram entropy of all generated completions", fontsize=10)
    axes[1].set_ylabel("nats")
    axes[2].set_title("memorisation: distance of generated data\nto earlier rounds' SFT data (lower = closer)", fontsize=9)
    axes[2].set_ylabel("mean 1 − cos")
    for ax in axes:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--selections", default=",".join(SELECTIONS), help="comma list of none, random, entropy")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="folder of self_train.md / .png / .json")
    ap.add_argument("--output_root", default="outputs/self_train", help="each run's output_dir is <output_root>/<selection>")
    opts, recipe_argv = ap.parse_known_args(argv)
    if any(a == "--selection" or a.startswith("--selection=") or a == "--output_dir" or a.startswith("--output_dir=")
           for a in recipe_argv):
        ap.error("--selection / --output_dir are set per run; use --selections / --output_root")
    selections = [s.strip() for s in opts.selections.split(",") if s.strip()]
    bad = [s for s in selections if s not in SELECTIONS]
    if bad or not selections:
        ap.error(f"--selections must name some of {list(SELECTIONS)}, got {opts.selections!r}")
    recipe = load_recipe()
    reports = {}
    t0 = time.time()
    for sel in selections:
        print(f"[self_train benchmark] selection={sel}", flush=True)
        reports[sel] = recipe.main([*recipe_argv, "--selection", sel, "--output_dir", os.path.join(opts.output_root, sel)])
    docs = Path(opts.docs)
    docs.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/self_train.py", *(argv if argv is not None else sys.argv[1:])])
    (docs / "self_train.md").write_text(markdown(reports, command))
    (docs / "self_train.json").write_text(json.dumps(reports, indent=2))
    plot(reports, docs / "self_train.png")
    print(f"[self_train benchmark] {len(reports)} runs in {(time.time() - t0) / 60:.1f} min; wrote "
          f"{docs / 'self_train.md'}, {docs / 'self_train.png'}", flush=True)
    return reports


if __name__ == "__main__":
    main()
