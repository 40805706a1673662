"""dlm_trl.models.dream: the native Dream against the hub's own modeling code (golden tests).

The upstream copy in ``../shared/reference/dream`` is the oracle: tiny random checkpoints are
written by it in hub layout, loaded natively, and logits compared. Tests that need the oracle
skip with ``REFERENCE_MISSING`` when it is absent; the others build the native model directly.

Note on the oracle: under transformers 5 the upstream ``from_pretrained`` leaves the rotary
``inv_freq`` buffers uninitialised (they are non-persistent, created on the meta device), so
every load here calls the model's own ``reset_rope_parameters()`` before use.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from dlm_trl.models._layers import BlockKVCache
from dlm_trl.models.dream import DreamConfig, DreamModel
from dlm_trl.testing.hub_checkpoints import (
    AUTO_MAPS,
    REFERENCE_MISSING,
    build_remote_code_checkpoint,
    copy_reference,
    load_remote_code_model,
    native_config,
    random_native_model,
    reference_dir,
    tiny_config,
)

needs_reference = pytest.mark.skipif(reference_dir() is None, reason=REFERENCE_MISSING)

TOL = 1e-5
V = 1024  # the tiny tokenizer's vocabulary
CONFIGS = {
    "default": {},  # grouped-query attention: 4 heads, 2 key/value heads
    "mha": {"num_key_value_heads": 4},
    "tied": {"tie_word_embeddings": True},
}


def _upstream(path):
    model = load_remote_code_model(path)
    model.reset_rope_parameters()  # see the module docstring
    return model


def _native_config(**overrides) -> DreamConfig:
    return native_config("dream", **overrides)


def _random_native(seed: int = 0, **overrides) -> DreamModel:
    return random_native_model("dream", seed, **overrides)


def _tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _left_padded(lengths: list[int], T: int, pad_id: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(lengths), T), pad_id)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, T - n :] = _tokens(1, n, seed + b)[0]
        mask[b, T - n :] = 1
    return ids, mask


def _sampler_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What Dream's ``diffusion_generate`` passes for a padded batch: 4-D boolean mask and ``tok_idx``."""
    keep = mask.bool()
    tok_idx = (mask.long().cumsum(-1) - 1).masked_fill(~keep, 1)
    return keep[:, None, None, :] & keep[:, None, :, None], tok_idx


@pytest.fixture(scope="session")
def hub_ckpts(tmp_path_factory):
    if reference_dir() is None:
        pytest.skip(REFERENCE_MISSING)
    root = tmp_path_factory.mktemp("dream_hub")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            name: build_remote_code_checkpoint("dream", root / name, seed=i, **over)
            for i, (name, over) in enumerate(CONFIGS.items())
        }


# ----------------------------------------------------------------------------------- golden tests


