"""Model loading and the family adapters.

``load("tiny")`` returns the embedded model; any other name is a local path or a hub id
(hub ids need network unless cached; tests and defaults never use one).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    GenerationConfig,
)

from .adapters import (
    DLM,
    FAMILIES,
    LLADA_MASK_ID,
    UnknownModelFamilyError,
    detect_family,
    resolve_mask_token_id,
)
from .tiny import CHECKPOINT_DIR as TINY_CHECKPOINT_DIR
from .tiny import TinyDLMConfig, TinyDLMForMaskedDiffusion

# Make the tiny model loadable through the Auto classes (TRL and PEFT use them).
for _auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
    try:
        _auto.register(TinyDLMConfig, TinyDLMForMaskedDiffusion)
    except ValueError:  # already registered
        pass
try:
    AutoConfig.register(TinyDLMConfig.model_type, TinyDLMConfig)
except ValueError:
    pass

TINY_ALIASES = ("tiny", "dlm-trl/tiny", "embedded")

__all__ = [
    "DLM",
    "FAMILIES",
    "LLADA_MASK_ID",
    "TINY_CHECKPOINT_DIR",
    "TinyDLMConfig",
    "TinyDLMForMaskedDiffusion",
    "UnknownModelFamilyError",
    "detect_family",
    "load",
    "load_model",
    "load_with_adapter",
    "load_tokenizer",
    "resolve_mask_token_id",
    "resolve_path",
]


def resolve_path(name_or_path: str) -> str:
    """Map the embedded-model aliases to the shipped checkpoint directory."""
    if name_or_path in TINY_ALIASES:
        if not (TINY_CHECKPOINT_DIR / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the embedded tiny model is missing from {TINY_CHECKPOINT_DIR}; rebuild it with `make tiny-model`"
            )
        return str(TINY_CHECKPOINT_DIR)
    return name_or_path


def load_tokenizer(name_or_path: str, **kwargs: Any):
    path = resolve_path(name_or_path)
    trust = kwargs.pop("trust_remote_code", path != str(TINY_CHECKPOINT_DIR))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, **kwargs)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool | None = None,
    **kwargs: Any,
):
    """Load the underlying ``nn.Module`` of a diffusion LM (tiny, LLaDA, Dream, bidirectional)."""
    path = resolve_path(name_or_path)
    is_tiny = path == str(TINY_CHECKPOINT_DIR)
    if trust_remote_code is None:
        trust_remote_code = not is_tiny
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if is_tiny:
        model = TinyDLMForMaskedDiffusion.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = None
        errors = []
        for auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
            try:
                model = auto.from_pretrained(path, config=config, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
                break
            except (ValueError, KeyError) as err:
                errors.append(f"{auto.__name__}: {err}")
        if model is None:
            raise ValueError(f"could not load {name_or_path!r} with any Auto class: " + "; ".join(errors))
    if getattr(model, "generation_config", None) is None:
        # LLaDA's remote code has no GenerationMixin; TRL reads generation_config.
        cfg = model.config
        model.generation_config = GenerationConfig(
            eos_token_id=getattr(cfg, "eos_token_id", None), pad_token_id=getattr(cfg, "pad_token_id", None)
        )
    if device is not None:
        model = model.to(device)
    return model


def load(
    name_or_path: str = "tiny",
    *,
    family: str | None = None,
    mask_token_id: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> tuple[DLM, Any]:
    """Load ``(DLM adapter, tokenizer)`` for a name: ``"tiny"`` or a path / hub id."""
    if os.environ.get("HF_HUB_OFFLINE") is None and name_or_path in TINY_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = load_tokenizer(name_or_path)
    model = load_model(name_or_path, dtype=dtype, device=device, **kwargs)
    return DLM.wrap(model, tokenizer=tokenizer, family=family, mask_token_id=mask_token_id), tokenizer


def load_with_adapter(
    name_or_path: str, adapter_path: str, *, family: str | None = None, device=None, merge: bool = True, **kwargs: Any
) -> tuple[DLM, Any]:
    """Load a base model plus a PEFT (LoRA) adapter saved by a training run."""
    from peft import PeftModel

    tokenizer = load_tokenizer(name_or_path)
    base = load_model(name_or_path, device=device, **kwargs)
    model = PeftModel.from_pretrained(base, adapter_path)
    if merge:
        model = model.merge_and_unload()
    return DLM.wrap(model, tokenizer=tokenizer, family=family), tokenizer
