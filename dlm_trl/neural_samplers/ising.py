"""Ising and Potts models on a periodic ``L × L`` square lattice: energies, exact statistics by
enumeration (small ``L``) and a seeded Wolff cluster Monte Carlo reference (any ``L``).

Conventions (used everywhere in :mod:`dlm_trl.neural_samplers`):

* Ising spins ``s ∈ {−1, +1}``; ``U(s) = −Σ_i s_i (s_{right(i)} + s_{down(i)})`` with periodic wrap,
  i.e. ``J = 1``, no field, ``2N`` bonds (``N = L²``). For ``L = 2`` the right and the left neighbour
  coincide, so each pair is counted twice (the standard periodic convention; the 2 × 2 model is then a
  4-cycle with coupling 2: ``Z = 2e^{8β} + 12 + 2e^{−8β}``). Target ``π(s) ∝ exp(−β U(s))``; critical
  ``β_c = ln(1 + √2)/2 ≈ 0.4407`` (infinite lattice).
* Potts spins ``s ∈ {0..q−1}``; ``U(s) = −Σ_i [δ(s_i, s_right) + δ(s_i, s_down)]`` (same bonds).
* Token encoding for the neural samplers: token ``v ∈ {0..q−1}``; for Ising token 0 is spin −1 and
  token 1 is spin +1 (:func:`tokens_to_spins`).

Statistics (:func:`spin_statistics`, per site): mean energy ``⟨U⟩/N``, mean absolute magnetisation
``⟨|M|⟩/N`` (``M = Σ s_i``), nearest-neighbour two-point correlation ``⟨s_i s_j⟩`` averaged over the
``2N`` bonds (equal to ``−⟨U⟩/(2N)`` for Ising), and the distribution of ``M ∈ {−N, −N+2, .., N}``
(index ``(M + N)/2``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

BETA_C = 0.5 * math.log(1.0 + math.sqrt(2.0))

# --------------------------------------------------------------------------------------------- energies


def _grid(s: torch.Tensor, L: int | None = None) -> torch.Tensor:
    """``[..., L, L]`` as given (``L`` None), or flat ``[..., L²]`` reshaped to ``[..., L, L]``."""
    if L is None:
        if s.dim() < 2 or s.shape[-1] != s.shape[-2]:
            raise ValueError(
                f"expected [..., L, L] configurations (or pass L for flat ones), got {tuple(s.shape)}"
            )
        return s
    if s.shape[-1] != L * L:
        raise ValueError(f"flat configurations need {L * L} sites, got {s.shape[-1]}")
    return s.reshape(*s.shape[:-1], L, L)


def ising_energy(spins: torch.Tensor, L: int | None = None) -> torch.Tensor:
    """``U = −Σ_i s_i (s_right + s_down)`` (periodic) of spins ±1 ``[..., L, L]`` (or flat ``[..., L²]``
    with ``L``) → ``[...]`` float64."""
    s = _grid(spins, L).double()
    return -(s * torch.roll(s, -1, dims=-1) + s * torch.roll(s, -1, dims=-2)).sum((-1, -2))


def potts_energy(states: torch.Tensor, L: int | None = None) -> torch.Tensor:
    """``U = −Σ_i [δ(s_i, s_right) + δ(s_i, s_down)]`` (periodic) of states ``[..., L, L]`` in ``0..q−1``
    → ``[...]`` float64."""
    s = _grid(states, L)
    same = (s == torch.roll(s, -1, dims=-1)).double() + (s == torch.roll(s, -1, dims=-2)).double()
    return -same.sum((-1, -2))


def tokens_to_spins(tokens: torch.Tensor) -> torch.Tensor:
    """Ising token 0/1 → spin −1/+1 (same shape, int64)."""
    return 2 * tokens.long() - 1


def bond_correlation(spins: torch.Tensor, L: int | None = None) -> torch.Tensor:
    """Mean of ``s_i s_j`` over the ``2N`` nearest-neighbour bonds of each configuration → ``[...]``."""
    s = _grid(spins, L).double()
    n = s.shape[-1] * s.shape[-2]
    return (s * torch.roll(s, -1, dims=-1) + s * torch.roll(s, -1, dims=-2)).sum((-1, -2)) / (2 * n)


# --------------------------------------------------------------------------------------------- statistics


@dataclass
class SpinStats:
    """Per-site statistics of an Ising ensemble (exact, Monte Carlo or model samples).

    ``*_se`` are standard errors (0 for exact values); ``mag_pmf[k]`` is ``P(M = 2k − N)``."""

    L: int
    energy: float
    abs_mag: float
    nn_corr: float
    mag_pmf: np.ndarray
    energy_se: float = 0.0
    abs_mag_se: float = 0.0
    nn_corr_se: float = 0.0
    log_z: float | None = None
    n_samples: int | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {
            "L": self.L,
            "energy_per_site": self.energy,
            "abs_magnetisation_per_site": self.abs_mag,
            "nn_correlation": self.nn_corr,
            "energy_per_site_se": self.energy_se,
            "abs_magnetisation_per_site_se": self.abs_mag_se,
            "nn_correlation_se": self.nn_corr_se,
            "magnetisation_pmf": [float(x) for x in self.mag_pmf],
        }
        if self.log_z is not None:
            d["log_z"] = self.log_z
        if self.n_samples is not None:
            d["n_samples"] = self.n_samples
        d.update(self.extra)
        return d


def _per_config(spins: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``[S, L, L]`` spins → per-configuration energy/site, |M|/N, bond correlation, M index (numpy)."""
    L = spins.shape[-1]
    n = L * L
    e = (ising_energy(spins) / n).numpy()
    M = spins.reshape(spins.shape[0], -1).sum(-1)
    return e, (M.abs().double() / n).numpy(), bond_correlation(spins).numpy(), ((M + n) // 2).numpy()


def spin_statistics(spins: torch.Tensor, weights: torch.Tensor | None = None) -> SpinStats:
    """Statistics of Ising configurations ``[S, L, L]`` (spins ±1), uniformly weighted or with normalised
    ``weights [S]`` (exact ensembles, self-normalised importance sampling). Standard errors are the i.i.d.
    ones for uniform weights and 0 otherwise."""
    spins = _grid(spins)
    S, L = spins.shape[0], spins.shape[-1]
    n = L * L
    e, m, c, k = _per_config(spins)
    if weights is None:
        w = np.full(S, 1.0 / S)
        se = lambda x: float(x.std(ddof=1) / math.sqrt(S)) if S > 1 else 0.0  # noqa: E731
    else:
        w = weights.double().numpy()
        w = w / w.sum()
        se = lambda x: 0.0  # noqa: E731
    pmf = np.bincount(k, weights=w, minlength=n + 1)
    return SpinStats(
        L=L,
        energy=float((w * e).sum()),
        abs_mag=float((w * m).sum()),
        nn_corr=float((w * c).sum()),
        mag_pmf=pmf,
        energy_se=se(e),
        abs_mag_se=se(m),
        nn_corr_se=se(c),
        n_samples=S,
    )


# --------------------------------------------------------------------------------------------- enumeration

MAX_ENUMERATED = 2**20


def enumerate_states(n_sites: int, q: int = 2) -> torch.Tensor:
    """All ``q^n`` configurations as tokens ``[q^n, n]`` (int64, row ``r`` = base-``q`` digits of ``r``,
    most significant first)."""
    if q**n_sites > MAX_ENUMERATED:
        raise ValueError(f"{q}^{n_sites} configurations is too many to enumerate (limit {MAX_ENUMERATED})")
    r = torch.arange(q**n_sites, dtype=torch.long)
    powers = q ** torch.arange(n_sites - 1, -1, -1, dtype=torch.long)
    return (r[:, None] // powers[None, :]) % q


def exact_ising(L: int, beta: float) -> SpinStats:
    """Exact statistics of the ``L × L`` periodic Ising model by enumerating all ``2^{L²}`` states (L ≤ 4),
    with ``log Z`` and the ``magnetisation_pmf``."""
    if L > 4:
        raise ValueError(f"exact enumeration is for L ≤ 4 (2^{L * L} states), got L={L}")
    spins = tokens_to_spins(enumerate_states(L * L)).reshape(-1, L, L)
    logw = -beta * ising_energy(spins)
    log_z = float(torch.logsumexp(logw, 0))
    st = spin_statistics(spins, torch.exp(logw - log_z))
    st.log_z, st.n_samples = log_z, None
    return st


def exact_potts(L: int, q: int, beta: float) -> dict:
    """Exact ``log Z`` and mean energy per site of the ``q``-state Potts model by enumeration (``q^{L²}`` ≤ 2^20)."""
    states = enumerate_states(L * L, q).reshape(-1, L, L)
    U = potts_energy(states)
    logw = -beta * U
    log_z = torch.logsumexp(logw, 0)
    p = torch.exp(logw - log_z)
    return {"log_z": float(log_z), "energy_per_site": float((p * U).sum() / (L * L))}


def exact_log_probs(L: int, beta: float, q: int = 2) -> torch.Tensor:
    """``[q^{L²}]`` exact ``log π`` over :func:`enumerate_states` order (Ising for q = 2, else Potts)."""
    tok = enumerate_states(L * L, q)
    U = ising_energy(tokens_to_spins(tok), L) if q == 2 else potts_energy(tok, L)
    return torch.log_softmax(-beta * U, 0)


# --------------------------------------------------------------------------------------------- Wolff MC


def neighbours(L: int) -> list[list[int]]:
    """Flat-index neighbour lists (right, left, down, up) with periodic wrap; duplicates kept (L = 2)."""
    out = []
    for r in range(L):
        for c in range(L):
            out.append(
                [r * L + (c + 1) % L, r * L + (c - 1) % L, ((r + 1) % L) * L + c, ((r - 1) % L) * L + c]
            )
    return out


def wolff_update(s: list[int], nbr: list[list[int]], p_add: float, rng: random.Random) -> int:
    """One Wolff cluster flip in place (``p_add = 1 − e^{−2β}``); returns the cluster size. Each listed bond
    is tried independently, so a doubly-listed pair (L = 2) gets ``1 − (1 − p_add)²``, i.e. coupling 2."""
    i = rng.randrange(len(s))
    s0 = s[i]
    s[i] = -s0
    stack, size = [i], 1
    while stack:
        j = stack.pop()
        for k in nbr[j]:
            if s[k] == s0 and rng.random() < p_add:
                s[k] = -s0
                stack.append(k)
                size += 1
    return size


def wolff_ising(
    L: int,
    beta: float,
    *,
    n_measure: int = 20_000,
    burn_in: int = 1_000,
    thin: int = 2,
    n_batches: int = 40,
    seed: int = 0,
) -> SpinStats:
    """Wolff cluster Monte Carlo reference for the periodic ``L × L`` Ising model.

    ``burn_in`` cluster updates are discarded from a random start, then ``n_measure`` configurations are
    recorded every ``thin`` cluster updates. Standard errors are batch means over ``n_batches`` contiguous
    batches (robust to the remaining autocorrelation). Seeded (Python's ``random.Random(seed)``)."""
    rng = random.Random(seed)
    n = L * L
    nbr = neighbours(L)
    p_add = 1.0 - math.exp(-2.0 * beta)
    s = [1 if rng.random() < 0.5 else -1 for _ in range(n)]
    for _ in range(burn_in):
        wolff_update(s, nbr, p_add, rng)
    rec = np.empty((n_measure, n), dtype=np.int8)
    sizes = 0
    for t in range(n_measure):
        for _ in range(thin):
            sizes += wolff_update(s, nbr, p_add, rng)
        rec[t] = s
    spins = torch.from_numpy(rec.astype(np.int64)).reshape(-1, L, L)
    e, m, c, k = _per_config(spins)
    nb = max(2, min(n_batches, n_measure))
    usable = (n_measure // nb) * nb

    def batch_se(x: np.ndarray) -> float:
        b = x[:usable].reshape(nb, -1).mean(1)
        return float(b.std(ddof=1) / math.sqrt(nb))

    return SpinStats(
        L=L,
        energy=float(e.mean()),
        abs_mag=float(m.mean()),
        nn_corr=float(c.mean()),
        mag_pmf=np.bincount(k, minlength=n + 1) / n_measure,
        energy_se=batch_se(e),
        abs_mag_se=batch_se(m),
        nn_corr_se=batch_se(c),
        n_samples=n_measure,
        extra={
            "method": "wolff",
            "burn_in": burn_in,
            "thin": thin,
            "seed": seed,
            "mean_cluster_size": sizes / (n_measure * thin),
        },
    )


def reference_statistics(L: int, beta: float, *, seed: int = 0, n_measure: int = 20_000) -> SpinStats:
    """Exact statistics for ``L ≤ 4``, the Wolff Monte Carlo reference otherwise."""
    if L <= 4:
        return exact_ising(L, beta)
    return wolff_ising(L, beta, n_measure=n_measure, seed=seed)


__all__ = [
    "BETA_C",
    "SpinStats",
    "bond_correlation",
    "enumerate_states",
    "exact_ising",
    "exact_log_probs",
    "exact_potts",
    "ising_energy",
    "neighbours",
    "potts_energy",
    "reference_statistics",
    "spin_statistics",
    "tokens_to_spins",
    "wolff_ising",
    "wolff_update",
]
