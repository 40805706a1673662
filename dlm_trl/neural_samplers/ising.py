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

Potts statistics (:func:`potts_statistics`, per site; ``n_k`` = number of sites in state ``k``), chosen so
that ``q = 2`` gives back the Ising ones above:

* energy per site ``⟨U⟩/N`` in the Potts convention (``U = −Σ δ``, so ``−2 ≤ U/N ≤ 0``);
* order parameter (the standard Potts magnetisation) ``m = (q · max_k n_k / N − 1)/(q − 1) ∈ [0, 1]``:
  0 for equal colour counts, 1 for a single colour; for ``q = 2`` it is ``|M|/N``;
* normalised same-state correlation ``c = (q · δ̄ − 1)/(q − 1)``, ``δ̄`` = fraction of the ``2N`` bonds whose
  ends agree (``= −U/(2N)``): 0 for independent uniform colours, 1 when every bond agrees; for ``q = 2`` it is
  ``⟨s_i s_j⟩``;
* the distribution of the majority count ``n_max = max_k n_k`` (``mag_pmf[j] = P(n_max = j)``, ``j = 0..N``,
  the analogue of the ``|M|`` distribution), and the distribution of the majority *colour* (``majority_pmf``;
  a configuration whose maximum is shared by several colours counts ``1/#tied`` for each). The colour
  permutation symmetry makes the exact majority-colour distribution uniform, ``1/q`` each: the Potts
  version of the Ising "P(M > 0) = 1/2" mode-coverage check.

The critical point of the Potts model with this convention is ``β_c(q) = ln(1 + √q)`` (continuous transition
for ``q ≤ 4``, first order above; :func:`potts_beta_c`); ``q = 2`` gives ``2 · BETA_C`` because the Ising
coupling is twice the Potts one (``U_ising = 2 U_potts + 2N`` on the same configuration).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

BETA_C = 0.5 * math.log(1.0 + math.sqrt(2.0))


def potts_beta_c(q: int) -> float:
    """Critical inverse temperature ``ln(1 + √q)`` of the ``q``-state Potts model ``U = −Σ δ(s_i, s_j)`` on
    the infinite square lattice (self-duality); ``q = 2`` gives ``2 · BETA_C`` (Ising in Potts units)."""
    _check_q(q)
    return math.log(1.0 + math.sqrt(q))


def _check_q(q: int) -> None:
    if int(q) != q or q < 2:
        raise ValueError(f"q must be an integer ≥ 2 (2 = Ising, ≥ 3 = q-state Potts), got {q!r}")


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
    """Per-site statistics of an Ising or Potts ensemble (exact, Monte Carlo or model samples).

    ``*_se`` are standard errors (0 for exact values). Ising (``q = 2``): ``abs_mag`` = ``⟨|M|⟩/N``, ``nn_corr``
    = ``⟨s_i s_j⟩``, ``mag_pmf[k]`` = ``P(M = 2k − N)``. Potts (``q ≥ 3``, :func:`potts_statistics`):
    ``abs_mag`` = the order parameter ``m``, ``nn_corr`` = the normalised same-state correlation ``c``,
    ``mag_pmf[j]`` = ``P(n_max = j)`` and ``majority_pmf[k]`` = P(colour ``k`` is the majority); the dictionary
    keys (:meth:`as_dict`) are the same as for Ising, plus ``q`` and ``majority_colour_pmf``."""

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
    q: int = 2
    majority_pmf: np.ndarray | None = None
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
        if self.q != 2:
            d["q"] = self.q
            if self.majority_pmf is not None:
                d["majority_colour_pmf"] = [float(x) for x in self.majority_pmf]
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SpinStats:
        """Inverse of :meth:`as_dict` (keys it does not know go back to ``extra``)."""
        known = {
            "L": "L",
            "energy_per_site": "energy",
            "abs_magnetisation_per_site": "abs_mag",
            "nn_correlation": "nn_corr",
            "energy_per_site_se": "energy_se",
            "abs_magnetisation_per_site_se": "abs_mag_se",
            "nn_correlation_se": "nn_corr_se",
            "log_z": "log_z",
            "n_samples": "n_samples",
            "q": "q",
        }
        kw = {attr: d[key] for key, attr in known.items() if key in d}
        kw["mag_pmf"] = np.asarray(d["magnetisation_pmf"], dtype=np.float64)
        if "majority_colour_pmf" in d:
            kw["majority_pmf"] = np.asarray(d["majority_colour_pmf"], dtype=np.float64)
        skip = set(known) | {"magnetisation_pmf", "majority_colour_pmf"}
        return cls(**kw, extra={k: v for k, v in d.items() if k not in skip})


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


def _potts_per_config(
    states: torch.Tensor, q: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``[S, L, L]`` Potts states → per-configuration energy/site, order parameter ``m``, normalised
    same-state correlation ``c``, majority count ``n_max`` and majority-colour shares ``[S, q]`` (ties split)."""
    S, L = states.shape[0], states.shape[-1]
    n = L * L
    U = potts_energy(states)
    e = (U / n).numpy()
    same = -U / (2 * n)  # fraction of agreeing bonds
    c = ((q * same - 1.0) / (q - 1)).numpy()
    flat = states.reshape(S, n)
    counts = torch.stack([(flat == k).sum(1) for k in range(q)], 1)  # [S, q]
    n_max = counts.max(1).values  # [S]
    m = ((q * n_max.double() / n - 1.0) / (q - 1)).numpy()
    top = (counts == n_max[:, None]).double()
    share = (top / top.sum(1, keepdim=True)).numpy()
    return e, m, c, n_max.numpy(), share


def potts_statistics(states: torch.Tensor, q: int, weights: torch.Tensor | None = None) -> SpinStats:
    """Statistics (module docstring) of ``q``-state Potts configurations ``[S, L, L]`` (values ``0..q−1``),
    uniformly weighted (i.i.d. standard errors) or with ``weights [S]`` (normalised here; standard errors 0).
    For ``q = 2`` on Ising tokens, ``abs_mag`` and ``nn_corr`` equal :func:`spin_statistics`'s."""
    _check_q(q)
    states = _grid(states).long()
    if states.numel() and (int(states.min()) < 0 or int(states.max()) >= q):
        raise ValueError(f"Potts states must lie in 0..{q - 1}")
    S, L = states.shape[0], states.shape[-1]
    n = L * L
    e, m, c, n_max, share = _potts_per_config(states, q)
    if weights is None:
        w = np.full(S, 1.0 / S)
        se = lambda x: float(x.std(ddof=1) / math.sqrt(S)) if S > 1 else 0.0  # noqa: E731
    else:
        w = weights.double().numpy()
        w = w / w.sum()
        se = lambda x: 0.0  # noqa: E731
    return SpinStats(
        L=L,
        energy=float((w * e).sum()),
        abs_mag=float((w * m).sum()),
        nn_corr=float((w * c).sum()),
        mag_pmf=np.bincount(n_max, weights=w, minlength=n + 1),
        energy_se=se(e),
        abs_mag_se=se(m),
        nn_corr_se=se(c),
        n_samples=S,
        q=q,
        majority_pmf=(w[:, None] * share).sum(0),
    )


# --------------------------------------------------------------------------------------------- enumeration

MAX_ENUMERATED = 2**20


def enumerate_states(n_sites: int, q: int = 2) -> torch.Tensor:
    """All ``q^n`` configurations as tokens ``[q^n, n]`` (int64, row ``r`` = base-``q`` digits of ``r``,
    most significant first)."""
    if q**n_sites > MAX_ENUMERATED:
        raise ValueError(
            f"{q}^{n_sites} = {q**n_sites:,} configurations is too many to enumerate (limit {MAX_ENUMERATED:,} "
            "= 2^20): use a smaller lattice or fewer states, or a Wolff Monte Carlo reference "
            "(reference_statistics(..., method='wolff'); recipes/mdns_ising.py --reference wolff)"
        )
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


def exact_potts_statistics(L: int, q: int, beta: float) -> SpinStats:
    """Exact Potts statistics (:func:`potts_statistics`) with ``log Z`` by enumerating all ``q^{L²}`` states
    (at most 2^20: e.g. 3 × 3 with q ≤ 4; 4 × 4 with q = 3 has 43 million states and needs Wolff)."""
    _check_q(q)
    states = enumerate_states(L * L, q).reshape(-1, L, L)
    logw = -beta * potts_energy(states)
    log_z = float(torch.logsumexp(logw, 0))
    st = potts_statistics(states, q, torch.exp(logw - log_z))
    st.log_z, st.n_samples = log_z, None
    return st


def exact_statistics(L: int, beta: float, q: int = 2) -> SpinStats:
    """Exact statistics by enumeration: :func:`exact_ising` for ``q = 2``, :func:`exact_potts_statistics`
    otherwise (``q^{L²}`` ≤ 2^20, else a ``ValueError`` that says what to use instead)."""
    _check_q(q)
    if q == 2 and L > 4:
        enumerate_states(L * L, 2)  # raises the explanatory error
    return exact_ising(L, beta) if q == 2 else exact_potts_statistics(L, q, beta)


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


def _wolff_chain(
    s: list[int], update, burn_in: int, n_measure: int, thin: int, dtype
) -> tuple[np.ndarray, int]:
    """Run ``update()`` (one cluster move of ``s`` in place, returning the cluster size) ``burn_in`` times, then
    record ``s`` every ``thin`` moves, ``n_measure`` times: ``([n_measure, n] records, total recorded cluster size)``."""
    for _ in range(burn_in):
        update()
    rec = np.empty((n_measure, len(s)), dtype=dtype)
    sizes = 0
    for t in range(n_measure):
        for _ in range(thin):
            sizes += update()
        rec[t] = s
    return rec, sizes


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
    rec, sizes = _wolff_chain(s, lambda: wolff_update(s, nbr, p_add, rng), burn_in, n_measure, thin, np.int8)
    spins = torch.from_numpy(rec.astype(np.int64)).reshape(-1, L, L)
    e, m, c, k = _per_config(spins)

    def batch_se(x: np.ndarray) -> float:
        return _batch_means_se(x, n_batches)

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


def _batch_means_se(x: np.ndarray, n_batches: int) -> float:
    """Standard error of the mean of a correlated series from the means of ``n_batches`` contiguous batches
    (the tail that does not fill a batch is left out)."""
    nb = max(2, min(n_batches, x.shape[0]))
    usable = (x.shape[0] // nb) * nb
    b = x[:usable].reshape(nb, -1).mean(1)
    return float(b.std(ddof=1) / math.sqrt(nb))


def wolff_update_potts(s: list[int], nbr: list[list[int]], p_add: float, q: int, rng: random.Random) -> int:
    """One Wolff cluster move of the ``q``-state Potts model in place; returns the cluster size.

    A random seed site of colour ``a`` starts the cluster; a listed bond to a neighbour that still has
    colour ``a`` joins it with probability ``p_add = 1 − e^{−β}`` (each agreeing bond carries weight
    ``e^{β}``), and the whole cluster is re-coloured to a colour ``b ≠ a`` drawn uniformly from the other
    ``q − 1``. Detailed balance: with ``n_a`` / ``n_b`` boundary bonds to outside sites of colour ``a`` / ``b``,
    the move needs ``n_a`` refused bonds (``(1 − p_add)^{n_a} = e^{−β n_a}``) and its reverse ``n_b``, while
    ``π(new)/π(old) = e^{β (n_b − n_a)}``; the colour choice is symmetric. Members are re-coloured as they
    join, so none is visited twice; a doubly-listed pair (``L = 2``) is tried twice, i.e. coupling 2, as in
    :func:`potts_energy`. For ``q = 2`` this is :func:`wolff_update` at ``β_potts = 2 β_ising``."""
    i = rng.randrange(len(s))
    a = s[i]
    b = rng.randrange(q - 1)
    if b >= a:
        b += 1
    s[i] = b
    stack, size = [i], 1
    while stack:
        j = stack.pop()
        for k in nbr[j]:
            if s[k] == a and rng.random() < p_add:
                s[k] = b
                stack.append(k)
                size += 1
    return size


def wolff_potts(
    L: int,
    q: int,
    beta: float,
    *,
    n_measure: int = 20_000,
    burn_in: int = 1_000,
    thin: int = 2,
    n_batches: int = 40,
    seed: int = 0,
) -> SpinStats:
    """Wolff cluster Monte Carlo reference for the periodic ``L × L`` ``q``-state Potts model
    ``π ∝ exp(β Σ δ(s_i, s_j))`` (:func:`wolff_update_potts`), with the statistics of
    :func:`potts_statistics`.

    Same protocol as :func:`wolff_ising`: ``burn_in`` cluster moves from a uniformly random colouring are
    discarded, then ``n_measure`` configurations are recorded every ``thin`` moves; standard errors are batch
    means over ``n_batches`` contiguous batches. Seeded (``random.Random(seed)``)."""
    _check_q(q)
    if L < 2:
        raise ValueError(f"the lattice needs L ≥ 2, got {L}")
    rng = random.Random(seed)
    n = L * L
    nbr = neighbours(L)
    p_add = 1.0 - math.exp(-beta)
    s = [rng.randrange(q) for _ in range(n)]
    dtype = np.int8 if q <= 127 else np.int64
    rec, sizes = _wolff_chain(s, lambda: wolff_update_potts(s, nbr, p_add, q, rng), burn_in, n_measure, thin, dtype)
    states = torch.from_numpy(rec.astype(np.int64)).reshape(-1, L, L)
    e, m, c, n_max, share = _potts_per_config(states, q)
    return SpinStats(
        L=L,
        energy=float(e.mean()),
        abs_mag=float(m.mean()),
        nn_corr=float(c.mean()),
        mag_pmf=np.bincount(n_max, minlength=n + 1) / n_measure,
        energy_se=_batch_means_se(e, n_batches),
        abs_mag_se=_batch_means_se(m, n_batches),
        nn_corr_se=_batch_means_se(c, n_batches),
        n_samples=n_measure,
        q=q,
        majority_pmf=share.mean(0),
        extra={
            "method": "wolff",
            "burn_in": burn_in,
            "thin": thin,
            "seed": seed,
            "mean_cluster_size": sizes / (n_measure * thin),
        },
    )


REFERENCE_METHODS = ("auto", "exact", "wolff")


def reference_statistics(
    L: int, beta: float, *, seed: int = 0, n_measure: int = 20_000, q: int = 2, method: str = "auto"
) -> SpinStats:
    """Reference statistics of the ``L × L`` Ising (``q = 2``) or ``q``-state Potts model.

    ``method``: ``"exact"`` enumerates (:func:`exact_statistics`; a ``ValueError`` when ``q^{L²}`` > 2^20),
    ``"wolff"`` runs the seeded Wolff chain with ``n_measure`` measurements (:func:`wolff_ising` /
    :func:`wolff_potts`), ``"auto"`` is exact whenever ``q^{L²}`` ≤ 2^20 (Ising: ``L ≤ 4``) and Wolff
    otherwise."""
    _check_q(q)
    if method not in REFERENCE_METHODS:
        raise ValueError(f"method must be one of {REFERENCE_METHODS}, got {method!r}")
    if method == "exact" or (method == "auto" and q ** (L * L) <= MAX_ENUMERATED):
        return exact_statistics(L, beta, q)
    if q == 2:
        return wolff_ising(L, beta, n_measure=n_measure, seed=seed)
    return wolff_potts(L, q, beta, n_measure=n_measure, seed=seed)


__all__ = [
    "BETA_C",
    "MAX_ENUMERATED",
    "REFERENCE_METHODS",
    "SpinStats",
    "bond_correlation",
    "enumerate_states",
    "exact_ising",
    "exact_log_probs",
    "exact_potts",
    "exact_potts_statistics",
    "exact_statistics",
    "ising_energy",
    "neighbours",
    "potts_beta_c",
    "potts_energy",
    "potts_statistics",
    "reference_statistics",
    "spin_statistics",
    "tokens_to_spins",
    "wolff_ising",
    "wolff_potts",
    "wolff_update",
    "wolff_update_potts",
]