@needs_reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_golden_logits_unpadded(hub_ckpts, name):
    path = hub_ckpts[name]
    ref, nat = _upstream(path), DreamModel.from_pretrained(path).eval()
    assert type(nat).__module__ == "dlm_trl.models.dream"
    ref_sd, nat_sd = ref.state_dict(), nat.state_dict()
    assert {k: tuple(v.shape) for k, v in nat_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    for k in ref_sd:
        assert torch.equal(ref_sd[k], nat_sd[k]), k
    if CONFIGS[name].get("tie_word_embeddings"):
        assert nat.lm_head.weight is nat.model.embed_tokens.weight
    x = _tokens(3, 24)
    with torch.no_grad():
        a, b = ref(x).logits, nat(x).logits
        labels = x.clone()
        labels[0, :5] = -100
        loss_ref, loss_nat = ref(x, labels=labels).loss, nat(x, labels=labels).loss
    assert a.shape == b.shape == (3, 24, V)
    torch.testing.assert_close(loss_nat, loss_ref, atol=TOL, rtol=0)
    d = (a - b).abs().max().item()
    print(f"\n[dream golden {name}] unpadded max|dlogit| = {d:.3g} (logit scale {a.abs().max().item():.3g})")
    assert d <= TOL


@needs_reference
def test_golden_logits_padded(hub_ckpts):
    path = hub_ckpts["default"]
    ref, nat = _upstream(path), DreamModel.from_pretrained(path).eval()
    lengths, T = [20, 13, 6], 20
    ids, mask = _left_padded(lengths, T, pad_id=nat.config.pad_token_id)
    mask4, tok_idx = _sampler_mask(mask)
    with torch.no_grad():
        # The call of upstream's sampler. This (Fast-dLLM) copy overwrites position_ids with 0..T-1, so
        # tok_idx is ignored; with relative rotary and bidirectional attention the real positions
        # still agree up to rounding. The hub's own file honours position_ids, as the native model does.
        up = ref(ids, mask4, tok_idx).logits
        ours = nat(ids, attention_mask=mask)  # 2-D integer mask
        ours_4d = nat(ids, mask4, tok_idx)  # upstream's calling convention, natively
        alone_up = [ref(ids[b : b + 1, T - n :]).logits[0] for b, n in enumerate(lengths)]
    real = mask.bool()
    assert torch.isfinite(ours.logits).all() and torch.isfinite(ours_4d.logits).all()
    d_up = (up[real] - ours.logits[real]).abs().max().item()
    d_4d = (ours_4d.logits[real] - ours.logits[real]).abs().max().item()
    d_alone = max((alone_up[b] - ours.logits[b, T - n :]).abs().max().item() for b, n in enumerate(lengths))
    print(
        f"\n[dream golden padded] max|dlogit| at real positions: vs upstream sampler call {d_up:.3g}, "
        f"vs upstream on each row alone {d_alone:.3g}, native 4-D+tok_idx vs native 2-D {d_4d:.3g}"
    )
    assert d_up <= TOL and d_alone <= TOL and d_4d <= TOL


@needs_reference
def test_golden_gradients_and_bf16(hub_ckpts):
    path = hub_ckpts["default"]
    ref, nat = _upstream(path).train(), DreamModel.from_pretrained(path).train()
    x = _tokens(2, 12, seed=2)
    for m in (ref, nat):
        logits = m(x).logits
        torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V).float(), x[:, 1:].reshape(-1)
        ).backward()
    ref_params = dict(ref.named_parameters())
    d_grad = max((p.grad - ref_params[n].grad).abs().max().item() for n, p in nat.named_parameters())
    # bf16 as both are normally loaded (dtype= at load; upstream's rotary buffer then stays fp32)
    ref16 = load_remote_code_model(path, dtype=torch.bfloat16)
    ref16.reset_rope_parameters()
    nat16 = DreamModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        a, b = ref16(x).logits, nat16(x).logits
    assert b.dtype == torch.bfloat16
    d16 = (a.float() - b.float()).abs().max().item()
    print(f"\n[dream golden] max|dgrad| fp32 = {d_grad:.3g}; bf16 max|dlogit| = {d16:.3g}")
    assert d_grad <= TOL and d16 <= 1e-2


# ------------------------------------------------------------------------------------- padding


def test_padding_invariance_left_padded_row_equals_row_alone():
    model = _random_native()
    lengths, T = [16, 9, 4, 1], 16
    ids, mask = _left_padded(lengths, T, pad_id=model.config.pad_token_id)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        bool_mask = model(ids, attention_mask=mask.bool()).logits
        assert torch.isfinite(batch).all()
        worst = 0.0
        for b, n in enumerate(lengths):
            alone = model(ids[b : b + 1, T - n :]).logits[0]
            worst = max(worst, (alone - batch[b, T - n :]).abs().max().item())
    print(f"\n[dream padding] left-padded row vs row alone: max|dlogit| = {worst:.3g}")
    assert worst <= TOL
    assert torch.equal(batch, bool_mask)
    full = _tokens(2, 8)
    with torch.no_grad():
        ref = model(full).logits
        torch.testing.assert_close(model(full, attention_mask=torch.ones(2, 8, dtype=torch.long)).logits, ref)
        torch.testing.assert_close(model(full, attention_mask="full").logits, ref)


