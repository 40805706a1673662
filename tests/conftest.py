import os

import pytest
import torch

# No network in tests, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """A tiny random-weight model (width 32, 2 layers) with a Countdown tokenizer, saved like a checkpoint:
    recipes run on it in seconds."""
    from dlm_trl.models import TinyDLMConfig, TinyDLMForMaskedDiffusion
    from dlm_trl.models.tiny.train import build_tokenizer
    from dlm_trl.tasks import get_task

    rows = get_task("countdown").rows("train", 40, seed=1)
    tok = build_tokenizer([r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows], 300)
    torch.manual_seed(0)
    cfg = TinyDLMConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
    )
    path = tmp_path_factory.mktemp("random_tiny")
    TinyDLMForMaskedDiffusion(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
