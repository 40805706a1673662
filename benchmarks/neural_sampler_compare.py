"""MDNS vs PDNS neural samplers on the periodic Ising model (or the ``q``-state Potts model), above and below
the critical β: the exact-statistics errors, the effective sample size and mode coverage — below β_c the
target has two (Potts: ``q``) well-separated magnetisation modes, the case where PDNS's tempered (proximal)
weights should keep every mode and MDNS may lose some.

For every lattice ``L`` (``--lattice``), inverse temperature β (``--betas``; ``--critical`` adds β_c), method
(``--methods``) and seed (``--seeds``) one sampler is trained by ``recipes/mdns_ising.py`` with its defaults
(300 rounds × 256 samples, a 2-layer width-32 transformer, 8,192 evaluation samples; ``--steps``,
``--eval_samples`` and any other recipe flag, e.g. ``--batch 128``, pass through). Its trained samples are scored
against a reference computed **once per (L, β) by this script** and handed to every run
(``--reference_file``): exact enumeration when the lattice has at most 2^20 states (Ising ``L ≤ 4``, Potts
e.g. 3 × 3 with ``q ≤ 4``), otherwise a seeded Wolff chain of ``--mc_samples`` measurements with batch-means
standard errors (``--reference wolff`` forces it).

    python benchmarks/neural_sampler_compare.py                      # 4x4 Ising, β 0.3 / 0.6, MDNS + PDNS, seeds 0,1,2
    python benchmarks/neural_sampler_compare.py --jobs 2             # two runs at a time (2 idle cores, 1 thread each)
    python benchmarks/neural_sampler_compare.py --critical           # + β_c = 0.4407
    python benchmarks/neural_sampler_compare.py --lattice 4,8        # + 8x8 against a Wolff reference
    python benchmarks/neural_sampler_compare.py --q 3 --lattice 3    # 3-state Potts, exact 3^9 reference
    python benchmarks/neural_sampler_compare.py --steps 20 --seeds 0 --eval_samples 1024 --out /tmp/nsc  # smoke

Default β: 0.3 and 0.6 for Ising (β_c ≈ 0.4407); for Potts the same ratios to β_c(q) = ln(1 + √q), i.e.
≈ 0.68 β_c and 1.36 β_c.

Each run writes ``<work>/<name>/report.json`` (the recipe's report) and ``run.log``; a run whose report exists
with exactly the same recipe arguments is reused, not retrained (``--rerun`` retrains). ``--jobs N`` runs N
recipes at a time as subprocesses (``OMP_NUM_THREADS`` = ``--threads``); ``--jobs 1`` runs them in this process.

Writes ``<out>.md`` (the references; mean ± sd over seeds per (L, β, method) of |energy error| / site,
|m| error, nearest-neighbour correlation error, KL and TV of the magnetisation distribution, ESS, mode
coverage, |log Z error| and training seconds; then one row per run), ``<out>.json`` (settings, references
and every run's report, its per-round history thinned to every 25th round) and ``<out>.png`` (matplotlib;
skipped with a note when it is not installed): mode coverage, energy error, |m| error, TV of the
magnetisation distribution, ESS and log Z error per β, MDNS vs PDNS, one point per seed. Prints the
markdown at the end.

Potts (``--q ≥ 3``): "|m|" is the order parameter ``(q·n_max/N − 1)/(q − 1)``, the correlation is the
normalised same-state correlation, the distribution compared is that of the majority count ``n_max``, and mode
coverage is ``q ×`` the share of the least-frequent majority colour (exact 1); definitions in
``dlm_trl/neural_samplers/ising.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "mdns_ising.py"
NAMES = {"mdns": "MDNS", "pdns": "PDNS"}
DASH = "–"
HISTORY_EVERY = 25
# recipe flags this script sets itself (per run), with the benchmark flag to use instead
OWN_FLAGS = {
    "--beta": "--betas",
    "--seed": "--seeds",
    "--method": "--methods",
    "--output_dir": "--work",
    "--reference_file": "--reference / --mc_samples",
}


def load_recipe():
    spec = importlib.util.spec_from_file_location("mdns_ising_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def critical_beta(q: int) -> float:
    """β_c of the Ising model (``q = 2``, spins ±1) or of the ``q``-state Potts model (``U = −Σ δ``)."""
    from dlm_trl.neural_samplers.ising import BETA_C, potts_beta_c

    return BETA_C if q == 2 else potts_beta_c(q)


def default_betas(q: int) -> list[float]:
    """0.3 and 0.6 for Ising; the same ratios to β_c (≈ 0.68 and 1.36) for Potts."""
    if q == 2:
        return [0.3, 0.6]
    return [round(b / critical_beta(2) * critical_beta(q), 3) for b in (0.3, 0.6)]


def phase(beta: float, q: int) -> str:
    bc = critical_beta(q)
    if abs(beta - bc) < 1e-3:
        return "critical"
    return "disordered (β < β_c)" if beta < bc else "ordered (β > β_c)"


# ---------------------------------------------------------------------------------------------- references


def reference(L: int, q: int, beta: float, args, work: Path) -> tuple[Path, dict]:
    """Compute (or reuse) the reference statistics of (L, q, β) once; returns its JSON file and contents."""
    from dlm_trl.neural_samplers.ising import MAX_ENUMERATED, reference_statistics

    exact = args.reference == "exact" or (args.reference == "auto" and q ** (L * L) <= MAX_ENUMERATED)
    tag = "exact" if exact else f"wolff{args.mc_samples}_s{args.ref_seed}"
    path = work / f"reference_L{L}_q{q}_b{beta:g}_{tag}.json"
    if path.exists() and not args.rerun:
        return path, json.loads(path.read_text())
    t0 = time.time()
    try:
        st = reference_statistics(
            L, beta, q=q, method="exact" if exact else "wolff", seed=args.ref_seed, n_measure=args.mc_samples
        )
    except ValueError as e:
        raise SystemExit(f"[neural_sampler_compare] reference for L={L}, q={q}, beta={beta:g}: {e}") from e
    seconds = time.time() - t0
    kind = "exact (enumeration)" if exact else f"Wolff MC ({args.mc_samples} measurements, seed {args.ref_seed})"
    data = {**st.as_dict(), "beta": beta, "reference_kind": kind, "reference_seconds": round(seconds, 2)}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"[neural_sampler_compare] reference L={L} q={q} beta={beta:g}: {kind}, {seconds:.1f}s", flush=True)
    return path, data


# ---------------------------------------------------------------------------------------------- runs


def run_name(L: int, q: int, beta: float, method: str, seed: int) -> str:
    return f"L{L}_q{q}_b{beta:g}_{method}_s{seed}"


def recipe_argv(L, q, beta, method, seed, ref_path: Path, out: Path, args, extra: list[str]) -> list[str]:
    argv = ["--lattice", str(L), "--q", str(q), "--beta", repr(beta), "--method", method, "--seed", str(seed),
            "--threads", str(args.threads), "--mc_samples", str(args.mc_samples),
            "--reference_file", str(ref_path), "--output_dir", str(out)]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.eval_samples is not None:
        argv += ["--eval_samples", str(args.eval_samples)]
    return argv + extra


def metrics(report: dict, q: int) -> dict:
    """The compared numbers of one run (the trained sampler's evaluation)."""
    t = report["trained"]
    if q == 2:
        mode, mode_tv = t["mode_coverage"], abs(t["mode_coverage"] - 0.5)  # TV of (p, 1-p) from (1/2, 1/2)
    else:
        mode, mode_tv = t["mode_min_share"], t["mode_tv"]
    return {
        "err_energy": t.get("err_energy"),
        "err_abs_mag": t.get("err_abs_mag"),
        "err_nn_corr": t.get("err_nn_corr"),
        "err_energy_reweighted": t.get("err_energy_reweighted"),
        "kl_mag": t.get("kl_mag"),
        "tv_mag": t.get("tv_mag"),
        "ess": t["ess"],
        "mode_coverage": mode,
        "mode_tv": mode_tv,
        "err_log_z": t.get("err_log_z"),
        "train_seconds": report["seconds"]["train"],
    }


def thin_history(report: dict) -> dict:
    hist = report.get("history", [])
    keep = [h for i, h in enumerate(hist) if i % HISTORY_EVERY == 0 or i == len(hist) - 1]
    return {**report, "history": keep}


# ---------------------------------------------------------------------------------------------- tables


def _finite(xs: list) -> list[float]:
    return [x for x in xs if x is not None]


def mean_sd(xs: list, digits: int = 3) -> str:
    xs = _finite(xs)
    if not xs:
        return DASH
    if not all(math.isfinite(x) for x in xs):
        return "inf"
    m = f"{statistics.mean(xs):.{digits}f}"
    return f"{m} ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else m


def one(x, digits: int = 3) -> str:
    if x is None:
        return DASH
    return f"{x:.{digits}f}" if math.isfinite(x) else "inf"


COLUMNS = (  # (metric key, header, digits)
    ("err_energy", "\\|ΔE\\| / site", 3),
    ("err_abs_mag", "\\|Δm\\|", 3),
    ("err_nn_corr", "\\|Δ nn corr\\|", 3),
    ("kl_mag", "KL(M)", 4),
    ("tv_mag", "TV(M)", 3),
    ("ess", "ESS", 2),
    ("mode_coverage", "mode coverage", 2),
    ("mode_tv", "mode TV", 2),
    ("err_log_z", "\\|Δ log Z\\|", 3),
    ("train_seconds", "train s", 0),
)


def markdown(res: dict) -> str:
    s = res["settings"]
    q = s["q"]
    model = "Ising" if q == 2 else f"{q}-state Potts"
    a = res["runs"][0]["report"]["args"] if res["runs"] else {}
    n_reused = sum(1 for r in res["runs"] if r.get("reused"))
    reused = (f"; {n_reused} of {len(res['runs'])} runs reused from earlier calls, their training time is the "
              "\"train s\" column" if n_reused else "")
    lines = [
        f"# MDNS vs PDNS on the periodic {model} model, above and below β_c",
        "",
        f"`{res['command']}` ({res['wall_seconds'] / 60:.1f} min wall-clock{reused}). Each run: `recipes/mdns_ising.py` "
        f"with {a.get('steps')} rounds × {a.get('batch')} samples, {a.get('inner_steps')} gradient steps per round, "
        f"replay buffer {a.get('buffer_rounds')} rounds, lr {a.get('lr')}, width {a.get('hidden')} × "
        f"{a.get('layers')} layers; PDNS target ESS {a.get('target_ess')}; statistics of {a.get('eval_samples')} "
        f"samples of the trained sampler. Seeds {s['seeds']}, {s['threads']} thread(s) per run, {s['jobs']} run(s) "
        f"at a time. β_c = {critical_beta(q):.4f}.",
        "",
        "## References",
        "",
        "| L | β | β / β_c | reference | energy / site | \\|m\\| | nn corr | log Z |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["references"]:
        st = r["stats"]

        def pm(key, st=st):
            se = st.get(key + "_se", 0.0)
            return f"{st[key]:.4f}" + (f" ± {se:.4f}" if se else "")

        lz = st.get("log_z")
        lines.append(
            f"| {r['L']} | {r['beta']:g} | {r['beta'] / critical_beta(q):.2f} | {st['reference_kind']} | "
            f"{pm('energy_per_site')} | {pm('abs_magnetisation_per_site')} | {pm('nn_correlation')} | "
            f"{DASH if lz is None else f'{lz:.4f}'} |"
        )
    header = " | ".join(h for _, h, _ in COLUMNS)
    sep = "|---" * (len(COLUMNS) + 5) + "|"
    lines += ["", "## Mean ± sd over seeds", "", f"| L | β | phase | method | seeds | {header} |", sep]
    groups: dict[tuple, list[dict]] = {}
    for r in res["runs"]:
        groups.setdefault((r["L"], r["beta"], r["method"]), []).append(r)
    for (L, beta, method), rs in groups.items():
        cells = " | ".join(mean_sd([r["metrics"][k] for r in rs], d) for k, _, d in COLUMNS)
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {L} | {beta:g} | {phase(beta, q)} | {NAMES[method]} | {seeds} | {cells} |")
    lines += ["", "## Per seed", "", f"| L | β | method | seed | {header} |", "|---" * (len(COLUMNS) + 4) + "|"]
    for r in res["runs"]:
        cells = " | ".join(one(r["metrics"][k], d) for k, _, d in COLUMNS)
        lines.append(f"| {r['L']} | {r['beta']:g} | {NAMES[r['method']]} | {r['seed']} | {cells} |")
    if q == 2:
        defs = (
            "m = |M|/N, nn corr = ⟨s_i s_j⟩ over nearest-neighbour bonds; KL(M) = KL(model ‖ reference) and TV(M) "
            "of the distribution of the magnetisation M; mode coverage = P(M > 0 | M ≠ 0) (exact 0.5); mode TV = "
            "|P(M > 0 | M ≠ 0) − 0.5| (exact 0), whose mean over seeds, unlike mode coverage's, cannot hide seeds "
            "that collapsed onto opposite modes."
        )
    else:
        defs = (
            "m = (q·n_max/N − 1)/(q − 1) (Potts order parameter, n_max = size of the largest colour class), nn corr "
            "= (q·δ̄ − 1)/(q − 1) with δ̄ the fraction of agreeing bonds; KL(M) = KL(model ‖ reference) and TV(M) of "
            "the distribution of n_max; mode coverage = q × the share of the least-frequent majority colour (exact "
            "1, 0 when a colour's mode is never visited), mode TV = TV of the majority-colour histogram from uniform "
            "(exact 0)."
        )
    lines += [
        "",
        f"Errors are absolute differences from the reference, for the trained sampler's raw samples (no "
        f"importance reweighting). {defs} ESS: normalised effective sample size of the path-measure importance "
        "weights (1 = exact sampler). |Δ log Z|: importance-sampling log Z against the exact one (– with a Monte "
        "Carlo reference, whose log Z is unknown). KL(M) is `inf` when the model visits a magnetisation value the "
        "reference never does (possible with a Monte Carlo reference). Raw runs: the .json next to this file.",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> bool:
    """The comparison figure; False (and a note) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print(f"[neural_sampler_compare] matplotlib is not installed: {path} not written", flush=True)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = res["settings"]["q"]
    keys = sorted({(r["L"], r["beta"]) for r in res["runs"]})
    several_L = len({L for L, _ in keys}) > 1
    panels = (  # (metric, title, exact value, log scale, bounded in [0, 1])
        ("mode_coverage", "mode coverage" + (" P(M>0)" if q == 2 else " q·min share"), 0.5 if q == 2 else 1.0, False,
         True),
        ("err_energy", "|energy error| / site", None, True, False),
        ("err_abs_mag", "|m| error", None, True, False),
        ("tv_mag", "TV of the magnetisation distribution", None, True, False),
        ("ess", "ESS (normalised)", 1.0, False, True),
        ("err_log_z", "|log Z error|", None, True, False),
    )
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, title, exact, logy, unit) in zip(axes.flat, panels, strict=True):
        plotted = []
        for mi, method in enumerate(res["settings"]["methods"]):
            off = (mi - (len(res["settings"]["methods"]) - 1) / 2) * 0.25
            for xi, k in enumerate(keys):
                ys = [r["metrics"][key] for r in res["runs"] if (r["L"], r["beta"]) == k and r["method"] == method]
                ys = [y for y in ys if y is not None and math.isfinite(y)]
                if not ys:
                    continue
                xs = [xi + off + 0.04 * (j - (len(ys) - 1) / 2) for j in range(len(ys))]
                ax.scatter(xs, ys, color=f"C{mi}", s=22, alpha=0.8, label=NAMES[method] if xi == 0 else None)
                ax.hlines(statistics.mean(ys), xi + off - 0.1, xi + off + 0.1, color=f"C{mi}", lw=2)
                plotted += ys
        if not plotted:  # e.g. log Z against a Monte Carlo reference: say why the panel is empty
            ax.text(0.5, 0.5, "not available\n(no exact value to compare with)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="0.4")
        if exact is not None:
            ax.axhline(exact, color="k", ls=":", lw=1, label="exact")
        if logy and plotted and min(plotted) > 0:
            ax.set_yscale("log")
        if unit:
            ax.set_ylim(-0.03, 1.05)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(
            [f"β={b:g}\n{b / critical_beta(q):.2f} β_c" + (f"\nL={L}" if several_L else "") for L, b in keys],
            fontsize=8,
        )
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    model = "Ising" if q == 2 else f"{q}-state Potts"
    fig.suptitle(f"MDNS vs PDNS, {model}, seeds {res['settings']['seeds']} (points: seeds; bars: means)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- main


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    ap.add_argument("--lattice", type=_ints, default=[4], help="comma-separated L values (L x L lattices)")
    ap.add_argument("--q", type=int, default=2, help="2 = Ising, >= 3 = q-state Potts")
    ap.add_argument("--betas", type=_floats, default=None, help="comma-separated β (default: module docstring)")
    ap.add_argument("--critical", action="store_true", help="add β_c to the β values")
    ap.add_argument("--methods", default="mdns,pdns", help="comma-separated, from mdns,pdns")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="training rounds per run (default: the recipe's, 300)")
    ap.add_argument("--eval_samples", type=int, default=None, help="evaluation samples (default: the recipe's, 8192)")
    ap.add_argument("--reference", choices=("auto", "exact", "wolff"), default="auto",
                    help="exact enumeration (at most 2^20 states), Wolff MC, or auto (exact when small enough)")
    ap.add_argument("--mc_samples", type=int, default=50_000, help="Wolff measurements per reference")
    ap.add_argument("--ref_seed", type=int, default=0, help="seed of the Wolff chains")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (>1: subprocesses)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", default=str(ROOT / "docs" / "neural_sampler_compare"), help="output path without suffix")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "neural_sampler_compare"), help="per-run folders")
    ap.add_argument("--rerun", action="store_true", help="retrain runs (and recompute references) that exist")
    args, extra = ap.parse_known_args(argv)
    for flag in extra:
        name = flag.split("=")[0]
        if name in OWN_FLAGS:
            ap.error(f"{name} is set per run by this script; use {OWN_FLAGS[name]}")
    if args.q < 2:
        ap.error(f"--q must be >= 2 (2 = Ising, 3 or more = q-state Potts), got {args.q}")
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in NAMES for m in methods):
        ap.error(f"--methods: choose from {','.join(NAMES)}, got {args.methods!r}")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    betas = list(args.betas) if args.betas else default_betas(args.q)
    if args.critical and not any(abs(b - critical_beta(args.q)) < 1e-3 for b in betas):
        betas.append(critical_beta(args.q))
    betas.sort()
    args.methods = methods
    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe()

    refs, plan = [], []
    for L in args.lattice:
        for beta in betas:
            ref_path, ref = reference(L, args.q, beta, args, work)
            refs.append({"L": L, "q": args.q, "beta": beta, "file": str(ref_path), "stats": ref})
            for method in methods:
                for seed in args.seeds:
                    out = work / run_name(L, args.q, beta, method, seed)
                    rargv = recipe_argv(L, args.q, beta, method, seed, ref_path, out, args, extra)
                    expected = vars(recipe.parse_args(rargv))  # validates every run before any starts
                    plan.append({"L": L, "q": args.q, "beta": beta, "method": method, "seed": seed,
                                 "dir": str(out), "argv": rargv, "expected_args": expected})

    def execute(p: dict) -> dict:
        out = Path(p["dir"])
        rep = out / "report.json"
        label = f"L={p['L']} beta={p['beta']:g} {p['method']} seed {p['seed']}"
        if rep.exists() and not args.rerun:
            saved = json.loads(rep.read_text())
            if saved.get("args") == p["expected_args"]:
                print(f"[neural_sampler_compare] {label}: reused {rep}", flush=True)
                return {**p, "report": saved, "wall_seconds": None, "reused": True}
        out.mkdir(parents=True, exist_ok=True)
        log = out / "run.log"
        t0 = time.time()
        if args.jobs == 1:
            with open(log, "w") as fh, contextlib.redirect_stdout(fh):
                recipe.main(p["argv"])
        else:
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
            with open(log, "w") as fh:
                proc = subprocess.run([sys.executable, str(RECIPE), *p["argv"]], cwd=ROOT, env=env,
                                      stdout=fh, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise SystemExit(f"[neural_sampler_compare] {label} failed (exit {proc.returncode}); see {log}")
        report = json.loads(rep.read_text())
        m = metrics(report, p["q"])
        print(f"[neural_sampler_compare] {label}: |dE| {one(m['err_energy'])}, mode {one(m['mode_coverage'], 2)}, "
              f"ESS {one(m['ess'], 2)}, |dlogZ| {one(m['err_log_z'])} ({time.time() - t0:.0f}s)", flush=True)
        return {**p, "report": report, "wall_seconds": round(time.time() - t0, 1), "reused": False}

    if args.jobs == 1:
        done = [execute(p) for p in plan]
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(execute, plan))

    runs = []
    for d in done:
        runs.append({k: d[k] for k in ("L", "q", "beta", "method", "seed", "dir", "wall_seconds", "reused")}
                    | {"metrics": metrics(d["report"], d["q"]), "report": thin_history(d["report"])})
    shown = sys.argv[1:] if argv is None else argv
    cmd = "python benchmarks/neural_sampler_compare.py" + (" " + shlex.join(shown) if shown else "")
    res = {
        "command": cmd,
        "settings": {"lattice": args.lattice, "q": args.q, "betas": betas, "methods": methods, "seeds": args.seeds,
                     "steps": args.steps, "eval_samples": args.eval_samples, "reference": args.reference,
                     "mc_samples": args.mc_samples, "ref_seed": args.ref_seed, "jobs": args.jobs,
                     "threads": args.threads, "extra_recipe_args": extra, "beta_c": critical_beta(args.q)},
        "wall_seconds": round(time.time() - t_start, 1),
        "references": refs,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    plot(res, out.with_suffix(".png"))
    print(md)
    return res


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
