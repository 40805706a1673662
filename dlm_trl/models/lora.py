"""LoRA target presets per model family, and a check that the targets match what was meant.

The projections are named differently in each family, so a list written for one silently
misses layers of another: the common ``[q_proj, k_proj, v_proj, o_proj, up_proj, down_proj,
gate_proj]`` matches only ``q_proj, k_proj, v_proj, up_proj`` in LLaDA, whose attention output
is ``attn_out`` and whose MLP is ``ff_proj`` / ``up_proj`` / ``ff_out``. Name a preset instead:

============  =====================================================================
preset        modules (every transformer block; never the embeddings or the LM head)
============  =====================================================================
``llada``     q_proj, k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out
``dream``     q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
``tiny``      q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
``auto``      the preset of the loaded model's family
============  =====================================================================

LLaDA's output head is also called ``ff_out`` (``model.transformer.ff_out``), so the ``llada``
preset expands to a regular expression restricted to ``blocks.N.`` modules.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch

LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "llada": ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"),
    "dream": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "tiny": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
#: Regular expressions (PEFT's string form of ``target_modules``) that keep presets inside the blocks.
_BLOCK_PATTERNS = {
    "llada": r".*\.blocks\.\d+\.({})$",
    "dream": r".*\.layers\.\d+\.(?:self_attn|mlp)\.({})$",
    "tiny": r".*layers\.\d+\.({})$",
}


def model_preset(model: Any) -> str | None:
    """The preset name of a loaded model (``llada`` / ``dream`` / ``tiny``), or ``None``."""
    from .adapters import unwrap_module

    base = unwrap_module(model)
    model_type = str(getattr(getattr(base, "config", None), "model_type", "")).lower()
    if model_type == "llada":
        return "llada"
    if model_type == "dream":
        return "dream"
    if model_type == "dlm_trl_tiny":
        return "tiny"
    return None


def _linear_names(model: Any) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def resolve_lora_targets(model: Any, targets: str | Sequence[str] | None) -> str | list[str] | None:
    """PEFT ``target_modules`` for ``targets`` on ``model``: presets expanded, the rest checked.

    * ``None`` → ``None`` (PEFT's default for the architecture, if it has one);
    * ``"auto"`` or ``["auto"]`` → the model family's preset; ``"llada"`` / ``"dream"`` / ``"tiny"``
      (also as a one-element list) → that preset; ``"all-linear"`` is passed through;
    * an explicit list: a name that matches no linear module raises ``ValueError``; a list that
      covers only part of the model family's projections warns, naming what is left out.
    """
    if targets is None:
        return None
    items = [targets] if isinstance(targets, str) else list(targets)
    if len(items) == 1 and items[0] == "all-linear":
        return "all-linear"
    preset = items[0] if len(items) == 1 and items[0] in (*LORA_PRESETS, "auto") else None
    family = model_preset(model)
    if preset == "auto":
        if family is None:
            raise ValueError(
                "lora_target_modules=auto: no preset for this model "
                f"({type(model).__name__}); name the modules or one of {sorted(LORA_PRESETS)}"
            )
        preset = family
    names = _linear_names(model)
    if preset is not None:
        pattern = _BLOCK_PATTERNS[preset].format("|".join(LORA_PRESETS[preset]))
        if not any(re.fullmatch(pattern, n) for n in names):
            raise ValueError(
                f"lora_target_modules={preset}: the {preset} preset ({', '.join(LORA_PRESETS[preset])}) matches "
                f"no module of {type(model).__name__}; use the preset of its family"
                + (f" ({family})" if family else "")
            )
        return pattern
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    unknown = [t for t in items if t not in leaves and not any(re.fullmatch(t, n) for n in names)]
    if unknown:
        raise ValueError(
            f"lora_target_modules {unknown} match no linear module of {type(model).__name__} "
            f"(its projections: {', '.join(sorted(leaves))}). Use a preset: "
            + ", ".join(sorted(LORA_PRESETS)) + " or auto"
        )
    if family is not None:
        left_out = [m for m in LORA_PRESETS[family] if m not in items]
        if left_out and any(t in LORA_PRESETS[family] for t in items):
            warnings.warn(
                f"lora_target_modules {items} leave out {left_out} of this {family} model's projections; "
                f"lora_target_modules={family} adapts all of them",
                stacklevel=2,
            )
    return items


__all__ = ["LORA_PRESETS", "model_preset", "resolve_lora_targets"]