# ------------------------------------------------------------------------------------ save round trip


@needs_reference
@pytest.mark.parametrize("name", ["default", "tied"])
def test_save_round_trip_native_and_upstream(hub_ckpts, name, tmp_path):
    nat = DreamModel.from_pretrained(hub_ckpts[name]).eval()
    out = tmp_path / "native"
    nat.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "Dream" and cfg["architectures"] == ["DreamModel"]
    assert "auto_map" not in cfg  # no modeling files are shipped with a native save
    assert cfg["tie_word_embeddings"] == bool(CONFIGS[name].get("tie_word_embeddings", False))
    x = _tokens(2, 12, seed=5)
    with torch.no_grad():
        want = nat(x).logits
        again = DreamModel.from_pretrained(out).eval()
        assert torch.equal(again(x).logits, want)
    # The same weights run by the upstream code: add its files and an auto_map.
    up_dir = tmp_path / "upstream"
    shutil.copytree(out, up_dir)
    copy_reference("dream", up_dir)
    cfg["auto_map"] = AUTO_MAPS["dream"]
    (up_dir / "config.json").write_text(json.dumps(cfg))
    ref = _upstream(up_dir)
    with torch.no_grad():
        d = (ref(x).logits - want).abs().max().item()
    print(f"\n[dream save {name}] native save -> upstream load: max|dlogit| = {d:.3g}")
    assert d <= TOL


# ------------------------------------------------------------------------------------- config


def test_config_fields_and_rejections():
    c = DreamConfig()
    assert (c.model_type, c.mask_token_id, c.pad_token_id) == ("Dream", 151666, 151643)
    hub = tiny_config("dream")
    c = DreamConfig(**{k: v for k, v in hub.items() if k not in ("model_type", "architectures")})
    assert c.rope_theta == hub["rope_theta"] and c.num_key_value_heads == hub["num_key_value_heads"]
    assert DreamConfig(rope_parameters={"rope_type": "default", "rope_theta": 5.0}).rope_theta == 5.0
    assert DreamConfig(rope_theta=7.0, rope_scaling={"type": "default"}).rope_theta == 7.0
    with pytest.raises(ValueError, match="rope_scaling"):
        DreamConfig(rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="use_sliding_window"):
        DreamConfig(use_sliding_window=True)
    # DeepSpeed ZeRO-3: nothing computed from parameters at init, no buffers in the state dict.
    model = _random_native()
    assert list(model.buffers()) == []
    assert not DreamModel.can_generate() and model.generation_config is not None


# ------------------------------------------------------------------------------------- KV cache


