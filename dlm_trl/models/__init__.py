"""Model loading and the family adapters.

``load("tiny")`` returns the embedded model; any other name is a local path or a hub id
(hub ids need network unless cached; tests and defaults never use one). LLaDA- and
Dream-family checkpoints load into dlm-trl's own implementations (no remote code);
``remote_code=True`` runs the checkpoint's own modeling code instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    GenerationConfig,
)

from .adapters import (
    DLM,
    FAMILIES,
    LLADA_MASK_ID,
    UnknownModelFamilyError,
    detect_family,
    resolve_mask_token_id,
)
from .tiny import CHECKPOINT_DIR as TINY_CHECKPOINT_DIR
from .tiny import TinyDLMConfig, TinyDLMForMaskedDiffusion

# Make the tiny model loadable through the Auto classes (TRL and PEFT use them).
for _auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
    try:
        _auto.register(TinyDLMConfig, TinyDLMForMaskedDiffusion)
    except ValueError:  # already registered
        pass
try:
    AutoConfig.register(TinyDLMConfig.model_type, TinyDLMConfig)
except ValueError:
    pass

TINY_ALIASES = ("tiny", "dlm-trl/tiny", "embedded")

__all__ = [
    "DLM",
    "FAMILIES",
    "LLADA_MASK_ID",
    "TINY_CHECKPOINT_DIR",
    "TinyDLMConfig",
    "TinyDLMForMaskedDiffusion",
    "UnknownModelFamilyError",
    "detect_family",
    "load",
    "load_model",
    "load_with_adapter",
    "ModelLoadError",
    "NATIVE_CLASSES",
    "native_class",
    "native_family",
    "load_tokenizer",
    "resolve_mask_token_id",
    "resolve_path",
]


def resolve_path(name_or_path: str) -> str:
    """Map the embedded-model aliases to the shipped checkpoint directory."""
    if name_or_path in TINY_ALIASES:
        if not (TINY_CHECKPOINT_DIR / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the embedded tiny model is missing from {TINY_CHECKPOINT_DIR}; rebuild it with `make tiny-model`"
            )
        return str(TINY_CHECKPOINT_DIR)
    return name_or_path


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool | None = None, **kwargs: Any):
    """The tokenizer of a checkpoint (left padding; pad = EOS when it has no pad token).

    Tokenizers that are custom code (Dream's ``tokenization_dream.py``) need ``trust_remote_code=True``;
    the error says so instead of transformers' prompt.
    """
    path = resolve_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(trust_remote_code), **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise ModelLoadError(
                f"the tokenizer of {name_or_path!r} is custom code shipped with the checkpoint; pass "
                "--trust-remote-code (trust_remote_code=True) to run it"
            ) from err
        raise
    except OSError as err:
        raise FileNotFoundError(f"no tokenizer for {name_or_path!r}: {str(err).splitlines()[0]}") from err
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


NATIVE_CLASSES = {
    "llada": ("dlm_trl.models.llada", "LLaDAModelLM"),
    "dream": ("dlm_trl.models.dream", "DreamModel"),
}
_NATIVE_MODEL_TYPES = {"llada": "llada", "dream": "dream"}


class ModelLoadError(ValueError):
    """A checkpoint could not be loaded; the message names the cause and the flag that fixes it."""


def _config_dict(path: str) -> dict[str, Any]:
    """``config.json`` of a local folder or a cached hub id (never downloads under HF_HUB_OFFLINE=1)."""
    from transformers import PretrainedConfig

    try:
        cfg, _ = PretrainedConfig.get_config_dict(path)
    except OSError as err:
        where = "folder" if os.path.isdir(path) else "local folder or cached hub id"
        offline = " (HF_HUB_OFFLINE=1: hub ids must already be in the local cache)" if os.environ.get(
            "HF_HUB_OFFLINE") == "1" else ""
        raise FileNotFoundError(
            f"no model config for {path!r}: expected a {where} with config.json{offline}. "
            "Pass --model tiny, a checkpoint folder, or a hub id such as GSAI-ML/LLaDA-8B-Instruct"
        ) from err
    return cfg


def native_class(family: str):
    """dlm-trl's own model class of ``family`` (``"llada"`` / ``"dream"``), imported on first use."""
    import importlib

    module_name, cls_name = NATIVE_CLASSES[family]
    return getattr(importlib.import_module(module_name), cls_name)


def native_family(config: dict[str, Any]) -> str | None:
    """The family dlm-trl implements natively for a ``config.json`` dict, or ``None``."""
    model_type = str(config.get("model_type", "")).lower()
    archs = [str(a) for a in config.get("architectures") or []]
    if model_type == "llada" or "LLaDAModelLM" in archs:
        return "llada"
    if model_type == "dream" or "DreamModel" in archs:
        return "dream"
    return None


def _remote_code_hint(err: BaseException) -> str:
    """Name the known transformers-5 incompatibilities of the hub code (see shared/reference/README)."""
    import transformers

    text = f"{type(err).__name__}: {err}"
    known = (
        "all_tied_weights_keys", "ROPE_INIT_FUNCTIONS", "'default'", "_tied_weights_keys", "use_cache",
        "tie_weights", "validate()",
    )
    causes = {
        "'default'": "transformers 5 removed ROPE_INIT_FUNCTIONS['default'], which Dream's code looks up",
        "all_tied_weights_keys": "LLaDA's code never calls post_init(), which transformers 5 requires",
    }
    for key, cause in causes.items():
        if key in text:
            text = f"{text.splitlines()[0][:200]}: {cause}"
            break
    if any(k in text for k in known):
        return (
            f"the checkpoint's own modeling code does not run under transformers {transformers.__version__} "
            f"({text.splitlines()[0][:300]}). dlm-trl implements this family natively: drop --remote-code "
            "(remote_code=False, the default) to load it without the hub's code"
        )
    return text.splitlines()[0][:500] if text else type(err).__name__


def _load_remote(path: str, dtype, kwargs: dict[str, Any]):
    """The checkpoint's own code through the Auto class its ``auto_map`` names (or the usual Auto classes)."""
    cfg = _config_dict(path)
    auto_map = cfg.get("auto_map") or {}
    order = [a for a in ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM") if a in auto_map]
    order = order or ["AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM"]
    autos = {"AutoModel": AutoModel, "AutoModelForMaskedLM": AutoModelForMaskedLM,
             "AutoModelForCausalLM": AutoModelForCausalLM}
    first_error: BaseException | None = None
    for name in order:
        try:
            model = autos[name].from_pretrained(path, dtype=dtype, trust_remote_code=True, **kwargs)
            if hasattr(model, "reset_rope_parameters"):
                # Dream's hub code keeps its rotary frequencies in non-persistent buffers that transformers 5
                # leaves uninitialised after from_pretrained (logits off by ~9 on a tiny model): recompute them.
                model.reset_rope_parameters()
            return model
        except Exception as err:  # noqa: BLE001 — re-raised below with the first (most specific) cause
            if first_error is None:
                first_error = err
            if name in auto_map:
                break  # the class the checkpoint declares failed: the others would only hide why
    raise ModelLoadError(f"could not load {path!r} with its own code: {_remote_code_hint(first_error)}") from first_error


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool | None = None,
    remote_code: bool = False,
    family: str | None = None,
    **kwargs: Any,
):
    """Load the underlying ``nn.Module`` of a diffusion LM.

    * ``"tiny"`` → the embedded model;
    * a LLaDA-family checkpoint (``model_type: llada``: LLaDA-8B-Base/Instruct, LLaDA-1.5) or a
      Dream-family one (``model_type: Dream``: Dream-7B, DiffuCoder) → dlm-trl's native class
      (:mod:`dlm_trl.models.llada`, :mod:`dlm_trl.models.dream`), which reads the hub's safetensors
      as they are and needs no remote code;
    * ``remote_code=True`` → the checkpoint's own modeling code instead (``trust_remote_code``);
    * anything else → transformers' Auto classes (``trust_remote_code`` needed for custom code).

    ``family`` forces the native class of that family (``"llada"`` / ``"dream"``) for a checkpoint whose
    config does not say it.
    """
    path = resolve_path(name_or_path)
    is_tiny = path == str(TINY_CHECKPOINT_DIR)
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16 (--torch-dtype)")
        dtype = getattr(torch, dtype)
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES} (--model-family)")
    cfg = {"model_type": TinyDLMConfig.model_type} if is_tiny else _config_dict(path)
    if cfg.get("model_type") == TinyDLMConfig.model_type:  # the embedded model, or one trained from it
        if remote_code:
            raise ValueError("the embedded tiny model has no remote code; drop --remote-code")
        model = TinyDLMForMaskedDiffusion.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    elif remote_code:
        if trust_remote_code is False:
            raise ValueError("remote_code=True runs the checkpoint's own code; it cannot be combined with "
                             "trust_remote_code=False")
        model = _load_remote(path, dtype, kwargs)
    else:
        fam = native_family(cfg)
        if family in NATIVE_CLASSES and fam is None and not cfg.get("auto_map"):
            fam = family  # a LLaDA / Dream checkpoint saved under another model_type
        if fam in NATIVE_CLASSES:
            cls = native_class(fam)
            try:
                model = cls.from_pretrained(path, dtype=dtype, **kwargs)
            except (ValueError, KeyError, OSError, RuntimeError) as err:
                raise ModelLoadError(
                    f"dlm-trl's native {fam} implementation could not load {name_or_path!r}: {err}. If this is a "
                    "variant dlm-trl does not implement, --remote-code runs the checkpoint's own code"
                ) from err
        else:
            model = _load_generic(path, cfg, dtype, trust_remote_code, kwargs)
    if getattr(model, "generation_config", None) is None:
        # Remote code without GenerationMixin; TRL reads generation_config.
        cfg = model.config
        model.generation_config = GenerationConfig(
            eos_token_id=getattr(cfg, "eos_token_id", None), pad_token_id=getattr(cfg, "pad_token_id", None)
        )
    if device is not None:
        model = model.to(device)
    return model


