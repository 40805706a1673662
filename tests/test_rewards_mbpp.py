"""MBPP-style rows and partial credit in the sandboxed code reward, and the humaneval / mbpp tasks.

Partial credit keeps the sandbox's guarantees per assert: every attack below, each of which would
make the asserts pass if it worked, scores 0.0 with ``code_unit_tests_partial`` too.
"""

from __future__ import annotations

import json

import pytest
from dlm_trl_rewards import code
from dlm_trl_rewards._code_units import humaneval_plan, mbpp_entry_point, mbpp_plan

from dlm_trl.cli import main
from dlm_trl.models import TINY_CHECKPOINT_DIR
from dlm_trl.registry import load_reward
from dlm_trl.tasks import get_task, sources

FAST = code.SandboxConfig(timeout_s=3.0, cpu_s=3, max_workers=2)
partial = code.make_code_unit_tests(FAST, partial_credit=True)
strict = code.make_code_unit_tests(FAST)
ASSERTS = ["assert f(1) == 2", "assert f(2) == 3", "assert f(5) == 6"]
WRONG = "def f(x):\n    return None\n"
needs_tiny = pytest.mark.skipif(
    not (TINY_CHECKPOINT_DIR / "model.safetensors").exists(), reason="embedded checkpoint missing"
)


@pytest.fixture
def no_shared(monkeypatch):
    monkeypatch.setattr(sources, "shared_candidates", lambda: [])


def _mbpp(completions: list[str], asserts=ASSERTS, setup: str = "", reward=partial) -> list[float]:
    n = len(completions)
    return reward(None, completions, test_list=[asserts] * n, test_setup_code=[setup] * n)


# ------------------------------------------------------------------------------ scores


def test_mbpp_fraction_of_asserts_and_all_or_nothing():
    right = "def f(x):\n    return x + 1\n"
    two = "def f(x):\n    return x + 1 if x < 5 else 0\n"  # the first two asserts
    one = "def f(x):\n    return 2 if x == 1 else -1\n"  # the first only
    middle = "def f(x):\n    if x != 2:\n        raise ValueError(x)\n    return 3\n"  # raises on 1 and 5
    fenced = "Sure:\n```python\ndef f(x):\n    return x + 1\n```"
    completions = [right, two, one, middle, WRONG, fenced, "not python at all"]
    assert _mbpp(completions) == pytest.approx([1.0, 2 / 3, 1 / 3, 1 / 3, 0.0, 1.0, 0.0])
    assert _mbpp(completions, reward=strict) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    # the registered objects: all-or-nothing by name, partial credit by import path (or its entry point)
    assert code.code_unit_tests.partial_credit is False and code.code_unit_tests_partial.partial_credit is True
    assert load_reward("dlm_trl_rewards.code:code_unit_tests_partial") is code.code_unit_tests_partial


def test_setup_code_runs_in_the_checker_and_before_the_program():
    asserts = ["assert math.isclose(area(1), math.pi)", "assert area(0) == 0"]
    program = "def area(r):\n    return math.pi * r * r\n"  # relies on the setup's import
    assert _mbpp([program], asserts, setup="import math") == [1.0]
    assert _mbpp([program], asserts, setup="") == [0.0]  # neither side has math: NameError everywhere


def test_a_batch_mixes_humaneval_and_mbpp_rows():
    he_test = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(3) == 4\n"
    scores = partial(
        None, ["    return x + 1\n", "def f(x):\n    return x + 1\n"],
        test=[he_test, None], entry_point=["g", None], code_prefix=["def g(x):\n", ""],
        test_list=[[], ASSERTS], test_setup_code=["", ""],
    )
    assert scores == [1.0, 1.0]
    with pytest.raises(KeyError, match="'test'"):
        strict(None, ["x"], entry_point=["f"])
    with pytest.raises(ValueError, match="neither a non-empty 'test_list'"):
        strict(None, ["x"], test_list=[[]], test_setup_code=[""])


def test_humaneval_partial_credit_splits_check():
    test = (
        "METADATA = {}\n\n\ndef check(candidate):\n    import math\n    assert True, 'no credit for this'\n"
        "    assert candidate(1) == 2\n    assert candidate(2) == 3\n    for x in range(5, 8):\n"
        "        assert candidate(x) == x + 1\n    assert math.isfinite(candidate(0))\n"
    )
    plan = humaneval_plan(test)
    assert plan.aliases == ("candidate",) and plan.num_scored == 4 and plan.setup == test
    assert [scored for _, scored in plan.units] == [False, False, True, True, True, True]
    cols = {"test": [test] * 3, "entry_point": ["f"] * 3, "code_prefix": [""] * 3}
    off = "def f(x):\n    return x + 1 if x < 2 else x\n"  # only candidate(1) and candidate(0)
    assert partial(None, ["def f(x):\n    return x + 1\n", off, WRONG], **cols) == [1.0, 0.5, 0.0]
    assert strict(None, ["def f(x):\n    return x + 1\n", off, WRONG], **cols) == [1.0, 0.0, 0.0]
    # a setup statement that fails ends the run: the units after it fail
    failing_setup = "def check(candidate):\n    assert candidate(1) == 2\n    y = candidate('boom')\n    assert candidate(2) == 3\n"
    assert partial(None, ["def f(x):\n    return x + 1\n"], test=[failing_setup], entry_point=["f"],
                   code_prefix=[""]) == [0.5]
    # checks that cannot be split are scored whole
    for whole in ("def check(candidate):\n    return candidate(1) == 2\n", "def helper():\n    pass\n",
                  "def check(candidate):\n    if candidate(1) != 2:\n        return\n    assert candidate(2) == 3\n"):
        assert humaneval_plan(whole).units == (("check(__dlm_trl_candidate__)", True),), whole


