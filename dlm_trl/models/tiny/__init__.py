"""The embedded tiny LLaDA-style model shipped with dlm-trl (see ``modeling.py``, ``train.py``)."""

from pathlib import Path

from .modeling import TinyDLMConfig, TinyDLMForMaskedDiffusion

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"

__all__ = ["CHECKPOINT_DIR", "TinyDLMConfig", "TinyDLMForMaskedDiffusion"]
