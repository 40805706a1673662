"""dlm_trl.models.llada: the native LLaDA against the hub's own modeling code (golden tests).

The upstream copy in ``../shared/reference/llada`` is the oracle: tiny random checkpoints are
written by it in hub layout, loaded natively, and logits compared. Tests that need the oracle
skip with ``REFERENCE_MISSING`` when it is absent; the others build the native model directly.

Notes on the oracle: under transformers 5 it cannot *save* a tied model (shared tensors with no
tied-keys declaration), so the tied checkpoint is the default one with ``ff_out`` dropped and
``weight_tying`` set, which it loads fine; and Fast-dLLM's copy passes ``replace_position`` to
every block, which its sequential block does not accept, so that config runs through a shim.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlm_trl.models._layers import BlockKVCache
from dlm_trl.models.llada import LLADA_MASK_TOKEN_ID, LLaDAConfig, LLaDAModelLM
from dlm_trl.testing.hub_checkpoints import (
    AUTO_MAPS,
    FAMILY_FILES,
    REFERENCE_MISSING,
    build_remote_code_checkpoint,
    copy_reference,
    load_remote_code_model,
    native_config,
    needs_transformers5_patch,
    random_native_model,
    reference_dir,
    tiny_config,
)

needs_reference = pytest.mark.skipif(reference_dir() is None, reason=REFERENCE_MISSING)

TOL = 1e-5
V = 1024  # the tiny tokenizer's vocabulary
MASK_ID = tiny_config("llada")["mask_token_id"]
PAD_ID = tiny_config("llada")["pad_token_id"]
CONFIGS = {
    "default": {},
    # grouped-query attention with the optional q/k layer norms
    "gqa_qknorm": {"n_kv_heads": 2, "attention_layer_norm": True},
    # multi-query attention spelled the OLMo way, biases on q/k/v only
    "mqa_qkv_bias": {"n_kv_heads": None, "multi_query_attention": True, "include_qkv_bias": True},
    # every bias (layer norms inherit include_bias), scaled input and logits, padded embedding
    "bias_scaled": {
        "include_bias": True,
        "bias_for_layer_norm": None,
        "input_emb_norm": True,
        "scale_logits": True,
        "embedding_size": V + 128,
    },
    "sequential_swiglu": {"block_type": "sequential", "activation_type": "swiglu"},
    "tied": "default",  # derived from "default", see the module docstring
}
GOLDEN_MAX_DELTA: dict[str, float] = {}


def _tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """Random ids with about a third of the positions masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    return ids.masked_fill(torch.rand(B, T, generator=g) < 0.35, MASK_ID)


def _left_padded(lengths: list[int], T: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(lengths), T), PAD_ID)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, T - n :] = _tokens(1, n, seed + b)[0]
        mask[b, T - n :] = 1
    return ids, mask


def _native_config(**overrides) -> LLaDAConfig:
    return native_config("llada", **overrides)


def _random_native(seed: int = 0, **overrides) -> LLaDAModelLM:
    return random_native_model("llada", seed, **overrides)


def _load_native(path, **kw) -> LLaDAModelLM:
    model, info = LLaDAModelLM.from_pretrained(path, output_loading_info=True, **kw)
    # (sets under transformers 5, lists under 4.x)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    return model.eval()


def _upstream(path, **kw):
    model = load_remote_code_model(path, **kw)
    if model.config.block_type == "sequential":  # see the module docstring
        for block in model.model.transformer.blocks:
            block.forward = (lambda f: lambda *a, replace_position=None, **k: f(*a, **k))(block.forward)
    return model


def _make_tied(src, dst):
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    sd = load_file(src / "model.safetensors")
    del sd["model.transformer.ff_out.weight"]
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["weight_tying"] = True
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


