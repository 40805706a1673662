import hashlib
import json
import random

import pytest

from dlm_trl.tasks import SPLITS, TASKS, countdown, get_task, gsm8k, sources, splits, sudoku
from dlm_trl.tasks.gsm8k import extract_final_answer


def _answer(reference: str) -> str:
    return reference.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]


def test_countdown_reference_solutions_verify_and_corruptions_do_not():
    task = get_task("countdown")
    rows = task.rows("test", 300, seed=3)
    assert task.correct([r["reference"] for r in rows], rows) == [True] * len(rows)
    rng = random.Random(0)
    corrupted = []
    for r in rows:
        ans = _answer(r["reference"])
        digits = [i for i, ch in enumerate(ans) if ch.isdigit()]
        i = rng.choice(digits)
        bad = ans[:i] + str((int(ans[i]) + 1) % 10) + ans[i + 1 :]  # changes a number → uses wrong numbers
        corrupted.append(r["reference"].replace(f"<answer>\n{ans}\n", f"<answer>\n{bad}\n"))
    assert not any(task.correct(corrupted, rows))


def test_countdown_puzzles_are_well_formed():
    rows = countdown.generate("train", 500, seed=0)
    for r in rows:
        assert len(r["numbers"]) == 3 and all(1 <= n <= 9 for n in r["numbers"])
        assert 1 <= r["target"] <= 99
        assert countdown._value(_answer(r["reference"])) == r["target"]
    assert len({(tuple(r["numbers"]), r["target"]) for r in rows}) == 500


def test_countdown_reasoning_is_left_to_right_and_consistent():
    """The reference works ``a op1 b=x, x op2 c=y`` with the numbers in the listed order."""
    for r in countdown.generate("train", 300, seed=1):
        a, b, c = r["numbers"]
        reasoning = r["reference"].split("<reasoning>\n", 1)[1].split("\n</reasoning>", 1)[0]
        first, second = reasoning.split(", ")
        lhs1, x = first.split("=")
        lhs2, y = second.split("=")
        assert lhs1[0] == str(a) and lhs1[-1] == str(b) and countdown._value(lhs1) == int(x)
        assert lhs2.startswith(x) and lhs2[-1] == str(c) and countdown._value(lhs2) == int(y) == r["target"]
        assert _answer(r["reference"]) == f"({lhs1}){lhs2[len(x):]}"


def test_splits_are_disjoint_and_seeded():
    tr = countdown.generate("train", 1500, seed=0)
    te = countdown.generate("test", 400, seed=0)
    key = lambda r: (tuple(r["numbers"]), r["target"])  # noqa: E731
    assert not {key(r) for r in tr} & {key(r) for r in te}
    assert countdown.generate("test", 50, seed=1) == countdown.generate("test", 50, seed=1)
    assert countdown.generate("test", 50, seed=1) != countdown.generate("test", 50, seed=2)
    s_tr = {r["puzzle"] for r in sudoku.generate("train", 300, seed=0)}
    s_te = {r["puzzle"] for r in sudoku.generate("test", 100, seed=0)}
    assert not s_tr & s_te
    with pytest.raises(ValueError, match="max_number"):
        countdown.generate("test", 3000)
    with pytest.raises(ValueError, match="split"):
        countdown.generate("valid", 3)


def test_sudoku_unique_and_reference_verifies_corruption_does_not():
    task = get_task("sudoku")
    rows = task.rows("test", 100, seed=0)
    for r in rows:
        assert sudoku.count_solutions(r["puzzle"], limit=2) == 1
        assert sudoku.is_valid_solution(r["solution"])
        assert all(p in ("0", s) for p, s in zip(r["puzzle"], r["solution"], strict=True))
    assert task.correct([r["reference"] for r in rows], rows) == [True] * len(rows)
    bad = []
    for r in rows:
        i = r["puzzle"].index("0")  # corrupt an empty cell the model had to fill
        sol = r["solution"]
        wrong = sol[:i] + str(int(sol[i]) % 4 + 1) + sol[i + 1 :]
        bad.append(r["reference"].replace(f"<answer>\n{sol}\n", f"<answer>\n{wrong}\n"))
    assert not any(task.correct(bad, rows))
    assert not sudoku.is_valid_solution("1234" * 4)


