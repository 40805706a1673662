"""Selection: which ``k`` of ``N`` generated samples to keep (replay buffers, self-distillation).

Training recursively on self-generated data drifts from generalisation to memorisation as
the entropy of the synthetic training set falls; keeping a high-entropy subset counters it
(Shi et al., "A Closer Look at Model Collapse: From a Generalization-to-Memorization
Perspective", arXiv 2509.16499, who measure a set's entropy with the Kozachenko–Leonenko
nearest-neighbour estimator and select greedily). :func:`select` returns indices into the
samples, in the order they were chosen:

* ``"entropy"`` — farthest-point sampling on L2-normalised features (see :func:`farthest_point`);
* ``"random"`` — a seeded uniform subset (the first ``k`` of a seeded permutation);
* ``"none"`` — the first ``k`` (the ``k`` highest ``scores`` when given).

For a fixed seed the selection at ``k`` is the first ``k`` of the selection at ``N``, and
the result is deterministic.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from ..sampling._names import _choice_error
from .features import Featurizer, Sample, l2_normalize, resolve_features

METHODS = ("entropy", "random", "none")
#: How ``"entropy"`` picks its first point: ``None`` means ``"best_score"`` with scores, else ``"random"``.
STARTS = ("random", "farthest_from_mean", "best_score")


def farthest_point(
    x: torch.Tensor,  # [N, D] L2-normalised features
    k: int,
    first: int,
    scores: torch.Tensor | None = None,  # [N] or None
) -> list[int]:
    """Greedy farthest-point order of ``min(k, N)`` rows of ``x``, starting from row ``first``.

    With ``S_t`` the points chosen so far, the next is

        s_{t+1} = argmax_{i ∉ S_t} ρ_t(i),   ρ_t(i) = min_{j ∈ S_t} ‖x_i − x_j‖²,

    ties broken by the highest score (when ``scores`` are given), then by the lowest index.
    ``ρ`` is updated with one new centre per step, ``ρ ← min(ρ, ‖x − x_{s_t}‖²)``, so a step
    costs ``O(N·D)`` and the whole selection ``O(N·k·D)``. The distances are differences, not
    ``2 − 2 cos``, so an exact duplicate of a chosen row has ``ρ = 0`` exactly and is taken
    only when every row left is at distance 0 from the chosen set.

    **Why this maximises entropy (greedily).** The Kozachenko–Leonenko estimate of the
    differential entropy of a set ``S`` of ``m`` points in ``R^D`` is

        Ĥ(S) = (D/m) Σ_{i ∈ S} log r_i + log(m − 1) + log V_D + γ,   r_i = min_{j ∈ S, j ≠ i} ‖x_i − x_j‖

    (``V_D`` the volume of the unit ball, ``γ`` Euler's constant); at fixed ``m`` only
    ``Σ log r_i`` depends on the choice, and it is dominated by the smallest ``r`` (``−∞``
    for a duplicate pair). Adding ``x`` to ``S_t`` gives ``x`` the nearest-neighbour distance
    ``r_x = √ρ_t(x)`` and leaves every chosen ``r_j`` at least ``min(r_j, r_x)``, since
    ``‖x − x_j‖ ≥ r_x``. Taking the ``x`` with the largest ``ρ_t(x)`` therefore maximises the
    new term and the smallest nearest-neighbour distance of the enlarged set — each step is
    the best single addition for the estimate's dominant term (the farthest-point greedy of
    Gonzalez 1985; the best subset itself is NP-hard to find).
    """
    n = x.shape[0]
    m = min(k, n)
    if m == 0:
        return []
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)  # [N]
    rho = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)  # [N]
    order = [first]
    for _ in range(m - 1):
        c = order[-1]
        taken[c] = True
        rho = torch.minimum(rho, (x - x[c]).pow(2).sum(dim=1))  # [N]
        cand = rho.masked_fill(taken, -1.0)  # chosen rows can never win (ρ ≥ 0)
        if scores is None:
            nxt = int(torch.argmax(cand))  # first maximum = lowest index
        else:
            tie = cand == cand.max()
            nxt = int(torch.argmax(scores.masked_fill(~tie, float("-inf"))))
        order.append(nxt)
    return order


def select(
    samples: Sequence[Sample],
    k: int,
    method: str = "entropy",
    features: str | Featurizer | torch.Tensor | None = None,
    seed: int = 0,
    scores: Sequence[float] | torch.Tensor | None = None,
    start: str | None = None,
) -> list[int]:
    """Indices of ``min(k, N)`` of the ``N`` samples, in the order chosen; deterministic for a seed.

    ``features``: a featuriser name (``"ngram"``), a callable ``samples → [N, D]``, a precomputed
    ``[N, D]`` tensor, or ``None`` for ``NGramFeatures()``; rows are L2-normalised before use.
    Only ``"entropy"`` computes them.

    ``scores``: optional per-sample quality ``[N]`` (e.g. rewards), used only where diversity
    leaves a choice: ``"entropy"`` starts from the best-scoring sample (unless ``start`` says
    otherwise) and breaks distance ties by the higher score; ``"none"`` keeps the ``k`` best
    (ties by index); ``"random"`` ignores them.

    ``start`` (``"entropy"`` only): ``"random"`` (a seeded uniform index), ``"farthest_from_mean"``
    (the row farthest from the mean feature) or ``"best_score"``.
    """
    if method not in METHODS:
        raise _choice_error("method", method, METHODS)
    if start is not None and start not in STARTS:
        raise _choice_error("start", start, STARTS)
    if isinstance(k, bool):
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError as err:
        raise ValueError(f"k must be a non-negative integer, got {k!r}") from err
    if k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k}")
    n = len(samples)
    if isinstance(features, torch.Tensor) and (features.dim() != 2 or features.shape[0] != n):
        raise ValueError(f"features must have shape [N, D] with N = {n} samples, got {tuple(features.shape)}")
    score_t = None
    if scores is not None:
        score_t = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
        if score_t.numel() != n:
            raise ValueError(f"scores must have one value per sample ({n}), got {score_t.numel()}")
        if not bool(torch.isfinite(score_t).all()):
            raise ValueError("scores must be finite")
    if start == "best_score" and score_t is None:
        raise ValueError("start='best_score' needs scores")
    m = min(k, n)
    if m == 0:
        return []

    if method == "none":
        if score_t is None:
            return list(range(m))
        return torch.sort(score_t, descending=True, stable=True).indices[:m].tolist()
    gen = torch.Generator().manual_seed(seed)
    if method == "random":
        return torch.randperm(n, generator=gen)[:m].tolist()

    if isinstance(features, torch.Tensor):
        x = l2_normalize(features)
    else:
        x = l2_normalize(resolve_features(features)(samples))
        if x.shape[0] != n:
            raise ValueError(f"the featuriser returned {x.shape[0]} rows for {n} samples")
    start = start or ("best_score" if score_t is not None else "random")
    if score_t is not None:
        score_t = score_t.to(x.device)
    if start == "random":
        first = int(torch.randint(n, (1,), generator=gen))
    elif start == "farthest_from_mean":
        first = int(torch.argmax((x - x.mean(dim=0)).pow(2).sum(dim=1)))
    else:
        first = int(torch.argmax(score_t))
    return farthest_point(x, m, first, score_t)


__all__ = ["METHODS", "STARTS", "farthest_point", "select"]
