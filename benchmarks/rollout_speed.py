"""Rollout decoders side by side on the embedded model: speed, forwards per sample, accuracy.

Contenders (``--contenders``, names below) are decoders of :mod:`dlm_trl.sampling` on Countdown
(gen_length 48, block 16, 24 steps for the count-based rule):

* ``today`` — the sampler as it was before the fast-rollouts work: every row ``steps`` forwards, the
  full ``[B, T, V]`` logits of every position, and glibc handing freed memory back to the kernel
  (run in a child process with ``DLM_TRL_KEEP_FREED_MEMORY=0``); its tokens are those of ``plain``;
* ``plain`` — the same decoder with block-only logits and :func:`~dlm_trl.sampling.keep_freed_memory`;
* ``thrX`` — confidence threshold X (Fast-dLLM), ``factorF`` — Fast-dLLM's factor rule;
* ``dual`` / ``prefix`` — key/value caches (rebuilt at each block start; ``+rN``: every N steps too);
  combinations are written with ``+``, e.g. ``thr0.9+dual``.

Measured, in one run, interleaving the contenders so that machine load hits all alike:

* **speed** — seconds of one rollout at temperature 1 for batches of ``--batches`` rows of Countdown
  *training* prompts (256 = 32 prompts × 8, the RL setting), median of ``--repeats``; samples/s; mean
  forwards per sample (NFE); minor page faults per rollout (``getrusage``);
* **greedy accuracy** on ``--accuracy_samples`` *test* prompts (default: the whole test split, 912),
  temperature 0, each row with its own generator as ``dlm-trl eval`` does; Δ against ``plain`` with an
  exact McNemar p-value over the paired prompts;
* **pass@8 and mean accuracy at temperature 1** on ``--pass_samples`` test prompts (8 samples each).

Writes ``<out>.md`` (the table), ``<out>.json`` and ``<out>.png``::

    python benchmarks/rollout_speed.py                        # ≈ 25 min on 2 idle cores
    python benchmarks/rollout_speed.py --contenders plain,thr0.9 --accuracy_samples 200 --pass_samples 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from dlm_trl.evaluation import decode_completions, encode_prompts, row_generator  # noqa: E402
from dlm_trl.models import load  # noqa: E402
from dlm_trl.sampling import SamplerConfig, generate, keep_freed_memory, minor_page_faults  # noqa: E402
from dlm_trl.tasks import get_task  # noqa: E402

DEFAULT_CONTENDERS = (
    "today,plain,thr0.95,thr0.9,thr0.8,factor1,dual,prefix,dual+r4,thr0.9+dual,thr0.95+dual,thr0.99+dual,"
    "thr0.9+prefix"
)
BASE = dict(gen_length=48, block_length=16, steps=24)


def parse_contender(name: str) -> dict:
    """``"thr0.9+dual+r4"`` → SamplerConfig overrides (``today`` is ``plain`` in a child process)."""
    kw: dict = {}
    for part in name.split("+"):
        if part in ("today", "plain"):
            continue
        if part.startswith("thr"):
            kw.update(transfer="threshold", threshold=float(part[3:]))
        elif part.startswith("factor"):
            kw.update(transfer="factor", factor=float(part[6:]))
        elif part in ("dual", "prefix"):
            kw["cache"] = part
        elif part.startswith("r") and part[1:].isdigit():
            kw["cache_refresh"] = int(part[1:])
        else:
            raise SystemExit(f"unknown contender part {part!r} in {name!r}; see the module docstring")
    return kw


class FullLogits:
    """The model as the sampler saw it before block-only logits: a callable returning ``[B, T, V]``."""

    def __init__(self, dlm):
        self.dlm = dlm
        self.mask_token_id, self.eos_token_id = dlm.mask_token_id, dlm.eos_token_id

    def __call__(self, input_ids, attention_mask=None):
        return self.dlm(input_ids, attention_mask=attention_mask)


def model_for(name: str, dlm):
    return FullLogits(dlm) if name == "today" else dlm


def encode(tok, rows):
    return encode_prompts(tok, [r["prompt"] for r in rows], device="cpu")


AUTOCAST: dict = {"dtype": None}  # --autocast: run every sampler forward under torch.autocast in this dtype


def _autocast():
    import contextlib

    dtype = AUTOCAST["dtype"]
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=getattr(torch, dtype))


def rollout_seconds(dlm, name, ids, att, temperature: float, seed: int) -> dict:
    cfg = SamplerConfig(**BASE, temperature=temperature, **parse_contender(name))
    gens = [row_generator(seed, i) for i in range(ids.shape[0])]
    f0, t0 = minor_page_faults(), time.perf_counter()
    with _autocast():
        out = generate(model_for(name, dlm), ids, config=cfg, prompt_attention_mask=att, generator=gens)
    return {"seconds": time.perf_counter() - t0, "faults": minor_page_faults() - f0, "nfe": out.mean_nfe}


def decode_rows(dlm, tok, name, rows, temperature: float, seed: int, batch: int, offset: int = 0):
    """Completions of ``rows`` (row k with generator ``(seed, offset + k)``) and the mean NFE."""
    cfg = SamplerConfig(**BASE, temperature=temperature, **parse_contender(name))
    texts, nfe = [], []
    for s in range(0, len(rows), batch):
        chunk = rows[s : s + batch]
        ids, att = encode(tok, chunk)
        gens = [row_generator(seed, offset + s + k) for k in range(len(chunk))]
        with _autocast():
            out = generate(model_for(name, dlm), ids, config=cfg, prompt_attention_mask=att, generator=gens)
        texts += decode_completions(tok, out.completion_ids, out.completion_mask)
        nfe += out.row_nfe.tolist()
    return texts, sum(nfe) / max(1, len(nfe))


def mcnemar_p(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar p-value of paired outcomes (binomial test on the discordant pairs)."""
    n01 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    n10 = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def child_speed(args, name: str) -> list[dict]:
    """Speed rows of ``name`` measured in a child process with the system allocator (``today``)."""
    cmd = [sys.executable, __file__, "--_child", name, "--batches", args.batches, "--repeats", "1",
           "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.autocast:
        cmd += ["--autocast", args.autocast]
    env = {**os.environ, "DLM_TRL_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def speed_once(dlm, tok, name, batches, seed) -> list[dict]:
    rows_all = get_task("countdown").rows("train", max(batches) // 8, seed=seed)
    res = []
    for b in batches:
        rows = [r for r in rows_all[: max(1, b // 8)] for _ in range(8)][:b]
        ids, att = encode(tok, rows)
        res.append({"batch": b, **rollout_seconds(dlm, name, ids, att, 1.0, seed)})
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contenders", default=DEFAULT_CONTENDERS)
    p.add_argument("--batches", default="16,64,256")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accuracy_samples", type=int, default=912, help="test prompts, greedy (912 = the whole split)")
    p.add_argument("--pass_samples", type=int, default=100, help="test prompts for pass@8 at temperature 1")
    p.add_argument("--eval_batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/rollout_speed")
    p.add_argument("--autocast", default=None, choices=["bfloat16"],
                   help="run the sampler under torch.autocast (the tiny recipes' rollouts on CPUs with native bf16)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    AUTOCAST["dtype"] = args.autocast
    batches = [int(b) for b in args.batches.split(",")]
    dlm, tok = load("tiny")

    if args._child:  # speed rows of one contender, printed as JSON (runs with the system allocator)
        print(json.dumps(speed_once(dlm, tok, args._child, batches, args.seed)))
        return
    keep_freed_memory()
    names = args.contenders.split(",")
    for n in names:
        parse_contender(n)
    speed: dict[str, list[list[dict]]] = {n: [] for n in names}
    bar_total = args.repeats * len(names)
    t_start = time.time()
    done = 0
    for _ in range(args.repeats):
        for n in names:  # interleaved: every repeat visits every contender
            speed[n].append(child_speed(args, n) if n == "today" else speed_once(dlm, tok, n, batches, args.seed))
            done += 1
            print(f"[speed {done}/{bar_total}] {n}: " + ", ".join(
                f"B={x['batch']} {x['seconds']:.1f}s nfe {x['nfe']:.1f}" for x in speed[n][-1]), flush=True)

    results: dict[str, dict] = {}
    for n in names:
        per_batch = {}
        for i, b in enumerate(batches):
            secs = [rep[i]["seconds"] for rep in speed[n]]
            med = statistics.median(secs)
            per_batch[b] = {"seconds": med, "samples_per_s": b / med, "nfe": speed[n][0][i]["nfe"],
                            "faults": int(statistics.median(rep[i]["faults"] for rep in speed[n])),
                            "seconds_all": secs}
        results[n] = {"speed": per_batch}

    # Accuracy (today decodes the same tokens as plain: tests/test_sampler_fast.py and the golden tests).
    test_rows = get_task("countdown").rows("test", args.accuracy_samples, seed=args.seed) if args.accuracy_samples else []
    pass_rows = get_task("countdown").rows("test", args.pass_samples, seed=args.seed + 1) if args.pass_samples else []
    task = get_task("countdown")
    for n in names:
        if n == "today":
            continue
        t0 = time.time()
        if test_rows:
            texts, nfe = decode_rows(dlm, tok, n, test_rows, 0.0, args.seed, args.eval_batch)
            correct = [s >= 1 - 1e-9 for s in task.score(texts, test_rows)]
            results[n]["greedy"] = {"accuracy": sum(correct) / len(correct), "nfe": nfe, "correct": correct}
        if pass_rows:
            rep = [r for r in pass_rows for _ in range(8)]
            texts, nfe = decode_rows(dlm, tok, n, rep, 1.0, args.seed + 7, args.eval_batch)
            ok = [s >= 1 - 1e-9 for s in task.score(texts, rep)]
            per_prompt = [any(ok[8 * i : 8 * i + 8]) for i in range(len(pass_rows))]
            results[n]["t1"] = {"pass@8": sum(per_prompt) / len(per_prompt), "mean_acc": sum(ok) / len(ok), "nfe": nfe}
        print(f"[accuracy] {n}: greedy {100 * results[n].get('greedy', {}).get('accuracy', float('nan')):.1f}% "
              f"pass@8 {100 * results[n].get('t1', {}).get('pass@8', float('nan')):.1f}% ({time.time() - t0:.0f}s)",
              flush=True)
    if "plain" in results and "today" in results:
        results["today"]["greedy"] = results["plain"].get("greedy")
        results["today"]["t1"] = results["plain"].get("t1")
    write(results, names, batches, args, time.time() - t_start)


def write(results: dict, names: list[str], batches: list[int], args, seconds: float) -> None:
    ref = "today" if "today" in results else names[0]
    big = max(batches)
    base_plain = results.get("plain", {}).get("greedy")
    lines = [
        f"Rollout decoders on the embedded model (Countdown, gen_length 48, block 16; {args.threads} threads; "
        f"{'bf16 autocast; ' if args.autocast else 'fp32; '}"
        f"median of {args.repeats} interleaved repeats; `python benchmarks/rollout_speed.py`, {seconds / 60:.0f} min).",
        "",
        f"| decoder | s / rollout (B={big}, T=1) | speed-up vs {ref} | samples/s " + " / ".join(f"B={b}" for b in batches)
        + f" | NFE / sample | page faults / rollout | greedy acc. (test, n={args.accuracy_samples}) | Δ vs plain (McNemar p) | pass@8 (T=1) | mean acc. (T=1) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    t_ref = results[ref]["speed"][big]["seconds"]
    for n in names:
        sp = results[n]["speed"]
        g = results[n].get("greedy") or {}
        t1 = results[n].get("t1") or {}
        delta = ""
        if g and base_plain and n not in ("plain", "today"):
            d = 100 * (g["accuracy"] - base_plain["accuracy"])
            delta = f"{d:+.1f} ({mcnemar_p(g['correct'], base_plain['correct']):.2f})"
        lines.append(
            f"| {n} | {sp[big]['seconds']:.1f} | {t_ref / sp[big]['seconds']:.1f}× | "
            + " / ".join(f"{sp[b]['samples_per_s']:.0f}" for b in batches)
            + f" | {sp[big]['nfe']:.1f} | {sp[big]['faults']:,} | "
            + (f"{100 * g['accuracy']:.1f} %" if g else "–") + f" | {delta or '–'} | "
            + (f"{100 * t1['pass@8']:.1f} %" if t1 else "–") + " | "
            + (f"{100 * t1['mean_acc']:.1f} %" if t1 else "–") + " |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("# Rollout speed\n\n" + table + "\n")
    slim = {n: {k: v for k, v in r.items()} for n, r in results.items()}
    for r in slim.values():
        if r.get("greedy"):
            r["greedy"] = {k: v for k, v in r["greedy"].items() if k != "correct"}
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": slim}, indent=1, default=str))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for n in names:
            g = results[n].get("greedy")
            if not g:
                continue
            x = t_ref / results[n]["speed"][big]["seconds"]
            ax.scatter(x, 100 * g["accuracy"], s=40)
            ax.annotate(n, (x, 100 * g["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if base_plain:
            ax.axhline(100 * base_plain["accuracy"] - 1, ls="--", c="grey", lw=0.8, label="plain − 1 point")
            ax.legend()
        ax.set_xlabel(f"rollout speed-up vs {ref} (B={big}, temperature 1)")
        ax.set_ylabel(f"greedy accuracy, Countdown test (n={args.accuracy_samples}) %")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
