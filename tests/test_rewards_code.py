"""code_unit_tests on real HumanEval problems, and how programs are assembled from completions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dlm_trl_rewards import code

DATA_DIR = Path(
    os.environ.get("DLM_TRL_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
HUMANEVAL = DATA_DIR / "humaneval" / "dev.jsonl"  # problems 0-81; else the 12 shipped with dlm_trl
SHARED = HUMANEVAL.exists()
if not SHARED:
    HUMANEVAL = Path(__file__).resolve().parents[1] / "dlm_trl" / "tasks" / "data" / "humaneval" / "test.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in HUMANEVAL.read_text().splitlines() if line.strip()]


def _columns(rows: list[dict]) -> dict:
    return {
        "prompt": [r["prompt"] for r in rows],
        "test": [r["test"] for r in rows],
        "entry_point": [r["entry_point"] for r in rows],
    }


def test_all_canonical_solutions_pass_and_broken_ones_fail():
    rows = _rows()
    assert len(rows) == (82 if SHARED else 12)
    reward = code.make_code_unit_tests(code.SandboxConfig(max_workers=2, timeout_s=20))
    completions = [r["canonical_solution"] for r in rows] + ["    return None\n"] * len(rows)
    cols = _columns(rows)
    cols = {k: v + v for k, v in cols.items()}
    code.isolation()  # probe outside the timing
    start = time.monotonic()
    scores = reward(cols["prompt"], completions, **cols)  # prompts are the code prefixes here
    elapsed = time.monotonic() - start
    n = len(rows)
    print(f"\n{2 * n} HumanEval programs ({n} canonical + {n} broken) on 2 workers: {elapsed:.1f} s")
    canonical, broken = scores[:n], scores[n:]
    assert [i for i, s in enumerate(canonical) if s != 1.0] == []
    assert [i for i, s in enumerate(broken) if s != 0.0] == []


def test_completion_forms_on_a_real_problem():
    row = next(r for r in _rows() if r["task_id"] == "HumanEval/2")  # truncate_number(number: float) -> float
    prompt, entry = row["prompt"], row["entry_point"]
    full_def = prompt + row["canonical_solution"]  # the model rewrote the whole function
    fenced = f"Here you go:\n```python\n{full_def}```\nDone."
    chat = [{"role": "assistant", "content": fenced}]
    off_by_one = "```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0 + 1\n```"
    completions = [row["canonical_solution"], full_def, fenced, chat, off_by_one]
    n = len(completions)
    scores = code.code_unit_tests(
        None, completions, code_prefix=[prompt] * n, test=[row["test"]] * n, entry_point=[entry] * n
    )
    assert scores == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_build_program_rules():
    prompt = "import math\n\ndef helper(x):\n    return x\n\ndef f(x):\n    '''doc'''\n"
    # a body continues the prompt
    assert code.build_program(prompt, "    return x + 1\n", "f") == (prompt + "    return x + 1\n", prompt)
    # a full definition replaces it, after the prompt (imports and helpers kept; the stub is redefined)
    program, helpers = code.build_program(prompt, "def f(x):\n    return helper(x) + 1\n", "f")
    assert program == prompt + "\ndef f(x):\n    return helper(x) + 1\n" and helpers == prompt
    # a fenced block: the one defining f wins over an earlier example block
    completion = "```python\nprint(1)\n```\ntext\n```py\ndef f(x):\n    return 2\n```"
    assert code.extract_code(completion, "f") == "def f(x):\n    return 2"
    # an indented completion that happens to contain 'def f(' is still a body
    assert code.extract_code("    y = 1\ndef f(x):\n    return y\n", "f") is None
    # a prompt that is not Python (e.g. chat instructions) contributes only its import lines
    program, helpers = code.build_program(
        "Write f.\nimport math\nfrom typing import List\n", "def f(x):\n    return 1\n", "f"
    )
    assert helpers == "import math\nfrom typing import List"


def test_trl_style_call_with_chat_prompts_and_extra_kwargs():
    # TRL passes prompts (here chat messages), completions, every column but 'prompt', plus its own kwargs.
    prompts = [[{"role": "user", "content": "Write add(a, b)."}]] * 2
    completions = [[{"role": "assistant", "content": "```python\ndef add(a, b):\n    return a + b\n```"}],
                   [{"role": "assistant", "content": "```python\ndef add(a, b):\n    return a - b\n```"}]]  # fmt: skip
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    scores = code.code_unit_tests(
        prompts, completions, test=[test] * 2, entry_point=["add"] * 2, completion_ids=[[1], [2]],
        trainer_state=None, log_metric=lambda *a: None, log_extra=lambda *a: None,
    )  # fmt: skip
    assert scores == [1.0, 0.0]
    assert code.code_unit_tests.__name__ == "code_unit_tests"


def test_values_cross_the_boundary_faithfully():
    program = (
        "def f(kind):\n"
        "    return {'tuple': (1, 'a'), 'set': {1, 2}, 'dict': {(1, 2): [3.5, None]}, 'bytes': b'\\x00x',\n"
        "            'complex': 1 + 2j, 'nan': float('nan'), 'big': 10**30, 'bool': True, 'frozen': frozenset({3})}[kind]\n"
    )
    test = (
        "import math\n"
        "def check(candidate):\n"
        "    assert candidate('tuple') == (1, 'a') and type(candidate('tuple')) is tuple\n"
        "    assert candidate('set') == {1, 2}\n"
        "    assert candidate('dict') == {(1, 2): [3.5, None]}\n"
        "    assert candidate(kind='bytes') == b'\\x00x'\n"
        "    assert candidate('complex') == 1 + 2j\n"
        "    assert math.isnan(candidate('nan'))\n"
        "    assert candidate('big') == 10**30\n"
        "    assert candidate('bool') is True\n"
        "    assert candidate('frozen') == frozenset({3})\n"
    )
    result = code.run_check(program, test, "f")
    assert result.passed, result.detail


def test_exceptions_cross_as_builtin_types():
    program = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    test = (
        "def check(candidate):\n"
        "    try:\n"
        "        candidate(-1)\n"
        "    except ValueError as e:\n"
        "        assert 'negative' in str(e)\n"
        "    else:\n"
        "        raise AssertionError('no exception')\n"
        "    assert candidate(3) == 3\n"
    )
    assert code.run_check(program, test, "f").passed


def test_too_long_and_missing_entry_point_score_zero():
    cfg = code.SandboxConfig(max_program_chars=100)
    assert code.run_check("x = 1\n" * 100, "def check(c): pass\n", "f", config=cfg).status == "too_long"
    result = code.run_check("def g(x):\n    return x\n", "def check(c):\n    pass\n", "f")
    assert not result.passed and "does not define a function 'f'" in result.detail
