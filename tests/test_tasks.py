import json
import random

import pytest

from dlm_trl.tasks import TASKS, countdown, get_task, gsm8k, sudoku
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


def test_gsm8k_loader_reads_shared_data():
    try:
        rows = gsm8k.generate("test", None)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert len(rows) == 1319
    assert all(r["target"] == extract_final_answer(r["answer"]) for r in rows[:50])
    assert rows[0]["prompt"][0]["role"] == "user"
    assert extract_final_answer("so 1,234 apples\n#### 1,234") == "1234"
    with pytest.raises(ValueError, match="####"):
        extract_final_answer("no final line")


def test_unknown_task_suggests():
    with pytest.raises(ValueError, match="countdown"):
        get_task("countdwn")
    assert get_task().name == "countdown" and set(TASKS) == {"countdown", "sudoku", "gsm8k", "math"}


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
