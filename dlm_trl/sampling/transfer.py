"""Transfer rules: which still-masked positions of the block a step commits.

* ``topk`` — the ``k`` best-scored candidates, ``k`` from the step schedule (LLaDA, Dream). With
  ``alg_temp > 0`` the ``k`` are a sample without replacement from ``softmax(score / alg_temp)``
  (Dream's ``alg_temp``), drawn by the caller as an exponential race.
* ``threshold`` — every candidate whose score is at least ``threshold``, and the best one if
  none is (Fast-dLLM's parallel decoding, arXiv 2505.22618; so every step commits ≥ 1 token).
* ``factor`` — Fast-dLLM's factor rule: with the candidates' confidences sorted,
  ``c_(1) ≥ c_(2) ≥ …``, commit the ``n`` best for the largest ``n`` with
  ``c_(m) ≥ 1 − f / (m + 1)`` for every ``m ≤ n`` (and at least one). The published code has an
  off-by-one at the last candidate (when only the last one fails, it commits all ``N``); this
  implementation follows the rule as the paper states it.
* ``origin`` — not a ranking: each candidate is committed independently with the schedule's
  probability (Dream's ``origin``), see :func:`origin_commit`.

Every function takes ``[B, K]`` scores and a ``[B, K]`` boolean ``candidates`` mask and returns a
``[B, K]`` boolean ``commit`` that is a subset of ``candidates``.
"""

from __future__ import annotations

import torch


def topk_commit(score: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best candidates per row (every row of a block has the same number of masks)."""
    if k == 0:
        return torch.zeros_like(candidates)
    score = score.masked_fill(~candidates, -torch.inf)
    chosen = torch.topk(score, k, dim=1).indices  # [B, k]
    return torch.zeros_like(candidates).scatter_(1, chosen, True) & candidates


def _with_best(commit: torch.Tensor, score: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``commit`` plus each row's best candidate (rows without candidates stay empty)."""
    best = score.masked_fill(~candidates, -torch.inf).argmax(dim=1, keepdim=True)  # [B, 1]
    forced = torch.zeros_like(candidates).scatter_(1, best, True)
    return (commit | forced) & candidates


def threshold_commit(score: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """Candidates scoring ``≥ threshold``, and at least each row's best one."""
    return _with_best(candidates & (score >= threshold), score, candidates)


def factor_commit(score: torch.Tensor, candidates: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule (module docstring): the ``n`` best for the largest admissible ``n``."""
    s = score.masked_fill(~candidates, -torch.inf)
    ordered, order = torch.sort(s, dim=1, descending=True)  # [B, K]
    m = torch.arange(1, s.shape[1] + 1, device=s.device, dtype=s.dtype)  # rank m = 1..K
    ok = ordered >= 1 - factor / (m + 1)  # [B, K]; −inf (non-candidates) never passes
    n = torch.cumprod(ok.long(), dim=1).sum(dim=1, keepdim=True).clamp_min(1)  # [B, 1] leading passes, ≥ 1
    take_sorted = torch.arange(s.shape[1], device=s.device)[None, :] < n  # [B, K]
    commit = torch.zeros_like(candidates).scatter_(1, order, take_sorted)
    return commit & candidates


def origin_commit(uniforms: torch.Tensor, candidates: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """Each candidate independently with ``probability`` (``uniforms < probability``)."""
    return candidates & (uniforms < probability.to(uniforms.device, uniforms.dtype))


__all__ = ["factor_commit", "origin_commit", "threshold_commit", "topk_commit"]
