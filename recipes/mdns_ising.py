"""MDNS (arXiv 2508.10684) / PDNS (arXiv 2510.03824): train a masked diffusion model from scratch, without
data, to sample the 2-D periodic Ising model ``π(s) ∝ exp(−β U(s))`` (or, with ``--q 3`` and up, the
``q``-state Potts model), and compare its samples with the exact statistics (enumeration, when the lattice
has at most 2^20 states: Ising ``L ≤ 4``, Potts e.g. 3 × 3 with ``q ≤ 4``) or a Wolff Monte Carlo reference.

With no arguments it trains a 4 × 4 sampler at β = 0.3 (below β_c ≈ 0.4407) offline on CPU, then prints a
table of the untrained and trained samplers' statistics against the exact values and writes
``report.json`` to ``--output_dir``::

    python recipes/mdns_ising.py
    python recipes/mdns_ising.py --method pdns --target_ess 0.5
    python recipes/mdns_ising.py --lattice 8 --beta 0.3 --steps 400
    python recipes/mdns_ising.py --q 3 --lattice 3 --beta 1.2      # 3-state Potts, exact 3^9 reference

For Potts the table's "|m|" row is the Potts order parameter ``(q·n_max/N − 1)/(q − 1)``, the correlation row
the normalised same-state correlation, the distribution compared is that of the majority count ``n_max``,
and mode coverage is read from the majority-colour histogram (uniform for the target; definitions in
:mod:`dlm_trl.neural_samplers.ising`). The math and its provenance are in
:mod:`dlm_trl.neural_samplers.mdns`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from dlm_trl.neural_samplers.ising import (
    BETA_C,
    MAX_ENUMERATED,
    REFERENCE_METHODS,
    SpinStats,
    potts_beta_c,
    reference_statistics,
)
from dlm_trl.neural_samplers.mdns import METHODS, SpinTarget, TrainConfig, evaluate, make_model, train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--lattice", type=int, default=4, help="L (L x L periodic lattice)")
    p.add_argument(
        "--beta",
        type=float,
        default=0.3,
        help=f"inverse temperature (critical: Ising {BETA_C:.4f}; q-state Potts ln(1 + sqrt(q)), "
        f"{potts_beta_c(3):.4f} for q = 3)",
    )
    p.add_argument("--q", type=int, default=2, help="states per site: 2 = Ising (spins -1/+1), >= 3 = Potts")
    p.add_argument("--method", choices=METHODS, default="mdns")
    p.add_argument("--steps", type=int, default=300, help="sampling rounds")
    p.add_argument("--batch", type=int, default=256, help="samples per round")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr_final_frac", type=float, default=0.1, help="cosine decay to lr * this")
    p.add_argument("--inner_steps", type=int, default=2, help="gradient steps per round")
    p.add_argument("--buffer_rounds", type=int, default=4, help="rounds kept in the replay buffer")
    p.add_argument("--replicates", type=int, default=2, help="mask replicates per sample in the WDCE")
    p.add_argument(
        "--target_ess", type=float, default=0.5, help="PDNS: adaptive exponent to this normalised ESS"
    )
    p.add_argument(
        "--pdns_c", type=float, default=1.0, help="PDNS: fixed exponent (with --target_ess 0) or its cap"
    )
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--eval_samples", type=int, default=8192)
    p.add_argument("--mc_samples", type=int, default=50_000, help="Wolff measurements (when not exact)")
    p.add_argument(
        "--reference",
        choices=REFERENCE_METHODS,
        default="auto",
        help=f"exact enumeration (q^(L*L) <= {MAX_ENUMERATED}), Wolff MC, or auto (exact when small enough)",
    )
    p.add_argument(
        "--reference_file",
        default=None,
        help="use these reference statistics (a SpinStats.as_dict() JSON, e.g. one computed once per beta by "
        "benchmarks/neural_sampler_compare.py) instead of computing them",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's choice). 1 by default: the model is tiny, so intra-op threads gain "
        "little, and with 2 threads on 2 cores shared with another process a run was ~20x slower",
    )
    p.add_argument("--time_limit", type=float, default=None, help="safety cap on training seconds")
    p.add_argument("--output_dir", default="outputs/mdns_ising")
    args = p.parse_args(argv)
    if args.q < 2:
        p.error(f"--q must be >= 2 (2 = Ising, 3 or more = q-state Potts), got {args.q}")
    if args.lattice < 2:
        p.error(f"--lattice must be >= 2, got {args.lattice}")
    n_states = args.q ** (args.lattice**2)
    if args.reference == "exact" and n_states > MAX_ENUMERATED and args.reference_file is None:
        p.error(
            f"--reference exact: the {args.lattice}x{args.lattice} lattice with q={args.q} has {n_states:.3g} "
            f"states, more than the {MAX_ENUMERATED} that are enumerated; use --reference wolff (or auto), "
            "a smaller --lattice or a smaller --q"
        )
    return args


ROWS = [
    # (label, key in SpinStats.as_dict / evaluate, error key)
    ("energy / site", "energy_per_site", "err_energy"),
    ("|m| / site", "abs_magnetisation_per_site", "err_abs_mag"),
    ("nn correlation", "nn_correlation", "err_nn_corr"),
]


POTTS_LABELS = {"|m| / site": "Potts order m", "nn correlation": "same-state corr"}


def reference_kind(ref: SpinStats) -> str:
    """How the reference was obtained: exact statistics carry no sample count."""
    return "exact (enumeration)" if ref.n_samples is None else f"Wolff MC ({ref.n_samples} measurements)"


def table(ref: dict, before: dict, after: dict, q: int = 2) -> str:
    lines = [
        f"{'quantity':<22}{'reference':>12}{'untrained':>12}{'|err|':>9}{'trained':>12}{'|err|':>9}{'trained+IS':>12}{'|err|':>9}"
    ]
    for label, key, err in ROWS:
        if q != 2:
            label = POTTS_LABELS.get(label, label)
        r = ref[key]
        rse = ref.get(key + "_se", 0.0)
        rs = f"{r:.4f}" + (f"±{rse:.4f}" if rse else "")
        lines.append(
            f"{label:<22}{rs:>12}{before['model'][key]:>12.4f}{before[err]:>9.4f}{after['model'][key]:>12.4f}"
            f"{after[err]:>9.4f}{after['reweighted'][key]:>12.4f}{after[err + '_reweighted']:>9.4f}"
        )
    if q == 2:
        extra_rows = (
            ("KL(model||ref) of M", "kl_mag", 0.0),
            ("TV of M", "tv_mag", 0.0),
            ("mode coverage P(M>0)", "mode_coverage", 0.5),
            ("ESS (normalised)", "ess", 1.0),
        )
    else:
        extra_rows = (
            ("KL(model||ref) n_max", "kl_mag", 0.0),
            ("TV of n_max", "tv_mag", 0.0),
            ("majority colour TV", "mode_tv", 0.0),
            ("q x min colour share", "mode_min_share", 1.0),
            ("ESS (normalised)", "ess", 1.0),
        )
    for label, key, exact in extra_rows:
        lines.append(f"{label:<22}{exact:>12.4f}{before[key]:>12.4f}{'':>9}{after[key]:>12.4f}")
    lz = ref.get("log_z")
    lzs = f"{lz:.4f}" if lz is not None else "n/a"
    b_err = f"{before['err_log_z']:>9.4f}" if "err_log_z" in before else f"{'':>9}"
    a_err = f"{after['err_log_z']:>9.4f}" if "err_log_z" in after else f"{'':>9}"
    lines.append(
        f"{'log Z (IS estimate)':<22}{lzs:>12}{before['log_z_is']:>12.4f}{b_err}{after['log_z_is']:>12.4f}{a_err}"
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L, beta, q = args.lattice, args.beta, args.q
    target = SpinTarget(L, beta, q)
    t0 = time.time()
    if args.reference_file:
        ref = SpinStats.from_dict(json.loads(Path(args.reference_file).read_text()))
        if (ref.L, ref.q) != (L, q):
            raise SystemExit(
                f"--reference_file {args.reference_file} is for L={ref.L}, q={ref.q}, not L={L}, q={q}"
            )
        if "beta" in ref.extra and not math.isclose(ref.extra["beta"], beta):
            raise SystemExit(
                f"--reference_file {args.reference_file} is for beta={ref.extra['beta']}, not {beta}"
            )
    else:
        ref = reference_statistics(
            L, beta, q=q, method=args.reference, seed=args.seed, n_measure=args.mc_samples
        )
    t_ref = time.time() - t0
    kind = reference_kind(ref) + (f" from {args.reference_file}" if args.reference_file else "")
    if q == 2:
        print(f"{L}x{L} Ising, beta={beta} (beta_c={BETA_C:.4f}), reference: {kind} in {t_ref:.1f}s")
    else:
        print(
            f"{L}x{L} {q}-state Potts, beta={beta} (beta_c={potts_beta_c(q):.4f}), reference: {kind} in {t_ref:.1f}s"
        )
    model = make_model(
        L, q, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads, seed=args.seed
    )
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters, method={args.method}")
    before = evaluate(model, target, ref, n_samples=args.eval_samples, seed=args.seed + 10_000)
    cfg = TrainConfig(
        method=args.method,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        lr_final_frac=args.lr_final_frac,
        inner_steps=args.inner_steps,
        buffer_rounds=args.buffer_rounds,
        replicates=args.replicates,
        pdns_target_ess=(args.target_ess or None),
        pdns_c=args.pdns_c,
        seed=args.seed,
        time_limit_s=args.time_limit,
    )
    t1 = time.time()
    hist = train(model, target, cfg)
    t_train = time.time() - t1
    t2 = time.time()
    after = evaluate(model, target, ref, n_samples=args.eval_samples, seed=args.seed + 20_000)
    t_eval = time.time() - t2
    print()
    print(table(ref.as_dict(), before, after, q))
    print(
        f"\ntraining {t_train:.0f}s ({len(hist)} rounds), evaluation {t_eval:.0f}s, total {time.time() - t0:.0f}s, "
        f"threads {torch.get_num_threads()}"
    )
    report = {
        "args": vars(args),
        "reference": ref.as_dict(),
        "reference_kind": kind,
        "untrained": before,
        "trained": after,
        "history": hist,
        "seconds": {"reference": t_ref, "train": t_train, "eval": t_eval, "total": time.time() - t0},
        "threads": torch.get_num_threads(),
    }
    with open(out / "report.json", "w") as f:
        json.dump(
            report, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)
        )
    print(f"report: {out / 'report.json'}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
