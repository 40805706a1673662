"""RL trainers for masked diffusion LMs on top of ``trl.GRPOTrainer``.

* :class:`DiffuGRPOTrainer` / :class:`DiffuGRPOConfig` — d1's diffu-GRPO (arXiv 2504.12216);
* :class:`GDPOTrainer` / :class:`GDPOConfig` — GDPO (arXiv 2510.08554);
* :class:`DMPOTrainer` / :class:`DMPOConfig` — DMPO (arXiv 2510.08233), PDNS tempering optional.
* :class:`SPGTrainer` / :class:`SPGConfig` — SPG (arXiv 2510.09541): ELBO for positive, EUBO / mixture for
  negative advantages, block-wise masks.
* :class:`TR2D2Trainer` / :class:`TR2D2Config` — TR2-D2 (arXiv 2509.25171): Monte-Carlo tree search fills a
  replay buffer per prompt; DMPO's WDCE on it (:mod:`dlm_trl.search`).

All of them share one private base (``_base._DLMTrainerBase``) that swaps TRL's autoregressive
generation for the diffusion sampler and TRL's causal log-probs for a likelihood-estimator
plugin, with per-row mask seeds so that old / reference / current estimates use identical
masks. Usage::

    from dlm_trl.trainers import GDPOConfig, GDPOTrainer
    trainer = GDPOTrainer(model="tiny", reward_funcs=[countdown_reward], args=GDPOConfig(...),
                          train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

**Options beyond the papers** (each in the config with the paper's value in its help):
GDPO's ``sequence_epsilon`` (3e-3: a clip range that binds on the length-normalised log-ratio;
``None`` = TRL's ε) and ``kl_estimator`` (``"token_k3"``); DMPO's ``target_ess`` (0.7: ESS
tempering of the weights; ``None`` = the paper's c = 1); every trainer's ``drop_flat_groups``
(DAPO's dynamic sampling without resampling) and ``after_eos`` (what follows the first EOS).
TRL options a trainer does not honour (``use_vllm``, ``top_p`` / ``top_k`` / ``min_p`` /
``repetition_penalty`` / ``generation_kwargs``, ``cfg_scale > 0``, ``use_bias_correction_kl``
outside diffu-GRPO, ``loss_type`` / ``importance_sampling_level`` / ``epsilon`` / ``delta`` where
they have no meaning, tools, environments, ``rollout_func`` …) raise an error naming the option,
its value and what to do. Likelihoods are always at temperature 1 (``temperature`` is the
sampler's).

**Your own loss**: subclass a trainer and override ``compute_policy_loss(model, inputs) ->
(loss, metrics)``; ``self.estimate_logps(model, inputs)`` gives the current policy's per-token
estimates ``[B, L]`` on this inner iteration's masks and ``self.old_logps(inputs, logps)`` the
rollout policy's on the same masks::

    class MyGDPO(GDPOTrainer):
        def compute_policy_loss(self, model, inputs):
            logps = self.estimate_logps(model, inputs)
            seq = (logps * inputs["completion_mask"]).sum(1)
            return -(inputs["advantages"] * seq).mean(), {}

**Your own estimator**: register it under the entry-point group ``dlm_trl.estimators`` and set
``estimator="name"`` (or ``estimator="package.module:Class"``, or pass an instance as
``GDPOTrainer(..., estimator=MyEstimator())``); it must follow
:class:`dlm_trl.estimators.LikelihoodEstimator`.
"""

from ._base import DLMConfig, derive_seeds, mix_seed
from .diffu_grpo import DiffuGRPOConfig, DiffuGRPOTrainer
from .dmpo import DMPOConfig, DMPOTrainer
from .gdpo import GDPOConfig, GDPOTrainer
from .spg import SPGConfig, SPGTrainer
from .tr2d2 import TR2D2Config, TR2D2Trainer

TRAINERS = {
    "diffu_grpo": (DiffuGRPOTrainer, DiffuGRPOConfig),
    "gdpo": (GDPOTrainer, GDPOConfig),
    "dmpo": (DMPOTrainer, DMPOConfig),
    "spg": (SPGTrainer, SPGConfig),
    "tr2d2": (TR2D2Trainer, TR2D2Config),
}

__all__ = [
    "DLMConfig",
    "DMPOConfig",
    "DMPOTrainer",
    "DiffuGRPOConfig",
    "DiffuGRPOTrainer",
    "GDPOConfig",
    "GDPOTrainer",
    "SPGConfig",
    "SPGTrainer",
    "TR2D2Config",
    "TR2D2Trainer",
    "TRAINERS",
    "derive_seeds",
    "mix_seed",
]
