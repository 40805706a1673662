"""Unit tests of the pure rewards (countdown, sudoku, format, gsm8k_accuracy) and shared helpers.

Expected values are derived by hand in the comments. Fast: no subprocess except the import check.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from dlm_trl_rewards import _common, countdown, sudoku
from dlm_trl_rewards import format as fmt
from dlm_trl_rewards.math import gsm8k_accuracy


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------- helpers


def test_completion_to_text_forms():
    assert _common.completion_to_text("abc") == "abc"
    assert _common.completion_to_text(chat("abc")) == "abc"
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a1"},
        {"role": "assistant", "content": "a2"},
    ]
    assert _common.completion_to_text(msgs) == "a2"  # last assistant message
    assert (
        _common.completion_to_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]) == "x"
    )
    assert _common.completion_to_text(None) == ""


def test_answer_boxed_number_extraction():
    assert _common.extract_answer_tag("<answer> 1 </answer> then <answer>\n2\n</answer>") == "2"
    assert _common.extract_answer_tag("<answer>unclosed") is None
    assert _common.last_boxed(r"\boxed{1} and \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert _common.last_boxed(r"\boxed{ {a}{b} }") == "{a}{b}"
    assert _common.last_boxed("none") is None
    assert _common.last_number("pay $1,250.50 then 3.") == "3"
    assert _common.last_number("#### -1,000") == "-1000"
    assert _common.last_number("x2 and 7") == "7"  # "x2" is not a number
    assert _common.gsm8k_gold("... #### 1,000") == "1000"
    assert _common.gsm8k_gold(r"\frac{1}{2}") == r"\frac{1}{2}"
    assert _common.gsm8k_gold(None) is None


def test_rewards_import_nothing_from_dlm_trl_or_trl():
    code = (
        "import sys\n"
        "import dlm_trl_rewards.math, dlm_trl_rewards.code, dlm_trl_rewards.countdown\n"
        "import dlm_trl_rewards.sudoku, dlm_trl_rewards.format\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dlm_trl', 'trl', 'torch')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_column_names_the_reward_and_column():
    with pytest.raises(KeyError, match="countdown.*'numbers'"):
        countdown.countdown_reward(None, ["x"], target=[1])
    with pytest.raises(ValueError, match="'target' has 2 values for 1"):
        countdown.countdown_reward(None, ["x"], numbers=[[1]], target=[1, 2])


# ------------------------------------------------------------------------------- countdown


@pytest.mark.parametrize(
    "answer, numbers, target, expected",
    [
        ("<answer>3*5+7</answer>", [3, 5, 7], 22, 1.0),  # 15 + 7 = 22
        ("<answer>(7-3)*5</answer>", [3, 5, 7], 22, 0.1),  # = 20, wrong value
        ("<answer>3*5+7+1</answer>", [3, 5, 7], 23, 0.1),  # uses 1, not given
        ("<answer>3*5</answer>", [3, 5, 7], 15, 0.1),  # 7 unused
        ("<answer>3*3+7</answer>", [3, 5, 7], 16, 0.1),  # 3 twice, 5 unused
        ("no tags 3*5+7", [3, 5, 7], 22, 0.0),  # no equation
        ("<answer></answer>", [3, 5, 7], 22, 0.1),  # empty equation (d1: present but invalid)
        ("<answer>6/3*4</answer>", [6, 4, 3], 8, 1.0),  # 2 * 4, exact fractions
        ("<answer>2/(5-5)</answer>", [5, 5, 2], 2, 0.1),  # division by zero
        ("<answer>-3+10</answer>", [3, 10], 7, 1.0),  # unary minus allowed (d1's regex allows '-')
        ("<answer>2**3</answer>", [2, 3], 8, 0.1),  # '**' not allowed here (d1 would eval it)
        ("<answer>2.5*4</answer>", [2, 5, 4], 10, 0.1),  # decimal literal invalid
        ("<answer>1/3</answer>", [1, 3], 0.33333, 1.0),  # |1/3 - 0.33333| = 3.3e-6 < 1e-5
        ("<answer>1/3</answer>", [1, 3], 0.3333, 0.1),  # 3.3e-5 > 1e-5
        ("<answer>__import__('os').system('true')</answer>", [1], 1, 0.1),  # never evaluated
        ("<answer>3 + 5 + 7 = 15</answer>", [3, 5, 7], 15, 0.1),  # '=' invalid (as in d1)
        ("<answer>1+2</answer> <answer>2+1+0</answer>", [1, 2], 3, 0.1),  # last answer counts: uses 0
    ],
)
def test_countdown_scores(answer, numbers, target, expected):
    assert countdown.countdown_reward(None, [answer], numbers=[numbers], target=[target]) == [expected]


def test_countdown_guards_huge_inputs():
    huge = "<answer>" + "9" * 5000 + "</answer>"  # a 5000-digit literal: rejected, not evaluated
    deep = "<answer>" + "(" * 1000 + "1" + ")" * 1000 + "</answer>"
    chain = "<answer>" + "-" * 5000 + "1</answer>"
    assert (
        countdown.countdown_reward(None, [huge, deep, chain], numbers=[[9], [1], [1]], target=[9, 1, 1])
        == [0.1] * 3
    )


def test_countdown_helpers_and_chat():
    assert countdown.is_correct("3*5+7", [3, 5, 7], 22)
    assert countdown.is_correct("<answer>3*5+7</answer>", [3, 5, 7], 22)
    assert not countdown.is_correct("3*5+7", [3, 5, 7], 21)
    assert countdown.evaluate_equation("(1+2)/4") == countdown.Fraction(3, 4)
    assert countdown.evaluate_equation("1/0") is None
    assert countdown.numbers_used("10 - (2 * 3)") == [10, 2, 3]
    assert countdown.countdown_reward(
        None, [chat("<answer>3*5+7</answer>")], numbers=[[3, 5, 7]], target=[22]
    ) == [1.0]


# ------------------------------------------------------------------------------- sudoku

SOLUTION = "1234341221434321"  # rows 1234 / 3412 / 2143 / 4321: a valid 4x4 grid
PUZZLE = "1034340221400321"  # cells 1, 6, 11, 12 emptied (solution digits 2, 1, 3, 4)


@pytest.mark.parametrize(
    "answer, expected",
    [
        (f"<answer>{SOLUTION}</answer>", 1.0),  # 4 of 4 empty cells right
        ("<answer>1334341221434321</answer>", 0.75),  # cell 1 is 3, not 2: 3 of 4
        ("<answer>\n1234\n3412\n2143\n4321\n</answer>", 1.0),  # separators dropped
        ("<answer>12</answer>", 0.25),  # padded with 0s: only cell 1 (=2) right
        (f"<answer>{SOLUTION}9999</answer>", 1.0),  # only the first 16 digits are read
        ("<answer>0000000000000000</answer>", 0.0),
        (f"no tags {SOLUTION}", 0.0),  # d1: no <answer> pair scores 0
        ("<answer>no digits</answer>", 0.0),
    ],
)
def test_sudoku_scores(answer, expected):
    assert sudoku.sudoku_reward(None, [answer], puzzle=[PUZZLE], solution=[SOLUTION]) == [
        pytest.approx(expected)
    ]


def test_sudoku_full_puzzle_and_chat():
    assert sudoku.score(SOLUTION, SOLUTION, SOLUTION) == 0.0  # no empty cell: d1 scores 0
    assert sudoku.sudoku_reward(
        None, [chat(f"<answer>{SOLUTION}</answer>")], puzzle=[PUZZLE], solution=[SOLUTION]
    ) == [1.0]


# ------------------------------------------------------------------------------- format (d1)

CANONICAL = "<reasoning>\nr\n</reasoning>\n<answer>\n42\n</answer>\n"


@pytest.mark.parametrize(
    "text, xml, soft, strict",
    [
        # 4 x 0.125, no trailing text; soft fails: '.*?' does not cross the newlines; strict matches
        (CANONICAL, 0.5, 0.0, 0.5),
        # one line, no newlines: count_xml finds none of its newline-delimited tags; soft matches
        ("<reasoning>r</reasoning><answer>42</answer>", 0.0, 0.5, 0.0),
        # 5 trailing chars: 0.125 - 0.005 after "\n</answer>\n" and 0.125 - (6 - 1) * 0.001 after "\n</answer>"
        (CANONICAL + "extra", 0.125 + 0.125 + 0.120 + 0.120, 0.0, 0.0),
        # no "\n</answer>\n": the third term subtracts the whole length (58) * 0.001; the fourth adds 0.001
        (
            "<reasoning>\nline1\nline2\n</reasoning>\n<answer>\n42\n</answer>",
            0.125 + 0.125 + 0.067 + 0.126,
            0.0,
            0.0,
        ),
        ("no tags at all", 0.0, 0.0, 0.0),
    ],
)
def test_format_matches_d1(text, xml, soft, strict):
    assert fmt.xmlcount_reward(None, [text]) == [pytest.approx(xml)]
    assert fmt.soft_format_reward(None, [text]) == [soft]
    assert fmt.strict_format_reward(None, [text]) == [strict]
    assert fmt.format_reward(None, [text]) == [pytest.approx(xml + soft + strict)]
    assert fmt.format_reward(None, [chat(text)]) == [pytest.approx(xml + soft + strict)]


# ------------------------------------------------------------------------------- gsm8k_accuracy


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("<answer>18</answer>", "Janet ... #### 18", 1.0),
        (r"so \boxed{18.00}", "#### 18", 1.0),  # decimal equality
        ("The answer is 1,000.", "#### 1,000", 1.0),  # separators ignored
        ("<answer>17</answer> but 18", "#### 18", 0.0),  # the answer tag wins over the last number
        ("no number", "#### 18", 0.0),
        ("<answer>18</answer>", "18", 1.0),  # bare gold
        ("<answer>18</answer>", r"\frac{1}{2}", None),  # gold is not a number: not applicable
    ],
)
def test_gsm8k_accuracy(completion, gold, expected):
    assert gsm8k_accuracy(None, [completion], answer=[gold]) == [expected]
