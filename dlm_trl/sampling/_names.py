"""Names shared by the sampler's parts: the choices of each option and the error for a wrong one."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch

SCHEDULES = ("even", "dream_linspace")
REMASKING_STRATEGIES = ("low_confidence", "random", "margin", "entropy", "origin")
#: Rules that commit a scheduled number ``k`` of candidates ranked by a score.
COUNT_BASED = ("low_confidence", "random", "margin", "entropy")
AFTER_EOS = ("eos", "keep")
#: Dream's ``alg`` names → the ``remasking`` value that implements them here.
DREAM_ALGS = {
    "maskgit_plus": "low_confidence",
    "topk_margin": "margin",
    "entropy": "entropy",
    "origin": "origin",
}
#: Model families with a sampler default (see :meth:`SamplerConfig.for_family`).
SAMPLER_FAMILIES = ("llada", "dream", "bidirectional")
#: Transfer rules: how many of a block's masked positions a step commits (see :mod:`.transfer`).
TRANSFERS = ("topk", "threshold", "factor")
#: Rules that commit a data-dependent number of tokens: a row finishes a block in a variable number of steps.
DYNAMIC_TRANSFERS = ("threshold", "factor")
#: Key/value cache policies (see :mod:`.runner`).
CACHES = ("none", "prefix", "dual")
#: Named classifier-free guidance schedules: the scale at each step (see :mod:`.guidance`).
GUIDANCE_SCHEDULES = ("constant", "linear", "late")

Generators = torch.Generator | Sequence[torch.Generator] | None


def _choice_error(name: str, value: Any, choices: Sequence[str], extra: str = "") -> ValueError:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {name}={value!r}; choose one of {list(choices)}.{hint}{extra}")

