"""Tiny random-weight checkpoints laid out exactly like the hub's LLaDA and Dream repositories.

Used by the golden tests and ``benchmarks/real_arch_smoke.py``. A *remote-code* checkpoint is
a folder holding ``config.json`` with an ``auto_map``, the upstream modeling files (from the
oracle copy in ``../shared/reference/``, never shipped with dlm-trl), ``model.safetensors``
and the embedded model's tokenizer, so ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
runs the upstream code just as it runs for ``GSAI-ML/LLaDA-8B-Instruct`` or ``Dream-org/Dream-v0-Instruct-7B``.

The upstream code does not load under transformers 5.x as is; ``patched=True`` (the default)
applies the reference folder's ``transformers5.patch`` to the copy when the installed
transformers is 5 or later (under 4.x the hub code runs unmodified, as it does for users of
transformers 4.x, so nothing is patched); ``patched=False`` keeps the files byte-for-byte as
the hub serves them (what a user downloading a checkpoint gets).

The tokenizer is the embedded tiny model's (1,024 tokens, ``<|mdm_mask|>``, LLaDA's chat
template), so tiny configs use ``vocab_size = 1024`` and that tokenizer's mask/EOS ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

FAMILY_FILES = {
    "llada": ("configuration_llada.py", "modeling_llada.py"),
    "dream": ("configuration_dream.py", "modeling_dream.py", "generation_utils.py"),
}
AUTO_MAPS = {
    "llada": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModel": "modeling_llada.LLaDAModelLM",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    },
    "dream": {
        "AutoConfig": "configuration_dream.DreamConfig",
        "AutoModel": "modeling_dream.DreamModel",
    },
}
ARCHITECTURES = {"llada": ["LLaDAModelLM"], "dream": ["DreamModel"]}
MODEL_TYPES = {"llada": "llada", "dream": "Dream"}

_REPO_ROOT = Path(__file__).resolve().parents[2]


def reference_dir() -> Path | None:
    """The upstream oracle folder: ``$DLM_TRL_REFERENCE_DIR`` or ``../shared/reference`` beside the repo."""
    candidates = []
    if os.environ.get("DLM_TRL_REFERENCE_DIR"):
        candidates.append(Path(os.environ["DLM_TRL_REFERENCE_DIR"]))
    candidates += [_REPO_ROOT.parent / "shared" / "reference", _REPO_ROOT / "shared" / "reference"]
    for c in candidates:
        if (c / "llada" / "modeling_llada.py").exists() and (c / "dream" / "modeling_dream.py").exists():
            return c
    return None


REFERENCE_MISSING = (
    "the upstream LLaDA/Dream reference code is not available (looked for ../shared/reference beside "
    "the repository; set DLM_TRL_REFERENCE_DIR to a folder holding llada/ and dream/)"
)


def _check_family(family: str) -> None:
    if family not in FAMILY_FILES:
        raise ValueError(f"unknown family {family!r}; hub checkpoints exist for {sorted(FAMILY_FILES)}")


def needs_transformers5_patch() -> bool:
    """Whether the installed transformers is 5 or later, where the upstream code needs ``transformers5.patch``."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).major >= 5


def copy_reference(family: str, dest: str | os.PathLike, *, patched: bool = True) -> Path:
    """Copy the upstream files of ``family`` into ``dest``.

    With ``patched`` (the default) ``transformers5.patch`` is applied when the installed
    transformers needs it (:func:`needs_transformers5_patch`); otherwise, and always with
    ``patched=False``, the files are the hub's, byte-for-byte.
    """
    _check_family(family)
    ref = reference_dir()
    if ref is None:
        raise FileNotFoundError(REFERENCE_MISSING)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    src = ref / family
    for name in FAMILY_FILES[family]:
        shutil.copyfile(src / name, dest / name)
        os.chmod(dest / name, 0o644)  # the shared copy is read-only
    if patched and needs_transformers5_patch():
        patch_file = src / "transformers5.patch"
        # The patch touches files by their base names (a/modeling_llada.py); only those we copied.
        cmds = [["patch", "-p1", "--quiet", "-i", str(patch_file)], ["git", "apply", "-p1", str(patch_file)]]
        errors = []
        for cmd in cmds:
            if shutil.which(cmd[0]) is None:
                errors.append(f"{cmd[0]}: not installed")
                continue
            res = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
            if res.returncode == 0:
                break
            errors.append(f"{' '.join(cmd)}: {res.stdout}{res.stderr}")
        else:
            raise RuntimeError(f"could not apply {patch_file} in {dest}: " + "; ".join(errors))
    return dest


