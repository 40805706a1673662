"""Pieces shared by the native LLaDA and Dream implementations.

Both families are bidirectional transformers with rotary position embeddings in the
``rotate_half`` convention (the first half of each head's channels pairs with the second
half), so the rotary tables, the padding-aware attention and the block key/value cache are
written once here.

**Padding.** A 2-D ``attention_mask`` ``[B, T]`` (1/True = real token) hides padded keys from
every query, and position ids count only real tokens (``cumsum(mask) - 1``), so a left-padded
row computes exactly what it computes alone. Padded *query* rows attend to themselves only
(their outputs are garbage that callers ignore, but never NaN).

**Block key/value cache** (the interface the fast-rollouts sampler builds on): a forward with
``return_kv_cache=True`` returns, for every layer, the keys (rotary applied) and values of all
``T`` positions. A later forward with ``kv_cache=cache, cache_span=(lo, hi)`` and
``input_ids`` of shape ``[B, hi - lo]`` computes only positions ``lo..hi-1`` as queries; their
fresh keys/values replace the cached ones at ``lo..hi-1`` (in a copy unless
``update_cache=True``) and the queries attend to all ``T`` positions. The logits returned are
those of the ``hi - lo`` block positions.

**logits_to_keep** (a ``forward`` keyword of every model class): ``None`` or ``0`` = the logits of all
computed positions; an ``int n > 0`` = the last ``n`` of them (transformers' convention); a 1-D
integer tensor = those positions. Positions count among the computed ones (all ``T``, or the
``hi - lo`` of a ``cache_span``); the final norm and the output projection run on the kept ones only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput


@dataclass
class BlockKVCache:
    """Per-layer keys ``[B, H_kv, T, D]`` (rotary applied) and values of a full sequence."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def seq_len(self) -> int:
        return self.keys[0].shape[-2] if self.keys else 0

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[i], self.values[i]


def tied_weights_keys(mapping: dict[str, str]) -> dict[str, str] | list[str]:
    """``_tied_weights_keys`` in the installed transformers' format for ``{tied: source}`` ``mapping``.

    transformers 5 declares ties as a ``{target: source}`` dict (and ties whatever it names);
    transformers 4.x takes the list of the tied (target) names and ties the output embedding to
    the input embedding itself when ``tie_word_embeddings`` is set.
    """
    from transformers import PreTrainedModel

    if hasattr(PreTrainedModel, "get_expanded_tied_weights_keys"):  # transformers >= 5
        return dict(mapping)
    return list(mapping)


def positions_from_mask(attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """Position ids ``[B, T]``: ``0..T-1`` without a mask, else the count of real tokens before each one."""
    if attention_mask is None:
        return torch.arange(T, device=device).unsqueeze(0).expand(B, T)
    m = attention_mask.to(device).long()
    return (m.cumsum(-1) - 1).clamp_min(0)


def rotary_tables(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``[B, 1, T, head_dim]`` for ``position_ids [B, T]`` (computed in fp32)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    )
    with torch.autocast(position_ids.device.type, enabled=False):
        freqs = position_ids.float()[..., None] * inv_freq  # [B, T, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, hd]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def key_padding_bias(
    attention_mask: torch.Tensor | None, q_positions: torch.Tensor | None, T: int, dtype, device
) -> torch.Tensor | None:
    """Additive SDPA mask ``[B, 1, Q, T]`` hiding padded keys, or ``None`` when nothing is padded.

    ``q_positions`` ``[Q]`` are the sequence indices of the queries (``None`` = all ``T``); a
    padded query may see itself so its softmax is never over an empty set.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.to(device).bool()  # [B, T]
    if bool(keep.all()):
        return None
    B = keep.shape[0]
    if q_positions is None:
        q_positions = torch.arange(T, device=device)
    Q = q_positions.shape[0]
    allowed = keep[:, None, None, :].expand(B, 1, Q, T).clone()  # [B, 1, Q, T]
    allowed[:, :, torch.arange(Q, device=device), q_positions] = True
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def attend(
    q: torch.Tensor,  # [B, H, Q, D]
    k: torch.Tensor,  # [B, H_kv, T, D]
    v: torch.Tensor,  # [B, H_kv, T, D]
    bias: torch.Tensor | None,  # [B, 1, Q, T] additive
    *,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Bidirectional SDPA with grouped-query heads (keys/values repeated to ``H``)."""
    H, Hkv = q.shape[1], k.shape[1]
    if H != Hkv:
        rep = H // Hkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=False)


