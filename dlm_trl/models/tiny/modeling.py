"""The embedded tiny LLaDA-style model.

A bidirectional (no causal mask) pre-norm transformer that predicts the clean token
at every position, like LLaDA: logits are aligned with the input positions (no shift)
and the mask token id lives in the config. It is transformers-native
(``PretrainedConfig`` / ``PreTrainedModel``) so TRL, PEFT, accelerate and DeepSpeed
treat it like any checkpoint, and it carries a ``generation_config`` (TRL reads one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from .._layers import (
    BlockKVCache,
    DiffusionLMOutput,
    NoAutoregressiveGenerateMixin,
    cache_geometry,
    keep_positions,
    keeps_all_positions,
    merge_block_kv,
)


class TinyDLMConfig(PretrainedConfig):
    model_type = "dlm_trl_tiny"

    def __init__(
        self,
        vocab_size: int = 512,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 704,
        max_position_embeddings: int = 512,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-5,
        mask_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int = 2,
        bos_token_id: int = 3,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        self.initializer_range = initializer_range
        super().__init__(
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rope(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.float()[:, None] * inv[None, :]  # [T, dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, dim]
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Block(nn.Module):
    def __init__(self, config: TinyDLMConfig):
        super().__init__()
        d, h = config.hidden_size, config.num_attention_heads
        self.n_heads, self.head_dim = h, d // h
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, config.rms_norm_eps)
        self.gate_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # [B, Q, D]
        cos: torch.Tensor,  # [Q, hd]
        sin: torch.Tensor,
        attn_bias: torch.Tensor | None,  # [B, 1, Q, T] additive, or None
        cached: tuple[torch.Tensor, torch.Tensor] | None = None,  # keys, values [B, H, T, hd]
        span: tuple[int, int] = (0, 0),
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output ``[B, Q, D]`` and the keys (rotary applied) / values ``[B, H, T, hd]`` attended to."""
        B, Q, D = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, Q, hd]
        k = self.k_proj(h).view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cached is not None:
            k, v = merge_block_kv(cached[0], cached[1], k, v, span[0], span[1], inplace)  # [B, H, T, hd]
        # Bidirectional: no causal mask, only key padding.
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # [B, H, Q, hd]
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, Q, D))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)), k, v


class TinyDLMPreTrainedModel(PreTrainedModel):
    config_class = TinyDLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class TinyDLMForMaskedDiffusion(NoAutoregressiveGenerateMixin, TinyDLMPreTrainedModel):
    """Mask predictor ``f_θ(x_t) -> logits [B, T, V]`` aligned with input positions."""

    #: Implements the block key/value cache and ``logits_to_keep`` (contract in :mod:`dlm_trl.models._layers`).
    supports_block_kv_cache = True

    def __init__(self, config: TinyDLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(self, "generation_config", None) is None:
            self.generation_config = GenerationConfig(
                eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id
            )
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head


    def forward(
        self,
        input_ids: torch.LongTensor,  # [B, T], or [B, hi - lo] with a kv_cache
        attention_mask: torch.Tensor | None = None,  # [B, T] over the whole sequence, 1 = real token
        labels: torch.LongTensor | None = None,
        kv_cache: BlockKVCache | None = None,
        cache_span: tuple[int, int] | None = None,
        return_kv_cache: bool = False,
        update_cache: bool = False,
        logits_to_keep: int | torch.Tensor | None = None,
        **kwargs,
    ) -> DiffusionLMOutput:
        """Logits ``[B, Q, V]`` of all positions, or of ``cache_span`` with a ``kv_cache`` (contract in
        :mod:`dlm_trl.models._layers`), narrowed to ``logits_to_keep`` when given.

        Unlike the native LLaDA / Dream classes, rotary positions are absolute (``0..T-1``, left
        padding included; ``lo..hi-1`` for a span), as the shipped checkpoint was trained (real tokens
        compute the same either way: rotary scores depend on offsets only). ``labels`` (shaped like the
        logits' positions, -100 = ignored) give the mean cross-entropy, no shift; they cannot be
        combined with ``logits_to_keep``.
        """
        B, Q = input_ids.shape
        T, lo, hi = cache_geometry(Q, kv_cache, cache_span, len(self.layers))
        if attention_mask is not None and attention_mask.shape[-1] != T:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions, expected {T} (with a kv_cache "
                "the mask describes the whole cached sequence)"
            )
        if labels is not None and not keeps_all_positions(logits_to_keep):
            raise ValueError("labels and logits_to_keep cannot be combined (the loss needs every position)")
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {T} tokens exceeds max_position_embeddings={self.config.max_position_embeddings}; "
                "shorten the prompt or the generation length"
            )
        x = self.embed_tokens(input_ids)  # [B, Q, D]
        hd = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = _rope(torch.arange(T, device=input_ids.device), hd, self.config.rope_theta)  # [T, hd]
        cos, sin = cos[lo:hi].to(x.dtype), sin[lo:hi].to(x.dtype)  # [Q, hd]
        attn_bias = None
        if attention_mask is not None and not bool(attention_mask.all()):
            keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
            attn_bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, -math.inf)
            # a fully padded query row must still see something: let it attend to itself
            attn_bias = attn_bias.expand(B, 1, Q, T).clone()  # [B, 1, Q, T]
            rows = torch.arange(Q, device=x.device)
            attn_bias[:, :, rows, rows + lo] = 0.0
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            cached = None if kv_cache is None else kv_cache.layer(i)
            x, k, v = layer(x, cos, sin, attn_bias, cached, (lo, hi), update_cache)
            if return_kv_cache:
                keys.append(k)
                values.append(v)
        logits = self.lm_head(self.norm(keep_positions(x, logits_to_keep)))  # [B, K, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100)
        cache = None
        if return_kv_cache:
            # with update_cache the given cache's tensors were written in place: hand back that object
            cache = kv_cache if kv_cache is not None and update_cache else BlockKVCache(keys, values)
        return DiffusionLMOutput(loss=loss, logits=logits, kv_cache=cache)
