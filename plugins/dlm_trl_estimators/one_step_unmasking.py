"""One-step unmasking (diffu-GRPO / d1, Zhao et al., arXiv 2504.12216).

The whole completion is replaced by the mask token and each *real* prompt token is
masked independently with probability ``p_mask_prompt``; one forward pass gives the
per-token log-probabilities ``log f_θ(y_i | masked prompt, all-masked completion)``. This
is a mean-field approximation of ``log π_θ(y | q)`` — biased, but one forward per
sequence. Trainers draw a fresh prompt mask per inner iteration (a new generator seed)
and share it between the old, reference and current policies (same seed).

Departures from d1's code, both deliberate:

* left-padding of the prompt (``prompt_attention_mask == 0``) is never masked — only real
  prompt tokens are, so a row's estimate does not depend on how wide the batch is;
* a row's prompt mask is drawn from its own generator, aligned on the *last* prompt
  token (the draw for the token just before the completion comes first), so it depends
  only on that generator and the row's own tokens.

NFE: 1 forward pass per sequence.
"""

from __future__ import annotations

import torch

from dlm_trl.estimators import Generators
from dlm_trl.masking import bernoulli_mask

from ._common import check_batch_size, check_inputs, completion_log_probs, finish


class OneStepUnmasking:
    """``one_step_unmasking``: d1's per-token log-probs from a single fully-masked forward.

    Args:
        p_mask_prompt: probability of masking each real prompt token (d1: 0.15). With 0
            the estimator is deterministic.
        batch_size: rows per forward pass (``None``: the whole batch at once).
    """

    name = "one_step_unmasking"

    def __init__(self, *, p_mask_prompt: float = 0.15, batch_size: int | None = None):
        if not 0.0 <= p_mask_prompt <= 1.0:
            raise ValueError(f"p_mask_prompt is a probability in [0, 1], got {p_mask_prompt}")
        self.p_mask_prompt = float(p_mask_prompt)
        self.batch_size = check_batch_size(batch_size)

    @property
    def deterministic(self) -> bool:
        return self.p_mask_prompt == 0.0

    def nfe(self, completion_length: int) -> int:
        return 1

    def __repr__(self) -> str:
        return f"OneStepUnmasking(p_mask_prompt={self.p_mask_prompt}, batch_size={self.batch_size})"

    def __call__(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        completion_ids: torch.Tensor,  # [B, L]
        completion_mask: torch.Tensor,  # [B, L]
        *,
        generator: Generators = None,
        prompt_attention_mask: torch.Tensor | None = None,  # [B, P]
    ) -> torch.Tensor:  # [B, L]
        check_inputs(prompt_ids, completion_ids, completion_mask, prompt_attention_mask, generator)
        B, P = prompt_ids.shape
        L = completion_ids.shape[1]
        completion_noise = torch.ones(B, L, dtype=torch.bool, device=completion_ids.device)  # [B, L]
        prompt_noise = None
        if self.p_mask_prompt > 0.0 and P > 0:
            real = (
                torch.ones(B, P, dtype=torch.bool, device=prompt_ids.device)
                if prompt_attention_mask is None
                else prompt_attention_mask.bool()
            )  # [B, P]
            t = torch.full((B,), self.p_mask_prompt, device=prompt_ids.device)
            # flip so that draw j of a row lands on its j-th token from the right (prompts are left-padded)
            prompt_noise = bernoulli_mask(t, real.flip(1), generator=generator).flip(1)  # [B, P]
        logp = completion_log_probs(
            model,
            prompt_ids,
            completion_ids,
            completion_noise,
            prompt_noise=prompt_noise,
            prompt_attention_mask=prompt_attention_mask,
            batch_size=self.batch_size,
        )  # [B, L]
        return finish(logp, completion_mask)
