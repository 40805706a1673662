"""Native LLaDA (``GSAI-ML/LLaDA-8B-Instruct``, ``LLaDA-8B-Base``, ``LLaDA-1.5``), transformers 4.56+ and 5.

Loads the hub checkpoints with ``LLaDAModelLM.from_pretrained(path)``, no remote code. What
matches the hub's ``modeling_llada.py``: the parameter names and shapes (``model.transformer.…``),
``config.json`` (``model_type: "llada"``, every field kept), and the numerics — RMSNorm
normalised in fp32 and cast back before the weight multiply, rotary embeddings in fp32 when
``rope_full_precision``, bidirectional attention with grouped-query heads, the llama block's
``ff_out(act(ff_proj(x)) * up_proj(x))`` (or the sequential block's fused ``att_proj``),
``scale_logits``, ``input_emb_norm``, ``embedding_size`` logit columns. Golden-tested in
``tests/test_native_llada.py``.

Deliberate departures (identical results when nothing is padded):

* the ``attention_mask`` is honoured (the hub code builds a bias and then calls SDPA with
  ``attn_mask=None``, so padding is attended to), and rotary position ids count real tokens
  only, so a left-padded row computes what it computes alone;
* the key/value cache is the block cache of :mod:`dlm_trl.models._layers` (``kv_cache``,
  ``cache_span``), the same contract as Fast-dLLM's dual cache (``replace_position``), not the
  hub's append-only ``past_key_values``;
* ``save_pretrained`` writes no ``auto_map`` (no remote code is shipped with the weights).

Not implemented (``ValueError`` naming the field): ALiBi / no rotary, ``block_group_size`` > 1,
layer norms other than ``rms``, block types other than ``llama`` / ``sequential``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as hf_init
except ImportError:  # transformers 4.x initialises only the modules a checkpoint did not fill
    hf_init = nn.init
from transformers.modeling_layers import GradientCheckpointingLayer  # transformers >= 4.52

from ._layers import (
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

# LLaDA-8B's mask token (``<|mdm_mask|>``). The hub configuration class falls back to 50256
# (GPT-2's end of text, a leftover of OLMo's defaults) when ``config.json`` has no
# ``mask_token_id``; every LLaDA checkpoint sets 126336, so that is the default here.
LLADA_MASK_TOKEN_ID = 126336

_LLAMA_ACTIVATIONS = ("silu", "gelu", "relu")
_SEQUENTIAL_ACTIVATIONS = ("silu", "gelu", "relu", "swiglu")


class LLaDAConfig(PretrainedConfig):
    """The hub's ``config.json`` fields; defaults are LLaDA-8B-Instruct's values.

    (The hub's configuration class defaults to a GPT-2-sized OLMo model instead; real LLaDA
    configs spell out every field, so the defaults only matter for hand-written configs.)
    Unknown fields are kept and saved back. ``init_device``, ``init_fn``, ``precision`` and
    ``flash_attention`` are kept for fidelity; only ``init_fn`` / ``init_std`` /
    ``init_cutoff_factor`` have an effect here (from-scratch initialisation).
    """

    model_type = "llada"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
    }

    # Every field with its default. ``__init__`` sets them explicitly (instead of annotated class
    # fields, which only transformers 5 turns into a dataclass ``__init__``), so the class behaves
    # the same under transformers 4.x and 5.
    _FIELDS = {
        "d_model": 4096,
        "n_heads": 32,
        "n_kv_heads": 32,
        "n_layers": 32,
        "mlp_ratio": 4,
        "mlp_hidden_size": 12288,
        "activation_type": "silu",
        "block_type": "llama",
        "block_group_size": 1,
        "alibi": False,
        "alibi_bias_max": 8.0,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "flash_attention": False,
        "attention_dropout": 0.0,
        "multi_query_attention": None,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "rms_norm_eps": 1e-5,
        "max_sequence_length": 4096,
        "include_bias": False,
        "include_qkv_bias": False,
        "scale_logits": False,
        "vocab_size": 126464,
        "embedding_size": 126464,
        "weight_tying": False,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
        "mask_token_id": LLADA_MASK_TOKEN_ID,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "init_cutoff_factor": None,
        "precision": "amp_bf16",
        "use_cache": False,
    }

    def __init__(self, **kwargs: Any):
        fields = dict(self._FIELDS)
        for key in list(kwargs):
            name = self.attribute_map.get(key, key)  # hidden_size=... sets d_model, etc.
            if name in fields:
                fields[name] = kwargs.pop(key)
        # Set before the base init (transformers 5's post-init may read them) and again after it
        # (transformers 4.x's base init assigns its own defaults to tie_word_embeddings, i.e.
        # weight_tying, and to the pad/eos token ids).
        for name, value in fields.items():
            setattr(self, name, value)
        super().__init__(**kwargs)
        for name, value in fields.items():
            setattr(self, name, value)

    # Derived sizes (read-only properties, not serialised).
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def effective_n_kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, or what ``multi_query_attention`` implies when it is unset."""
        if self.n_kv_heads is None:
            return 1 if self.multi_query_attention else self.n_heads
        if self.multi_query_attention is not None:
            implied = 1 if self.multi_query_attention else self.n_heads
            if implied != self.n_kv_heads:
                raise ValueError(
                    f"n_kv_heads={self.n_kv_heads} contradicts multi_query_attention={self.multi_query_attention}"
                )
        return self.n_kv_heads

    @property
    def ff_hidden_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and columns of the logits: ``embedding_size`` (or ``vocab_size``)."""
        return self.embedding_size or self.vocab_size

    @property
    def linear_bias(self) -> bool:
        return bool(self.include_bias)

    @property
    def qkv_bias(self) -> bool:
        return bool(self.include_bias or self.include_qkv_bias)

    @property
    def norm_bias(self) -> bool:
        return bool(self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm)

    def to_dict(self):
        out = super().to_dict()
        if self._auto_class is None:
            # A hub config's auto_map points at modeling files that a native save does not write.
            out.pop("auto_map", None)
        return out

    def check_supported(self) -> None:
        """Raise ``ValueError`` (naming the field and its value) for what this implementation does not run."""

        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"LLaDA config {field}={getattr(self, field)!r}: {why}")

        if self.alibi:
            raise bad("alibi", "ALiBi is not implemented (LLaDA uses rotary embeddings)")
        if not self.rope:
            raise bad("rope", "only rotary position embeddings are implemented")
        if self.layer_norm_type != "rms":
            raise bad("layer_norm_type", "only 'rms' is implemented")
        if self.block_group_size != 1:
            raise bad("block_group_size", "only 1 is implemented (groups rename the parameters)")
        if self.block_type == "llama":
            if self.activation_type not in _LLAMA_ACTIVATIONS:
                raise bad("activation_type", f"a llama block needs one of {_LLAMA_ACTIVATIONS}")
        elif self.block_type == "sequential":
            if self.activation_type not in _SEQUENTIAL_ACTIVATIONS:
                raise bad("activation_type", f"a sequential block needs one of {_SEQUENTIAL_ACTIVATIONS}")
        else:
            raise bad("block_type", "only 'llama' (LLaDA-8B) and 'sequential' are implemented")
        if self.d_model % self.n_heads != 0:
            raise bad("n_heads", f"must divide d_model={self.d_model}")
        if self.n_heads % self.effective_n_kv_heads != 0:
            raise bad("n_kv_heads", f"must divide n_heads={self.n_heads}")
        if self.head_dim % 2 != 0:
            raise bad("n_heads", f"rotary embeddings need an even head size, got {self.head_dim}")
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise bad("embedding_size", f"must be at least vocab_size={self.vocab_size}")
        if self.activation_type == "swiglu" and self.ff_hidden_size % 2 != 0:
            raise bad("mlp_hidden_size", "swiglu needs an even MLP size")


LLaDAModelOutput = DiffusionLMOutput  # logits have embedding_size columns


class LLaDARMSNorm(nn.Module):
    """RMS norm as the hub computes it: normalise in fp32 (autocast off), cast back, then ``weight * x + bias``."""

    def __init__(self, size: int, eps: float, affine: bool, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            h = x.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            h = h.to(dtype)
        if self.weight is None:
            return h
        h = self.weight * h
        return h if self.bias is None else h + self.bias


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    # swiglu: the first half of the projection is the value, the second half the gate
    value, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * value


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p, training) if p > 0.0 and training else x


def _tag(linear: nn.Module, role: str, fan_in: int, layer_id: int | None = None) -> nn.Module:
    """Record what a projection is for ``_init_weights`` (from-scratch initialisation only)."""
    linear._llada_init = (role, fan_in, layer_id)
    return linear


class _LLaDABlockBase(GradientCheckpointingLayer):
    """Shared attention / residual plumbing of the llama and sequential blocks."""

    def __init__(self, config: LLaDAConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.config = config
        d, hd, kvh = config.d_model, config.head_dim, config.effective_n_kv_heads
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, kvh, hd
        self.kv_dim = kvh * hd
        eps, affine, nb = config.rms_norm_eps, config.layer_norm_with_affine, config.norm_bias
        self.attn_norm = LLaDARMSNorm(d, eps, affine, nb)
        self.ff_norm = LLaDARMSNorm(d, eps, affine, nb)
        if config.attention_layer_norm:
            qk_affine = config.attention_layer_norm_with_affine
            self.q_norm = LLaDARMSNorm(d, eps, qk_affine, nb)
            self.k_norm = LLaDARMSNorm(self.kv_dim, eps, qk_affine, nb)
        else:
            self.q_norm = self.k_norm = None
        self.attn_out = _tag(nn.Linear(d, d, bias=config.linear_bias), "out", d, layer_id)
        ff_in = config.ff_hidden_size // 2 if config.activation_type == "swiglu" else config.ff_hidden_size
        self.ff_out = _tag(nn.Linear(ff_in, d, bias=config.linear_bias), "ff_out", ff_in, layer_id)

    def _qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,  # [B, Q, D]
        cos: torch.Tensor,  # [B, 1, Q, hd]
        sin: torch.Tensor,
        bias: torch.Tensor | None,  # [B, 1, Q, T] additive, or None
        cached: tuple[torch.Tensor, torch.Tensor] | None = None,
        span: tuple[int, int] | None = None,
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        B, Q, D = x.shape
        q, k, v = self._qkv(self.attn_norm(x))
        if self.q_norm is not None:
            q, k = self.q_norm(q).to(k.dtype), self.k_norm(k).to(k.dtype)
        q = q.view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, Q, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, Q, self.n_kv_heads, self.head_dim).transpose(1, 2)
        dtype = q.dtype
        with torch.autocast(x.device.type, enabled=False):
            if cfg.rope_full_precision:
                q, k = q.float(), k.float()
            q = apply_rotary(q, cos.to(q.dtype), sin.to(q.dtype)).to(dtype)
            k = apply_rotary(k, cos.to(k.dtype), sin.to(k.dtype)).to(dtype)
        if cached is not None:
            k, v = merge_block_kv(cached[0], cached[1], k, v, span[0], span[1], inplace)
        p = cfg.attention_dropout if self.training else 0.0
        att = attend(q, k, v, bias, dropout_p=p)  # [B, H, Q, hd]
        att = att.transpose(1, 2).contiguous().view(B, Q, D)
        x = x + _dropout(self.attn_out(att), cfg.residual_dropout, self.training)
        x = x + _dropout(self._mlp(self.ff_norm(x)), cfg.residual_dropout, self.training)
        return x, k, v


class LLaDALlamaBlock(_LLaDABlockBase):
    """LLaDA-8B's block: separate ``q_proj/k_proj/v_proj``, gated MLP ``ff_out(act(ff_proj) * up_proj)``."""

    def __init__(self, config: LLaDAConfig, layer_id: int):
        super().__init__(config, layer_id)
        d, hidden = config.d_model, config.ff_hidden_size
        qkv_bias = config.qkv_bias
        self.q_proj = _tag(nn.Linear(d, d, bias=qkv_bias), "in", d)
        self.k_proj = _tag(nn.Linear(d, self.kv_dim, bias=qkv_bias), "in", d)
        self.v_proj = _tag(nn.Linear(d, self.kv_dim, bias=qkv_bias), "in", d)
        self.ff_proj = _tag(nn.Linear(d, hidden, bias=config.linear_bias), "in", d)
        self.up_proj = _tag(nn.Linear(d, hidden, bias=config.linear_bias), "in", d)

    def _qkv(self, h):
        return self.q_proj(h), self.k_proj(h), self.v_proj(h)

    def _mlp(self, h):
        return self.ff_out(_activation(self.config.activation_type, self.ff_proj(h)) * self.up_proj(h))


