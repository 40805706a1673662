r"""math_accuracy on MATH answer conventions: an equivalence corpus and a regression over gold layouts.

``CORPUS`` holds (category, gold, answer, expected) written from the conventions of MATH final
answers (Hendrycks et al.): the gold is a final-answer column value, the answer is what a model
writes inside ``<answer>...</answer>`` (the d1 prompt format). Expected 1.0 means the two are the
same answer; every category also has perturbed answers that must score 0.0.

``LAYOUT_GOLDS`` then checks that each gold scores 1.0 against itself, and its perturbation 0.0, in
each supported gold column layout: a final-answer column, a full solution with ``\boxed{}`` and a
GSM8K-style ``#### answer`` line. The GSM8K test split from ``../shared/data`` is used when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dlm_trl_rewards import math as m

CORPUS: list[tuple[str, str, str, float]] = [
    # ---- numbers and fractions
    ("number", r"\frac{1}{2}", "0.5", 1.0),
    ("number", r"\frac{1}{2}", "1/2", 1.0),
    ("number", r"\frac{1}{2}", r"\frac{2}{4}", 1.0),
    ("number", r"\frac{1}{2}", r"\frac{1}{3}", 0.0),
    ("number", "-3", "-3", 1.0),
    ("number", "-3", "3", 0.0),
    ("number", "12", "12.0", 1.0),
    ("number", "12", "13", 0.0),
    ("number", "0.25", r"\frac14", 1.0),
    # ---- \dfrac and \tfrac
    ("dfrac", r"\dfrac{3}{4}", r"\frac{3}{4}", 1.0),
    ("dfrac", r"\frac{3}{4}", r"\dfrac34", 1.0),
    ("dfrac", r"\tfrac{5}{2}", "2.5", 1.0),
    ("dfrac", r"\dfrac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", 1.0),
    ("dfrac", r"\dfrac{3}{4}", r"\tfrac{4}{3}", 0.0),
    # ---- radicals and constants, no digits outside the LaTeX
    ("radical", r"\sqrt{51}", r"\sqrt{51}", 1.0),
    ("radical", r"\sqrt{51}", r"\sqrt{50}", 0.0),
    ("radical", r"2\sqrt{2}", r"\sqrt{8}", 1.0),
    ("radical", r"\pi", r"\pi", 1.0),
    ("radical", r"\pi", "3.14", 0.0),
    ("radical", r"\frac{\pi}{3}", r"\frac{1}{3}\pi", 1.0),
    ("radical", r"4\pi", r"2\pi", 0.0),
    ("radical", r"\infty", r"\infty", 1.0),
    # ---- symbolic expressions
    ("expression", "p - q", "p - q", 1.0),
    ("expression", "p - q", "q - p", 0.0),
    ("expression", "x^3+3x-6", "x^3+3x-6", 1.0),
    ("expression", "x^3+3x-6", "3x + x^3 - 6", 1.0),
    ("expression", "x^3+3x-6", "x^3+3x+6", 0.0),
    ("expression", "(x+1)^2", "x^2+2x+1", 1.0),
    ("expression", "2a+b", "b+2a", 1.0),
    ("expression", "2a+b", "a+2b", 0.0),
    ("expression", "a + b + c", "c + b + a", 1.0),
    ("expression", r"\frac{4}{3}\pi r^2 h", r"\frac{4}{3}\pi r^2", 0.0),  # "h" is no unit
    ("expression", "2ab", "2ac", 0.0),
    ("expression", "3c", "3", 0.0),
    ("expression", "x^2 yz", "x^2", 0.0),
    # ---- units
    ("unit", "5", r"5\text{ cm}", 1.0),
    ("unit", r"5\text{ cm}", "5", 1.0),
    ("unit", r"25\text{ cm}^2", "25", 1.0),
    ("unit", "12", r"12 \mbox{ inches}", 1.0),
    ("unit", "5", "5 cm", 1.0),
    ("unit", "5", r"5\,\text{cm}", 1.0),
    ("unit", r"5\text{ cm}", r"6\text{ cm}", 0.0),
    ("unit", "18", r"\$18", 1.0),
    ("unit", "18", "18 dollars", 1.0),
    ("unit", "60", "60 miles per hour", 1.0),
    ("unit", r"\$1.50", "1.5", 1.0),
    ("unit", "18", r"\$19.00", 0.0),
    ("unit", r"\frac{3}{4}\text{ inches}", "0.75", 1.0),
    # ---- words and \text{}
    ("text", r"\text{Evelyn}", r"\text{Evelyn}", 1.0),
    ("text", r"\text{Evelyn}", "Evelyn", 1.0),
    ("text", "Evelyn", r"\text{Evelyn}", 1.0),
    ("text", r"\text{Evelyn}", "Evelyn.", 1.0),
    ("text", r"\text{Evelyn}", "Evenly", 0.0),  # same letters: a product of symbols would match
    ("text", r"\text{Evelyn}", r"\text{Emily}", 0.0),
    ("text", r"\text{odd}", "odd", 1.0),
    ("text", r"\text{odd}", "even", 0.0),
    ("text", r"\text{Sunday}", "sunday", 1.0),
    ("text", r"\text{no}", "No", 1.0),
    ("text", r"\text{no}", r"\text{yes}", 0.0),
    ("text", r"\text{Evelyn}", "5", 0.0),
    # ---- percent
    ("percent", r"50\%", "50", 1.0),
    ("percent", "50", r"50\%", 1.0),
    ("percent", r"50\%", "50%", 1.0),
    ("percent", r"12.5\%", "12.5", 1.0),
    ("percent", r"50\%", r"40\%", 0.0),
    ("percent", r"50\%", "51", 0.0),
    ("percent", r"50\%", "0.5", 0.0),  # the percent sign is dropped, as MATH graders do
    # ---- thousands separators (a tuple stays a tuple)
    ("thousands", "1,000", "1000", 1.0),
    ("thousands", "1000", "1,000", 1.0),
    ("thousands", r"10,\!080", "10080", 1.0),
    ("thousands", r"10{,}080", "10,080", 1.0),
    ("thousands", "10080", r"10\,080", 1.0),
    ("thousands", "1,000,000", "1000000", 1.0),
    ("thousands", "1,000", "1,001", 0.0),
    ("thousands", "1,000", "1", 0.0),
    ("thousands", "(1,2)", "12", 0.0),
    ("thousands", "1200", "(1,200)", 0.0),
    # ---- tuples and intervals
    ("interval", "(-2,1)", "(-2,1)", 1.0),
    ("interval", "(-2,1)", "(-2, 1)", 1.0),
    ("interval", "(-2,1)", "(1,-2)", 0.0),
    ("interval", "(-2,1)", "(-2,1]", 0.0),
    ("interval", "[0,1)", "[0, 1)", 1.0),
    ("interval", "[0,1)", "[0,1]", 0.0),
    ("interval", r"(-\infty, 3]", r"(-\infty,3]", 1.0),
    ("interval", r"(-\infty, 3]", r"(-\infty,3)", 0.0),
    ("interval", r"\left( \frac12, -3 \right)", "(0.5,-3)", 1.0),
    ("interval", r"(-\infty,0)\cup(1,\infty)", r"(-\infty, 0) \cup (1, \infty)", 1.0),
    ("interval", r"(-\infty,0)\cup(1,\infty)", r"(-\infty, 0) \cup [1, \infty)", 0.0),
    ("interval", r"[0,1)", r"x \in [0,1)", 1.0),
    # ---- equations
    ("equation", "3", "x = 3", 1.0),
    ("equation", "x = 3", "3", 1.0),
    ("equation", "x=3", "x = 3", 1.0),
    ("equation", "3", "x = 4", 0.0),
    ("equation", "y = 2x + 3", "y=2x+3", 1.0),
    ("equation", "y = 2x + 3", "y = 3x + 2", 0.0),
    ("equation", "7", "k = 7", 1.0),
    # ---- degrees
    ("degree", r"30^\circ", "30", 1.0),
    ("degree", "30", r"30^\circ", 1.0),
    ("degree", r"30^{\circ}", "30°", 1.0),
    ("degree", "120", "120 degrees", 1.0),
    ("degree", r"45^\circ", r"30^\circ", 0.0),
    ("degree", r"60^\circ", r"\frac{\pi}{3}", 0.0),
    # ---- multiple choice
    ("choice", r"\text{(C)}", "(C)", 1.0),
    ("choice", "(C)", "C", 1.0),
    ("choice", r"\text{(C)}", r"\textbf{(C)}", 1.0),
    ("choice", r"\text{(C)}", "C", 1.0),
    ("choice", "(C)", "(D)", 0.0),
    ("choice", r"\text{(A)}", "B", 0.0),
    # ---- lists, sets, vectors, bases
    ("list", "1, 2, 3", "3, 2, 1", 1.0),
    ("list", "1, 2", "1, 3", 0.0),
    ("list", "2, 3", "2 and 3", 1.0),
    ("list", "2, 3", "2 and 4", 0.0),
    ("list", "2, 3", r"2 \text{ or } 3", 1.0),
    ("list", r"\{1,2\}", r"\{2, 1\}", 1.0),
    ("list", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", 1.0),
    ("list", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}", 0.0),
    ("list", "10101_2", "10101_2", 1.0),
    ("list", "10101_2", "10111_2", 0.0),
    # ---- the answer tag holds a sentence, or $...$ / \boxed{} around the answer
    ("sentence", r"\sqrt{51}", r"The answer is $\sqrt{51}$.", 1.0),
    ("sentence", r"\sqrt{51}", r"The final answer is \sqrt{51}", 1.0),
    ("sentence", r"\sqrt{51}", r"$\boxed{\sqrt{51}}$", 1.0),
    ("sentence", r"\sqrt{51}", r"\(\sqrt{51}\)", 1.0),
    ("sentence", r"\frac12", r"So $x = \frac{1}{2}$", 1.0),
    ("sentence", r"\frac12", r"So $x = \frac{1}{3}$", 0.0),
    ("sentence", "18", "Janet makes $18 every day.", 1.0),
    ("sentence", r"\text{Evelyn}", "The answer is Evelyn", 1.0),
    ("sentence", r"\text{Evelyn}", "Evelyn is not the answer", 0.0),
]

# Malformed model output: scored 0.0, never raised.
MALFORMED = [
    r"<answer>\frac{1}{2</answer>",
    "<answer>}}}{{{</answer>",
    "<answer>5}+1</answer>",  # unbalanced: must not be read as \boxed{5}
    r"<answer>\boxed{</answer>",
    "<answer>$$</answer>",
    "<answer>" + "(" * 3000 + "</answer>",
    "<answer>" + r"\sqrt{" * 200 + "5" + "}" * 200 + "</answer>",
    "<answer>\x00\ufffd\\\\\\</answer>",
    None,
    12345,
]


def _ids(cases):
    return [f"{c[0]}:{c[1]}|{c[2]}|{c[3]:g}" for c in cases]


@pytest.fixture(autouse=True, scope="module")
def _pool_of_two():
    m.configure(workers=2, timeout=5.0)
    yield
    m.configure(workers=2, timeout=5.0)


def test_corpus_is_large_and_two_sided():
    assert len(CORPUS) >= 60
    for category in {c[0] for c in CORPUS}:
        expected = {c[3] for c in CORPUS if c[0] == category}
        assert expected == {0.0, 1.0}, f"category {category!r} lacks a positive or a negative case"


@pytest.mark.parametrize("category, gold, answer, expected", CORPUS, ids=_ids(CORPUS))
def test_answer_equivalence_corpus(category, gold, answer, expected):
    assert m.math_accuracy(None, [f"<answer>{answer}</answer>"], answer=[gold]) == [expected]


def test_corpus_in_one_batch_without_errors():
    before = m.metrics()
    scores = m.math_accuracy(
        None, [f"<answer>\n{c[2]}\n</answer>" for c in CORPUS], answer=[c[1] for c in CORPUS]
    )
    assert scores == [c[3] for c in CORPUS]
    after = m.metrics()
    assert after["timeouts"] == before["timeouts"] and after["errors"] == before["errors"]


def test_malformed_output_scores_zero_and_never_raises():
    assert m.math_accuracy(None, MALFORMED, answer=["5"] * len(MALFORMED)) == [0.0] * len(MALFORMED)


# ------------------------------------------------------------------------ gold column layouts

# (final answer, perturbed answer), MATH-style and GSM8K-style.
LAYOUT_GOLDS: list[tuple[str, str]] = [
    (r"\sqrt{51}", r"\sqrt{52}"),
    (r"\pi", r"2\pi"),
    ("p - q", "p + q"),
    ("(-2,1)", "(-2,2)"),
    ("x^3+3x-6", "x^3+3x-7"),
    (r"\text{Evelyn}", r"\text{Emily}"),
    (r"\dfrac{7}{12}", r"\dfrac{5}{12}"),
    (r"5\text{ cm}", r"6\text{ cm}"),
    (r"50\%", r"60\%"),
    (r"10,\!080", r"10,\!081"),
    ("[0,1)", "[0,1]"),
    ("x = 3", "x = 4"),
    (r"30^\circ", r"31^\circ"),
    (r"\text{(B)}", r"\text{(D)}"),
    (r"\begin{pmatrix} -1 \\ 4 \end{pmatrix}", r"\begin{pmatrix} 4 \\ -1 \end{pmatrix}"),
    ("18", "19"),
    ("1,000", "1,001"),
    ("-4", "4"),
    ("0.75", "0.7"),
]


def _layouts(final: str) -> dict[str, str]:
    return {
        "final": final,
        "boxed_solution": f"We add the two parts.\nSo the answer is $\\boxed{{{final}}}$.",
        "hash_line": f"We add the two parts.\n#### {final}",
    }


def _completions(final: str) -> dict[str, str]:
    return {
        "answer_tag": f"<reasoning>We add.</reasoning>\n<answer>\n{final}\n</answer>",
        "boxed": f"We add, which gives $\\boxed{{{final}}}$.",
    }


@pytest.mark.parametrize("layout", ["final", "boxed_solution", "hash_line"])
@pytest.mark.parametrize("form", ["answer_tag", "boxed"])
def test_every_gold_layout_scores_itself_one_and_a_perturbation_zero(layout, form):
    golds = [_layouts(g)[layout] for g, _ in LAYOUT_GOLDS]
    right = [_completions(g)[form] for g, _ in LAYOUT_GOLDS]
    wrong = [_completions(p)[form] for _, p in LAYOUT_GOLDS]
    assert m.math_accuracy(None, right, answer=golds) == [1.0] * len(golds)
    assert m.math_accuracy(None, wrong, answer=golds) == [0.0] * len(golds)


DATA_DIR = Path(
    os.environ.get("DLM_TRL_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
GSM8K_TEST = DATA_DIR / "gsm8k" / "test.jsonl"
if not GSM8K_TEST.exists():  # the 20 test rows shipped with dlm_trl
    GSM8K_TEST = Path(__file__).resolve().parents[1] / "dlm_trl" / "tasks" / "data" / "gsm8k" / "test.jsonl"


def test_gsm8k_golds_in_every_layout():
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines() if line.strip()]
    solutions = [r["answer"] for r in rows]
    finals = [s.rsplit("####", 1)[1].strip() for s in solutions]
    layouts = {
        "hash_line": solutions,
        "final": finals,
        "boxed_solution": [
            s.rsplit("####", 1)[0] + f"The answer is $\\boxed{{{f}}}$."
            for s, f in zip(solutions, finals, strict=True)
        ],
    }
    right = [f"<answer>{f}</answer>" for f in finals]
    wrong = [f"<answer>{int(f.replace(',', '')) + 1}</answer>" for f in finals]
    for name, golds in layouts.items():
        scores = m.math_accuracy(None, right + wrong, answer=golds + golds)
        bad = [i for i, s in enumerate(scores) if s != (1.0 if i < len(rows) else 0.0)]
        assert not bad, f"{name}: rows {[i % len(rows) for i in bad[:10]]} scored wrongly"


def test_hash_line_gold_keeps_tuples_and_drops_thousands_separators():
    from dlm_trl_rewards._common import gsm8k_gold

    assert gsm8k_gold("so ... #### 1,000") == "1000"
    assert gsm8k_gold("so ... #### (-2,1)") == "(-2,1)"
    assert gsm8k_gold("so ... #### 1, 2") == "1, 2"