def _load_generic(path: str, cfg: dict[str, Any], dtype, trust_remote_code: bool | None, kwargs: dict[str, Any]):
    """A model dlm-trl has no native class for: transformers' Auto classes."""
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"{path!r} (model_type={cfg.get('model_type')!r}) ships its own modeling code and dlm-trl has no native "
            f"implementation of it; pass --trust-remote-code (trust_remote_code=True) to run that code, or "
            f"--model-family llada|dream if it is a LLaDA or Dream checkpoint under another name"
        )
    if cfg.get("auto_map"):
        return _load_remote(path, dtype, kwargs)
    config = AutoConfig.from_pretrained(path)
    errors = []
    for auto in (AutoModelForMaskedLM, AutoModel):
        try:
            return auto.from_pretrained(path, config=config, dtype=dtype, **kwargs)
        except (ValueError, KeyError) as err:
            errors.append(f"{auto.__name__}: {str(err).splitlines()[0][:200]}")
    raise ModelLoadError(
        f"could not load {path!r} (model_type={cfg.get('model_type')!r}): " + "; ".join(errors)
        + ". dlm-trl runs natively: the embedded tiny model, LLaDA and Dream checkpoints; other models need a "
        "bidirectional mask predictor (--model-family bidirectional) loadable by AutoModelForMaskedLM"
    )