class LLaDASequentialBlock(_LLaDABlockBase):
    """OLMo's sequential block: one fused ``att_proj`` for q, k, v and an ungated MLP ``ff_out(act(ff_proj))``."""

    def __init__(self, config: LLaDAConfig, layer_id: int):
        super().__init__(config, layer_id)
        d = config.d_model
        self.att_proj = _tag(nn.Linear(d, d + 2 * self.kv_dim, bias=config.qkv_bias), "in", d)
        self.ff_proj = _tag(nn.Linear(d, config.ff_hidden_size, bias=config.linear_bias), "in", d)

    def _qkv(self, h):
        return self.att_proj(h).split((self.config.d_model, self.kv_dim, self.kv_dim), dim=-1)

    def _mlp(self, h):
        return self.ff_out(_activation(self.config.activation_type, self.ff_proj(h)))


class LLaDABackbone(nn.Module):
    """``model``: holds ``transformer`` = {wte, blocks, ln_f, ff_out} exactly as the hub names them."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        d, V = config.d_model, config.padded_vocab_size
        block_cls = LLaDALlamaBlock if config.block_type == "llama" else LLaDASequentialBlock
        self.transformer = nn.ModuleDict(
            {
                "wte": _tag(nn.Embedding(V, d), "emb", d),
                "blocks": nn.ModuleList([block_cls(config, i) for i in range(config.n_layers)]),
                "ln_f": LLaDARMSNorm(d, config.rms_norm_eps, config.layer_norm_with_affine, config.norm_bias),
                # Tied (weight_tying): shares wte's weight and, like the hub's tied logits, has no bias.
                "ff_out": _tag(
                    nn.Linear(d, V, bias=config.linear_bias and not config.weight_tying), "final_out", d
                ),
            }
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        kv_cache: BlockKVCache | None = None,
        cache_span: tuple[int, int] | None = None,
        update_cache: bool = False,
        logits_to_keep: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, BlockKVCache]:
        cfg, tr = self.config, self.transformer
        x = tr["wte"](input_ids) if inputs_embeds is None else inputs_embeds
        B, Q = x.shape[:2]
        device = x.device
        if cfg.input_emb_norm:
            x = x * (cfg.d_model**0.5)
        x = _dropout(x, cfg.embedding_dropout, self.training)

        T, lo, hi = cache_geometry(Q, kv_cache, cache_span, cfg.n_layers)
        if attention_mask is not None and attention_mask.shape[-1] != T:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions, expected {T} (with a kv_cache "
                "the mask describes the whole cached sequence)"
            )

        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, T, device)[:, lo:hi]
        elif position_ids.shape[-1] == T and Q != T:
            position_ids = position_ids[..., lo:hi]
        position_ids = position_ids.to(device).expand(B, Q)
        rope_dtype = torch.float32 if cfg.rope_full_precision else x.dtype
        cos, sin = rotary_tables(position_ids, cfg.head_dim, cfg.rope_theta, rope_dtype)
        q_positions = None if kv_cache is None else torch.arange(lo, hi, device=device)
        bias = key_padding_bias(attention_mask, q_positions, T, x.dtype, device)

        keys, values = [], []
        for i, block in enumerate(tr["blocks"]):
            cached = None if kv_cache is None else kv_cache.layer(i)
            x, k, v = block(x, cos, sin, bias, cached=cached, span=(lo, hi), inplace=update_cache)
            keys.append(k)
            values.append(v)
        if kv_cache is not None and update_cache:
            kv_cache.keys[:], kv_cache.values[:] = keys, values
            new_cache = kv_cache
        else:
            new_cache = BlockKVCache(keys=keys, values=values)
        logits = tr["ff_out"](tr["ln_f"](keep_positions(x, logits_to_keep)))  # [B, K, V]
        if cfg.scale_logits:
            logits = logits * (1 / math.sqrt(cfg.d_model))
        return logits, new_cache


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDALlamaBlock", "LLaDASequentialBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """From-scratch initialisation following ``init_fn`` (only for weights a checkpoint does not provide)."""
        cfg = self.config
        if isinstance(module, LLaDARMSNorm):
            if module.weight is not None:
                hf_init.ones_(module.weight)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
            return
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            return
        role, fan_in, layer_id = getattr(module, "_llada_init", ("in", cfg.d_model, None))
        factor = 0.5 * math.sqrt(cfg.d_model) if role == "emb" and cfg.scale_logits else 1.0
        w, fn = module.weight, cfg.init_fn
        if fn == "mitchell":
            std = factor / math.sqrt(fan_in)
            if layer_id is not None:  # block output projections shrink with depth
                std /= math.sqrt(2 * (layer_id + 1))
            hf_init.trunc_normal_(w, std=std, a=-3 * std, b=3 * std)
        elif fn == "fan_in":
            hf_init.normal_(w, std=factor / math.sqrt(fan_in))
        elif fn == "kaiming_normal":
            hf_init.kaiming_normal_(w, nonlinearity="relu")
        elif fn == "full_megatron":
            residual = cfg.init_std / math.sqrt(2.0 * cfg.n_layers)
            std = {"out": residual, "ff_out": residual, "final_out": cfg.d_model**-0.5}.get(
                role, cfg.init_std
            )
            cut = (cfg.init_cutoff_factor or 3) * std
            hf_init.trunc_normal_(w, std=std, a=-cut, b=cut)
        else:  # "normal" (and anything unknown)
            std = cfg.init_std * factor
            if role == "ff_out":  # the residual MLP output is scaled down with depth
                std /= math.sqrt(2 * cfg.n_layers)
            if cfg.init_cutoff_factor is not None:
                cut = cfg.init_cutoff_factor * std
                hf_init.trunc_normal_(w, std=std, a=-cut, b=cut)
            else:
                hf_init.normal_(w, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            hf_init.zeros_(module.bias)


class LLaDAModelLM(NoAutoregressiveGenerateMixin, LLaDAPreTrainedModel):
    """The mask predictor ``f_θ(x_t) -> logits [B, T, embedding_size]`` (aligned with the input, no shift)."""

    #: Implements the block key/value cache and ``logits_to_keep`` (contract in :mod:`dlm_trl.models._layers`).
    supports_block_kv_cache = True

    _tied_weights_keys = tied_weights_keys(
        {"model.transformer.ff_out.weight": "model.transformer.wte.weight"}
    )

    def __init__(self, config: LLaDAConfig):
        config.check_supported()
        super().__init__(config)
        self.model = LLaDABackbone(config)
        if getattr(self, "generation_config", None) is None:
            self.generation_config = GenerationConfig(
                eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
            )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer["wte"]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer["wte"] = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer["ff_out"]

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer["ff_out"] = value


    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # [B, T], or [B, hi - lo] with a kv_cache
        attention_mask: torch.Tensor | None = None,  # [B, T] over the whole sequence, 1 = real token
        position_ids: torch.LongTensor | None = None,
        kv_cache: BlockKVCache | None = None,
        cache_span: tuple[int, int] | None = None,
        return_kv_cache: bool = False,
        update_cache: bool = False,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        **kwargs,  # use_cache, output_attentions, ... from generic callers: ignored
    ) -> LLaDAModelOutput:
        """Logits of all positions, or of ``cache_span`` with a ``kv_cache``, narrowed to ``logits_to_keep``
        when given (contracts in :mod:`._layers`).

        ``labels`` (same shape as the logits' positions, -100 = ignored) give ``loss``, the mean
        cross-entropy of the predicted tokens, with no shift (the hub code computes no loss); they
        cannot be combined with ``logits_to_keep``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if labels is not None and not keeps_all_positions(logits_to_keep):
            raise ValueError("labels and logits_to_keep cannot be combined (the loss needs every position)")
        logits, cache = self.model(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            kv_cache=kv_cache,
            cache_span=cache_span,
            update_cache=update_cache,
            logits_to_keep=logits_to_keep,
        )
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                labels.to(logits.device).reshape(-1),
                ignore_index=-100,
            )
        out = LLaDAModelOutput(loss=loss, logits=logits, kv_cache=cache if return_kv_cache else None)
        return out if return_dict is not False else out.to_tuple()


__all__ = [
    "LLADA_MASK_TOKEN_ID",
    "LLaDABackbone",
    "LLaDAConfig",
    "LLaDALlamaBlock",
    "LLaDAModelLM",
    "LLaDAModelOutput",
    "LLaDAPreTrainedModel",
    "LLaDARMSNorm",
    "LLaDASequentialBlock",
]
