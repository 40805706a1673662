"""``logits_to_keep`` and the block key/value cache (contract in :mod:`dlm_trl.models._layers`) on the
tiny model and the native LLaDA / Dream classes, the two forward features the fast sampler builds on."""

from __future__ import annotations

import pytest
import torch

from dlm_trl.models._layers import BlockKVCache
from dlm_trl.models.tiny import CHECKPOINT_DIR, TinyDLMConfig, TinyDLMForMaskedDiffusion
from dlm_trl.testing.hub_checkpoints import random_native_model

TOL = 1e-5  # per unit of the largest logit (the random Dream's reach ~7: one-row matmuls differ by ~1e-5)
FAMILIES = ("tiny", "llada", "dream")
LAYERS_FIELD = {"tiny": "num_hidden_layers", "llada": "n_layers", "dream": "num_hidden_layers"}


def _model(family: str, n_layers: int = 2, seed: int = 0):
    """A small random model in eval mode, weights far from their init so that differences show."""
    if family != "tiny":
        return random_native_model(family, seed, **{LAYERS_FIELD[family]: n_layers})
    torch.manual_seed(seed)
    cfg = TinyDLMConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=2, intermediate_size=64
    )
    model = TinyDLMForMaskedDiffusion(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model


def _inputs(model, lengths: list[int], T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random ids ``[B, T]`` and their mask (rows of ``lengths`` real tokens)."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    ids = torch.randint(3, V, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, T - n :] = 1
    return ids.masked_fill(mask == 0, int(model.config.pad_token_id)), mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert _max_diff(a, b) <= TOL * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_logits_to_keep(family):
    model = _model(family)
    ids, mask = _inputs(model, [16, 11], 16)
    full = model(ids, attention_mask=mask).logits  # [B, T, V]
    assert torch.equal(model(ids, attention_mask=mask, logits_to_keep=None).logits, full)
    assert torch.equal(model(ids, attention_mask=mask, logits_to_keep=0).logits, full)
    _close(model(ids, attention_mask=mask, logits_to_keep=5).logits, full[:, -5:])
    idx = torch.tensor([0, 7, 3, 3, 15])
    _close(model(ids, attention_mask=mask, logits_to_keep=idx).logits, full[:, idx])

    # the output projection sees the kept positions only
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    model(ids, attention_mask=mask, logits_to_keep=3)
    model(ids, attention_mask=mask, logits_to_keep=idx)
    handle.remove()
    assert seen == [3, 5]

    with pytest.raises(ValueError, match="labels and logits_to_keep"):
        model(ids, attention_mask=mask, labels=ids, logits_to_keep=4)
    with pytest.raises(ValueError, match="logits_to_keep=17"):
        model(ids, logits_to_keep=17)
    with pytest.raises(ValueError, match="1-D integer"):
        model(ids, logits_to_keep=torch.ones(2, 2, dtype=torch.long))
    assert model(ids, labels=ids, logits_to_keep=0).loss is not None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_span_on_the_same_tokens_reproduces_the_full_forward(family, padded):
    model = _model(family)
    T, lo, hi = 20, 8, 14
    ids, mask = _inputs(model, [20, 13, 6] if padded else [20, 20, 20], T, seed=1)
    mask = mask if padded else None
    full = model(ids, attention_mask=mask, return_kv_cache=True)
    cache = full.kv_cache
    assert isinstance(cache, BlockKVCache) and cache.seq_len == T and len(cache.keys) == 2
    assert model(ids, attention_mask=mask).kv_cache is None
    for span in [(lo, hi), (0, T), (T - 1, T)]:
        block = model(ids[:, span[0] : span[1]], attention_mask=mask, kv_cache=cache, cache_span=span)
        _close(block.logits, full.logits[:, span[0] : span[1]])
        assert block.kv_cache is None


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_prefix_span_with_changed_tokens(family):
    """Tokens >= lo change; a span (lo, T) reads the cached keys of 0..lo-1. Those are exact after one layer
    only: in a bidirectional model a deeper layer's keys at 0..lo-1 depend on the changed tokens too."""
    T, lo = 20, 12
    for n_layers in (1, 2):
        model = _model(family, n_layers=n_layers)
        ids, mask = _inputs(model, [20, 15], T, seed=2)
        new = ids.clone()
        new[:, lo:] = _inputs(model, [T - lo, T - lo], T - lo, seed=3)[0]
        cache = model(ids, attention_mask=mask, return_kv_cache=True).kv_cache
        block = model(new[:, lo:], attention_mask=mask, kv_cache=cache, cache_span=(lo, T)).logits
        fresh = model(new, attention_mask=mask).logits[:, lo:]
        if n_layers == 1:
            _close(block, fresh)
        else:
            assert _max_diff(block, fresh) > 1e-3  # stale keys of 0..lo-1 in layer 1


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_update_cache_in_place_or_not(family):
    model = _model(family)
    T, lo, hi = 16, 4, 10
    ids, mask = _inputs(model, [16, 9], T, seed=4)
    new = ids.clone()
    new[:, lo:hi] = _inputs(model, [hi - lo, hi - lo], hi - lo, seed=5)[0]
    cache = model(ids, attention_mask=mask, return_kv_cache=True).kv_cache
    snapshot = [k.clone() for k in cache.keys] + [v.clone() for v in cache.values]
    kw = dict(attention_mask=mask, kv_cache=cache, cache_span=(lo, hi), return_kv_cache=True)
    copy = model(new[:, lo:hi], **kw)
    assert all(
        torch.equal(a, b) for a, b in zip(cache.keys + cache.values, snapshot, strict=True)
    )  # not touched
    assert copy.kv_cache is not cache
    for i in range(2):
        k = copy.kv_cache.keys[i]
        assert torch.equal(k[:, :, :lo], snapshot[i][:, :, :lo]) and torch.equal(
            k[:, :, hi:], snapshot[i][:, :, hi:]
        )
        assert not torch.equal(k[:, :, lo:hi], snapshot[i][:, :, lo:hi])
    upd = model(new[:, lo:hi], update_cache=True, **kw)
    assert upd.kv_cache is cache
    assert torch.equal(upd.logits, copy.logits)
    for a, b in zip(cache.keys + cache.values, copy.kv_cache.keys + copy.kv_cache.values, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_span_with_logits_to_keep(family):
    model = _model(family)
    T, lo, hi = 18, 6, 14
    ids, mask = _inputs(model, [18, 10], T, seed=6)
    cache = model(ids, attention_mask=mask, return_kv_cache=True).kv_cache
    kw = dict(attention_mask=mask, kv_cache=cache, cache_span=(lo, hi))
    block = model(ids[:, lo:hi], **kw).logits  # [B, hi - lo, V]
    _close(model(ids[:, lo:hi], logits_to_keep=3, **kw).logits, block[:, -3:])
    idx = torch.tensor([5, 0, 2])  # relative to the span
    _close(model(ids[:, lo:hi], logits_to_keep=idx, **kw).logits, block[:, idx])
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids[:, lo:hi], logits_to_keep=hi - lo + 1, **kw)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_cache_validation_errors(family):
    model = _model(family)
    ids, mask = _inputs(model, [12, 12], 12)
    cache = model(ids, return_kv_cache=True).kv_cache
    with pytest.raises(ValueError, match="cache_span"):
        model(ids[:, 2:5], cache_span=(2, 5))
    with pytest.raises(ValueError, match="cache_span"):
        model(ids[:, 2:5], kv_cache=cache)
    for span in [(2, 6), (10, 13), (5, 2)]:
        with pytest.raises(ValueError, match="cache_span"):
            model(ids[:, 2:5], kv_cache=cache, cache_span=span)
    with pytest.raises(ValueError, match="layers"):
        model(ids[:, 2:5], kv_cache=BlockKVCache(cache.keys[:1], cache.values[:1]), cache_span=(2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids[:, 2:5], attention_mask=mask[:, 2:5], kv_cache=cache, cache_span=(2, 5))


@torch.no_grad()
def test_shipped_tiny_checkpoint_unchanged_and_cached():
    model = TinyDLMForMaskedDiffusion.from_pretrained(CHECKPOINT_DIR).eval()
    ids, mask = _inputs(model, [40, 33, 21], 40, seed=7)
    for m in (None, mask):
        old = model(ids, attention_mask=m)
        assert old.kv_cache is None and old.logits.shape == (3, 40, model.config.vocab_size)
        assert torch.equal(model(ids, attention_mask=m, logits_to_keep=None).logits, old.logits)
        full = model(ids, attention_mask=m, return_kv_cache=True)
        assert torch.equal(full.logits, old.logits)
        block = model(ids[:, 24:32], attention_mask=m, kv_cache=full.kv_cache, cache_span=(24, 32))
        _close(block.logits, old.logits[:, 24:32])
    # absolute positions (as trained) shift a left-padded row's rotary phases, which cancel in q . k
    # (rotary scores depend on offsets only): its real tokens compute what they compute alone
    _close(model(ids, attention_mask=mask).logits[2, -21:], model(ids[2:, -21:]).logits[0])
