"""Peak memory of one ``loss.backward()`` against the number of Monte Carlo draws, with and
without the estimators' ``constant_memory`` option.

For each estimator (``double_mc_elbo`` with ``num_samples = K``, ``sdmc_elbo`` with N = 1 or 4
Gauss nodes × ``masks_per_node``) and K ∈ {1, 4, 16} draws per sequence, one fresh Python
process loads the embedded tiny model, builds a batch of ``--rows`` sequences (prompt
``--prompt-length``, completion ``--length`` random tokens), runs one warm-up forward+backward
at K = 1 (so allocator pools, autograd and kernels are set up), records the peak resident set
size (``ru_maxrss``; glibc's mmap threshold is fixed at 64 KiB so freed blocks leave the RSS),
then estimates the ELBO with K draws, applies GDPO's nonlinear loss
(``exp(Ê/L)``, the reason the graph of every draw is normally kept) and calls ``backward()``. The
reported number is the growth of the peak RSS over that baseline — what the estimate and its
backward needed on top of a one-draw step. A fresh process per configuration keeps peaks from
leaking across configurations (``ru_maxrss`` only increases).

With ``constant_memory`` each chunk of B rows runs under activation checkpointing: the forward
keeps only the ``[B·K, L]`` gathered log-probabilities, backward recomputes one chunk at a
time, so the growth should stay flat in K (plus the small ``[B·K, P+L]`` inputs), at the price
of one extra forward per draw (reported as the time ratio).

Writes ``docs/mc_memory.{md,json,png}`` and prints the markdown.

    python benchmarks/mc_memory.py --threads 1            # ~4-5 min on 2 busy cores
    python benchmarks/mc_memory.py --quick                # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRAWS = (1, 4, 16)
ESTIMATORS = ("double_mc_elbo", "sdmc_elbo")


def settings(name: str, draws: int) -> dict:
    """Constructor kwargs of ``name`` with ``draws`` forwards per sequence."""
    if name == "double_mc_elbo":
        return {"num_samples": draws}
    if name == "sdmc_elbo":
        nodes = 1 if draws < 4 else 4
        return {"num_nodes": nodes, "masks_per_node": draws // nodes}
    raise ValueError(f"unknown estimator {name!r}; one of {ESTIMATORS}")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(name: str, draws: int, constant_memory: bool, *, rows: int, prompt_length: int, length: int,
            threads: int = 1, seed: int = 0) -> dict:
    """One configuration, in this process: peak-RSS growth (MiB) of estimate + loss + backward."""
    import torch

    from dlm_trl.estimators import row_generators
    from dlm_trl.models import DLM, load_model
    from dlm_trl.registry import load_estimator

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = DLM.wrap(load_model("tiny").float().train())
    V = model.module.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, V, (rows, prompt_length), generator=g)
    comp = torch.randint(3, V, (rows, length), generator=g)
    cmask = torch.ones(rows, length, dtype=torch.long)

    def step(est) -> float:
        model.module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = est(model, prompt, comp, cmask, generator=row_generators(range(rows)))  # [B, L]
        loss = torch.exp((out * cmask).sum(1) / length).mean()  # a nonlinear function of each estimate
        loss.backward()
        return time.perf_counter() - t0

    step(load_estimator(name, **settings(name, 1)))  # warm-up at one draw
    base = _peak_mib()
    est = load_estimator(name, **settings(name, draws), constant_memory=constant_memory)
    seconds = step(est)
    return {
        "estimator": name,
        "draws": draws,
        "constant_memory": constant_memory,
        "settings": settings(name, draws),
        "peak_growth_mib": round(_peak_mib() - base, 1),
        "baseline_mib": round(base, 1),
        "seconds": round(seconds, 3),
    }


def measure_in_subprocess(name: str, draws: int, constant_memory: bool, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", name, str(draws), str(int(constant_memory)),
           "--rows", str(args.rows), "--prompt-length", str(args.prompt_length), "--length", str(args.length),
           "--threads", str(args.threads)]
    # glibc keeps freed large blocks in its heap once its dynamic mmap threshold has grown, so RSS would
    # track fragmentation rather than live tensors; a fixed threshold serves every block ≥ 64 KiB by mmap
    # and returns it to the OS on free.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    rows = []
    for name in ESTIMATORS:
        for draws in args.draws:
            for cm in (False, True):
                r = measure_in_subprocess(name, draws, cm, args)
                rows.append(r)
                if not args.quiet:
                    print(f"{name:15s} K={draws:3d} constant_memory={cm!s:5s} +{r['peak_growth_mib']:8.1f} MiB "
                          f"{r['seconds']:.2f} s", file=sys.stderr)
    return {
        "model": "tiny (embedded)",
        "rows": args.rows,
        "prompt_length": args.prompt_length,
        "length": args.length,
        "threads": args.threads,
        "platform": platform.platform(),
        "torch_threads": args.threads,
        "results": rows,
    }


def markdown(res: dict) -> str:
    lines = [
        "# Peak memory of one backward vs Monte Carlo draws (`constant_memory`)",
        "",
        f"Embedded tiny model, {res['rows']} rows, prompt {res['prompt_length']} + completion {res['length']} tokens, "
        f"{res['threads']} thread(s), loss = mean exp(Ê/L). Peak-RSS growth over a one-draw warm-up step, one fresh "
        "process per configuration (`benchmarks/mc_memory.py`).",
        "",
        "| estimator | draws K | settings | plain: peak growth (MiB) | constant_memory: peak growth (MiB) | time ratio cm/plain |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["estimator"], r["draws"], r["constant_memory"]): r for r in res["results"]}
    for name in ESTIMATORS:
        for draws in sorted({r["draws"] for r in res["results"]}):
            p, c = by.get((name, draws, False)), by.get((name, draws, True))
            if p is None or c is None:
                continue
            kw = ", ".join(f"{k}={v}" for k, v in p["settings"].items())
            ratio = c["seconds"] / max(p["seconds"], 1e-9)
            lines.append(f"| {name} | {draws} | {kw} | {p['peak_growth_mib']:.1f} | {c['peak_growth_mib']:.1f} | "
                         f"{ratio:.2f} |")
    lines += [
        "",
        "Plain: the autograd graph of every draw (activations and `[B·K, T, V]` logits) lives until backward, so "
        "memory grows linearly in K. `constant_memory=True`: each chunk of B rows is checkpointed and only its "
        "`[B, L]` float32 log-probabilities are kept; backward recomputes one chunk at a time (one extra forward "
        "per draw). Estimates and gradients are identical (`tests/test_constant_memory.py`). Times are one step each "
        "on a shared CPU (noisy); without memory pressure the expected cost is about +1/3 (one extra forward "
        "per forward+backward).",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, marker in zip(ESTIMATORS, "os", strict=True):
        for cm, style in ((False, "-"), (True, "--")):
            pts = sorted((r["draws"], r["peak_growth_mib"]) for r in res["results"]
                         if r["estimator"] == name and r["constant_memory"] == cm)
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, marker=marker, linestyle=style, label=f"{name}{' constant_memory' if cm else ''}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Monte Carlo draws per sequence K")
    ax.set_ylabel("peak RSS growth of one backward (MiB)")
    ax.set_title(f"tiny model, {res['rows']} rows, L = {res['length']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8, help="sequences in the batch (B)")
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--length", type=int, default=96, help="completion length L")
    ap.add_argument("--draws", type=int, nargs="+", default=list(DRAWS), help="draws per sequence to measure")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default=str(ROOT / "docs" / "mc_memory"), help="output path without suffix")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rows, L = 16, K in {1, 4}")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--measure", nargs=3, metavar=("ESTIMATOR", "DRAWS", "CONSTANT_MEMORY"),
                    help=argparse.SUPPRESS)  # internal: one configuration, JSON on stdout
    args = ap.parse_args(argv)
    if args.measure:
        name, draws, cm = args.measure
        r = measure(name, int(draws), bool(int(cm)), rows=args.rows, prompt_length=args.prompt_length,
                    length=args.length, threads=args.threads)
        print(json.dumps(r))
        return None
    if args.quick:
        args.rows, args.prompt_length, args.length, args.draws = 2, 8, 16, [1, 4]
    res = run(args)
    md = markdown(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    plot(res, out.with_suffix(".png"))
    print(md)
    return res


if __name__ == "__main__":
    main()