def _has_shared(task: str) -> bool:
    return any((d / task).is_dir() for d in sources.shared_candidates())


def test_gsm8k_loader_reads_the_default_data():
    """../shared/data when present (the benchmark), else the fixture shipped in dlm_trl/tasks/data."""
    rows = gsm8k.generate("test", None)
    assert len(rows) == (1319 if _has_shared("gsm8k") else 20)
    assert all(r["target"] == extract_final_answer(r["answer"]) for r in rows[:50])
    assert rows[0]["prompt"][0]["role"] == "user"
    assert extract_final_answer("so 1,234 apples\n#### 1,234") == "1234"
    with pytest.raises(ValueError, match="####"):
        extract_final_answer("no final line")


def test_unknown_task_suggests():
    with pytest.raises(ValueError, match="countdown"):
        get_task("countdwn")
    assert get_task().name == "countdown"
    assert set(TASKS) == {"countdown", "sudoku", "gsm8k", "math", "humaneval", "mbpp"}


def test_math_task_reads_local_jsonl_and_scores_with_math_verify(tmp_path):
    from dlm_trl.tasks import math as math_task

    d = tmp_path / "math"
    d.mkdir()
    rows = [
        {"problem": "What is $1+1$?", "solution": "We add: $1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
        {"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
        {"problem": "Compute $3^2$.", "answer": "9"},
    ]
    (d / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = get_task("math")
    got = task.rows("test", None, data_path=str(tmp_path))
    assert [r["answer"] for r in got] == ["2", "\\frac{1}{2}", "9"]
    assert got[0]["prompt"][0]["role"] == "user" and "1+1" in got[0]["prompt"][0]["content"]
    completions = ["<answer>\n2\n</answer>", "<answer>\n0.5\n</answer>", "<answer>\n8\n</answer>"]
    assert task.correct(completions, got) == [True, True, False]
    # the same files found through DLM_TRL_DATA_DIR, and a subset is seeded
    assert len(math_task.generate("test", 2, seed=0, data_path=str(d))) == 2


def test_math_task_errors_say_what_to_fix(tmp_path, monkeypatch):
    from dlm_trl.tasks import math as math_task

    monkeypatch.setenv("DLM_TRL_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="--data_path"):
        math_task.load_rows("test", tmp_path / "empty")
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="'problem'"):
        math_task.load_rows("test", tmp_path)
    (tmp_path / "test.jsonl").write_text(json.dumps({"problem": "x", "solution": "no box"}) + "\n")
    with pytest.raises(ValueError, match="boxed"):
        math_task.load_rows("test", tmp_path)


# --------------------------------------------------------------------------- validation splits


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps([r["prompt"] for r in rows]).encode()).hexdigest()[:16]


def test_test_splits_are_unchanged_by_the_validation_split():
    """Validation was carved out of the old train split: the test prompts (and so the historic "400 test
    prompts" numbers) are exactly what they were before it existed."""
    assert _digest(countdown.generate("test", 400, seed=0)) == "7f0ec534dedc2ffa"
    assert _digest(countdown.generate("test", 200, seed=1)) == "06cf51c170f48c01"
    assert _digest(sudoku.generate("test", 100, seed=0)) == "93e35a0b494613ff"


def test_generated_tasks_have_disjoint_deterministic_validation_splits():
    key = lambda r: (tuple(r["numbers"]), r["target"])  # noqa: E731
    c = {s: countdown.generate(s, n, seed=0) for s, n in (("train", 2500), ("validation", 400), ("test", 800))}
    keys = {s: {key(r) for r in rows} for s, rows in c.items()}
    assert all(len(keys[s]) == len(c[s]) for s in c)
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert all(countdown.split_of(*k) == s for s in keys for k in keys[s])
    assert countdown.generate("validation", 50, seed=3) == countdown.generate("validation", 50, seed=3)
    assert countdown.generate("validation", 50, seed=3) != countdown.generate("validation", 50, seed=4)
    # about a tenth of all puzzles: 400 fit, far more do not
    with pytest.raises(ValueError, match="max_number"):
        countdown.generate("validation", 1000)
    s = {sp: {r["puzzle"] for r in sudoku.generate(sp, n, seed=0)} for sp, n in
         (("train", 300), ("validation", 150), ("test", 150))}
    assert not s["train"] & s["validation"] and not s["train"] & s["test"] and not s["validation"] & s["test"]
    assert sudoku.generate("validation", 20, seed=1) == sudoku.generate("validation", 20, seed=1)
    assert SPLITS == ("train", "validation", "test")
    with pytest.raises(ValueError, match="'validation'"):
        sudoku.generate("val", 3)


def test_hash_split_fractions():
    u = [splits.hash_split(f"k{i}") for i in range(20_000)]
    assert abs(u.count("test") / len(u) - 0.2) < 0.01 and abs(u.count("validation") / len(u) - 0.1) < 0.01


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_file_tasks_hold_out_the_end_of_the_train_file_as_validation(tmp_path):
    """GSM8K / MATH: validation is the last min(500, n // 10) rows of the train file, train the rest."""
    from dlm_trl.tasks import math as math_task

    gsm = [{"question": f"q{i}?", "answer": f"so {i}\n#### {i}"} for i in range(40)]
    _jsonl(tmp_path / "gsm8k" / "train.jsonl", gsm)
    _jsonl(tmp_path / "gsm8k" / "test.jsonl", gsm[:5])
    train, val = gsm8k.load_rows("train", tmp_path), gsm8k.load_rows("validation", tmp_path)
    assert [r["question"] for r in val] == [f"q{i}?" for i in range(36, 40)]
    assert [r["question"] for r in train] == [f"q{i}?" for i in range(36)]
    task = get_task("gsm8k")
    assert {r["question"] for r in task.rows("train", None, data_path=str(tmp_path))}.isdisjoint(
        r["question"] for r in task.rows("validation", None, data_path=str(tmp_path)))
    assert task.rows("validation", 3, seed=1, data_path=str(tmp_path)) == task.rows(
        "validation", 3, seed=1, data_path=str(tmp_path))
    assert len(gsm8k.load_rows("test", tmp_path)) == 5
    mth = [{"problem": f"p{i}", "answer": str(i)} for i in range(25)]
    _jsonl(tmp_path / "math" / "train.jsonl", mth)
    assert [r["problem"] for r in math_task.load_rows("validation", tmp_path)] == ["p23", "p24"]
    assert len(math_task.load_rows("train", tmp_path)) == 23
    assert splits.validation_size(7473) == 500 and splits.validation_size(7500) == 500
    _jsonl(tmp_path / "tiny" / "math" / "train.jsonl", mth[:5])
    with pytest.raises(ValueError, match="too few"):
        math_task.load_rows("validation", tmp_path / "tiny")


def test_gsm8k_default_data_validation_is_the_end_of_the_train_file():
    """../shared/data: the last 500 of 7,473 train rows; the shipped fixture: the last 4 of 40."""
    full = gsm8k.load_rows("train") + gsm8k.load_rows("validation")
    n, n_val = (7473, 500) if _has_shared("gsm8k") else (40, 4)
    assert len(full) == n and len(gsm8k.load_rows("validation")) == n_val
    questions = [r["question"] for r in full]
    assert len(set(questions[: n - n_val]) & set(questions[n - n_val :])) == 0
    test = {r["question"] for r in gsm8k.load_rows("test")}
    assert not test & set(questions[n - n_val :])
