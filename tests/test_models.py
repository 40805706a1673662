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
