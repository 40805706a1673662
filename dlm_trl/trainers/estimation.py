"""Likelihood estimates: the estimator plugin, the API for losses and the rollout's old / reference estimates.

Subclasses (and users) implement :meth:`_EstimationMixin.compute_policy_loss` with
:meth:`~_EstimationMixin.estimate_logps` (the current policy, on this inner iteration's masks) and
:meth:`~_EstimationMixin.old_logps` (the rollout policy, on the same masks).
:meth:`~_EstimationMixin._score_rollout` computes the old and reference estimates ``[B, μ, L]`` of
a rollout batch once, without gradients. Every estimate goes through the trainer's
``_get_per_token_logps_and_entropies`` hook (``_base.py``) under the mask seeds of ``seeds.py``.
"""

from __future__ import annotations

import torch

from ..losses import rollout_correction_weights
from ..registry import ESTIMATORS
from ..registry import load as load_plugin
from .config import DLMConfig


class _EstimationMixin:
    """The estimator (:meth:`_resolve_estimator`), the loss API and the no-grad estimates of a rollout."""

    @staticmethod
    def _resolve_estimator(estimator, args: DLMConfig):
        if estimator is None:
            estimator = args.estimator
        if isinstance(estimator, str):
            obj = load_plugin(ESTIMATORS, estimator)
            estimator = obj(**args.estimator_kwargs) if isinstance(obj, type) else obj
        if not callable(estimator) or not callable(getattr(estimator, "nfe", None)):
            raise TypeError(
                f"{estimator!r} is not a likelihood estimator: it must be callable as "
                "est(model, prompt_ids, completion_ids, completion_mask, *, generator, prompt_attention_mask) "
                "and have nfe(completion_length) (see dlm_trl.estimators.LikelihoodEstimator)"
            )
        return estimator

    # ------------------------------------------------------------------ for subclasses and users

    def estimate_logps(self, model, inputs: dict, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token estimates ``[B, L]`` of ``model`` (grad enabled if it is) for the batch rows,
        on the masks of ``seeds`` (default: this inner iteration's ``inputs["mask_seeds"]``)."""
        seeds = inputs["mask_seeds"] if seeds is None else seeds
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)  # [B, P+L]
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        with self.mask_seeds(seeds):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, inputs["completion_ids"].shape[1]
            )
        self.nfe_counts["policy"] += self._last_estimate_nfe
        return logps

    def old_logps(self, inputs: dict, logps: torch.Tensor) -> torch.Tensor:
        """The rollout policy's estimate ``[B, L]`` on this iteration's masks (``logps.detach()`` when on-policy)."""
        old = inputs.get("old_per_token_logps")
        return logps.detach() if old is None else old

    def rollout_correction(self, inputs: dict, old_logps: torch.Tensor) -> torch.Tensor | None:
        """Importance weights of ``args.rollout_correction`` for this micro-batch (``[B, L]`` per token,
        ``[B]`` per sequence, no grad), or ``None`` when it is ``"none"``; pass them to the loss as
        ``weights=``. ``old_logps`` is the loss's old estimate (:meth:`old_logps`); the sampler's
        log-probabilities come from the rollout (``inputs["sampler_logps"]``). Its metrics are logged
        with the loss's. A ``compute_policy_loss`` that ignores a requested correction fails loudly."""
        self._rollout_correction_asked = True
        mode = self.args.rollout_correction
        if mode == "none":
            return None
        sampler = inputs.get("sampler_logps")
        if sampler is None:
            raise RuntimeError(
                f"rollout_correction={mode!r} needs the sampler's per-token log-probabilities "
                "(inputs['sampler_logps'], stored from SamplerOutput.commit_logprob), but this batch has none"
            )
        weights, metrics = rollout_correction_weights(
            old_logps, sampler, inputs["completion_mask"], mode=mode,
            clip_min=self.args.rollout_correction_min, clip_max=self.args.rollout_correction_max,
        )
        self._rollout_correction_metrics = metrics
        return weights

    def compute_policy_loss(self, model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch → ``(loss, metrics)``; override this to change the objective.

        ``inputs`` holds TRL's batch for this inner iteration: ``prompt_ids``, ``prompt_mask``,
        ``completion_ids``, ``completion_mask`` ``[B, L]``, ``advantages`` ``[B]``,
        ``mask_seeds`` ``[B]``, ``old_per_token_logps`` ``[B, L]`` (``None`` when on-policy:
        use :meth:`old_logps`), ``ref_per_token_logps`` ``[B, L]`` (with β > 0),
        ``keep_rows`` ``[B]`` (with ``drop_flat_groups``: 0 for rows of flat groups, which the
        loss and its normaliser must leave out), ``inner_iteration``. Use :meth:`estimate_logps` for the current policy's estimate.
        The returned loss is scaled for gradient accumulation by the caller.
        """
        raise NotImplementedError

    def _needs_old_estimates(self) -> bool:
        return True

    def _score_rollout(self, out: dict) -> None:
        """Old and reference estimates ``[B, μ, L]`` for the iterations that need them (no grad)."""
        mu = out["mask_seeds"].shape[1]
        batch = {
            "prompt_ids": out["prompt_ids"], "prompt_mask": out["prompt_mask"],
            "completion_ids": out["completion_ids"], "completion_mask": out["completion_mask"],
        }
        bs = self._rollout_batch_size()
        if self._needs_old_estimates():
            need_old = self._old_iterations(mu)
            if need_old:
                out["old_per_token_logps"] = self._per_iteration_estimates(
                    out, need_old, "old", lambda seeds: self._estimate_chunked(self.model, batch, seeds, bs)
                )
        if self.beta != 0.0:
            with self._reference_policy() as ref:
                out["ref_per_token_logps"] = self._per_iteration_estimates(
                    out, list(range(mu)), "ref", lambda seeds: self._estimate_chunked(ref, batch, seeds, bs)
                )

    def _rollout_batch_size(self) -> int:
        """Rows per no-grad estimate of a rollout batch (the train or eval micro-batch size)."""
        return self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size

    def _old_iterations(self, mu: int) -> list[int]:
        """Inner iterations whose old estimate must be computed (iteration 0 is on-policy when it can be)."""
        on_policy0 = self._iteration0_on_policy or not self.model.training
        return [k for k in range(mu) if not (k == 0 and on_policy0)]

    def _per_iteration_estimates(self, out: dict, ks: list[int], counter: str, estimate):
        """``estimate(seeds [B])`` → ``[B, L]`` (or a tuple of them) run once per distinct mask set among the inner
        iterations ``ks`` (one set for all when masks are shared), spread to ``[B, μ, L]`` (a tuple for a tuple),
        NaN at the iterations not in ``ks``; its NFE goes to ``nfe_counts[counter]``."""
        seeds = out["mask_seeds"]  # [B, μ]
        B, mu = seeds.shape
        L = out["completion_ids"].shape[1]
        canon = (lambda k: 0) if self._shared_masks() else (lambda k: k)
        table = {}
        for k in sorted({canon(k) for k in ks}):
            result = estimate(seeds[:, k])
            table[k] = result if isinstance(result, tuple) else (result,)
            self.nfe_counts[counter] += self._last_estimate_nfe
        width = len(next(iter(table.values())))
        full = tuple(
            torch.full((B, mu, L), float("nan"), device=out["completion_ids"].device) for _ in range(width)
        )
        for k in ks:
            for f, value in zip(full, table[canon(k)], strict=True):
                f[:, k] = value
        return full if width > 1 else full[0]

    def _estimate_chunked(self, model, batch: dict, seeds: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        with self.mask_seeds(seeds):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, batch["completion_ids"].shape[1], batch_size=batch_size
            )
        return logps
