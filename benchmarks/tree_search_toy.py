"""Does TR2-D2's tree search find a rare optimum faster than sampling? A toy with exact answers.

The model is :class:`dlm_trl.testing.joint.JointTableDLM` (exact conditionals of a known joint over
``V^L`` sequences; ``--scale`` sets how peaked it is, 0 = uniform); the reward is the fraction of positions
that match a target sequence, chosen as the model's ``--rank``-th least likely sequence, so the optimum
(reward 1) is known and rare. For each setting, ``--prompts`` independent searches (one tree each) run
with the stated budget; the table gives the fraction that reached the optimum and the row-forwards they
used, next to the probability that plain sampling with the same number of forwards (``NFE / steps``
complete samples, one token per step) finds it: ``1 − (1 − p)^n``.

    python benchmarks/tree_search_toy.py                      # prints the table, writes docs/tree_search_toy.md
    python benchmarks/tree_search_toy.py --scale 0,0.5,1 --iterations 20,40 --widening none,0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dlm_trl.sampling import SamplerConfig
from dlm_trl.search import SearchConfig, tree_search
from dlm_trl.testing.joint import JointTableDLM


def _floats(s: str) -> list[float | None]:
    return [None if v.strip().lower() == "none" else float(v) for v in s.split(",")]


def run(args: argparse.Namespace) -> list[dict]:
    V, L, P = args.vocab, args.length, 1
    sc = SamplerConfig(gen_length=L, block_length=L, steps=L, temperature=1.0)
    rows = []
    for scale in _floats(args.scale):
        model = JointTableDLM(V, L, P, seed=args.seed, scale=float(scale))
        lp = model.log_probs_table()
        idx = lp.argsort()[args.rank]
        target, p = model.seqs[idx], float(lp[idx].detach().exp())

        def reward_fn(_p, comps, target=target):
            return [float((c == target).float().mean()) for c in comps]

        for it in [int(v) for v in args.iterations.split(",")]:
            for w in _floats(args.widening):
                t0 = time.perf_counter()
                gens = [torch.Generator().manual_seed(1000 * args.seed + i) for i in range(args.prompts)]
                res = tree_search(
                    model, None, torch.zeros(args.prompts, P, dtype=torch.long), reward_fn, sampler_config=sc,
                    config=SearchConfig(num_children=args.children, iterations=it, widening=w,
                                        selection=args.selection, exploration=args.exploration),
                    mask_token_id=model.mask_token_id, generators=gens,
                )
                nfe = sum(r.nfe for r in res) / len(res)
                found = sum(r.best_reward() == 1.0 for r in res) / len(res)
                n_plain = int(nfe // L)
                rows.append({
                    "scale": scale, "p_optimum": p, "iterations": it, "widening": w, "children": args.children,
                    "nfe_per_search": nfe, "found": found, "plain_samples": n_plain,
                    "plain_found_prob": 1 - (1 - p) ** n_plain, "seconds": time.perf_counter() - t0,
                })
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"# Tree search vs sampling on a toy with a known optimum (V = {args.vocab}, L = {args.length}, "
        f"{args.prompts} searches per row)",
        "",
        "| model scale | p(optimum) | iterations × children | widening | row-forwards per search (mean) | "
        "searches that found it | plain samples, same forwards | P(plain sampling finds it) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']:g} | {r['p_optimum']:.2e} | {r['iterations']} × {r['children']} | "
            f"{'none' if r['widening'] is None else r['widening']} | {r['nfe_per_search']:.0f} | "
            f"{100 * r['found']:.0f} % | {r['plain_samples']} | {100 * r['plain_found_prob']:.0f} % |"
        )
    lines += [
        "",
        f"Target: the model's rank-{args.rank} least likely sequence; reward = fraction of matching positions; "
        f"selection {args.selection}, exploration {args.exploration}, one token per step at temperature 1, model "
        f"seed {args.seed}. Command: `python benchmarks/tree_search_toy.py {' '.join(args.argv)}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=3)
    p.add_argument("--length", type=int, default=4)
    p.add_argument("--scale", default="0,0.5,1", help="peakedness of the toy joint (comma-separated)")
    p.add_argument("--rank", type=int, default=0, help="target = the rank-th least likely sequence")
    p.add_argument("--iterations", default="20,40")
    p.add_argument("--widening", default="none,0.5", help="progressive widening exponents ('none' = off)")
    p.add_argument("--children", type=int, default=4)
    p.add_argument("--selection", default="uct")
    p.add_argument("--exploration", type=float, default=1.0)
    p.add_argument("--prompts", type=int, default=20, help="independent searches per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/tree_search_toy", help="path stem of the .md / .json")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    torch.set_num_threads(1)
    rows = run(args)
    text = table(rows, args)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