def merge_block_kv(
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lo: int,
    hi: int,
    inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values of all positions with ``lo..hi-1`` replaced by the fresh block ``k, v``."""
    if not inplace:
        cache_k, cache_v = cache_k.clone(), cache_v.clone()
    cache_k[:, :, lo:hi] = k
    cache_v[:, :, lo:hi] = v
    return cache_k, cache_v


def cache_geometry(
    num_inputs: int, kv_cache: BlockKVCache | None, cache_span: tuple[int, int] | None, num_layers: int
) -> tuple[int, int, int]:
    """``(T, lo, hi)`` of a forward over ``num_inputs`` positions: ``(Q, 0, Q)`` without a cache, else the
    cache's length and the span, checked against the inputs and the model's layer count (``ValueError``)."""
    Q = num_inputs
    if kv_cache is None:
        if cache_span is not None:
            raise ValueError("cache_span needs a kv_cache (from a forward with return_kv_cache=True)")
        return Q, 0, Q
    if cache_span is None:
        raise ValueError("a kv_cache needs cache_span=(lo, hi): the positions the input_ids stand for")
    T = kv_cache.seq_len
    lo, hi = int(cache_span[0]), int(cache_span[1])
    if not (0 <= lo < hi <= T) or hi - lo != Q:
        raise ValueError(f"cache_span={cache_span} does not fit {Q} input tokens and a cache of {T} positions")
    if len(kv_cache.keys) != num_layers:
        raise ValueError(f"kv_cache has {len(kv_cache.keys)} layers, the model {num_layers}")
    return T, lo, hi


def keeps_all_positions(logits_to_keep: int | torch.Tensor | None) -> bool:
    """Whether ``logits_to_keep`` asks for every computed position (``None`` or ``0``)."""
    if logits_to_keep is None:
        return True
    return not isinstance(logits_to_keep, torch.Tensor) and int(logits_to_keep) == 0


def keep_positions(x: torch.Tensor, logits_to_keep: int | torch.Tensor | None) -> torch.Tensor:
    """``x [B, Q, ...]`` at the positions ``logits_to_keep`` names (see the module docstring): ``[B, K, ...]``.

    ``None`` / ``0`` return ``x`` itself. Raises ``ValueError`` for an ``n`` outside ``1..Q`` or a
    tensor that is not a 1-D integer index.
    """
    if keeps_all_positions(logits_to_keep):
        return x
    Q = x.shape[1]
    if isinstance(logits_to_keep, torch.Tensor):
        idx = logits_to_keep
        if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(
                f"logits_to_keep tensor must be 1-D integer indices, got shape {list(idx.shape)} {idx.dtype}"
            )
        return x[:, idx.to(x.device)]
    n = int(logits_to_keep)
    if not 0 < n <= Q:
        raise ValueError(f"logits_to_keep={n} outside 0..{Q} (the positions this forward computes)")
    return x[:, Q - n :]


@dataclass
class DiffusionLMOutput(ModelOutput):
    """What the native models return: ``logits [B, Q, V]`` for the ``Q`` computed positions, the loss when
    ``labels`` were given, and the block ``kv_cache`` when requested."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    kv_cache: BlockKVCache | None = None


class NoAutoregressiveGenerateMixin:
    """For the mask predictors' ``PreTrainedModel`` classes: they have no autoregressive ``.generate()``
    (dlm-trl samples with :func:`dlm_trl.sampling.generate`), said explicitly so transformers does not warn
    on every load, yet they keep ``prepare_inputs_for_generation``, which PEFT's ``CAUSAL_LM`` wrapper
    (TRL's default ``lora_task_type``) requires."""

    @classmethod
    def can_generate(cls) -> bool:
        return False

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """Inputs of one forward."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}


__all__ = [
    "BlockKVCache",
    "DiffusionLMOutput",
    "NoAutoregressiveGenerateMixin",
    "apply_rotary",
    "attend",
    "cache_geometry",
    "keep_positions",
    "keeps_all_positions",
    "key_padding_bias",
    "merge_block_kv",
    "positions_from_mask",
    "rotary_tables",
    "rotate_half",
    "tied_weights_keys",
]
