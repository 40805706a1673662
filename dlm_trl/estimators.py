"""The likelihood-estimator interface.

An estimator turns a (prompt, completion) batch into per-token contributions whose
masked sum is an estimate of ``log π_θ(completion | prompt)`` (or its ELBO):

.. code-block:: python

    est = load_estimator("sdmc_elbo", num_nodes=3)
    contrib = est(model, prompt_ids, completion_ids, completion_mask, generator=gens)  # [B, L]
    seq_logp = (contrib * completion_mask).sum(1)                                     # [B]
    est.nfe(L)  # forward passes it spent per sequence
    est.last_call_nfe  # optional: row-forwards the last call actually ran (counted by the trainers if present)

Rules every implementation follows (checked by ``tests/test_estimator_contract.py``):

* randomness only from ``generator`` (one ``torch.Generator`` or one per row): the same
  generators give the same masks, so old / reference / current estimates share them;
* zeros where ``completion_mask`` is 0;
* Monte Carlo draws are folded into the batch dimension and run in chunks of at most
  ``batch_size`` rows, never as a Python loop of per-draw forwards;
* gradients flow to the model when grad is enabled; nothing is detached inside;
* log-softmax in float32 whatever the model's dtype.

``model`` is a :class:`dlm_trl.models.DLM` (callable ``ids [B, T] → logits [B, T, V]``
aligned with positions, with ``mask_token_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


@runtime_checkable
class LikelihoodEstimator(Protocol):
    """What the trainers call. Implementations live in ``plugins/`` (entry-point group
    ``dlm_trl.estimators``)."""

    #: entry-point name, for logs
    name: str

    def nfe(self, completion_length: int) -> int:
        """Forward passes spent per sequence for a completion of ``completion_length`` tokens."""
        ...

    def __call__(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        completion_ids: torch.Tensor,  # [B, L]
        completion_mask: torch.Tensor,  # [B, L] 1 = counts (up to and incl. first EOS)
        *,
        generator: Generators = None,
        prompt_attention_mask: torch.Tensor | None = None,  # [B, P] 1 = real prompt token
    ) -> torch.Tensor:  # [B, L] float32 per-token contributions, 0 where completion_mask == 0
        ...


def row_generators(seeds: torch.Tensor | Sequence[int], device: str = "cpu") -> list[torch.Generator]:
    """One fresh ``torch.Generator`` per row from integer seeds ``[B]``.

    Trainers derive a seed per (rollout, row, inner iteration) and call this before each
    estimate, so that old / reference / current estimates of a row draw identical masks.
    """
    seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
