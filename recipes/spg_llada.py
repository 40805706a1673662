"""SPG — Sandwiched Policy Gradient (arXiv 2510.09541) on a LLaDA-style diffusion LM.

The ELBO of completions with a positive advantage is pushed up and an evidence *upper* bound (a mixture
with the ELBO) of those with a negative advantage pushed down (``dlm_trl.trainers.spg``). With no arguments
it trains the embedded tiny model on Countdown — offline, on CPU — under the same protocol and budget as
``recipes/gdpo_llada.py`` (validation every few steps, test accuracy before / final / best-on-validation)::

    python recipes/spg_llada.py
    accelerate launch recipes/spg_llada.py

Any field of ``RecipeArguments``, ``SPGConfig`` or ``trl.ModelConfig`` can be overridden on the command line.
With ``--config`` (e.g. ``recipes/configs/spg_llada_countdown.yaml``, the published LLaDA-8B-Instruct
settings) the tiny defaults below are not applied. Outputs as in the other recipes (``report.json``,
``report.png``, ``best/``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dlm_trl.trainers import SPGConfig, SPGTrainer  # noqa: E402
from dlm_trl.trainers.recipe_utils import cpu_rollout_autocast_dtype, run_recipe  # noqa: E402

# Defaults for the embedded tiny model on 2 CPU cores (applied only without --config): GDPO's recipe batch (256
# completions per optimizer step, lr 1e-5, threshold-0.9 rollouts, each rollout used once) and its protocol, and
# the same ~30-minute budget as a fixed step count: an SPG step (2 block-wise draws, one forward+backward each) took
# 0.51x a GDPO step (3 nodes) in back-to-back 3-step runs (45 s vs 87 s on one busy thread), i.e. ~9.5 s on 2 idle
# cores -> 110 x 9.5 s = 17.4 min of training + 23 validations x ~20 s + 3 test evaluations x ~40 s ≈ 27 min.
# SPG's own settings as in its reference scripts (K = 2 block-wise draws, beta 1.5, omega 0.5). Not tuned here.
TINY_DEFAULTS = dict(
    model_name_or_path="tiny",
    output_dir="outputs/spg_tiny",
    task="countdown",
    num_train_prompts=3000,
    eval_samples=400,  # test prompts: before, final, best-on-validation
    val_samples=200,  # validation prompts, every eval_every_steps and at the start and the end
    eval_every_steps=5,
    max_steps=110,
    train_minutes=60.0,  # safety cap only
    torch_threads=None,
    num_generations=8,
    per_device_train_batch_size=64,
    gradient_accumulation_steps=4,
    num_iterations=1,
    learning_rate=1e-5,
    lr_scheduler_type="constant",
    warmup_steps=0,
    max_grad_norm=1.0,
    gen_length=48,
    block_length=16,
    diffusion_steps=24,
    temperature=1.0,
    rollout_autocast_dtype=cpu_rollout_autocast_dtype(),  # bf16 rollouts where the CPU has native bf16
    # threshold-0.9 parallel decoding, as the GDPO recipe (README "Fast rollouts in RL")
    rollout="fast",
    spg_num_samples=2,
    spg_beta=1.5,
    mixture=0.5,
    bf16=False,
    use_cpu=True,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    seed=0,
)


def main(argv: list[str] | None = None) -> dict:
    return run_recipe(SPGTrainer, SPGConfig, TINY_DEFAULTS, argv, name="SPG")


if __name__ == "__main__":
    main()
