"""Fail loudly, naming the hook, when the pinned TRL changes what the DLM trainers override or rely on.

``dlm_trl/trainers/_base.py`` overrides six ``GRPOTrainer`` methods and relies on how TRL
calls them. A TRL upgrade that changes any recorded signature (parameter names, kinds and
defaults — annotations are ignored) or the call sites below must be reviewed by hand: update
the override, then the record here. Also guarded: every TRL / transformers method the trainers
override is recorded somewhere (here, ``test_resume.py`` or ``test_failures.py``), the
``GRPOTrainer.__init__`` arguments they refuse still exist, and every ``GRPOConfig`` option is
classified as honoured, refused or inert — a new TRL option fails until someone decides which.
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
    "_get_train_sampler": [("self", E), ("dataset", None)],
}

# Methods we do not override but whose behaviour the base depends on.
RELIED_ON = {
    "_prepare_inputs": [("self", E), ("generation_batch", E)],
    "compute_loss": [("self", E), ("model", E), ("inputs", E), ("return_outputs", False), ("num_items_in_batch", None)],
    "_generate": [("self", E), ("prompts", E)],
    "training_step": [("self", E), ("model", E), ("inputs", E), ("num_items_in_batch", E)],
}

# Trainer methods the base overrides for checkpoints and failures (signatures recorded in other tests).
GUARDED_ELSEWHERE = {
    "_calculate_rewards": "tests/test_failures.py",
    "_save_checkpoint": "tests/test_resume.py",
    "_get_output_dir": "tests/test_resume.py",
    "_load_optimizer_and_scheduler": "tests/test_resume.py",
}
# transformers.Trainer.create_optimizer: wrapped to skip a non-finite step (test_failures.py tests the behaviour).
CREATE_OPTIMIZER = [("self", E), ("model", None)]

# GRPOTrainer.__init__ parameters the DLM trainers refuse with a clear error (no tools, environments or rollout_func).
REFUSED_INIT_PARAMS = ["tools", "rollout_func", "environment_factory"]

# Every GRPOConfig option beyond TrainingArguments, by what the DLM trainers do with it.
HONOURED = {  # used as in TRL, or by the DLM trainers' own code (per-trainer checks in the configs)
    "model_init_kwargs", "trust_remote_code", "disable_dropout", "cast_lm_head_to_fp32", "num_generations",
    "num_generations_eval", "max_completion_length", "ds3_gather_for_generation", "shuffle_dataset",
    "pad_to_multiple_of", "generation_batch_size", "steps_per_generation", "temperature", "chat_template_kwargs",
    "beta", "num_iterations", "epsilon", "delta", "epsilon_high", "importance_sampling_level", "reward_weights",
    "multi_objective_aggregation", "scale_rewards", "loss_type", "mask_truncated_completions", "sync_ref_model",
    "ref_model_mixup_alpha", "ref_model_sync_steps", "use_bias_correction_kl", "log_completions", "log_multimodal",
    "num_completions_to_print", "log_unique_prompts", "log_completions_hub_repo",
}
REFUSED = {  # DLMConfig._UNSUPPORTED: a non-neutral value raises, naming the option
    "top_p", "top_k", "min_p", "generation_kwargs", "repetition_penalty", "cache_implementation", "use_vllm",
    "use_transformers_continuous_batching", "use_transformers_paged", "top_entropy_quantile", "entropy_coef",
    "use_adaptive_entropy", "off_policy_mask_threshold", "max_tool_calling_iterations", "router_aux_loss_coef",
}
INERT = {  # read by TRL only when a refused option (vLLM, continuous batching, adaptive entropy) or loss type is on
    "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_structured_outputs_regex", "vllm_server_base_url",
    "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization",
    "vllm_max_model_length", "vllm_tensor_parallel_size", "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_cap", "transformers_continuous_batching_config", "entropy_coef_min",
    "entropy_coef_max", "entropy_coef_delta", "entropy_target", "sapo_temperature_neg", "sapo_temperature_pos",
    "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg",
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
    ("get_train_dataloader", "sampler_fn=self._get_train_sampler",
     "the curriculum sampler is swapped in through _get_train_sampler"),
    ("_get_train_sampler", "batch_size=self.args.generation_batch_size // self.num_generations",
     "the curriculum sampler copies RepeatSampler's chunk of prompts"),
    ("_get_train_sampler", "repeat_count=self.num_iterations * self.args.steps_per_generation",
     "the curriculum sampler copies RepeatSampler's chunk repeats"),
    ("_get_train_sampler", "mini_repeat_count=self.num_generations,",
     "the curriculum sampler copies RepeatSampler's repeats of each prompt"),
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


def test_every_overridden_trl_method_is_guarded():
    """A method of GRPOTrainer (or transformers.Trainer) that a DLM trainer overrides must have its
    signature recorded: add a new override to OVERRIDDEN (or to another test and GUARDED_ELSEWHERE)."""
    from dlm_trl.trainers import TRAINERS

    guarded = set(OVERRIDDEN) | set(GUARDED_ELSEWHERE) | {"create_optimizer", "__init__"}
    for cls in (_DLMTrainerBase, *(trainer for trainer, _ in TRAINERS.values())):
        ours = {name for name, value in vars(cls).items() if callable(value) and hasattr(GRPOTrainer, name)}
        assert ours <= guarded, f"{cls.__name__} overrides TRL methods with no recorded signature: {ours - guarded}"
    assert _params(GRPOTrainer.create_optimizer) == CREATE_OPTIMIZER  # ours forwards *args, **kwargs


def test_refused_init_parameters_still_exist_in_trl():
    trl_names = list(inspect.signature(GRPOTrainer.__init__).parameters)
    ours = list(inspect.signature(_DLMTrainerBase.__init__).parameters)
    for name in REFUSED_INIT_PARAMS:
        assert name in trl_names, f"GRPOTrainer.__init__ no longer takes {name!r}; drop its refusal in _DLMTrainerBase"
        assert name in ours, f"_DLMTrainerBase.__init__ must take (and refuse) {name!r}"


def test_every_grpo_config_option_is_classified():
    import dataclasses

    from transformers import TrainingArguments
    from trl import GRPOConfig

    from dlm_trl.trainers import DLMConfig

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    options = {f.name for f in dataclasses.fields(GRPOConfig)} - base
    classified = HONOURED | REFUSED | INERT
    assert not (HONOURED & REFUSED or HONOURED & INERT or REFUSED & INERT)
    assert options - classified == set(), (
        f"new GRPOConfig options {sorted(options - classified)}: decide whether the DLM trainers honour them, "
        "refuse them (DLMConfig._UNSUPPORTED) or can ignore them, and record that here"
    )
    assert classified - options == set(), f"GRPOConfig no longer has {sorted(classified - options)}"
    assert set(DLMConfig._UNSUPPORTED) == REFUSED