def tiny_tokenizer():
    from dlm_trl.models import load_tokenizer

    return load_tokenizer("tiny")


def tiny_config(family: str, **overrides: Any) -> dict[str, Any]:
    """A hub-like ``config.json`` dict for a tiny random model of ``family`` (vocabulary of the tiny tokenizer)."""
    _check_family(family)
    tok = tiny_tokenizer()
    mask_id, eos_id = int(tok.mask_token_id), int(tok.eos_token_id)
    V = len(tok)
    if family == "llada":
        # The fields of LLaDA-8B-Instruct's config.json, shrunk.
        cfg: dict[str, Any] = {
            "activation_type": "silu",
            "alibi": False,
            "alibi_bias_max": 8.0,
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "attention_layer_norm_with_affine": True,
            "bias_for_layer_norm": False,
            "block_group_size": 1,
            "block_type": "llama",
            "d_model": 64,
            "embedding_dropout": 0.0,
            "embedding_size": V,
            "eos_token_id": eos_id,
            "flash_attention": False,
            "include_bias": False,
            "include_qkv_bias": False,
            "init_cutoff_factor": None,
            "init_device": "cpu",
            "init_fn": "mitchell",
            "init_std": 0.02,
            "input_emb_norm": False,
            "layer_norm_type": "rms",
            "layer_norm_with_affine": True,
            "mask_token_id": mask_id,
            "max_sequence_length": 512,
            "mlp_hidden_size": 160,
            "mlp_ratio": 4,
            "multi_query_attention": None,
            "n_heads": 4,
            "n_kv_heads": 4,
            "n_layers": 2,
            "pad_token_id": eos_id,
            "precision": "amp_bf16",
            "residual_dropout": 0.0,
            "rms_norm_eps": 1e-05,
            "rope": True,
            "rope_full_precision": True,
            "rope_theta": 500000.0,
            "scale_logits": False,
            "use_cache": False,
            "vocab_size": V,
            "weight_tying": False,
        }
    else:
        # The fields of Dream-v0-Instruct-7B's config.json, shrunk (Qwen2-style blocks).
        cfg = {
            "attention_dropout": 0.0,
            "bos_token_id": int(tok.bos_token_id) if tok.bos_token_id is not None else eos_id,
            "eos_token_id": eos_id,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 160,
            "mask_token_id": mask_id,
            "max_position_embeddings": 512,
            "max_window_layers": 2,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "pad_token_id": eos_id,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "use_cache": False,
            "use_sliding_window": False,
            "vocab_size": V,
        }
    cfg.update(overrides)
    cfg["model_type"] = MODEL_TYPES[family]
    cfg["architectures"] = ARCHITECTURES[family]
    return cfg


def _write_config(path: Path, cfg: dict[str, Any], family: str, *, auto_map: bool) -> None:
    cfg = dict(cfg)
    if auto_map:
        cfg["auto_map"] = AUTO_MAPS[family]
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_remote_code_checkpoint(
    family: str,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    patched: bool = True,
    init_std: float = 0.2,
    **config_overrides: Any,
) -> Path:
    """Write a tiny random ``family`` checkpoint in hub layout, created by the upstream (remote) code.

    Weights are drawn with ``seed`` (normal, std ``init_std`` for matrices, so logits are far
    from uniform and greedy decoding is not dominated by ties; norms get 1 + small noise). With
    ``patched=False`` the folder keeps the hub's unmodified files, which do not load under
    transformers 5 (see the reference README) but do under 4.x; the weights are still written
    through a loadable copy (patched under transformers 5).
    """
    _check_family(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(family, **config_overrides)
    # Build through a copy the installed transformers can instantiate (patched under transformers 5).
    build = out / "_build"
    if build.exists():
        shutil.rmtree(build)
    copy_reference(family, build, patched=True)
    _write_config(build, cfg, family, auto_map=True)
    config_cls, model_cls = remote_code_classes(build)
    config = config_cls.from_pretrained(build)
    torch.manual_seed(seed)
    model = model_cls._from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * init_std)
            elif "norm" in name or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(build)
    # Replace whatever save_pretrained copied with the upstream files (patched or not) and the hub config.
    copy_reference(family, out, patched=patched)
    _write_config(out, cfg, family, auto_map=True)
    tiny_tokenizer().save_pretrained(out)
    return out


