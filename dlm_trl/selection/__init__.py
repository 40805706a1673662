"""Sample selection and diversity: keep a high-entropy subset of self-generated samples.

Training recursively on self-generated data (replay buffers, self-distillation) drifts from
generalisation to memorisation as the entropy of the synthetic data falls; keeping a diverse,
high-entropy subset counters it (arXiv 2509.16499). One concept per module:

* :mod:`.features` — featurisers ``samples → [N, D]`` with L2-normalised rows: hashed n-gram
  counts (:class:`NGramFeatures`, ``"ngram"``), any embedding function
  (:class:`EmbeddingFeatures`, ``"embedding"``);
* :mod:`.select` — :func:`select`: ``"entropy"`` (greedy farthest-point selection, a greedy
  maximiser of the nearest-neighbour entropy estimate), ``"random"``, ``"none"``;
* :mod:`.metrics` — diversity of a set: distinct fraction / solutions, n-gram entropy,
  distinct-n, nearest-reference distance (memorisation), nearest-neighbour feature entropy.

Usage::

    from dlm_trl.selection import select, ngram_entropy
    keep = select(completion_ids, k=64, method="entropy", features="ngram", seed=0)
    buffer = [completion_ids[i] for i in keep]
"""

from __future__ import annotations

from .features import (
    FEATURES,
    EmbeddingFeatures,
    Featurizer,
    NGramFeatures,
    Sample,
    l2_normalize,
    make_features,
    resolve_features,
)
from .metrics import (
    NNDistance,
    distinct_fraction,
    distinct_n,
    distinct_solutions,
    feature_entropy,
    ngram_entropy,
    nn_distance,
)
from .select import METHODS, STARTS, farthest_point, select

__all__ = [
    "FEATURES",
    "METHODS",
    "STARTS",
    "EmbeddingFeatures",
    "Featurizer",
    "NGramFeatures",
    "NNDistance",
    "Sample",
    "distinct_fraction",
    "distinct_n",
    "distinct_solutions",
    "farthest_point",
    "feature_entropy",
    "l2_normalize",
    "make_features",
    "ngram_entropy",
    "nn_distance",
    "resolve_features",
    "select",
]
