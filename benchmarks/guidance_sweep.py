"""Classifier-free guidance on the embedded model: accuracy vs scale × schedule × plain / rate-preserving.

The two claims of arXiv 2507.08965 tested in miniature: (1) guidance late in sampling (few masks left) helps more
than early guidance; (2) with a decoder whose number of unmasked tokens per step depends on the distribution
(confidence-threshold decoding), plain CFG unmasks too fast and the rate-preserving variant (how many and which
positions decided on the unguided logits, tokens from the guided ones) fixes that.

Protocol (nothing is chosen on test):

* every setting runs greedily on ``--val_samples`` *validation* prompts of each task, with the task's default
  lengths and the given ``--transfer`` (``threshold`` at ``--threshold``, or ``topk``);
* the setting with the best validation accuracy (ties → the cheaper/earlier one in the sweep order, scale 0
  first) and the unguided decoder (scale 0) then run on ``--test_samples`` *test* prompts; the table gives their
  test accuracy, the paired difference and the exact McNemar p-value;
* NFE per sample is reported for every setting (CFG doubles the forwards).

Writes ``<out>.md``, ``<out>.json`` and ``<out>.png`` (validation accuracy vs scale, one line per schedule and
variant)::

    python benchmarks/guidance_sweep.py                                   # countdown + sudoku, ≈ 30 min on 2 cores
    python benchmarks/guidance_sweep.py --tasks countdown --scales 0,1 --val_samples 20 --test_samples 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_speed import mcnemar_p  # noqa: E402

from dlm_trl.evaluation import evaluate  # noqa: E402
from dlm_trl.models import load  # noqa: E402
from dlm_trl.sampling import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def settings(scales: list[float], schedules: list[str]) -> list[dict]:
    """The sweep: scale 0 once (the unguided decoder), then every scale > 0 × schedule × variant."""
    out = [{"name": "unguided", "cfg_scale": 0.0, "guidance_schedule": "constant", "guidance_rate_preserving": False}]
    for s in scales:
        if s <= 0:
            continue
        for sched in schedules:
            for rp in (False, True):
                out.append({
                    "name": f"s{s:g}-{sched}-{'rate' if rp else 'plain'}", "cfg_scale": s,
                    "guidance_schedule": sched, "guidance_rate_preserving": rp,
                })
    return out


def run(model, tok, task: str, setting: dict, split: str, n: int, args) -> dict:
    kw = {k: setting[k] for k in ("cfg_scale", "guidance_schedule", "guidance_rate_preserving")}
    decoder = {"transfer": args.transfer}
    if args.transfer == "threshold":
        decoder.update(threshold=args.threshold, remasking="low_confidence")
    t0 = time.perf_counter()
    res = evaluate(task, model=model, tokenizer=tok, num_samples=n, split=split, seed=args.seed,
                   batch_size=args.batch_size, progress=False, return_samples=True,
                   guidance_late_fraction=args.late_fraction, **decoder, **kw)
    return {"accuracy": res["accuracy"], "nfe": res["nfe_per_sample"], "seconds": round(time.perf_counter() - t0, 1),
            "correct": [bool(s["correct"]) for s in res["samples"]]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="model to sweep: 'tiny' (the embedded model) or a checkpoint folder")
    p.add_argument("--device", default=None, help="e.g. cuda (default: where the model loads, CPU)")
    p.add_argument("--dtype", default=None, help="e.g. bfloat16 for a real checkpoint (default: the checkpoint's)")
    p.add_argument("--tasks", default="countdown,sudoku")
    p.add_argument("--scales", default="0.5,1,2")
    p.add_argument("--schedules", default="constant,linear,late")
    p.add_argument("--late_fraction", type=float, default=0.5)
    p.add_argument("--transfer", default="threshold", choices=("threshold", "topk"))
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--val_samples", type=int, default=200)
    p.add_argument("--test_samples", type=int, default=400)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "docs" / "guidance"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    sweep = settings(scales, schedules)
    model, tok = load(args.model, device=args.device, dtype=args.dtype)
    command = " ".join(["python benchmarks/guidance_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    results: dict = {"args": vars(args), "command": command, "tasks": {}}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        rows = []
        for st in sweep:
            r = run(model, tok, task, st, "validation", args.val_samples, args)
            rows.append({**st, "val_accuracy": r["accuracy"], "nfe": r["nfe"], "val_seconds": r["seconds"]})
            print(f"{task:10s} {st['name']:24s} val {100 * r['accuracy']:5.1f} %  NFE {r['nfe']:5.1f}  "
                  f"{r['seconds']:6.1f} s", flush=True)
        best = max(rows, key=lambda r: r["val_accuracy"])  # first of the ties: unguided wins ties
        test = {}
        for st in ([sweep[0]] if best["name"] == "unguided" else [sweep[0], best]):
            test[st["name"]] = run(model, tok, task, st, "test", args.test_samples, args)
        base = test["unguided"]
        chosen = test[best["name"]]
        results["tasks"][task] = {
            "rows": rows, "best_on_validation": best["name"],
            "test": {k: {"accuracy": v["accuracy"], "nfe": v["nfe"]} for k, v in test.items()},
            "test_delta_points": round(100 * (chosen["accuracy"] - base["accuracy"]), 2),
            "test_mcnemar_p": mcnemar_p(chosen["correct"], base["correct"]),
        }
    write(results, Path(args.out))
    return results


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    a = results["args"]
    lines = [
        "# Classifier-free guidance on the embedded model" if a.get("model", "tiny") == "tiny"
        else f"# Classifier-free guidance on `{a['model']}`",
        "",
        f"`{results.get('command', 'python benchmarks/guidance_sweep.py')}` — greedy, transfer `{a['transfer']}`"
        + (f" (threshold {a['threshold']})" if a["transfer"] == "threshold" else "")
        + f", late schedule from a masked fraction ≤ {a['late_fraction']}; validation = {a['val_samples']} "
        f"prompts per setting, test = {a['test_samples']} prompts for the unguided decoder and the "
        "best-on-validation setting only (exact McNemar p on the paired prompts).",
        "",
    ]
    for task, r in results["tasks"].items():
        lines += [f"## {task}", "", "| setting | scale | schedule | variant | validation acc. | NFE / sample |",
                  "|---|---|---|---|---|---|"]
        for row in r["rows"]:
            variant = "–" if row["cfg_scale"] == 0 else ("rate-preserving" if row["guidance_rate_preserving"]
                                                          else "plain CFG")
            lines.append(f"| {row['name']} | {row['cfg_scale']:g} | {row['guidance_schedule']} | {variant} | "
                         f"{100 * row['val_accuracy']:.1f} % | {row['nfe']:.1f} |")
        t = r["test"]
        lines += ["", f"Best on validation: **{r['best_on_validation']}**. Test: "
                  + ", ".join(f"{k} {100 * v['accuracy']:.1f} %" for k, v in t.items())
                  + (f"; Δ {r['test_delta_points']:+.2f} points (McNemar p = {r['test_mcnemar_p']:.2f})"
                     if len(t) > 1 else " (the unguided decoder itself)") + ".", ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dev dependency
        return
    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = results["tasks"][task]["rows"]
        base = next(r for r in rows if r["cfg_scale"] == 0)
        ax.axhline(100 * base["val_accuracy"], color="k", lw=1, ls=":", label="unguided")
        keys = sorted({(r["guidance_schedule"], r["guidance_rate_preserving"]) for r in rows if r["cfg_scale"] > 0})
        for sched, rp in keys:
            pts = sorted((r["cfg_scale"], 100 * r["val_accuracy"]) for r in rows
                         if r["cfg_scale"] > 0 and r["guidance_schedule"] == sched
                         and r["guidance_rate_preserving"] == rp)
            ax.plot(*zip(*pts, strict=True), marker="o", ls="-" if rp else "--",
                    label=f"{sched}, {'rate-preserving' if rp else 'plain'}")
        ax.set_title(f"{task} (validation)")
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("greedy accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
