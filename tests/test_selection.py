"""dlm_trl.selection: featurisers, entropy (farthest-point) selection and diversity metrics."""

from __future__ import annotations

import math

import pytest
import torch

from dlm_trl.selection import (
    EmbeddingFeatures,
    NGramFeatures,
    distinct_fraction,
    distinct_n,
    distinct_solutions,
    feature_entropy,
    make_features,
    ngram_entropy,
    nn_distance,
    select,
)

# ---------------------------------------------------------------- features


def test_ngram_buckets_are_fixed_crc32_values():
    # Hard-coded: crc32(b"s1:a") = 1652281470 ≡ 126, crc32(b"s1:b") = 4218585540 ≡ 452,
    # crc32(b"s2:a\x1fb") = 1609597458 ≡ 530 (mod 4096) — the same in every process, unlike hash().
    x = NGramFeatures(n=(1, 2), dim=4096)(["a b"])
    assert x.shape == (1, 4096) and x.dtype == torch.float32
    assert x[0].nonzero().flatten().tolist() == [126, 452, 530]
    assert torch.allclose(x[0, [126, 452, 530]], torch.full((3,), 1 / math.sqrt(3)))
    # ids: crc32(b"i1:1") ≡ 1649, crc32(b"i1:2") ≡ 1995, crc32(b"i2:1 2") ≡ 1687
    y = NGramFeatures(n=(1, 2), dim=4096)([[1, 2]])
    assert y[0].nonzero().flatten().tolist() == [1649, 1687, 1995]


def test_ngram_rows_normalised_and_counts():
    f = NGramFeatures(n=1, dim=64)
    x = f(["a a b", "a b", "", [3, 3, 3, 4]])
    assert torch.allclose(x[[0, 1, 3]].norm(dim=1), torch.ones(3))
    assert x[2].abs().sum() == 0  # empty sample: zero row
    counts = f.counts(["a a b"])[0]
    assert sorted(counts[counts > 0].tolist()) == [1.0, 2.0]  # term frequencies
    # same text → same vector; whitespace does not matter; ids as list or tensor agree
    assert torch.equal(f(["a  b"]), f(["a b"]))
    assert torch.equal(f([[5, 6, 7]]), f([torch.tensor([5, 6, 7])]))
    # characters
    c = NGramFeatures(n=2, dim=64, char=True).counts(["abc"])
    assert c.sum() == 2  # "ab", "bc"


def test_embedding_features_and_registry():
    emb = EmbeddingFeatures(lambda s: [[len(t), 1.0] for t in s])
    x = emb(["ab", "abcd"])
    assert torch.allclose(x.norm(dim=1), torch.ones(2))
    assert torch.allclose(x[1], torch.tensor([4.0, 1.0]) / math.sqrt(17))
    with pytest.raises(ValueError, match=r"\[N, D\] with N = 2"):
        EmbeddingFeatures(lambda s: torch.zeros(3, 2))(["a", "b"])
    assert isinstance(make_features("ngram", dim=8), NGramFeatures)
    with pytest.raises(ValueError, match="Did you mean 'ngram'"):
        make_features("ngrm")
    with pytest.raises(ValueError, match="needs the embedding function"):
        make_features("embedding")
    with pytest.raises(ValueError, match="positive int"):
        NGramFeatures(n=0)
    with pytest.raises(TypeError, match="sequence of token ids"):
        NGramFeatures()([["a", "b"]])


# ---------------------------------------------------------------- selection


