"""One interface over diffusion-LM families: ids containing the mask token → logits aligned
with the input positions.

Families:

* ``llada`` — LLaDA / LLaDA-1.5 / MMaDA style remote-code checkpoints and the embedded
  tiny model: the logit at position i predicts token i (no shift). Mask id from the
  config (``mask_token_id``) or LLaDA's 126336.
* ``dream`` — Dream-7B style checkpoints trained from an autoregressive init: the logit
  at position i predicts token i+1, so logits are shifted right by one position.
* ``bidirectional`` — any transformers model run with bidirectional attention (e.g.
  ModernBERT, Gemma with ``use_bidirectional_attention=True``): no shift, mask id from
  the tokenizer.

The family is detected from the config (``model_type`` / ``architectures``) and can
always be overridden with ``family=``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

FAMILIES = ("llada", "dream", "bidirectional")
LLADA_MASK_ID = 126336

_LLADA_HINTS = ("llada", "mmada", "dlm_trl_tiny")
_DREAM_HINTS = ("dream",)
_BIDIRECTIONAL_HINTS = ("modernbert", "bert", "roberta", "deberta", "electra")


class UnknownModelFamilyError(ValueError):
    pass


def unwrap_module(module: Any) -> Any:
    """The model class under DDP / DeepSpeed (``.module``) and PEFT (``get_base_model()``) wrappers."""
    for _ in range(8):
        if hasattr(module, "get_base_model"):
            module = module.get_base_model()
        elif hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
            module = module.module
        else:
            break
    return module


def detect_family(config: Any) -> str:
    """Guess the family of a transformers config; raise with the override to use if unsure."""
    names = [str(getattr(config, "model_type", "") or "").lower()]
    names += [str(a).lower() for a in (getattr(config, "architectures", None) or [])]
    joined = " ".join(names)
    if any(h in joined for h in _LLADA_HINTS):
        return "llada"
    if any(h in joined for h in _DREAM_HINTS):
        return "dream"
    if getattr(config, "use_bidirectional_attention", False) or any(h in joined for h in _BIDIRECTIONAL_HINTS):
        return "bidirectional"
    raise UnknownModelFamilyError(
        f"cannot tell which diffusion-LM family model_type={names[0]!r} "
        f"(architectures={getattr(config, 'architectures', None)}) belongs to. "
        f"Pass family=one of {FAMILIES} (command line: --model-family for dlm-trl eval, --model_family for recipes). Only models that predict "
        "masked tokens with bidirectional attention can be used."
    )


def resolve_mask_token_id(config: Any, tokenizer: Any = None, family: str | None = None) -> int:
    """Mask id: config ``mask_token_id`` → tokenizer ``mask_token_id`` → LLaDA's default."""
    for src in (config, tokenizer):
        mid = getattr(src, "mask_token_id", None) if src is not None else None
        if isinstance(mid, int):
            return mid
    if family == "llada":
        return LLADA_MASK_ID
    raise ValueError(
        "no mask token: neither the model config nor the tokenizer defines mask_token_id. "
        "Pass mask_token_id=... (command line: --mask-token-id for dlm-trl eval, --mask_token_id for recipes) or use a tokenizer with a mask token."
    )


