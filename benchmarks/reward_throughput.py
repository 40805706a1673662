"""Reward throughput: sandboxed HumanEval programs (and math-verify) per second.

    python benchmarks/reward_throughput.py                      # 64 programs, 2 workers, 3 repeats
    python benchmarks/reward_throughput.py --programs 128 --workers 4 --repeats 5

Programs are real HumanEval canonical solutions from ``../shared/data/humaneval/dev.jsonl``
(cycled to reach ``--programs``), scored by ``code_unit_tests`` exactly as in training: one sandbox
(namespaces, uid drop, Landlock, rlimits; see ``dlm_trl_rewards.code``) per program. The isolation
probe runs once before timing. A second table row scores the same number of GSM8K gold solutions
with ``math_accuracy`` (worker pool of the same size), for comparison. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from dlm_trl_rewards import code
from dlm_trl_rewards import math as math_reward

DATA_DIR = Path(
    os.environ.get("DLM_TRL_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


def _load(path: Path) -> list[dict]:
    if not path.exists():
        raise SystemExit(f"data not found: {path} (set DLM_TRL_DATA_DIR)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _time(fn, repeats: int) -> tuple[list[float], list, float]:
    """Wall times of ``repeats`` calls, the last result, and the CPU seconds of the processes the
    calls started and reaped (sandboxes; not the long-lived math workers), per call."""
    times, out = [], None
    before = os.times()
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    after = os.times()
    child_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return times, out, child_cpu / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = _load(DATA_DIR / "humaneval" / "dev.jsonl")
    batch = [rows[i % len(rows)] for i in range(args.programs)]
    reward = code.make_code_unit_tests(code.SandboxConfig(max_workers=args.workers, timeout_s=30))
    iso = code.isolation()
    cols = {k: [r[k] for r in batch] for k in ("prompt", "test", "entry_point")}
    completions = [r["canonical_solution"] for r in batch]
    code_times, code_scores, code_cpu = _time(lambda: reward(None, completions, **cols), args.repeats)

    gsm = _load(DATA_DIR / "gsm8k" / "test.jsonl")[: args.programs]
    golds = [r["answer"] for r in gsm]
    math_reward.configure(workers=args.workers)
    math_reward.math_accuracy(None, golds[:2], answer=golds[:2])  # start the workers outside the timing
    math_times, math_scores, _ = _time(
        lambda: math_reward.math_accuracy(None, golds, answer=golds), args.repeats
    )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs (load average {load:.1f} at the end), "
          f"Python {platform.python_version()}")  # fmt: skip
    print("sandbox isolation: " + "; ".join(v for v in iso.values() if v) + "\n")
    print(
        "| reward | items | workers | median wall (s) | items/s (median) | best items/s | CPU ms/item | mean reward |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, times, scores, cpu in (
        (
            "code_unit_tests (HumanEval canonical)",
            code_times,
            code_scores,
            f"{1000 * code_cpu / len(code_scores):.0f}",
        ),
        ("math_accuracy (GSM8K gold)", math_times, math_scores, "n/a"),
    ):
        med = statistics.median(times)
        print(
            f"| {name} | {len(scores)} | {args.workers} | {med:.2f} | {len(scores) / med:.1f} | "
            f"{len(scores) / min(times):.1f} | {cpu} | {sum(scores) / len(scores):.3f} |"
        )
    print(
        "\nCPU ms/item: user+system time of the sandbox processes per program; with the machine to itself,"
        " throughput is bounded by about workers * 1000 / (CPU ms/item) programs/s."
    )


if __name__ == "__main__":
    main()
