import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dlm_trl.models import (
    DLM,
    LLADA_MASK_ID,
    TINY_CHECKPOINT_DIR,
    TinyDLMConfig,
    TinyDLMForMaskedDiffusion,
    UnknownModelFamilyError,
    detect_family,
    load,
    resolve_mask_token_id,
)

HAS_TINY = (TINY_CHECKPOINT_DIR / "model.safetensors").exists()
needs_tiny = pytest.mark.skipif(not HAS_TINY, reason="embedded checkpoint missing: run `make tiny-model`")


def small_model(**kw):
    cfg = TinyDLMConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, mask_token_id=1, eos_token_id=0, pad_token_id=0, bos_token_id=2, **kw)
    torch.manual_seed(0)
    return TinyDLMForMaskedDiffusion(cfg)


def test_tiny_architecture_is_bidirectional_and_aligned():
    model = small_model().eval()
    ids = torch.randint(3, 40, (2, 10))
    logits = DLM.wrap(model)(ids)
    assert logits.shape == (2, 10, 40)
    # bidirectional: changing the LAST token changes the FIRST position's logits
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1 - 3) % 37 + 3
    assert not torch.allclose(DLM.wrap(model)(ids2)[:, 0], logits[:, 0])


def test_attention_mask_hides_padding():
    model = small_model().eval()
    ids = torch.randint(3, 40, (1, 8))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    att = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], 1)
    dlm = DLM.wrap(model)
    a = dlm(padded, attention_mask=att)[:, 3:]
    padded2 = padded.clone()
    padded2[:, :3] = 7  # different padding content must not matter
    b = dlm(padded2, attention_mask=att)[:, 3:]
    assert torch.allclose(a, b, atol=1e-5)


class _Recorder(torch.nn.Module):
    """Returns logits whose argmax at position i is the input token at position i+1 (AR-style)."""

    def __init__(self, V=10):
        super().__init__()
        self.V = V
        self.config = SimpleNamespace(model_type="dream", architectures=["DreamModel"], mask_token_id=9)
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.roll(input_ids, -1, dims=1)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.V).float() * 10 + self.p)


def test_dream_logits_are_shifted_to_align():
    m = _Recorder()
    dlm = DLM.wrap(m)
    assert dlm.family == "dream" and dlm.mask_token_id == 9
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    aligned = dlm(ids).argmax(-1)
    # after the shift, position i predicts token i (for i >= 1)
    assert aligned[0, 1:].tolist() == [2, 3, 4, 5]
    # the llada family leaves logits alone
    assert DLM.wrap(m, family="llada")(ids).argmax(-1)[0, :4].tolist() == [2, 3, 4, 5]