def test_mbpp_entry_point_and_plan():
    assert mbpp_entry_point(["assert set(similar((3, 4), (5, 4))) == set((4,))"]) == "similar"
    assert mbpp_entry_point(["assert math.isclose(area(2), 12.56, rel_tol=0.001)"], "import math") == "area"
    assert mbpp_entry_point(["assert helper(1) == f(1)"], "def helper(x):\n    return x") == "f"
    assert mbpp_entry_point("assert g(1) == 1\nassert g(2) == 2") == "g"
    with pytest.raises(ValueError, match="entry_point"):
        mbpp_entry_point(["assert len([1]) == 1"])
    assert mbpp_plan(ASSERTS, ["import math", "import re"]).setup == "import math\nimport re"


# ------------------------------------------------------------------------------ the fixtures and tasks


def test_fixture_solutions_score_one_through_the_tasks(no_shared):
    for name in ("mbpp", "humaneval"):
        task = get_task(name)
        for split in ("train", "test") if name == "mbpp" else ("test",):
            rows = task.rows(split, None)
            refs = [r["reference"] for r in rows]
            assert task.score(refs, rows) == [1.0] * len(rows), (name, split)
            assert partial(None, refs, **{c: [r[c] for r in rows] for c in task.columns}) == [1.0] * len(rows)
            assert task.score(["```python\n" + WRONG.replace("f", r["entry_point"], 1) + "```" for r in rows],
                              rows) == [0.0] * len(rows)


@needs_tiny
@pytest.mark.parametrize("task", ["humaneval", "mbpp"])
def test_eval_cli_code_tasks_end_to_end(task, no_shared, tmp_path):
    out = tmp_path / "r.json"
    rc = main(["eval", "--task", task, "--num-samples", "2", "--gen-length", "32", "--block-length", "32",
               "--no-progress", "--samples", "--output", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["task"] == task and res["num_samples"] == 2 and 0.0 <= res["accuracy"] <= 1.0
    assert len(res["samples"]) == 2 and all(s["reward"] in (0.0, 1.0) for s in res["samples"])


# ------------------------------------------------------------------------------ attacks, per assert


@pytest.mark.parametrize(
    "program",
    [
        pytest.param("import sys\nsys.exit(0)\n", id="sys.exit(0)-before-tests"),
        pytest.param("import os\ndef f(x):\n    os._exit(0)\n", id="os._exit(0)-during-tests"),
        pytest.param(
            WRONG + "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
            "def check(candidate):\n    pass\nbuiltins.check = check\n",
            id="patched-builtins",
        ),
        pytest.param(
            "import json\nprint(json.dumps({'nonce': '0' * 32, 'passed': True, 'units': [True] * 3}))\n" + WRONG,
            id="printed-verdict",
        ),
        pytest.param(
            "import json, os\nline = (json.dumps({'nonce': '0' * 32, 'passed': True, 'units': [True] * 3}) + '\\n')"
            ".encode()\nfor fd in range(0, 256):\n    try:\n        os.write(fd, line)\n    except OSError:\n"
            "        pass\n" + WRONG,
            id="verdict-on-every-fd",
        ),
        pytest.param(
            "class Yes:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Yes()\n",
            id="always-equal-object",
        ),
        pytest.param(
            "class Two(int):\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return Two(7)\n",
            id="int-subclass",
        ),
        pytest.param(
            "import gc\ndef f(x):\n    for o in gc.get_objects():\n"
            "        if isinstance(o, list):\n            o.append(True)\n"
            "        elif callable(o) and getattr(o, '__name__', '') in ('check', '_run_units', 'exec'):\n"
            "            try:\n                o.__code__ = (lambda *a, **k: None).__code__\n"
            "            except Exception:\n                pass\n    return None\n",
            id="gc-patch-units-and-results",
        ),
        pytest.param(
            "import sys\ndef f(x):\n    frame = sys._getframe()\n    while frame is not None:\n"
            "        frame.f_globals['AssertionError'] = type('Quiet', (Exception,), {})\n"
            "        frame = frame.f_back\n    return None\n",
            id="frame-walk",
        ),
    ],
)
def test_attacks_score_zero_per_assert(program):
    assert _mbpp([program]) == [0.0]
    he = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n"
    assert partial(None, [program], test=[he], entry_point=["f"], code_prefix=[""]) == [0.0]


def test_a_program_that_dies_keeps_only_the_asserts_judged_before():
    dies_second = "import os\ncalls = []\ndef f(x):\n    calls.append(x)\n    if len(calls) == 2:\n        os._exit(0)\n    return x + 1\n"
    assert _mbpp([dies_second]) == pytest.approx([1 / 3])
    assert _mbpp([dies_second], reward=strict) == [0.0]


def test_a_program_that_hangs_scores_zero():
    hangs_third = "def f(x):\n    while x == 5:\n        pass\n    return x + 1\n"
    result = code.run_check(hangs_third, "", "f", config=code.SandboxConfig(timeout_s=2.0, cpu_s=2),
                            plan=mbpp_plan(ASSERTS))
    assert result.status == "timeout" and result.units == [False] * 3 and result.fraction() == 0.0