@dataclass
class DLM:
    """A diffusion LM seen through one interface.

    ``dlm(input_ids [B, T], attention_mask=None) -> logits [B, T, V]`` where the logit at
    position i is the model's distribution for the (masked) token at position i.
    ``module`` is the underlying ``nn.Module`` (possibly wrapped by PEFT/DeepSpeed).
    """

    module: Any
    mask_token_id: int
    family: str = "llada"
    eos_token_id: int | None = None
    pass_attention_mask: bool = True
    _mask_mode: str | None = field(default=None, repr=False)
    _warned_padding: bool = field(default=False, repr=False)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; choose one of {FAMILIES}")

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
    ) -> torch.Tensor:
        """Aligned logits ``[B, T, V]``; with ``logits_to_keep=n`` only those of the last ``n`` positions,
        ``[B, n, V]`` — computed only there (no vocabulary projection of the other positions) when the module
        implements ``logits_to_keep`` (dlm-trl's native classes and the embedded model), sliced otherwise."""
        T = input_ids.shape[1]
        n = None if logits_to_keep is None or int(logits_to_keep) == 0 else int(logits_to_keep)
        if n is not None and not 0 < n <= T:
            raise ValueError(f"logits_to_keep={logits_to_keep} outside 1..{T} (the sequence length)")
        kwargs: dict[str, Any] = {}
        shift = 1 if self.family == "dream" else 0
        narrowed = n is not None and n + shift <= T and self.keeps_selected_logits
        if narrowed:
            # Dream's aligned logits at T-n..T-1 are its raw logits at T-n-1..T-2.
            kwargs["logits_to_keep"] = n + shift
        if attention_mask is not None and self.pass_attention_mask and not bool(attention_mask.all()):
            mode = self.mask_mode
            if mode == "dream_remote":
                # Dream's hub code takes what its own sampler builds: a [B, 1, T, T] boolean mask and
                # position ids counting real tokens only (a 2-D integer mask crashes its SDPA call).
                keep = attention_mask.bool()
                kwargs["attention_mask"] = keep[:, None, None, :] & keep[:, None, :, None]
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).masked_fill(~keep, 1)
            elif mode == "ignored":
                if not self._warned_padding:
                    warnings.warn(
                        "this model's own (remote) code ignores the attention mask, so left padding is attended to "
                        "and outputs depend on how rows are padded and batched; dlm-trl's native implementation "
                        "(load without remote_code / --remote-code) honours it",
                        stacklevel=2,
                    )
                    self._warned_padding = True
            else:
                kwargs["attention_mask"] = attention_mask
        out = self.module(input_ids=input_ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)  # [B, T, V]
        if narrowed:
            return logits[:, : logits.shape[1] - shift]  # [B, n, V]
        if self.family == "dream":
            # Dream: logits[i] predicts token i+1 → aligned logits for i come from i-1.
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits if n is None else logits[:, T - n :]

    @property
    def keeps_selected_logits(self) -> bool:
        """Whether the module computes logits only at the positions ``logits_to_keep`` names (the contract of
        :mod:`dlm_trl.models._layers`): dlm-trl's native classes and the embedded model."""
        return bool(getattr(type(unwrap_module(self.module)), "supports_block_kv_cache", False))

    @property
    def mask_mode(self) -> str:
        """How the 2-D padding mask reaches the module: ``"2d"`` (native models, the tiny model, most
        transformers models), ``"dream_remote"`` (Dream's hub code: 4-D boolean + position ids) or
        ``"ignored"`` (LLaDA's hub code, which never applies it)."""
        if self._mask_mode is None:
            base = unwrap_module(self.module)
            remote = type(base).__module__.startswith("transformers_modules")
            self._mask_mode = "2d"
            if remote and self.family == "dream":
                self._mask_mode = "dream_remote"
            elif remote and self.family == "llada":
                self._mask_mode = "ignored"
        return self._mask_mode

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @classmethod
    def wrap(
        cls,
        module: Any,
        *,
        tokenizer: Any = None,
        family: str | None = None,
        mask_token_id: int | None = None,
    ) -> DLM:
        """Wrap a loaded model, detecting family and mask id from its config unless given."""
        if isinstance(module, DLM):
            return module
        config = getattr(module, "config", None)
        family = family or detect_family(config)
        if mask_token_id is None:
            mask_token_id = resolve_mask_token_id(config, tokenizer, family)
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        if eos is None and config is not None:
            eos = getattr(config, "eos_token_id", None)
            if isinstance(eos, list):
                eos = eos[0]
        return cls(module=module, mask_token_id=int(mask_token_id), family=family, eos_token_id=eos)
