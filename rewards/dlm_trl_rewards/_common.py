"""Helpers shared by the first-party rewards: completion -> text, answer extraction, columns.

Everything here is pure Python and imports nothing from ``dlm_trl`` or ``trl``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "completion_to_text",
    "extract_answer_tag",
    "last_boxed",
    "last_number",
    "gsm8k_gold",
    "column",
]

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# An optional sign, digits with optional thousands separators, an optional decimal part.
# "1,000" and "-3.5" are numbers; the "," of "3, 4" is not a thousands separator.
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")  # "1,000"; not "1,2"


def _content_to_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # multimodal parts: [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def completion_to_text(completion: Any) -> str:
    """Return the text of one completion.

    A completion is either a string or a list of chat messages (``{"role", "content"}`` dicts);
    for messages the content of the last ``assistant`` message is used (the last message if no
    message has that role). ``None`` gives ``""``.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_to_text(completion.get("content"))
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, dict)]
        if not messages:
            return "".join(m for m in completion if isinstance(m, str))
        assistant = [m for m in messages if m.get("role") == "assistant"]
        return _content_to_text((assistant or messages)[-1].get("content"))
    return str(completion)


def extract_answer_tag(text: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` pair, stripped; ``None`` if absent.

    Same rule as d1's ``extract_solution`` (last non-greedy match, across lines).
    """
    matches = _ANSWER_RE.findall(text)
    return matches[-1].strip() if matches else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; ``None`` if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        i = text.find("{", start)
        head = text[start:i] if i >= 0 else ""
        if i >= 0 and head.rstrip() in ("\\boxed", "\\fbox"):
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
        # unbalanced or "\boxed 5" forms: look further left
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` as a plain string (thousands separators removed), or ``None``.

    >>> last_number("She pays $1,250.50, then 3 more.")
    '3'
    >>> last_number("#### -1,000")
    '-1000'
    """
    matches = _NUMBER_RE.findall(text)
    return matches[-1].replace(",", "") if matches else None


def gsm8k_gold(answer: Any) -> str | None:
    """The gold answer of a GSM8K-style ``answer`` field.

    ``"... #### 1,000"`` gives ``"1000"`` (commas are dropped only from a plain number, so
    ``"#### (-2,1)"`` keeps its tuple); any other value is returned stripped (a bare number, LaTeX
    or ``\\boxed{}``, which the caller parses). ``None``/empty give ``None``.
    """
    if answer is None:
        return None
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().rstrip(".")
        if _PLAIN_NUMBER_RE.fullmatch(text):
            text = text.replace(",", "")
    text = text.strip()
    return text or None


def column(columns: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    """Fetch a dataset column passed by TRL as a keyword argument and check its length."""
    if name not in columns:
        present = sorted(k for k in columns if not k.startswith("log_") and k != "trainer_state")
        raise KeyError(
            f"reward {reward!r} needs the dataset column {name!r}; the batch has columns {present}. "
            "TRL passes every dataset column except 'prompt'/'completion' as a keyword argument."
        )
    values = columns[name]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"reward {reward!r}: column {name!r} must be a list (one value per row)")
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: column {name!r} has {len(values)} values for {n} completions")
    return list(values)
