"""Native Dream (``Dream-org/Dream-v0-*-7B``, ``apple/DiffuCoder-7B-*``): no remote code.

Matches the hub's ``modeling_dream.py``: Qwen2-style pre-norm blocks (q/k/v projections with
bias, ``o_proj`` and the gated ``hidden_act`` MLP without), RMSNorm with the variance in fp32 and the
result cast back before the weight multiply, ``rotate_half`` rotary tables computed in fp32,
bidirectional SDPA with grouped-query heads, the same parameter names (``model.layers.{i}...``,
``lm_head.weight``) and ``padding_idx = pad_token_id`` on the embedding. Logits are *unshifted*
like upstream's: the logit at position i predicts token i+1 (:class:`dlm_trl.models.adapters.DLM`
shifts them); ``labels`` give the same shifted cross-entropy as upstream's causal-LM loss.

Deliberate departures:

* ``attention_mask`` may be 2-D ``[B, T]`` (1 = real token; upstream crashes on an integer
  one); position ids then count real tokens only (as Dream's sampler computes ``tok_idx``) so a
  left-padded row computes what it computes alone. Upstream's 4-D ``[B, 1, T, T]`` boolean or
  additive masks and the string ``"full"`` are accepted too; a query row that may see nothing
  attends to itself. ``position_ids`` are honoured as by the hub code (the Fast-dLLM copy
  replaces them with ``0..T-1``).
* No rotary buffer: the tables are computed per forward in fp32, so ``.to(bfloat16)`` leaves
  them exact (upstream's ``inv_freq`` buffer would be cast) and there is nothing to initialise
  under ZeRO-3 / meta-device loading (upstream's stays uninitialised under transformers 5).
* The block key/value cache of :mod:`dlm_trl.models._layers` replaces upstream's
  ``past_key_values`` / Fast-dLLM ``dual_cache`` arguments.
* No generation mixin (``can_generate()`` is ``False``): dlm-trl samples with its own sampler.
  ``save_pretrained`` still writes ``generation_config.json`` (the hub code's loader needs it),
  and a hub ``auto_map`` is dropped from the config (a native save ships no modeling files).
* Not implemented, rejected by :class:`DreamConfig` with the field named: ``rope_scaling`` types
  other than default, ``use_sliding_window=True`` (upstream only warns and attends fully).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from dlm_trl.models._layers import (
    BlockKVCache,
    DiffusionLMOutput,
    NoAutoregressiveGenerateMixin,
    apply_rotary,
    attend,
    cache_geometry,
    keep_positions,
    keeps_all_positions,
    key_padding_bias,
    merge_block_kv,
    positions_from_mask,
    rotary_tables,
    tied_weights_keys,
)

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init


class DreamConfig(PretrainedConfig):
    """The fields of Dream-7B's ``config.json`` (``model_type`` ``"Dream"``, as the hub spells it)."""

    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 32,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = False,
        tie_word_embeddings: bool = False,
        rope_theta: float | None = 10000.0,
        rope_scaling: dict | None = None,
        use_sliding_window: bool = False,
        sliding_window: int | None = 4096,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        mask_token_id: int = 151666,
        pad_token_id: int | None = 151643,
        **kwargs: Any,
    ):
        # A native checkpoint ships no modeling files: an auto_map would point at files that are absent.
        kwargs.pop("auto_map", None)
        rope_parameters = kwargs.pop("rope_parameters", None)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        self.rope_theta = self._resolve_rope(rope_theta, rope_scaling, rope_parameters)
        # transformers 5 keeps rotary settings in `rope_parameters` (`rope_scaling` is an alias of it).
        self.rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        self._validate()
        super().__init__(tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, **kwargs)
        self.pad_token_id = pad_token_id

    @staticmethod
    def _resolve_rope(rope_theta, rope_scaling, rope_parameters) -> float:
        params: dict[str, Any] = {}
        for src in (rope_parameters, rope_scaling):
            if isinstance(src, dict):
                params.update(src)
        rope_type = params.get("rope_type", params.get("type")) or "default"
        if rope_type != "default":
            raise ValueError(
                f"rope_scaling: rope type {rope_type!r} is not implemented by dlm-trl's native Dream "
                "(only the default rotary embedding, as in Dream-7B's config with rope_scaling: null)"
            )
        theta = params.get("rope_theta", rope_theta)
        return float(10000.0 if theta is None else theta)

    def _validate(self) -> None:
        if self.use_sliding_window:
            raise ValueError(
                "use_sliding_window=True is not implemented by dlm-trl's native Dream (Dream-7B's config sets "
                "use_sliding_window: false; the hub code does not apply a window under SDPA either)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )


DreamOutput = DiffusionLMOutput  # logit i predicts token i+1


class DreamRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(in_dtype)


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, m = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, m, bias=False)
        self.up_proj = nn.Linear(d, m, bias=False)
        self.down_proj = nn.Linear(m, d, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d // self.num_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, bias, past_kv=None, span=None, inplace=False):
        B, Q, _ = x.shape
        q = self.q_proj(x).view(B, Q, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, Q, hd]
        k = self.k_proj(x).view(B, Q, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, Q, hd]
        v = self.v_proj(x).view(B, Q, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past_kv is not None:
            k, v = merge_block_kv(past_kv[0], past_kv[1], k, v, span[0], span[1], inplace)  # [B, Hkv, T, hd]
        a = attend(q, k, v, bias, dropout_p=self.dropout if self.training else 0.0)  # [B, H, Q, hd]
        return self.o_proj(a.transpose(1, 2).reshape(B, Q, self.num_heads * self.head_dim)), k, v


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, bias, past_kv=None, span=None, inplace=False):
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, bias, past_kv, span, inplace)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class DreamBackbone(nn.Module):
    """``model.*`` of the hub layout: embeddings, decoder layers, final norm."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        pad = config.pad_token_id
        padding_idx = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx)
        self.layers = nn.ModuleList([DreamDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False  # set by PreTrainedModel.gradient_checkpointing_enable()


def _attention_bias(
    attention_mask: Any, B: int, T: int, lo: int, hi: int, dtype: torch.dtype, device
) -> torch.Tensor | None:
    """Additive SDPA mask ``[B, 1, hi - lo, T]`` for queries ``lo..hi-1`` over all ``T`` keys, or ``None``."""
    if attention_mask is None or isinstance(attention_mask, str):
        if attention_mask not in (None, "full"):
            raise ValueError(f"attention_mask string {attention_mask!r} not understood (only 'full')")
        return None
    q_pos = torch.arange(lo, hi, device=device)
    if attention_mask.dim() == 2:
        if attention_mask.shape != (B, T):
            raise ValueError(
                f"2-D attention_mask must be [B, T] = {[B, T]} (all positions), got {list(attention_mask.shape)}"
            )
        return key_padding_bias(attention_mask, None if (lo, hi) == (0, T) else q_pos, T, dtype, device)
    if attention_mask.dim() != 4 or attention_mask.shape[-1] != T:
        raise ValueError(
            f"attention_mask must be [B, T] or [B, 1, Q, T] with T={T}, got {list(attention_mask.shape)}"
        )
    m = attention_mask.to(device)
    if m.shape[-2] == T and hi - lo != T:
        m = m[:, :, lo:hi]
    if m.dtype != torch.bool:
        return m.to(dtype)
    m = m.expand(B, m.shape[1], hi - lo, T)
    empty = ~m.any(-1)  # [B, h, Q]: rows that may see nothing see themselves instead of producing NaN
    if bool(empty.any()):
        m = m.clone()
        rows = torch.arange(hi - lo, device=device)
        m[:, :, rows, q_pos] |= empty
    bias = torch.zeros(m.shape, dtype=dtype, device=device)
    return bias.masked_fill(~m, torch.finfo(dtype).min)


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, DreamRMSNorm):
            _init.ones_(module.weight)


class DreamModel(NoAutoregressiveGenerateMixin, DreamPreTrainedModel):
    """Dream's mask predictor with the hub's parameter names: ``f(x) -> logits [B, T, V]``, logit i → token i+1."""

    #: Implements the block key/value cache and ``logits_to_keep`` (contract in :mod:`dlm_trl.models._layers`).
    supports_block_kv_cache = True

    _tied_weights_keys = tied_weights_keys({"lm_head.weight": "model.embed_tokens.weight"})

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBackbone(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(self, "generation_config", None) is None:
            self.generation_config = GenerationConfig(
                eos_token_id=config.eos_token_id,
                pad_token_id=config.pad_token_id,
                bos_token_id=config.bos_token_id,
            )
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``save_pretrained`` plus ``generation_config.json``, which the hub code's loader requires
        (transformers writes it only for models that ``can_generate()``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        target = os.path.join(save_directory, "generation_config.json")
        if (
            kwargs.get("is_main_process", True)
            and self.generation_config is not None
            and not os.path.exists(target)
        ):
            self.generation_config.save_pretrained(save_directory)


    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # [B, Q]: all T positions, or the block lo..hi-1
        attention_mask: torch.Tensor | str | None = None,  # [B, T] 1 = real, [B, 1, Q|T, T], or "full"
        position_ids: torch.LongTensor | None = None,  # [B, Q] or [B, T]
        kv_cache: BlockKVCache | None = None,
        cache_span: tuple[int, int] | None = None,
        return_kv_cache: bool = False,
        update_cache: bool = False,
        labels: torch.LongTensor | None = None,  # [B, Q] token ids; logit i is scored against label i+1
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor | None = None,  # None / 0 = all Q, n = the last n, or indices
        **kwargs: Any,
    ) -> DreamOutput | tuple:
        """Logits ``[B, Q, V]`` (logit i predicts token i+1) of all positions, or of ``cache_span`` with a
        ``kv_cache``, narrowed to ``logits_to_keep`` when given (contracts in :mod:`dlm_trl.models._layers`).
        ``labels`` give upstream's shifted cross-entropy and cannot be combined with ``logits_to_keep``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if labels is not None and not keeps_all_positions(logits_to_keep):
            raise ValueError("labels and logits_to_keep cannot be combined (the loss needs every position)")
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, Q, D]
        B, Q = x.shape[:2]
        T, lo, hi = cache_geometry(Q, kv_cache, cache_span, len(self.model.layers))

        mask2d = (
            attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
        )
        if position_ids is None:
            position_ids = positions_from_mask(mask2d, B, T, x.device)
        position_ids = position_ids.to(x.device)
        if position_ids.shape[-1] == T and Q != T:
            position_ids = position_ids[..., lo:hi]
        position_ids = position_ids.expand(B, Q)
        cos, sin = rotary_tables(
            position_ids, self.model.layers[0].self_attn.head_dim, self.config.rope_theta, x.dtype
        )
        bias = _attention_bias(attention_mask, B, T, lo, hi, x.dtype, x.device)

        checkpoint = (
            self.model.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and kv_cache is None
        )
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for i, layer in enumerate(self.model.layers):
            past = kv_cache.layer(i) if kv_cache is not None else None
            if checkpoint:
                x, k, v = self.model._gradient_checkpointing_func(layer.__call__, x, cos, sin, bias)
            else:
                x, k, v = layer(x, cos, sin, bias, past, (lo, hi), update_cache)
            if return_kv_cache:
                keys.append(k)
                values.append(v)
        logits = self.lm_head(self.model.norm(keep_positions(x, logits_to_keep)))  # [B, K, V]

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(
                shift_logits, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100
            )
        cache = None
        if return_kv_cache:  # with update_cache the given cache's tensors were written in place: hand it back
            cache = kv_cache if kv_cache is not None and update_cache else BlockKVCache(keys, values)
        out = DreamOutput(loss=loss, logits=logits, kv_cache=cache)
        return out if return_dict is not False else out.to_tuple()


__all__ = ["DreamConfig", "DreamModel", "DreamOutput"]