def test_family_detection_and_errors():
    assert detect_family(SimpleNamespace(model_type="llada", architectures=["LLaDAModelLM"])) == "llada"
    assert detect_family(SimpleNamespace(model_type="Dream", architectures=None)) == "dream"
    assert detect_family(SimpleNamespace(model_type="modernbert", architectures=None)) == "bidirectional"
    assert detect_family(SimpleNamespace(model_type="gemma3_text", use_bidirectional_attention=True)) == "bidirectional"
    with pytest.raises(UnknownModelFamilyError, match="family="):
        detect_family(SimpleNamespace(model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    # mask id: config → tokenizer → LLaDA default, else a clear error
    assert resolve_mask_token_id(SimpleNamespace(), None, "llada") == LLADA_MASK_ID
    assert resolve_mask_token_id(SimpleNamespace(), SimpleNamespace(mask_token_id=5), "bidirectional") == 5
    with pytest.raises(ValueError, match="mask_token_id"):
        resolve_mask_token_id(SimpleNamespace(), SimpleNamespace(mask_token_id=None), "bidirectional")
    with pytest.raises(ValueError, match="unknown family"):
        DLM(module=None, mask_token_id=1, family="gpt")


def test_tiny_model_has_generation_config():
    assert small_model().generation_config is not None


@needs_tiny
def test_tiny_loads_offline_in_fresh_process():
    code = (
        "import json, dlm_trl.models as m; d, tok = m.load('tiny');"
        "msgs=[{'role':'user','content':'hi'}];"
        "ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True);"
        "ids = ids if isinstance(ids, list) else ids['input_ids'];"
        "print(json.dumps({'mask': d.mask_token_id, 'eos': tok.eos_token_id, 'fam': d.family,"
        " 'tmask': tok.mask_token_id, 'n': sum(p.numel() for p in d.module.parameters()), 'ids': ids}))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="/nonexistent-hf-home")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["fam"] == "llada" and info["mask"] == info["tmask"] and info["eos"] is not None
    assert 1e6 <= info["n"] <= 10e6
    assert info["ids"][0] == 2  # BOS first, as LLaDA's template


@needs_tiny
def test_tiny_checkpoint_size_and_tokenizer():
    size = (TINY_CHECKPOINT_DIR / "model.safetensors").stat().st_size
    assert size <= 20e6
    dlm, tok = load("tiny")
    text = "<answer>\n(12+7)*3\n</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level round trip
    assert "<|mdm_mask|>" == tok.mask_token
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_logits_to_keep_equals_the_sliced_full_logits(family):
    """``DLM(ids, logits_to_keep=n)`` = the last n aligned logits of the full forward, computed only there on
    the native classes (the module is asked for n positions, n+1 raw ones for Dream's shift), sliced otherwise."""
    from dlm_trl.testing.hub_checkpoints import random_native_model

    native = random_native_model(family, 0).eval()
    dlm = DLM.wrap(native, family=family)
    assert dlm.keeps_selected_logits
    V = native.config.vocab_size
    ids = torch.randint(3, V - 10, (3, 12), generator=torch.Generator().manual_seed(0))
    attn = torch.ones(3, 12, dtype=torch.long)
    attn[1, :2] = 0  # a left-padded row
    full = dlm(ids, attention_mask=attn)
    asked = []
    hook = native.register_forward_pre_hook(lambda m, a, kw: asked.append(kw.get("logits_to_keep")), with_kwargs=True)
    try:
        for n in (1, 5, 12):
            part = dlm(ids, attention_mask=attn, logits_to_keep=n)
            assert part.shape == (3, n, V)
            torch.testing.assert_close(part, full[:, 12 - n :], rtol=1e-5, atol=1e-5)
    finally:
        hook.remove()
    shift = 1 if family == "dream" else 0
    # Dream's n = T needs raw position -1: the full forward, then the shift
    assert asked == [1 + shift, 5 + shift, 12 if family == "llada" else None]
    with pytest.raises(ValueError, match="logits_to_keep=13 outside 1..12"):
        dlm(ids, logits_to_keep=13)


def test_logits_to_keep_slices_for_modules_without_it():
    m = _Recorder()  # its forward takes no logits_to_keep
    dlm = DLM.wrap(m)
    assert not dlm.keeps_selected_logits
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(dlm(ids, logits_to_keep=2), dlm(ids)[:, 3:])


def test_estimators_project_only_the_completion_positions():
    """The ELBO estimators ask the model for the completion's logits only (no vocabulary projection of the
    prompt's positions), and get the estimate of the full forward."""
    from dlm_trl.estimators import row_generators
    from dlm_trl.registry import ESTIMATORS
    from dlm_trl.registry import load as load_plugin

    model = small_model().eval()
    dlm = DLM.wrap(model)
    P, L = 6, 5
    prompt = torch.randint(3, 40, (4, P), generator=torch.Generator().manual_seed(1))
    completion = torch.randint(3, 40, (4, L), generator=torch.Generator().manual_seed(2))
    cmask = torch.ones(4, L, dtype=torch.long)
    pmask = torch.ones(4, P, dtype=torch.long)
    pmask[0, :2] = 0
    est = load_plugin(ESTIMATORS, "sdmc_elbo")(num_nodes=2, masks_per_node=1)

    class FullOnly:  # the same model through the plain ids -> logits contract
        mask_token_id = dlm.mask_token_id

        def __call__(self, ids, attention_mask=None):
            return dlm(ids, attention_mask=attention_mask)

    asked = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: asked.append(kw.get("logits_to_keep")), with_kwargs=True)
    try:
        fast = est(dlm, prompt, completion, cmask, generator=row_generators([0, 1, 2, 3]), prompt_attention_mask=pmask)
        assert asked and set(asked) == {L}
        asked.clear()
        full = est(FullOnly(), prompt, completion, cmask, generator=row_generators([0, 1, 2, 3]),
                   prompt_attention_mask=pmask)
        assert asked and set(asked) == {None}
    finally:
        hook.remove()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
