"""math_accuracy: real GSM8K data, LaTeX equivalence, threads, per-item timeouts, worker recovery."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from dlm_trl_rewards import math as m

DATA_DIR = Path(
    os.environ.get("DLM_TRL_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
GSM8K_TEST = DATA_DIR / "gsm8k" / "test.jsonl"
SHARED = GSM8K_TEST.exists()
if not SHARED:  # the 20 test rows shipped with dlm_trl
    GSM8K_TEST = Path(__file__).resolve().parents[1] / "dlm_trl" / "tasks" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture(autouse=True, scope="module")
def _pool_of_two():
    m.configure(workers=2, timeout=5.0)  # workers start once (about 1 s each) and serve every test here
    yield
    m.configure(workers=2, timeout=5.0)


def _perturb(solution: str) -> str:
    head, tail = solution.rsplit("####", 1)
    return f"{head}#### {int(tail.strip().replace(',', '')) + 1}"


def test_every_gsm8k_gold_solution_scores_one_and_a_perturbed_one_zero():
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines() if line.strip()]
    assert len(rows) == (1319 if SHARED else 20)
    golds = [r["answer"] for r in rows]
    before = m.metrics()
    # The gold solution as the completion: no <answer>/\boxed, so its last number (the #### one) is used.
    scores = m.math_accuracy(None, golds, answer=golds)
    bad = [i for i, s in enumerate(scores) if s != 1.0]
    assert not bad, f"gold solutions not recognised: rows {bad[:10]}"
    perturbed = m.math_accuracy(None, [_perturb(g) for g in golds], answer=golds)
    wrong = [i for i, s in enumerate(perturbed) if s != 0.0]
    assert not wrong, f"perturbed answers accepted: rows {wrong[:10]}"
    after = m.metrics()
    assert after["verified"] - before["verified"] == 2 * len(rows)  # every pair went through math-verify
    assert after["timeouts"] == before["timeouts"] and after["errors"] == before["errors"]


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        (r"<answer>\boxed{\frac{1}{2}}</answer>", "0.5", 1.0),
        (r"so the answer is \boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"<answer>$\frac{3}{4}$</answer>", r"\boxed{3/4}", 1.0),
        ("<answer>0.75</answer>", r"\frac{3}{4}", 1.0),
        (r"\boxed{2} then \boxed{3}", "3", 1.0),  # the last \boxed counts
        ("<answer>4</answer> 3", "3", 0.0),  # the <answer> tag wins over the last number
        ("I give up", "3", 0.0),  # nothing to extract
        ("<answer>1,000</answer>", "#### 1,000", 1.0),
    ],
)
def test_math_equivalence(completion, gold, expected):
    assert m.math_accuracy(None, [completion], answer=[gold]) == [expected]
    assert m.math_accuracy(None, [[{"role": "assistant", "content": completion}]], answer=[gold]) == [
        expected
    ]


def test_missing_gold_is_none_and_counted():
    before = m.metrics()["gold_unparsed"]
    assert m.math_accuracy(None, ["<answer>1</answer>"], answer=[None]) == [None]
    assert m.metrics()["gold_unparsed"] == before + 1


def test_callable_from_threads():
    # math-verify's own signal-based timeouts fail off the main thread; the pool does not care.
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = m.math_accuracy(
            None, [f"<answer>{k}</answer>", "<answer>-1</answer>"], answer=[str(k), str(k)]
        )

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {k: [1.0, 0.0] for k in range(4)}


def test_timeouts_score_zero_are_counted_and_logged(monkeypatch):
    # Make every verification a 30 s sleep inside the worker; the per-item timeout (0.5 s) must fire.
    pool = m.VerifyPool(workers=1, timeout=0.5, grace=1.0)

    class SleepyPool:
        def map(self, reqs):
            return pool.map([{"op": "sleep", "seconds": 30} for _ in reqs])

    monkeypatch.setattr(m, "_get_pool", lambda: SleepyPool())
    logged = []
    before = m.metrics()
    scores = m.math_accuracy(
        None, ["<answer>1</answer>"] * 2, answer=["1", "1"], log_metric=lambda k, v: logged.append((k, v))
    )
    assert scores == [0.0, 0.0]
    after = m.metrics()
    assert after["timeouts"] - before["timeouts"] == 2
    assert after["hard_timeouts"] == before["hard_timeouts"]  # SIGALRM in the worker was enough
    assert ("math_accuracy/timeouts", 2.0) in logged
    pool.close()


def test_hard_timeout_kills_and_replaces_the_worker():
    pool = m.VerifyPool(workers=1, timeout=0.3, grace=0.5)
    try:
        # SIGALRM blocked: only the parent's deadline can stop this item; the worker is killed.
        [reply] = pool.map([{"op": "sleep", "seconds": 30, "block_alarm": True}])
        assert reply == {"status": "timeout", "hard": True}
        [reply] = pool.map([{"op": "verify", "gold": "2", "pred": "2"}])  # a fresh worker takes over
        assert reply == {"status": "ok", "correct": True}
    finally:
        pool.close()


def test_a_crashed_worker_is_replaced():
    pool = m.VerifyPool(workers=1, timeout=5)
    try:
        [reply] = pool.map([{"op": "crash"}])
        assert reply["status"] == "error" and "worker died" in reply["error"]
        replies = pool.map([{"op": "verify", "gold": "1/2", "pred": "0.5"}] * 3)
        assert [r["correct"] for r in replies] == [True] * 3
    finally:
        pool.close()


def test_is_equivalent_helper():
    assert m.is_equivalent(r"\frac{1}{2}", "0.5")
    assert not m.is_equivalent("#### 7", "8")