def remote_code_classes(path: str | os.PathLike) -> tuple[type, type]:
    """The configuration and model classes of the modeling files in checkpoint folder ``path`` (its ``auto_map``).

    What ``AutoModel.from_pretrained(path, trust_remote_code=True)`` runs, resolved from the
    folder itself: LLaDA's upstream code registers its classes with ``AutoConfig`` /
    ``AutoModel`` for ``model_type`` ``"llada"`` on import, and transformers 5 then prefers that
    registration over the ``auto_map`` of every later checkpoint, so through the auto classes a
    process would keep running the first LLaDA code it imported (e.g. a patched copy for an
    unpatched checkpoint). The auto registries are restored after the import, so resolving one
    checkpoint's classes changes what no other load resolves.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    path = str(path)
    auto_map = json.loads((Path(path) / "config.json").read_text()).get("auto_map") or {}
    if "AutoConfig" not in auto_map or "AutoModel" not in auto_map:
        raise ValueError(
            f"{path}/config.json has no auto_map with AutoConfig and AutoModel: not a remote-code checkpoint"
        )
    with _auto_registries_restored():
        config_cls = get_class_from_dynamic_module(auto_map["AutoConfig"], path)
        model_cls = get_class_from_dynamic_module(auto_map["AutoModel"], path)
    return config_cls, model_cls


@contextlib.contextmanager
def _auto_registries_restored():
    """Undo ``AutoConfig.register`` / ``AutoModel*.register`` calls made inside (by imported remote code)."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    registries = [CONFIG_MAPPING] + [
        getattr(c, "_model_mapping", None) for c in (AutoModel, AutoModelForCausalLM)
    ]
    extras = [getattr(r, "_extra_content", None) for r in registries]
    saved = [dict(e) if isinstance(e, dict) else None for e in extras]
    try:
        yield
    finally:
        for extra, before in zip(extras, saved, strict=True):
            if before is not None:
                extra.clear()
                extra.update(before)


def load_remote_code_model(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32):
    """Load a checkpoint with its own (upstream) modeling code (see :func:`remote_code_classes`), eval mode."""
    config_cls, model_cls = remote_code_classes(path)
    model = model_cls.from_pretrained(path, config=config_cls.from_pretrained(path), dtype=dtype)
    if hasattr(model, "reset_rope_parameters"):
        # Dream: transformers 5 leaves the non-persistent rotary buffers uninitialised (4.x computes
        # them at construction, so this recomputes the same values there).
        model.reset_rope_parameters()
    return model.eval()


def native_config(family: str, **overrides: Any):
    """The native config class of ``family`` built from :func:`tiny_config`."""
    cfg = tiny_config(family, **overrides)
    cfg.pop("architectures")
    cfg.pop("model_type")
    if family == "llada":
        from dlm_trl.models.llada import LLaDAConfig

        return LLaDAConfig(**cfg)
    from dlm_trl.models.dream import DreamConfig

    return DreamConfig(**cfg)


def random_native_model(family: str, seed: int = 0, **overrides: Any):
    """A native tiny model of ``family`` in eval mode, weights far from their init so that differences show."""
    from dlm_trl.models import native_class

    cls = native_class(family)
    torch.manual_seed(seed)
    model = cls(native_config(family, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model


__all__ = [
    "ARCHITECTURES",
    "AUTO_MAPS",
    "FAMILY_FILES",
    "MODEL_TYPES",
    "REFERENCE_MISSING",
    "build_remote_code_checkpoint",
    "copy_reference",
    "load_remote_code_model",
    "native_config",
    "random_native_model",
    "needs_transformers5_patch",
    "reference_dir",
    "remote_code_classes",
    "tiny_config",
    "tiny_tokenizer",
]