def load(
    name_or_path: str = "tiny",
    *,
    family: str | None = None,
    mask_token_id: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool | None = None,
    remote_code: bool = False,
    **kwargs: Any,
) -> tuple[DLM, Any]:
    """Load ``(DLM adapter, tokenizer)`` for a name: ``"tiny"`` or a path / hub id (see :func:`load_model`)."""
    if os.environ.get("HF_HUB_OFFLINE") is None and name_or_path in TINY_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code or remote_code)
    model = load_model(
        name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code, remote_code=remote_code,
        family=family, **kwargs,
    )
    return DLM.wrap(model, tokenizer=tokenizer, family=family, mask_token_id=mask_token_id), tokenizer


def load_with_adapter(
    name_or_path: str,
    adapter_path: str,
    *,
    family: str | None = None,
    mask_token_id: int | None = None,
    device=None,
    merge: bool = True,
    trust_remote_code: bool | None = None,
    remote_code: bool = False,
    **kwargs: Any,
) -> tuple[DLM, Any]:
    """Load a base model plus a PEFT (LoRA) adapter saved by a training run."""
    from peft import PeftModel

    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code or remote_code)
    base = load_model(
        name_or_path, device=device, trust_remote_code=trust_remote_code, remote_code=remote_code, family=family,
        **kwargs,
    )
    model = PeftModel.from_pretrained(base, adapter_path)
    if merge:
        model = model.merge_and_unload()
    return DLM.wrap(model, tokenizer=tokenizer, family=family, mask_token_id=mask_token_id), tokenizer
