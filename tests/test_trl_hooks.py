"""Fail loudly, naming the hook, when the pinned TRL changes what the DLM trainers override or rely on.

``dlm_trl/trainers/_base.py`` overrides five ``GRPOTrainer`` methods and relies on how TRL
calls them. A TRL upgrade that changes any recorded signature (parameter names, kinds and
defaults — annotations are ignored) or the call sites below must be reviewed by hand: update
the override, then the record here.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import trl
from trl import GRPOTrainer
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from dlm_trl.trainers._base import _DLMTrainerBase

E = inspect.Parameter.empty
POK = inspect.Parameter.POSITIONAL_OR_KEYWORD

# hook -> [(name, default)] as in TRL 1.16 (all positional-or-keyword).
OVERRIDDEN = {
    "_generate_single_turn": [
        ("self", E), ("prompt_ids", E), ("images", E), ("multimodal_fields", E), ("num_generations", E),
        ("has_tool_images", False),
    ],
    "_get_per_token_logps_and_entropies": [
        ("self", E), ("model", E), ("input_ids", E), ("attention_mask", E), ("logits_to_keep", E),
        ("batch_size", None), ("compute_entropy", False), ("compute_aux_loss", False), ("pixel_values", None),
        ("image_grid_thw", None), ("num_images", None), ("pixel_attention_mask", None), ("spatial_shapes", None),
        ("num_tiles", None), ("image_sizes", None), ("token_type_ids", None), ("mm_token_type_ids", None),
        ("image_position_ids", None),
    ],
    "_generate_and_score_completions": [("self", E), ("inputs", E)],
    "_compute_loss": [("self", E), ("model", E), ("inputs", E)],
    "_send_telemetry": [("self", E)],
}

# Methods we do not override but whose behaviour the base depends on.
RELIED_ON = {
    "_prepare_inputs": [("self", E), ("generation_batch", E)],
    "compute_loss": [("self", E), ("model", E), ("inputs", E), ("return_outputs", False), ("num_items_in_batch", None)],
    "_generate": [("self", E), ("prompts", E)],
    "training_step": [("self", E), ("model", E), ("inputs", E), ("num_items_in_batch", E)],
}

# GRPOTrainer.__init__ parameters the base passes through (by keyword).
INIT_PARAMS = [
    "model", "reward_funcs", "args", "train_dataset", "eval_dataset", "processing_class",
    "reward_processing_classes", "callbacks", "optimizers", "peft_config",
]

# Call sites in TRL's source the base relies on: (method, snippet, why).
CALL_SITES = [
    ("_generate", "self._generate_single_turn(", "the sampler is swapped in through _generate_single_turn"),
    ("_generate_and_score_completions", "self._get_per_token_logps_and_entropies(",
     "TRL's old/ref log-prob calls are switched off through this hook"),
    ("_generate_and_score_completions", '"advantages": advantages', "advantages come from TRL's batch dict"),
    ("_prepare_inputs", "shuffle_sequence_dict(", "per-row values are shuffled along dim 0"),
    ("_prepare_inputs", "split_tensor_dict(", "per-row values are split along dim 0"),
    ("_prepare_inputs", "self._buffered_inputs[self._step % self.args.steps_per_generation]",
     "the inner iteration is (step mod steps_per_generation·μ) // steps_per_generation"),
    ("compute_loss", "self._compute_loss(model, inputs)", "the loss is swapped in through _compute_loss"),
    ("training_step", "self._step += 1", "the inner-iteration index reads self._step"),
    ("__init__", "self.beta = args.beta", "β is hidden from __init__ so TRL builds no reference model"),
]


def _params(fn):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_trl_is_the_pinned_minor_version():
    assert trl.__version__.startswith("1.16."), (
        f"dlm-trl is pinned to trl 1.16.x (found {trl.__version__}); review tests/test_trl_hooks.py before moving"
    )


@pytest.mark.parametrize("hook", sorted(OVERRIDDEN))
def test_overridden_hook_signature_unchanged(hook):
    trl_fn = getattr(GRPOTrainer, hook, None)
    assert trl_fn is not None, f"TRL removed GRPOTrainer.{hook}, which dlm_trl.trainers._base overrides"
    kinds = {p.kind for p in inspect.signature(trl_fn).parameters.values()}
    got = _params(trl_fn)
    assert got == OVERRIDDEN[hook] and kinds == {POK}, (
        f"TRL changed the signature of GRPOTrainer.{hook} (overridden in dlm_trl/trainers/_base.py):\n"
        f"  recorded {OVERRIDDEN[hook]}\n  now      {got}"
    )
    ours = _params(getattr(_DLMTrainerBase, hook))
    assert ours == got, f"_DLMTrainerBase.{hook} no longer matches GRPOTrainer.{hook}: {ours} vs {got}"


@pytest.mark.parametrize("method", sorted(RELIED_ON))
def test_relied_on_method_signature_unchanged(method):
    got = _params(getattr(GRPOTrainer, method))
    assert got == RELIED_ON[method], (
        f"TRL changed the signature of GRPOTrainer.{method}, which dlm_trl.trainers._base relies on:\n"
        f"  recorded {RELIED_ON[method]}\n  now      {got}"
    )


def test_init_accepts_the_parameters_we_pass():
    names = list(inspect.signature(GRPOTrainer.__init__).parameters)
    missing = [p for p in INIT_PARAMS if p not in names]
    assert not missing, f"GRPOTrainer.__init__ no longer takes {missing} (passed by _DLMTrainerBase.__init__)"


@pytest.mark.parametrize("method, snippet, why", CALL_SITES, ids=[f"{m}:{s[:30]}" for m, s, _ in CALL_SITES])
def test_trl_call_sites_still_present(method, snippet, why):
    source = inspect.getsource(getattr(GRPOTrainer, method))
    assert snippet in source, f"GRPOTrainer.{method} no longer contains {snippet!r}; {why}"


def test_send_telemetry_is_called_from_base_init():
    from trl.trainer.base_trainer import _BaseTrainer

    assert "self._send_telemetry()" in inspect.getsource(_BaseTrainer.__init__)
    assert "send_telemetry" not in inspect.getsource(_DLMTrainerBase._send_telemetry).split('"""')[-1]


def test_batch_first_values_survive_shuffle_and_split():
    B, mu, L = 6, 3, 4
    batch = {
        "row": torch.arange(B),
        "mask_seeds": torch.arange(B)[:, None] * 10 + torch.arange(mu)[None],  # [B, μ]
        "old_per_token_logps": torch.arange(B).float()[:, None, None].expand(B, mu, L).clone(),  # [B, μ, L]
        "num_items_in_batch": torch.tensor(17),
    }
    torch.manual_seed(0)
    chunks = split_tensor_dict(shuffle_sequence_dict(batch), 3)
    for chunk in chunks:
        rows = chunk["row"]
        assert torch.equal(chunk["mask_seeds"] // 10, rows[:, None].expand(-1, mu))
        assert torch.equal(chunk["old_per_token_logps"][:, 0, 0].long(), rows)
        assert chunk["num_items_in_batch"].item() == 17
