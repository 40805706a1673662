"""Diversity metrics of a set of samples (token-id sequences or strings).

Exact, count-based (no hashing):

* :func:`distinct_fraction` — ``|unique samples| / N`` (strings compared after collapsing
  whitespace); :func:`distinct_solutions` — the number of distinct non-empty answers;
* :func:`ngram_entropy` — ``H = −Σ_g p_g log p_g`` (nats), ``p_g = c_g / Σ c`` the frequency of
  n-gram ``g`` pooled over the set;
* :func:`distinct_n` — ``|unique n-grams| / |n-grams|`` pooled over the set ("distinct-n").

On L2-normalised features (see :mod:`.features`):

* :func:`nn_distance` — each sample's cosine distance ``1 − max_r cos(x, r)`` to its nearest
  neighbour in a reference set (e.g. the training set): the memorisation score, 0 for an exact
  copy of a reference example;
* :func:`feature_entropy` — the Kozachenko–Leonenko nearest-neighbour entropy estimate up to
  constants, ``mean_i log(r_i + ε)``, ``r_i`` the Euclidean distance from row ``i`` to its
  nearest other row. The full estimate is ``D·mean_i log r_i + log(m − 1) + log V_D + γ``; the
  factor ``D`` and the constants depend only on the dimension and the set size ``m``, so compare
  sets of the same size on the same features.

Empty inputs give 0.0 for the counts and ratios, ``nan`` where a mean over no rows is asked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .features import Featurizer, Sample, l2_normalize, ngrams, resolve_features, tokens


def _key(sample: Sample) -> Hashable:
    """What makes two samples the same: the whitespace-collapsed string, or the id tuple."""
    if isinstance(sample, str):
        return " ".join(sample.split())
    return tuple(tokens(sample))


def distinct_fraction(samples: Sequence[Sample]) -> float:
    """``|unique samples| / N`` (exact match; strings after collapsing whitespace); 0.0 for no samples."""
    if len(samples) == 0:
        return 0.0
    return len({_key(s) for s in samples}) / len(samples)


def distinct_solutions(answers: Iterable[object]) -> int:
    """The number of distinct non-empty answers (``str(a)`` with whitespace collapsed; ``None`` is empty)."""
    seen = set()
    for a in answers:
        if a is None:
            continue
        key = " ".join(str(a).split())
        if key:
            seen.add(key)
    return len(seen)


def _pooled(samples: Sequence[Sample], n: int, char: bool) -> Counter:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    counts: Counter = Counter()
    for s in samples:
        counts.update(ngrams(tokens(s, char), n))
    return counts


def ngram_entropy(samples: Sequence[Sample], n: int = 1, char: bool = False) -> float:
    """Shannon entropy (nats) of the n-gram distribution pooled over the set: ``−Σ_g p_g log p_g``."""
    counts = _pooled(samples, n, char)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts.values())


def distinct_n(samples: Sequence[Sample], n: int = 1, char: bool = False) -> float:
    """``|unique n-grams| / |n-grams|`` pooled over the set; 0.0 when there are none."""
    counts = _pooled(samples, n, char)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


@dataclass(frozen=True)
class NNDistance:
    """Nearest-reference cosine distances of a set of samples."""

    distances: torch.Tensor  # [N] float64, 1 − cos to the nearest reference (0 = a copy)
    index: torch.Tensor  # [N] long, which reference is nearest (lowest index on ties)
    mean: float  # mean distance (nan for no samples)
    frac_below: float  # fraction with distance < threshold: near-copies (nan for no samples)
    threshold: float


def nn_distance(
    samples: Sequence[Sample],
    reference: Sequence[Sample],
    features: str | Featurizer | None = None,
    threshold: float = 0.05,
    chunk: int = 1 << 24,
) -> NNDistance:
    """For each sample, ``d = 1 − max_r cos(x, x_r)`` over the reference set (0 up to rounding for a copy).

    ``features`` as in :func:`.select.select` (default ``NGramFeatures()``), applied to
    samples and reference separately. Similarities are computed in float64 in blocks of
    about ``chunk`` entries, so a large reference set needs no ``[N, M]`` matrix at once.
    """
    if len(reference) == 0:
        raise ValueError("nn_distance needs a non-empty reference set")
    feat = resolve_features(features)
    ref = l2_normalize(feat(reference).to(torch.float64))  # [M, D]
    if len(samples) == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return NNDistance(empty, torch.zeros(0, dtype=torch.long), math.nan, math.nan, threshold)
    x = l2_normalize(feat(samples).to(torch.float64)).to(ref.device)  # [N, D]
    if x.shape[1] != ref.shape[1]:
        raise ValueError(f"sample features have D = {x.shape[1]}, reference features D = {ref.shape[1]}")
    rows = max(1, chunk // ref.shape[0])
    best, index = [], []
    for i in range(0, x.shape[0], rows):
        cos = x[i : i + rows] @ ref.T  # [rows, M]
        b, j = cos.max(dim=1)
        best.append(b)
        index.append(j)
    d = (1.0 - torch.cat(best)).clamp(0.0, 2.0)  # [N]
    return NNDistance(
        distances=d,
        index=torch.cat(index),
        mean=float(d.mean()),
        frac_below=float((d < threshold).double().mean()),
        threshold=threshold,
    )


def feature_entropy(features: torch.Tensor, eps: float = 1e-10) -> float:
    """Kozachenko–Leonenko entropy estimate up to constants: ``mean_i log(r_i + eps)`` on normalised rows.

    ``r_i = min_{j ≠ i} ‖x_i − x_j‖`` (exact differences, so a duplicate gives ``log eps``);
    ``O(N²·D)``. Higher = more spread out. ``nan`` for fewer than 2 rows.
    """
    x = l2_normalize(features).to(torch.float64)  # [N, D]
    n = x.shape[0]
    if n < 2:
        return math.nan
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # [N, N]
    dist.fill_diagonal_(float("inf"))
    r = dist.min(dim=1).values  # [N]
    return float(torch.log(r + eps).mean())


__all__ = [
    "NNDistance",
    "distinct_fraction",
    "distinct_n",
    "distinct_solutions",
    "feature_entropy",
    "ngram_entropy",
    "nn_distance",
]