def _clusters(
    per: int = 20, d: int = 8, jitter: float = 0.01, seed: int = 0
) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:3]  # [3, D]
    label = [i // per for i in range(3 * per)]
    x = centres[label] + jitter * torch.randn(3 * per, d, generator=g)  # [60, D]
    perm = torch.randperm(3 * per, generator=g)
    return x[perm], [label[i] for i in perm.tolist()]


def test_entropy_picks_one_per_cluster():
    x, label = _clusters()
    samples = list(range(len(label)))
    for seed in range(5):
        for start in ("random", "farthest_from_mean"):
            idx = select(samples, 3, "entropy", features=x, seed=seed, start=start)
            assert sorted(label[i] for i in idx) == [0, 1, 2]
    # random at k=3 usually misses a cluster: P(one per cluster) = 20³·3! / (60·59·58) ≈ 0.23
    assert len({label[i] for i in select(samples, 3, "random", seed=0)}) < 3
    hits = sum(len({label[i] for i in select(samples, 3, "random", seed=s)}) == 3 for s in range(200))
    assert hits < 100


def test_entropy_beats_random_on_near_duplicates():
    dup = [f"the answer is {i % 2} so we are done" for i in range(40)]  # two near-identical answers
    distinct = ["count up from one", "sixteen plus three is nineteen", "use the remaining digits", "x y z w"]
    samples = dup[:20] + distinct + dup[20:]
    f = NGramFeatures()
    feats = f(samples)
    ent = select(samples, 6, "entropy", features=f)
    assert {samples[i] for i in ent} >= set(distinct)
    for seed in range(10):
        rnd = select(samples, 6, "random", seed=seed)
        assert feature_entropy(feats[ent]) >= feature_entropy(feats[rnd])
        assert ngram_entropy([samples[i] for i in ent]) >= ngram_entropy([samples[i] for i in rnd])
        assert distinct_fraction([samples[i] for i in ent]) == 1.0


def test_duplicates_only_when_exhausted():
    samples = ["x"] * 5 + ["y y"] * 5 + ["z w"]
    for seed in range(4):
        idx = select(samples, len(samples), "entropy", seed=seed)
        assert sorted(idx) == list(range(len(samples)))
        assert len({samples[i] for i in idx[:3]}) == 3  # every distinct sample before any copy
        # among the copies (all at distance 0), lowest index first
        rest = idx[3:]
        assert rest == sorted(rest)


def test_determinism_prefix_and_k_at_least_n():
    x, _ = _clusters(per=7)
    samples = list(range(x.shape[0]))
    for method in ("entropy", "random", "none"):
        full = select(samples, 100, method, features=x, seed=3)
        assert sorted(full) == samples  # k ≥ N: all, each once
        assert select(samples, 5, method, features=x, seed=3) == full[:5]  # prefix of the full order
        assert select(samples, 5, method, features=x, seed=3) == select(
            samples, 5, method, features=x, seed=3
        )
    assert select(samples, 4, "none") == [0, 1, 2, 3]
    assert select([], 3) == [] and select(samples, 0) == []


def test_scores():
    samples = ["a", "a", "b", "c"]
    scores = [0.1, 0.9, 0.5, 0.5]
    assert select(samples, 3, "none", scores=scores) == [1, 2, 3]  # ties by index
    # entropy: starts at the best score; duplicate "a" at index 0 and 1 → the better one
    assert select(samples, 3, "entropy", scores=scores)[0] == 1
    idx = select(samples, 4, "entropy", scores=scores)
    assert idx[:3] == [1, 2, 3] and idx[3] == 0


def test_selection_errors():
    with pytest.raises(ValueError, match="Did you mean 'entropy'"):
        select(["a"], 1, method="entrpy")
    with pytest.raises(ValueError, match="Did you mean 'farthest_from_mean'"):
        select(["a"], 1, start="farthest")
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="non-negative integer"):
            select(["a"], bad)
    with pytest.raises(ValueError, match=r"shape \[N, D\] with N = 2"):
        select(["a", "b"], 1, features=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="one value per sample"):
        select(["a", "b"], 1, scores=[1.0])
    with pytest.raises(ValueError, match="needs scores"):
        select(["a", "b"], 1, start="best_score")


# ---------------------------------------------------------------- metrics


def test_counting_metrics_by_hand():
    s = ["a b", "a c"]
    # unigrams a:2, b:1, c:1 → H = −(½ ln ½ + 2·¼ ln ¼) = 1.5 ln 2
    assert ngram_entropy(s, 1) == pytest.approx(1.5 * math.log(2))
    assert ngram_entropy(s, 2) == pytest.approx(math.log(2))  # (a,b), (a,c)
    assert ngram_entropy(["a a a"], 1) == 0.0 and ngram_entropy([], 1) == 0.0
    assert distinct_n(s, 1) == pytest.approx(3 / 4)
    assert distinct_n(s, 2) == 1.0 and distinct_n(["a"], 2) == 0.0
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_fraction(["a  b", "a b", "c"]) == pytest.approx(2 / 3)
    assert distinct_fraction([[1, 2], [1, 2], [3]]) == pytest.approx(2 / 3)
    assert distinct_fraction([]) == 0.0
    assert distinct_solutions(["4", " 4 ", "", None, "5", 5]) == 2


def test_nn_distance_memorisation():
    reference = ["the cat sat", "a dog ran"]
    r = nn_distance(["the cat sat", "the cat ran", "zebra"], reference)
    assert r.distances[0] == pytest.approx(0.0, abs=1e-12) and int(r.index[0]) == 0
    assert 0.0 < r.distances[1] < 1.0
    assert r.distances[2] == pytest.approx(1.0)  # nothing shared
    assert r.frac_below == pytest.approx(1 / 3) and r.threshold == 0.05
    assert r.mean == pytest.approx(float(r.distances.mean()))
    small = nn_distance(["the cat sat", "the cat ran"], reference, chunk=1)  # one row per block
    assert torch.allclose(small.distances, r.distances[:2])
    with pytest.raises(ValueError, match="non-empty reference"):
        nn_distance(["a"], [])


def test_feature_entropy_by_hand():
    # two orthogonal unit vectors: r = √2 each → mean log r = ½ ln 2
    assert feature_entropy(torch.eye(2)) == pytest.approx(0.5 * math.log(2))
    assert feature_entropy(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])) < feature_entropy(torch.eye(3))
    assert math.isnan(feature_entropy(torch.ones(1, 3)))
