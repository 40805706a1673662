"""The reference policy (KL term with β > 0, DMPO's likelihood ratio).

Built here, not by TRL (β is hidden from ``GRPOTrainer.__init__``, which would otherwise reload
the model from its hub id): an explicit ``ref_model``; under PEFT the adapter-disabled base (or a
frozen copy of a pre-existing adapter, as TRL does); else a frozen copy of the initial policy
(reloaded from its path under DeepSpeed ZeRO-3). :meth:`_ReferenceMixin._reference_policy` yields
the model to call.
"""

from __future__ import annotations

import contextlib
import copy

from accelerate.utils import is_peft_model
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from ..models import DLM
from .config import DLMConfig


class _ReferenceMixin:
    """The reference policy: its set-up (:meth:`_setup_reference`, from ``__init__``) and access to it."""

    def _uses_reference(self, args: DLMConfig) -> bool:
        """Whether the algorithm itself needs the reference policy (besides a KL term)."""
        return False

    def _setup_reference(self, ref_model, needs_ref: bool):
        if ref_model is None and not needs_ref:
            return None
        if ref_model is None and is_peft_model(self.model):
            return None  # adapter disabled (or the frozen "ref" adapter) is the reference
        if isinstance(ref_model, DLM):
            ref_model = ref_model.module
        if isinstance(ref_model, str):
            from ..models import load_model

            ref_model = load_model(ref_model, dtype=self.model.dtype, **self._reload_kwargs())
        if ref_model is None:
            zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            source = getattr(self.model.config, "_name_or_path", "")
            if zero3:
                if not source:
                    raise ValueError(
                        "DeepSpeed ZeRO-3 needs the reference reloaded from a path, but the model has none; "
                        "pass ref_model=... or use PEFT"
                    )
                from ..models import load_model

                ref_model = load_model(source, dtype=self.model.dtype, **self._reload_kwargs())
            else:
                ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
                # GRPOTrainer.__init__ replaced the policy's `forward` by an instance attribute (TRL's fused
                # LM head) whose closure holds the *policy's* bound forward. A deep copy keeps that closure,
                # so the copy would silently run the policy's weights (KL to the reference ≡ 0). Drop such
                # instance-level forwards: the copy runs its own class forward on its own weights.
                for module in ref_model.modules():
                    module.__dict__.pop("forward", None)
        ref_model.eval()
        ref_model.requires_grad_(False)
        if self.args.disable_dropout:
            disable_dropout_in_model(ref_model)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def _reload_kwargs(self) -> dict:
        """How to load the reference from a path: the same implementation (native or remote code) as the policy."""
        remote = bool(self.args.remote_code)
        return {"remote_code": remote, "trust_remote_code": (self.args.trust_remote_code or remote) or None}

    @contextlib.contextmanager
    def _reference_policy(self):
        """Yield the model to call for the reference policy (adapter disabled under PEFT)."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not is_peft_model(unwrapped):
            raise RuntimeError("no reference policy: set beta > 0 or reference='initial', or pass ref_model")
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            yield self.model