@pytest.fixture(scope="session")
def hub_ckpt(tmp_path_factory):
    """``hub_ckpt(name)``: the path of the upstream-written checkpoint of ``CONFIGS[name]`` (built once)."""
    if reference_dir() is None:
        pytest.skip(REFERENCE_MISSING)
    root = tmp_path_factory.mktemp("llada_hub")
    built: dict = {}

    def get(name: str):
        if name not in built:
            over = CONFIGS[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if isinstance(over, str):
                    built[name] = _make_tied(get(over), root / name)
                else:
                    built[name] = build_remote_code_checkpoint("llada", root / name, seed=len(built), **over)
        return built[name]

    return get


# ----------------------------------------------------------------------------------- golden tests


@needs_reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_golden_logits_unpadded(hub_ckpt, name):
    path = hub_ckpt(name)
    ref, nat = _upstream(path), _load_native(path)
    assert type(nat).__module__ == "dlm_trl.models.llada"
    ref_sd, nat_sd = ref.state_dict(), nat.state_dict()
    assert {k: tuple(v.shape) for k, v in nat_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    for k in ref_sd:
        assert torch.equal(nat_sd[k], ref_sd[k]), k
    ids = _tokens(3, 24, seed=7)
    assert (ids == MASK_ID).any()
    with torch.no_grad():
        a, b = ref(ids).logits, nat(ids).logits
    assert a.shape == b.shape == (3, 24, nat.config.padded_vocab_size)
    delta = (a - b).abs().max().item()
    GOLDEN_MAX_DELTA[name] = delta
    print(f"\n[llada golden] {name}: max |Δlogit| = {delta:.3g} (max |logit| {a.abs().max().item():.3g})")
    assert delta <= TOL


@needs_reference
def test_golden_bf16_matches_upstream_bf16(hub_ckpt):
    """In bf16 the native model rounds where the hub code rounds (fp32 norms and rope, bf16 matmuls)."""
    path = hub_ckpt("default")
    ref = _upstream(path, dtype=torch.bfloat16)
    nat = _load_native(path, dtype=torch.bfloat16)
    nat32 = _load_native(path)
    assert nat.dtype == torch.bfloat16
    ids = _tokens(2, 24, seed=3)
    with torch.no_grad():
        a, b, c = ref(ids).logits.float(), nat(ids).logits, nat32(ids).logits
    assert b.dtype == torch.bfloat16
    d_ref, d_fp32 = (a - b.float()).abs().max().item(), (c - b.float()).abs().max().item()
    print(f"\n[llada bf16] max |Δ| vs upstream bf16 = {d_ref:.3g}, vs native fp32 = {d_fp32:.3g}")
    assert d_ref <= 1e-2 * c.abs().max().item()
    assert d_fp32 <= 0.1 * c.abs().max().item()


@needs_reference
def test_padding_invariance_and_the_upstream_bug(hub_ckpt):
    path = hub_ckpt("gqa_qknorm")
    ref, nat = _upstream(path), _load_native(path)
    lengths, T = [20, 13, 7], 20
    ids, mask = _left_padded(lengths, T)
    with torch.no_grad():
        nat_pad = nat(ids, attention_mask=mask).logits
        ref_pad = ref(ids, attention_mask=mask).logits
        worst_nat = worst_ref = 0.0
        for b, n in enumerate(lengths):
            alone = ids[b : b + 1, T - n :]
            nat_alone, ref_alone = nat(alone).logits[0], ref(alone).logits[0]
            assert (nat_alone - ref_alone).abs().max().item() <= TOL  # unpadded: same model
            worst_nat = max(worst_nat, (nat_pad[b, T - n :] - nat_alone).abs().max().item())
            worst_ref = max(worst_ref, (ref_pad[b, T - n :] - ref_alone).abs().max().item())
    print(
        f"\n[llada padding] left-padded vs alone: native max |Δ| = {worst_nat:.3g}, upstream = {worst_ref:.3g}"
    )
    assert worst_nat <= TOL
    assert worst_ref > 1e-3  # the hub code attends to padding (SDPA gets attn_mask=None)


@needs_reference
def test_kv_cache_block_forward_matches_upstream_replace_position(hub_ckpt):
    """A block forward over a stale cache is Fast-dLLM's dual cache (``replace_position``) exactly."""
    path = hub_ckpt("gqa_qknorm")
    ref, nat = _upstream(path), _load_native(path)
    T, lo, hi = 24, 8, 16
    ids = _tokens(2, T, seed=11)
    new = ids.clone()
    new[:, lo:hi] = _tokens(2, hi - lo, seed=12)
    with torch.no_grad():
        full = nat(ids, return_kv_cache=True)
        ref_cache = [(k.clone(), v.clone()) for k, v in ref(ids, use_cache=True).past_key_values]
        replace = torch.zeros(1, T, dtype=torch.bool)
        replace[:, lo:hi] = True
        ref_block = ref(
            new[:, lo:hi], past_key_values=ref_cache, use_cache=False, replace_position=replace
        ).logits
        nat_block = nat(new[:, lo:hi], kv_cache=full.kv_cache, cache_span=(lo, hi)).logits
    delta = (ref_block - nat_block).abs().max().item()
    print(f"\n[llada kv-cache] block forward vs upstream replace_position: max |Δ| = {delta:.3g}")
    assert delta <= TOL


@needs_reference
def test_save_round_trip(hub_ckpt, tmp_path):
    path = hub_ckpt("bias_scaled")
    nat = _load_native(path)
    ids = _tokens(2, 16, seed=5)
    with torch.no_grad():
        before = nat(ids).logits
    out = tmp_path / "saved"
    nat.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "llada" and saved["architectures"] == ["LLaDAModelLM"]
    assert "auto_map" not in saved  # the native save ships no remote code
    hub = json.loads((path / "config.json").read_text())
    for key, value in hub.items():  # every hub field survives
        if key not in ("auto_map", "transformers_version"):
            assert saved[key] == value, key
    with torch.no_grad():
        assert torch.equal(_load_native(out)(ids).logits, before)
    # the same folder, with the upstream files and an auto_map, loads into the hub code
    copy_reference("llada", out)
    saved["auto_map"] = AUTO_MAPS["llada"]
    (out / "config.json").write_text(json.dumps(saved, indent=2))
    with torch.no_grad():
        assert (_upstream(out)(ids).logits - before).abs().max().item() <= TOL


@needs_reference
def test_reference_is_patched_only_where_transformers_needs_it(tmp_path):
    ref = reference_dir() / "llada"
    for patched in (True, False):
        out = copy_reference("llada", tmp_path / str(patched), patched=patched)
        same = all((out / n).read_bytes() == (ref / n).read_bytes() for n in FAMILY_FILES["llada"])
        assert same == (not patched or not needs_transformers5_patch())


@needs_reference
def test_remote_code_model_runs_the_folders_own_code(hub_ckpt, tmp_path):
    """The upstream code registers itself for ``llada`` on import; a later checkpoint still runs its own files."""
    path = hub_ckpt("default")
    ids = _tokens(1, 8, seed=9)
    with torch.no_grad():
        ref = _upstream(path)(ids).logits
    raw = tmp_path / "raw"
    shutil.copytree(path, raw)
    copy_reference("llada", raw, patched=False)  # the hub's files, as a user downloads them
    if needs_transformers5_patch():
        with pytest.raises(AttributeError, match="all_tied_weights_keys"):
            load_remote_code_model(raw)
    else:  # transformers 4.x runs the hub code unmodified
        with torch.no_grad():
            assert torch.equal(load_remote_code_model(raw)(ids).logits, ref)


# --------------------------------------------------------------------------- native-only behaviour


def test_config_defaults_fields_and_unsupported():
    cfg = LLaDAConfig()
    assert cfg.mask_token_id == LLADA_MASK_TOKEN_ID == 126336
    assert (cfg.block_type, cfg.layer_norm_type, cfg.d_model, cfg.n_layers) == ("llama", "rms", 4096, 32)
    assert cfg.hidden_size == 4096 and cfg.num_attention_heads == 32 and cfg.tie_word_embeddings is False
    hub = tiny_config("llada", some_future_field=[1, 2])
    hub.pop("mask_token_id")
    cfg = LLaDAConfig(**hub)
    assert cfg.mask_token_id == 126336 and cfg.some_future_field == [1, 2]
    assert cfg.to_dict()["some_future_field"] == [1, 2]
    assert _native_config(n_kv_heads=None, multi_query_attention=True).effective_n_kv_heads == 1
    for field, value in [
        ("alibi", True),
        ("rope", False),
        ("layer_norm_type", "default"),
        ("block_type", "parallel"),
        ("activation_type", "swiglu"),  # a llama block multiplies act(ff_proj) by up_proj: no swiglu
        ("block_group_size", 2),
    ]:
        with pytest.raises(ValueError, match=rf"{field}={value!r}"):
            LLaDAModelLM(_native_config(**{field: value}))


def test_padding_invariance_native():
    model = _random_native()
    lengths, T = [16, 9, 4], 16
    ids, mask = _left_padded(lengths, T, seed=4)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        other = model(ids.masked_fill(mask == 0, 5), attention_mask=mask).logits  # pad content is irrelevant
        for b, n in enumerate(lengths):
            alone = model(ids[b : b + 1, T - n :]).logits[0]
            assert (padded[b, T - n :] - alone).abs().max().item() <= TOL
            assert (other[b, T - n :] - alone).abs().max().item() <= TOL
        assert torch.isfinite(padded).all()
        assert torch.equal(model(ids[:1], attention_mask=mask[:1]).logits, model(ids[:1]).logits)


def test_kv_cache_contract():
    model = _random_native(n_kv_heads=2)
    lengths, T, lo, hi = [24, 17], 24, 12, 20
    ids, mask = _left_padded(lengths, T, seed=8)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, return_kv_cache=True)
        cache = full.kv_cache
        assert isinstance(cache, BlockKVCache) and len(cache.keys) == 2 and cache.seq_len == T
        assert cache.keys[0].shape == (2, 2, T, 16)
        # same tokens: the block forward reproduces the full forward on lo..hi, padding included
        block = model(ids[:, lo:hi], attention_mask=mask, kv_cache=cache, cache_span=(lo, hi))
        assert block.logits.shape == (2, hi - lo, V)
        assert (block.logits - full.logits[:, lo:hi]).abs().max().item() <= TOL
        assert block.kv_cache is None

        # new tokens in the block: keys outside lo..hi are the cached (stale) ones
        new = ids.clone()
        new[:, lo:hi] = _tokens(2, hi - lo, seed=9)
        snapshot = [k.clone() for k in cache.keys]
        block = model(
            new[:, lo:hi], attention_mask=mask, kv_cache=cache, cache_span=(lo, hi), return_kv_cache=True
        )
        fresh = model(new, attention_mask=mask, return_kv_cache=True)
        for i in range(2):
            assert torch.equal(cache.keys[i], snapshot[i])  # not updated in place by default
            out_k = block.kv_cache.keys[i]
            assert torch.equal(out_k[:, :, :lo], snapshot[i][:, :, :lo])
            assert torch.equal(out_k[:, :, hi:], snapshot[i][:, :, hi:])
        # layer 0's keys depend only on tokens: fresh inside the block, identical to the new sequence's
        assert (block.kv_cache.keys[0] - fresh.kv_cache.keys[0]).abs().max().item() <= TOL
        # deeper keys outside the block went stale, so the block logits are not the new full forward's ...
        assert (block.logits - fresh.logits[:, lo:hi]).abs().max().item() > 1e-3
        # ... except in a one-layer model, where no stale key exists
        one = _random_native(n_layers=1)
        c1 = one(ids, attention_mask=mask, return_kv_cache=True).kv_cache
        b1 = one(new[:, lo:hi], attention_mask=mask, kv_cache=c1, cache_span=(lo, hi)).logits
        assert (b1 - one(new, attention_mask=mask).logits[:, lo:hi]).abs().max().item() <= TOL

        # update_cache=True writes the block's keys into the given cache
        upd = model(
            new[:, lo:hi],
            attention_mask=mask,
            kv_cache=cache,
            cache_span=(lo, hi),
            update_cache=True,
            return_kv_cache=True,
        )
        assert upd.kv_cache is cache
        assert torch.equal(cache.keys[1], block.kv_cache.keys[1])
        with pytest.raises(ValueError, match="cache_span"):
            model(ids[:, lo:hi], kv_cache=cache)


def test_gradient_checkpointing_gives_same_gradients():
    model = _random_native().train()
    ids = _tokens(2, 16, seed=2)
    labels = torch.where(ids == MASK_ID, _tokens(2, 16, seed=3), -100)

    def grads():
        model.zero_grad()
        model(ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    calls = []
    hook = model.model.transformer.blocks[0].attn_norm.register_forward_hook(lambda *a: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # transformers 5.24 renames it activation_checkpointing_*
        model.gradient_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.model.transformer.blocks)
    ckpt = grads()
    hook.remove()
    assert len(calls) == 2  # the block ran again in the backward pass
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6, rtol=1e-5), n


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft reads is_gradient_checkpointing
def test_lora_trains_only_adapters():
    peft = pytest.importorskip("peft")
    model = _random_native()
    targets = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    )
    wrapped = {n.split(".")[-2] for n, _ in lora.named_modules() if n.endswith("lora_A")}
    assert set(targets) <= wrapped
    ids, mask = _left_padded([16, 10], 16, seed=6)
    labels = torch.where((ids == MASK_ID) & (mask == 1), _tokens(2, 16, seed=7), -100)
    labels[0, 3] = 42  # at least one supervised position per row
    opt = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1)
    with torch.no_grad():
        before = lora(input_ids=ids, attention_mask=mask).logits
    lora.train()
    loss = lora(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    with_grad = {n for n, p in lora.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(p.grad.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    opt.step()
    lora.eval()
    with torch.no_grad():
        assert not torch.allclose(lora(input_ids=ids, attention_mask=mask).logits, before)


def test_from_scratch_init_and_generation_config():
    torch.manual_seed(0)
    model = LLaDAModelLM(_native_config(weight_tying=True, init_fn="mitchell"))
    tr = model.model.transformer
    assert model.get_output_embeddings().weight is tr.wte.weight  # tied through transformers
    assert "model.transformer.ff_out.weight" in model.state_dict()  # like the hub's (aliased) module
    assert torch.equal(tr.ln_f.weight, torch.ones(64))
    std = tr.blocks[0].q_proj.weight.std().item()
    assert 0.5 / 8 < std < 1.5 / 8  # mitchell: 1/sqrt(d_model)
    assert tr.blocks[1].attn_out.weight.std().item() < std  # output projections shrink with depth
    assert not model.can_generate() and model.generation_config is not None
    assert model.generation_config.eos_token_id == tiny_config("llada")["eos_token_id"]
    assert not any(n.endswith("inv_freq") for n, _ in model.named_buffers())
