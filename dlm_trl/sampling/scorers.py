"""Scorers: how confident the model is in each candidate's drawn token (higher = committed earlier).

``p`` is the distribution a token is drawn from (``softmax(ℓ)``, or ``softmax(ℓ / T)`` with
``tempered`` as Dream does at ``T > 0``), ``x̂`` the drawn token:

* ``"low_confidence"`` — ``p(x̂)`` (LLaDA's ``low_confidence``, Dream's ``maskgit_plus``);
* ``"margin"`` — ``p₁ − p₂``, the gap between the two most likely tokens (Dream's ``topk_margin``);
* ``"entropy"`` — ``Σ_v p_v log p_v``, the negative entropy (Dream's ``entropy``);
* ``"random"`` — uniform noise, drawn by the caller (LLaDA's ``random``).
"""

from __future__ import annotations

import torch


def score_candidates(
    rule: str,
    logits: torch.Tensor,  # [B, K, V], mask logit already −inf
    x0: torch.Tensor,  # [B, K] drawn tokens
    temperature: float,
    tempered: bool,
) -> torch.Tensor:
    """The score of each position under ``rule``, ``[B, K]`` in ``logits``' dtype."""
    if tempered and temperature > 0:
        logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)  # [B, K, V]
    if rule == "low_confidence":
        return torch.gather(probs, -1, x0[..., None]).squeeze(-1)
    if rule == "margin":
        if probs.shape[-1] < 2:
            return probs[..., 0]
        top2 = torch.topk(probs, 2, dim=-1).values  # [B, K, 2]
        return top2[..., 0] - top2[..., 1]
    if rule == "entropy":
        return -torch.special.entr(probs).sum(-1)  # Σ p log p, with 0 log 0 = 0
    raise AssertionError(f"no score for remasking={rule!r}")


def drawn_logprob(logits: torch.Tensor, x0: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log p(x̂)`` under the distribution ``x̂`` was drawn from: ``softmax(ℓ / T)``, ``softmax(ℓ)`` at ``T = 0``."""
    if temperature > 0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, x0[..., None]).squeeze(-1)  # [B, K]
    return picked - torch.logsumexp(logits, dim=-1)


__all__ = ["drawn_logprob", "score_candidates"]
