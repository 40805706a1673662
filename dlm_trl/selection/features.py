"""Featurisers: a list of samples → a float tensor ``[N, D]`` of L2-normalised rows.

A *sample* is a token-id sequence (``list[int]``, a tuple or a 1-D integer tensor) or a
string. A *featuriser* is any callable ``samples → [N, D]``; the selection and the metrics
compare rows by Euclidean distance or cosine, so rows are normalised to unit length,
``x̂ = x / max(‖x‖₂, ε)`` (an all-zero row, e.g. an empty sample, stays zero).

* :class:`NGramFeatures` (``"ngram"``) — hashed n-gram counts. A sample's tokens are its ids,
  or a string's whitespace-separated words (its characters with ``char=True``). For every
  order ``n`` in ``orders`` and every window ``g = (t_i, …, t_{i+n−1})``,

      x[bucket(g)] += 1,   bucket(g) = crc32(key(g)) mod dim,

  where ``key(g)`` is ``"i<n>:" + ids joined by " "`` for ids and ``"s<n>:" + words joined
  by "\\x1f"`` for strings (UTF-8). CRC-32 is fixed by the standard, so a bucket is the same
  in every process and on every machine (Python's ``hash()`` of a string is salted per process
  and would not be). Term frequencies (raw counts), then L2 normalisation: ``cos`` of two rows
  is the cosine similarity of their n-gram count vectors, up to hash collisions.
* :class:`EmbeddingFeatures` (``"embedding"``) — wraps a user callable returning ``[N, D]``
  (e.g. a model's mean-pooled hidden states) and normalises its rows.

:func:`make_features` builds one by name (the registry :data:`FEATURES`),
:func:`resolve_features` turns ``None`` / a name / a callable into a featuriser.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from ..sampling._names import _choice_error

#: One sample: a token-id sequence or a string.
Sample = Union[Sequence[int], torch.Tensor, str]
#: A featuriser: samples → ``[N, D]`` float tensor with L2-normalised rows.
Featurizer = Callable[[Sequence[Sample]], torch.Tensor]


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows divided by their Euclidean norm, ``x / max(‖x‖₂, eps)``; float64 stays float64, else float32."""
    if x.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor [N, D], got shape {tuple(x.shape)}")
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)  # [N, D]


def tokens(sample: Sample, char: bool = False) -> list:
    """The tokens of one sample: the ids of a sequence, the words (or characters) of a string."""
    if isinstance(sample, str):
        return list(sample) if char else sample.split()
    if isinstance(sample, torch.Tensor):
        return [int(t) for t in sample.reshape(-1).tolist()]
    try:
        return [int(t) for t in sample]
    except (TypeError, ValueError) as err:
        raise TypeError(f"a sample must be a string or a sequence of token ids, got {sample!r:.80}") from err


def ngrams(toks: Sequence, n: int) -> list[tuple]:
    """The ``len(toks) − n + 1`` windows of ``n`` consecutive tokens (none if the sample is shorter)."""
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def ngram_key(gram: tuple) -> bytes:
    """The bytes an n-gram is hashed from: ``"i<n>:1 2 3"`` for ids, ``"s<n>:a\\x1fb"`` for words."""
    if gram and isinstance(gram[0], str):
        return (f"s{len(gram)}:" + "\x1f".join(gram)).encode("utf-8")
    return (f"i{len(gram)}:" + " ".join(str(t) for t in gram)).encode("ascii")


def ngram_bucket(gram: tuple, dim: int) -> int:
    """``crc32(key(gram)) mod dim``: the same in every process (no per-process hash salt)."""
    return zlib.crc32(ngram_key(gram)) % dim


class NGramFeatures:
    """Hashed n-gram term frequencies, L2-normalised: ``[N, dim]``.

    ``n`` is one order or a tuple of orders (default unigrams and bigrams), all pooled into
    the same ``dim`` buckets; ``char=True`` tokenises strings by characters instead of
    whitespace (ids are always tokens).
    """

    def __init__(self, n: int | Sequence[int] = (1, 2), dim: int = 4096, char: bool = False) -> None:
        orders = (n,) if isinstance(n, int) else tuple(n)
        if not orders or any(not isinstance(o, int) or isinstance(o, bool) or o < 1 for o in orders):
            raise ValueError(f"n must be a positive int or a non-empty tuple of them, got {n!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.orders = orders
        self.dim = dim
        self.char = char

    def counts(self, samples: Sequence[Sample]) -> torch.Tensor:
        """The raw bucket counts, ``[N, dim]`` float32, before normalisation."""
        rows: list[int] = []
        cols: list[int] = []
        cache: dict[tuple, int] = {}
        for i, sample in enumerate(samples):
            toks = tokens(sample, self.char)
            for n in self.orders:
                for gram in ngrams(toks, n):
                    b = cache.get(gram)
                    if b is None:
                        b = cache[gram] = ngram_bucket(gram, self.dim)
                    rows.append(i)
                    cols.append(b)
        x = torch.zeros(len(samples), self.dim)  # [N, dim]
        if rows:
            index = (torch.tensor(rows), torch.tensor(cols))
            x.index_put_(index, torch.ones(len(rows)), accumulate=True)
        return x

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        return l2_normalize(self.counts(samples))  # [N, dim]

    def __repr__(self) -> str:
        return f"NGramFeatures(n={self.orders}, dim={self.dim}, char={self.char})"


class EmbeddingFeatures:
    """Any callable ``samples → [N, D]`` (e.g. mean-pooled hidden states), rows L2-normalised."""

    def __init__(self, fn: Callable[[Sequence[Sample]], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"EmbeddingFeatures needs a callable samples → [N, D], got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        x = torch.as_tensor(self.fn(samples))
        if x.dim() != 2 or x.shape[0] != len(samples):
            raise ValueError(
                f"the embedding function must return [N, D] with N = {len(samples)} samples, "
                f"got shape {tuple(x.shape)}"
            )
        return l2_normalize(x)  # [N, D]

    def __repr__(self) -> str:
        return f"EmbeddingFeatures({getattr(self.fn, '__name__', self.fn)!r})"


#: Featurisers by name, for configs.
FEATURES: dict[str, type] = {"ngram": NGramFeatures, "embedding": EmbeddingFeatures}


def make_features(name: str, **kwargs: Any) -> Featurizer:
    """The featuriser registered as ``name``, built with ``kwargs`` (``"embedding"`` needs ``fn=``)."""
    if name not in FEATURES:
        raise _choice_error("features", name, sorted(FEATURES))
    if name == "embedding" and "fn" not in kwargs:
        raise ValueError(
            "features='embedding' needs the embedding function: make_features('embedding', fn=...) "
            "or EmbeddingFeatures(fn)"
        )
    return FEATURES[name](**kwargs)


def resolve_features(features: str | Featurizer | None) -> Featurizer:
    """``None`` → ``NGramFeatures()``; a name → :func:`make_features`; a callable is returned as is."""
    if features is None:
        return NGramFeatures()
    if isinstance(features, str):
        return make_features(features)
    if callable(features):
        return features
    raise TypeError(
        f"features must be None, a name in {sorted(FEATURES)} or a callable, got {type(features).__name__}"
    )


__all__ = [
    "FEATURES",
    "EmbeddingFeatures",
    "Featurizer",
    "NGramFeatures",
    "Sample",
    "l2_normalize",
    "make_features",
    "ngram_bucket",
    "ngram_key",
    "ngrams",
    "resolve_features",
    "tokens",
]
