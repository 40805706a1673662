"""Format rewards of d1 for ``<reasoning>...</reasoning>\\n<answer>...</answer>`` completions.

d1 (``diffu-grpo/reward_func.py``) trains GSM8K with three format terms, reproduced here exactly,
including their regular expressions (``re.match`` without ``re.DOTALL``, so ``.*?`` does not cross
a newline: the soft and strict patterns only match when the reasoning and the answer are one line
each; that is d1's behaviour and is kept on purpose):

* :func:`xmlcount_reward` (d1 ``count_xml``): +0.125 for each of ``"<reasoning>\\n"``,
  ``"\\n</reasoning>\\n"``, ``"\\n<answer>\\n"``, ``"\\n</answer>"`` occurring exactly once, minus
  0.001 per character after ``"\\n</answer>\\n"`` and per character (beyond one) after
  ``"\\n</answer>"``; at most 0.5, can be negative.
* :func:`soft_format_reward`: 0.5 if the text starts with
  ``<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>``.
* :func:`strict_format_reward`: 0.5 if the whole text is
  ``<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n``.

:func:`format_reward` (the registered ``format``) is their sum, in [-inf, 1.5]: listing it once
has the same effect on the advantage as listing d1's three functions with weight 1 each.
"""

from __future__ import annotations

import re
from typing import Any

from ._common import completion_to_text

__all__ = [
    "format_reward",
    "xmlcount_reward",
    "soft_format_reward",
    "strict_format_reward",
    "count_xml",
    "soft_format",
    "strict_format",
]

_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")


def count_xml(text: str) -> float:
    """d1's ``count_xml`` score of one text."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def strict_format(text: str) -> float:
    return 0.5 if _STRICT.match(text) else 0.0


def soft_format(text: str) -> float:
    return 0.5 if _SOFT.match(text) else 0.0


def xmlcount_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return [count_xml(completion_to_text(c)) for c in completions]


def soft_format_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return [soft_format(completion_to_text(c)) for c in completions]


def strict_format_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return [strict_format(completion_to_text(c)) for c in completions]


def format_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    """Sum of d1's three format terms (``count_xml`` + soft + strict) per completion."""
    out = []
    for c in completions:
        text = completion_to_text(c)
        out.append(count_xml(text) + soft_format(text) + strict_format(text))
    return out