def test_block_kv_cache_matches_full_forward():
    model = _random_native()
    lengths, T, (lo, hi) = [16, 11], 16, (6, 12)
    ids, mask = _left_padded(lengths, T, pad_id=model.config.pad_token_id)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, return_kv_cache=True)
        cache = full.kv_cache
        assert isinstance(cache, BlockKVCache) and cache.seq_len == T and len(cache.keys) == 2
        assert cache.keys[0].shape == (2, model.config.num_key_value_heads, T, 16)
        snapshot = [k.clone() for k in cache.keys]
        blk = model(
            ids[:, lo:hi], attention_mask=mask, kv_cache=cache, cache_span=(lo, hi), return_kv_cache=True
        )
    d = (blk.logits - full.logits[:, lo:hi]).abs().max().item()
    print(f"\n[dream kv cache] block forward vs full forward: max|dlogit| = {d:.3g}")
    assert blk.logits.shape == (2, hi - lo, V) and d <= TOL
    assert all(
        torch.equal(a, b) for a, b in zip(cache.keys, snapshot, strict=True)
    )  # update_cache=False: a copy
    for a, b in zip(blk.kv_cache.keys, cache.keys, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    # upstream's calling convention (4-D boolean mask over all positions + tok_idx) gives the same block
    mask4, tok_idx = _sampler_mask(mask)
    with torch.no_grad():
        blk4 = model(ids[:, lo:hi], mask4, tok_idx, kv_cache=cache, cache_span=(lo, hi))
    torch.testing.assert_close(blk4.logits, blk.logits, atol=TOL, rtol=0)


def test_block_kv_cache_stale_keys_outside_block():
    """Outside ``lo..hi`` the cached keys/values are used as they are (never recomputed).

    With one layer a cached key depends only on its own token, so a block forward on new block
    tokens equals a full forward of the new sequence; with two layers the outside keys of layer 1
    depend on the old block tokens, so it does not: the cache is stale there by contract.
    """
    lo, hi, T = 5, 9, 14
    x = _tokens(2, T, seed=3)
    x2 = x.clone()
    x2[:, lo:hi] = _tokens(2, hi - lo, seed=4)
    for n_layers in (1, 2):
        model = _random_native(num_hidden_layers=n_layers)
        with torch.no_grad():
            cache = model(x, return_kv_cache=True).kv_cache
            want = model(x2, return_kv_cache=True)
            got = model(x2[:, lo:hi], kv_cache=cache, cache_span=(lo, hi), return_kv_cache=True)
        d = (got.logits - want.logits[:, lo:hi]).abs().max().item()
        if n_layers == 1:
            assert d <= TOL
        else:
            assert d > 1e-3, "two layers: the outside keys of layer 1 should be stale"
        # returned cache: outside the block exactly the old entries, inside the fresh ones
        for i in range(n_layers):
            k_new, k_old = got.kv_cache.keys[i], cache.keys[i]
            assert torch.equal(k_new[:, :, :lo], k_old[:, :, :lo]) and torch.equal(
                k_new[:, :, hi:], k_old[:, :, hi:]
            )
        torch.testing.assert_close(
            got.kv_cache.keys[0][:, :, lo:hi], want.kv_cache.keys[0][:, :, lo:hi], atol=TOL, rtol=0
        )
    # update_cache=True writes the block into the given cache in place
    with torch.no_grad():
        out = model(
            x2[:, lo:hi], kv_cache=cache, cache_span=(lo, hi), update_cache=True, return_kv_cache=True
        )
    assert out.kv_cache.keys[0] is cache.keys[0]
    assert torch.equal(cache.values[1][:, :, lo:hi], out.kv_cache.values[1][:, :, lo:hi])
    with pytest.raises(ValueError, match="cache_span"):
        model(x2[:, lo:hi], kv_cache=cache)


# ------------------------------------------------------------------------------------- training


def _loss(model, x):
    out = model(x, labels=x)
    return out.loss + out.logits.float().pow(2).mean() * 1e-3


def test_gradient_checkpointing_gives_equal_gradients():
    model = _random_native().train()
    x = _tokens(2, 10, seed=7)
    _loss(model, x).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()
    calls = []
    handle = model.model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    _loss(model, x).backward()
    handle.remove()
    assert len(calls) == 2, "the layer should run again in the backward pass"
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_bf16_forward_close_to_fp32():
    model = _random_native()
    x = _tokens(2, 12)
    with torch.no_grad():
        ref = model(x).logits
        low = model.to(torch.bfloat16)(x).logits
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    rel = ((low.float() - ref).norm() / ref.norm()).item()
    print(f"\n[dream bf16] relative L2 error of logits vs fp32: {rel:.3g}")
    assert rel < 0.05


def test_lora_trains_only_adapters():
    from peft import LoraConfig, get_peft_model

    model = _random_native().train()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    )
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == set(targets)
    x = _tokens(2, 8, seed=9)
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(3):
        out = peft_model(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in peft_model.parameters() if not p.requires_grad)
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if not p.requires_grad)
