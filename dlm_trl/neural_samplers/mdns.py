"""MDNS (arXiv 2508.10684) and PDNS (arXiv 2510.03824): a masked diffusion model trained from scratch,
without data, to sample an unnormalised discrete target ``π(x) ∝ exp(−β U(x))`` (Ising / Potts on a
periodic lattice, :mod:`dlm_trl.neural_samplers.ising`).

The math as implemented (``n`` sites, ``q`` spin values, token ``q`` = mask):

* **Sampler** (:func:`sample`): start fully masked; draw a uniformly random order ``σ`` (one
  ``randperm`` per row) and unmask one site per step, ``x_{σ_k} ~ f_θ(· | x_{σ_<k})`` (the softmax of the
  network's logits over the ``q`` spin tokens at site ``σ_k``). The trajectory log-probability is
  ``log q_θ(x | σ) = Σ_k log f_θ(x_{σ_k} | x_{σ_<k})`` (:attr:`Trajectories.log_q`).
* **Path-measure importance weight** (derived here; MDNS aligns the model's path measure ``P^θ`` with the
  target's ``P*``). ``P*`` is the masking (forward) process started from ``π``, read backwards: every site
  is masked at an independent time with the same law, so the masking order — and hence the unmasking
  order — is uniform over the ``n!`` orders, independently of ``x``; ``P*(x, σ) = π(x)/n!``. The model's
  reverse chain unmasks the next site uniformly among the masked ones (its jump rates are equal across
  masked sites and do not depend on θ; the jump *times* have the same θ-free law under both measures and
  cancel too), so ``P^θ(x, σ) = q_θ(x | σ)/n!``. Hence
  ``dP*/dP^θ (x, σ) = π(x)/q_θ(x | σ) = exp(log w)/Z`` with ``log w = −βU(x) − log q_θ(x | σ)``
  (:func:`log_weights`). With the exact conditionals of ``π`` every chain-rule order gives
  ``q_θ(x | σ) = π(x)``, so every ``log w = log Z`` and the ESS is 1 (tested).
* **log Z** (:func:`log_z_estimate`): ``E_{P^θ}[exp(log w)] = Z``, so ``log Ẑ = logsumexp_b(log w_b) − log B``
  (unbiased for Z, biased low for log Z), standard error ``≈ sqrt((1/ESS − 1)/B)`` (delta method).
* **Self-normalised weights** ``w_b = softmax_b(c · log w_b)`` over the batch (the unknown ``log Z`` drops
  out), computed by :func:`dlm_trl.losses.dmpo_weights` with zero rewards and no baseline; normalised ESS
  ``1/(B Σ w²)`` (:func:`dlm_trl.losses.ess`).
* **WDCE** (MDNS's weighted denoising cross-entropy): ``L(θ) = Σ_b w_b · CE_θ(x_b)``, ``CE_θ(x) =
  E_{l ~ U{1..n}} E_{|S| = l} [(1/l) Σ_{i∈S} −log f_θ(x_i | x_S→mask)]`` = ``−ELBO_θ(x)/n`` (count form of
  the masked-diffusion ELBO), ``R`` mask replicates per sample (:func:`dlm_trl.masking.count_mask`,
  :func:`dlm_trl.losses.denoising_cross_entropy`, :func:`dlm_trl.losses.wdce_loss`). With ``c = 1`` the
  weights estimate ``dP*/dP^v`` for the sampling model ``v = sg(θ)``, so ``L`` estimates
  ``E_{x~π}[−ELBO_θ(x)]/n``, minimised by the exact conditionals of π. The weights stay valid for the
  ``inner_steps`` gradient steps that reuse one sampled batch (they are relative to ``v``, not to θ).
* **Replay buffer** (``buffer_rounds``; a variance-reduction option of ours, not checked against the
  papers' own buffer / resampling details): the samples of the last rounds keep the log-weight against the model that drew them, so each
  weight stays an unbiased ``Z · dP*/dP^{v_j}``; the weights are self-normalised over the whole buffer and
  each gradient step trains on ``batch`` rows resampled ∝ ``w`` (multinomial) with uniform weights.
* **PDNS** (proximal point on path measures): sub-problem ``k`` is
  ``P_{k+1} = argmin_P KL(P‖P*) + (1/η_k) KL(P‖P_k)``, whose solution is the geometric interpolation
  ``P_{k+1} ∝ P_k^{1−c_k} (P*)^{c_k}`` with ``c_k = η_k/(1 + η_k) ∈ (0, 1]``; its WDCE weights (proposal
  ``P_k`` = the current sampler) are ``(dP*/dP_k)^{c_k}``, i.e. ``softmax(c_k · log w)``. ``c_k`` is either
  fixed (``pdns_c``) or chosen each round as the largest value whose weights keep the normalised ESS ≥
  ``target_ess`` (:func:`dlm_trl.losses.ess_temperature`, the adaptive step); ``c = 1`` is MDNS.

Provenance: what could be checked in the papers' public abstracts and summaries (their method sections were
not readable here) is the framing — MDNS aligns the sampler's path measure with the target's through a family
of objectives grounded in stochastic optimal control of CTMCs, WDCE among them; PDNS runs a proximal point
method on path measures, a sequence of sub-problems tracing a geometric interpolation towards the target,
each instantiated with a proximal WDCE, with adaptive step schedulers. The formulas above (the weight, the
proximal solution and its exponent ``c = η/(1+η)``, the ESS rule for ``c``) are derived here and agree with
ALGORITHMS.md §2 (DMPO's ``c`` is PDNS's tempering).

Randomness: every draw comes from a per-row ``torch.Generator`` seeded from ``(seed, stream, step, row)``
(:func:`row_generators`); the global RNG is never used (model initialisation runs in a forked RNG).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..losses import denoising_cross_entropy, dmpo_weights, ess, ess_temperature, wdce_loss
from ..masking import apply_mask, count_mask
from ..models.tiny import TinyDLMConfig, TinyDLMForMaskedDiffusion
from .ising import (
    SpinStats,
    enumerate_states,
    ising_energy,
    potts_energy,
    potts_statistics,
    spin_statistics,
    tokens_to_spins,
)

STREAM_SAMPLE, STREAM_MASK, STREAM_EVAL = 1, 2, 3
METHODS = ("mdns", "pdns")

# --------------------------------------------------------------------------------------------- target / model


@dataclass(frozen=True)
class SpinTarget:
    """``π(x) ∝ exp(−β U(x))`` on the periodic ``L × L`` lattice; Ising for ``q = 2`` (token 0/1 = spin
    −1/+1), ``q``-state Potts otherwise."""

    L: int
    beta: float
    q: int = 2

    @property
    def n_sites(self) -> int:
        return self.L * self.L

    def energy(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` tokens → ``[B]`` float64 energies."""
        if self.q == 2:
            return ising_energy(tokens_to_spins(tokens), self.L)
        return potts_energy(tokens, self.L)

    def log_unnormalized(self, tokens: torch.Tensor) -> torch.Tensor:
        """``−β U(x)`` → ``[B]`` float64."""
        return -self.beta * self.energy(tokens)


def make_model(
    L: int,
    q: int = 2,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    site_embedding: bool = True,
    seed: int = 0,
) -> TinyDLMForMaskedDiffusion:
    """The embedded tiny bidirectional transformer with vocabulary ``{0..q−1, mask = q}`` and one position per
    lattice site (row-major). Initialised from ``seed`` without touching the global RNG.

    ``site_embedding`` adds a learned per-site vector to the token embeddings (a forward hook on
    ``embed_tokens``; parameter ``site_embedding``): the tiny model's only position signal is 1-D rotary, i.e.
    the *flat* offset, and on a row-major torus a flat offset of 1 is a neighbour except across a row end
    (offset 3 is one only across it), so without it the network cannot tell which sites are neighbours."""
    cfg = TinyDLMConfig(
        vocab_size=q + 1,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=L * L,
        mask_token_id=q,
        eos_token_id=None,
        pad_token_id=None,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyDLMForMaskedDiffusion(cfg)
        if site_embedding:
            model.site_embedding = torch.nn.Parameter(cfg.initializer_range * torch.randn(L * L, hidden_size))
            model.embed_tokens.register_forward_hook(
                lambda _mod, _inp, out: out + model.site_embedding[: out.shape[-2]].to(out.dtype)
            )
    return model


def row_generators(seed: int, stream: int, step: int, rows: int | Sequence[int]) -> list[torch.Generator]:
    """One ``torch.Generator`` per row, seeded from ``(seed, stream, step, row)`` only (independent of the
    batch size)."""
    idx = range(rows) if isinstance(rows, int) else rows
    out = []
    for r in idx:
        s = int(np.random.SeedSequence([seed, stream, step, int(r)]).generate_state(1, dtype=np.uint64)[0])
        out.append(torch.Generator().manual_seed(s & ((1 << 63) - 1)))
    return out


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def spin_log_probs(model, x: torch.Tensor, q: int, dtype=torch.float64) -> torch.Tensor:
    """``[B, n, q]`` log f_θ(v | x) over the ``q`` spin tokens (the mask token's logit is dropped)."""
    return torch.log_softmax(_logits(model, x)[..., :q].to(dtype), -1)


# --------------------------------------------------------------------------------------------- sampling


@dataclass
class Trajectories:
    """Samples of the ancestral sampler: ``tokens [B, n]``, unmasking ``order [B, n]`` (site unmasked at
    step k), ``step_log_probs [B, n]`` (log f_θ of the value drawn at step k) and ``log_q [B]`` (their sum)."""

    tokens: torch.Tensor
    order: torch.Tensor
    step_log_probs: torch.Tensor
    log_q: torch.Tensor


@torch.no_grad()
def sample(model, n_sites: int, q: int, generators: Sequence[torch.Generator]) -> Trajectories:
    """Ancestral unmasking, one site per step, uniformly random order per row (row ``b`` uses only
    ``generators[b]``: its order, then one uniform per step for inverse-CDF sampling). ``n`` forward passes."""
    B = len(generators)
    order = torch.stack([torch.randperm(n_sites, generator=g) for g in generators])  # [B, n]
    u = torch.stack([torch.rand(n_sites, generator=g, dtype=torch.float64) for g in generators])  # [B, n]
    x = torch.full((B, n_sites), q, dtype=torch.long)
    step_lp = torch.zeros(B, n_sites, dtype=torch.float64)
    rows = torch.arange(B)
    for k in range(n_sites):
        pos = order[:, k]  # [B]
        lp = spin_log_probs(model, x, q)[rows, pos]  # [B, q]
        cdf = lp.exp().cumsum(-1)  # [B, q]
        tok = (u[:, k : k + 1] > cdf).sum(-1).clamp(max=q - 1)  # [B]
        step_lp[:, k] = lp[rows, tok]
        x[rows, pos] = tok
    return Trajectories(tokens=x, order=order, step_log_probs=step_lp, log_q=step_lp.sum(1))


@torch.no_grad()
def trajectory_log_prob(model, tokens: torch.Tensor, order: torch.Tensor, q: int) -> torch.Tensor:
    """``[B]`` ``log q_θ(x | σ)`` of given samples and orders under ``model`` (teacher-forced re-run of the
    chain rule; equals :attr:`Trajectories.log_q` for the model that sampled them)."""
    B, n = tokens.shape
    x = torch.full_like(tokens, q)
    rows = torch.arange(B)
    total = torch.zeros(B, dtype=torch.float64)
    for k in range(n):
        pos = order[:, k]
        total += spin_log_probs(model, x, q)[rows, pos, tokens[rows, pos]]
        x[rows, pos] = tokens[rows, pos]
    return total


def sample_batched(
    model,
    target: SpinTarget,
    n: int,
    *,
    seed: int,
    stream: int = STREAM_EVAL,
    step: int = 0,
    chunk: int = 1024,
) -> Trajectories:
    """``n`` samples in chunks (row ``r`` always uses the generator of ``(seed, stream, step, r)``)."""
    parts = [
        sample(
            model, target.n_sites, target.q, row_generators(seed, stream, step, range(a, min(n, a + chunk)))
        )
        for a in range(0, n, chunk)
    ]
    return Trajectories(
        *(torch.cat([getattr(p, f) for p in parts]) for f in ("tokens", "order", "step_log_probs", "log_q"))
    )


# --------------------------------------------------------------------------------------------- weights


def log_weights(target: SpinTarget, traj: Trajectories) -> torch.Tensor:
    """``log w = −βU(x) − log q_θ(x | σ)`` → ``[B]`` float64 (= ``log Z + log dP*/dP^θ``)."""
    return target.log_unnormalized(traj.tokens) - traj.log_q


def normalized_ess(log_w: torch.Tensor) -> float:
    """Normalised ESS ``1/(B Σ w²)`` of ``w = softmax(log w)``."""
    return float(ess(torch.softmax(log_w.double(), -1)[None])[0])


def log_z_estimate(log_w: torch.Tensor) -> tuple[float, float]:
    """Importance-sampling ``log Ẑ = logsumexp(log w) − log B`` and its delta-method standard error."""
    B = log_w.shape[0]
    est = float(torch.logsumexp(log_w.double(), 0) - math.log(B))
    e = normalized_ess(log_w)
    return est, math.sqrt(max(1.0 / e - 1.0, 0.0) / B)


def importance_weights(
    log_w: torch.Tensor, *, c: float = 1.0, target_ess: float | None = None
) -> tuple[torch.Tensor, float, dict]:
    """Self-normalised WDCE weights ``softmax(c · log w)`` over the batch → ``(w [B] float64, c, metrics)``.

    ``target_ess`` (PDNS's adaptive proximal step): ``c`` is lowered from its given value to the largest one
    whose normalised ESS is ≥ the target (:func:`dlm_trl.losses.ess_temperature`). Metrics: ``ess`` (of the
    weights used), ``ess_full`` (of ``c = 1``), ``c``."""
    lw = log_w.detach().double()
    B = lw.shape[0]
    if target_ess is not None:
        c = float(ess_temperature(lw[None], target_ess, c_max=c)[0])
    w, m = dmpo_weights(lw, torch.zeros_like(lw), group_size=B, alpha=1.0, c=c, baseline="none")
    return w, c, {"ess": float(m["ess_mean"]), "ess_full": normalized_ess(lw), "c": c}


# --------------------------------------------------------------------------------------------- WDCE


def denoising_ce(
    model, tokens: torch.Tensor, q: int, generators: Sequence[torch.Generator], *, replicates: int = 2
) -> torch.Tensor:
    """``[B]`` ``CE_θ(x)``: ``R`` replicates per row, each masking exactly ``l ~ U{1..n}`` uniformly chosen
    sites, ``(1/l) Σ_masked −log f_θ(x_i | ·)`` averaged over replicates (``= −ELBO/n`` in expectation).
    Carries gradient."""
    B, n = tokens.shape
    R = replicates
    counts = torch.stack(
        [1 + (torch.rand(R, generator=g) * n).long().clamp(max=n - 1) for g in generators]
    )  # [B, R]
    gens = [g for g in generators for _ in range(R)]
    rows = tokens.repeat_interleave(R, 0)  # [B*R, n]
    noise = count_mask(counts.view(-1), torch.ones_like(rows, dtype=torch.bool), generator=gens)  # [B*R, n]
    lp = torch.log_softmax(_logits(model, apply_mask(rows, noise, q))[..., :q].float(), -1)
    tok_lp = lp.gather(-1, rows[..., None]).squeeze(-1)  # [B*R, n]
    return denoising_cross_entropy(tok_lp.view(B, R, n), noise.view(B, R, n))


@dataclass
class TrainConfig:
    """Training options (defaults: the recipe's 4 × 4, β = 0.3 run)."""

    method: str = "mdns"  # "mdns" (c = 1) or "pdns" (tempered / proximal weights)
    steps: int = 300  # sampling rounds
    batch: int = 256  # samples per round
    inner_steps: int = 1  # gradient steps per sampled batch (weights stay those of the sampling model)
    buffer_rounds: int = 1  # replay buffer: weight (and resample from) the samples of the last rounds
    lr: float = 1e-3
    replicates: int = 2  # mask replicates per sample in the WDCE
    grad_clip: float = 1.0
    pdns_target_ess: float | None = 0.5  # PDNS: adaptive c to this normalised ESS (None: fixed pdns_c)
    pdns_c: float = 1.0  # PDNS: fixed c, or the cap of the adaptive one
    seed: int = 0
    lr_final_frac: float = 1.0  # cosine decay of the learning rate to lr * lr_final_frac (1 = constant)
    log_every: int = 25
    time_limit_s: float | None = None  # safety cap

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


def train_step(
    model, optimizer, target: SpinTarget, cfg: TrainConfig, step: int, buffer: list | None = None
) -> dict:
    """One sampling round: ``batch`` trajectories from the current model and their log-weights; the
    (tempered) self-normalised weights over this round — or over the last ``cfg.buffer_rounds`` rounds kept
    in ``buffer`` (a list the caller keeps between rounds), each sample weighted against the model that drew
    it, which keeps every weight an unbiased ``dP*/dP^v`` ratio — then ``inner_steps`` WDCE gradient steps.
    With a buffer larger than one round, each gradient step trains on ``batch`` rows resampled ∝ ``w``
    (multinomial, seeded) with uniform weights instead of on every buffered row."""
    model.eval()
    traj = sample(model, target.n_sites, target.q, row_generators(cfg.seed, STREAM_SAMPLE, step, cfg.batch))
    lw_round = log_weights(target, traj)
    if buffer is None:
        buffer = []
    buffer.append((traj.tokens, lw_round))
    del buffer[: max(0, len(buffer) - cfg.buffer_rounds)]
    tokens = torch.cat([b[0] for b in buffer])
    lw = torch.cat([b[1] for b in buffer])
    if cfg.method == "mdns":
        w, c, wm = importance_weights(lw, c=1.0)
    else:
        w, c, wm = importance_weights(lw, c=cfg.pdns_c, target_ess=cfg.pdns_target_ess)
    model.train()
    losses = []
    for j in range(cfg.inner_steps):
        gens = row_generators(cfg.seed, STREAM_MASK, step * 1000 + j, cfg.batch)
        if tokens.shape[0] > cfg.batch:
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([cfg.seed, STREAM_MASK, step, j, 7]).generate_state(1)[0])
            )
            idx = torch.multinomial(w.double(), cfg.batch, replacement=True, generator=g)
            x, wj = tokens[idx], torch.full((cfg.batch,), 1.0 / cfg.batch)
        else:
            x, wj = tokens, w.float()
        ce = denoising_ce(model, x, target.q, gens, replicates=cfg.replicates)
        loss, _ = wdce_loss(ce, wj, group_size=cfg.batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    lz, _ = log_z_estimate(lw_round)
    return {
        "step": step,
        "loss": float(np.mean(losses)),
        "log_z_is": lz,
        "ess_round": normalized_ess(lw_round),
        "energy_per_site": float(target.energy(traj.tokens).mean() / target.n_sites),
        **wm,
    }


def train(
    model, target: SpinTarget, cfg: TrainConfig, *, log: Callable[[str], None] | None = print
) -> list[dict]:
    """Train ``model`` for ``cfg.steps`` sampling rounds (Adam); returns the per-round history."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    f = cfg.lr_final_frac
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(cfg.steps, 1)))
    )
    hist: list[dict] = []
    buffer: list = []
    t0 = time.time()
    for step in range(cfg.steps):
        rec = train_step(model, opt, target, cfg, step, buffer)
        sched.step()
        rec["time_s"] = time.time() - t0
        hist.append(rec)
        if log and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            log(
                f"step {step:4d}  loss {rec['loss']:.4f}  ess {rec['ess_round']:.3f}  c {rec['c']:.3f}  "
                f"logZ_is {rec['log_z_is']:.3f}  E/N {rec['energy_per_site']:.3f}  t {rec['time_s']:.0f}s"
            )
        if cfg.time_limit_s is not None and time.time() - t0 > cfg.time_limit_s:
            if log:
                log(f"time limit {cfg.time_limit_s:.0f}s reached after {step + 1} rounds")
            break
    return hist


# --------------------------------------------------------------------------------------------- exact model law


@torch.no_grad()
def exact_model_log_probs(model, n_sites: int, q: int, chunk: int = 8192) -> torch.Tensor:
    """``[q^n]`` exact ``log q_θ(x)`` of the sampler (order-averaged: ``q_θ(x) = E_σ q_θ(x | σ)``) over
    :func:`~dlm_trl.neural_samplers.ising.enumerate_states` order, for tiny ``n`` (``(q+1)^n`` partial
    configurations are evaluated once). Dynamic programming over revealed subsets ``S``:
    ``G(x, S) = Σ_{i∈S} G(x, S∖i) · f_θ(x_i | x_{S∖i}) / (n − |S| + 1)``, ``G(x, ∅) = 1``, ``q_θ(x) = G(x, all)``."""
    if (q + 1) ** n_sites > 2_000_000:
        raise ValueError(f"(q+1)^n = {(q + 1) ** n_sites} partial configurations is too many")
    partial = enumerate_states(n_sites, q + 1)  # [(q+1)^n, n], digit q = mask
    cond = torch.cat(
        [spin_log_probs(model, partial[a : a + chunk], q) for a in range(0, partial.shape[0], chunk)]
    )
    states = enumerate_states(n_sites, q)  # [S, n]
    S = states.shape[0]
    pw = (q + 1) ** torch.arange(n_sites - 1, -1, -1)  # [n]
    full = 1 << n_sites
    bits = (
        torch.arange(full)[:, None] >> torch.arange(n_sites)[None, :]
    ) & 1  # [2^n, n] bit i = site i revealed
    G = torch.full((S, full), -math.inf, dtype=torch.float64)
    G[:, 0] = 0.0
    by_size = sorted(range(1, full), key=lambda m: bin(m).count("1"))
    for m in by_size:
        k = bin(m).count("1")
        terms = []
        for i in range(n_sites):
            if not (m >> i) & 1:
                continue
            prev = m & ~(1 << i)
            vis = bits[prev].bool()  # [n]
            idx = (torch.where(vis[None, :], states, torch.full_like(states, q)) * pw).sum(1)  # [S]
            terms.append(G[:, prev] + cond[idx, i, states[:, i]])
        G[:, m] = torch.logsumexp(torch.stack(terms), 0) - math.log(n_sites - k + 1)
    return G[:, full - 1]


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """``KL(p‖q) = Σ p (log p − log q)`` from log-probabilities (0 log 0 = 0)."""
    p = p_log.exp()
    return float(torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum())


# --------------------------------------------------------------------------------------------- evaluation


def _pmf_divergences(model_pmf: np.ndarray, ref_pmf: np.ndarray) -> tuple[float, float]:
    """``(KL(model‖ref), TV)`` of two magnetisation distributions (KL is ``inf`` where ref has no mass)."""
    tv = 0.5 * float(np.abs(model_pmf - ref_pmf).sum())
    on = model_pmf > 0
    with np.errstate(divide="ignore"):
        klv = float((model_pmf[on] * (np.log(model_pmf[on]) - np.log(ref_pmf[on]))).sum())
    return klv, tv


@torch.no_grad()
def evaluate(
    model,
    target: SpinTarget,
    reference: SpinStats | None,
    *,
    n_samples: int = 4096,
    seed: int = 12345,
    exact_kl: bool | None = None,
) -> dict:
    """Statistics of ``n_samples`` model samples against the exact / Monte Carlo ``reference``.

    Returns: the sample statistics (``model``), their self-normalised importance-reweighted version
    (``reweighted``), absolute errors of energy/site, |m|/site and the nearest-neighbour correlation (raw and
    reweighted), ``kl_mag`` = KL(model‖reference) and ``tv_mag`` of the magnetisation distribution, the
    normalised ``ess`` of the log-weights, ``mode_coverage`` = P(M > 0 | M ≠ 0) (exactly 0.5 for π), the
    importance-sampling ``log_z`` estimate with its standard error (and the reference's ``log_z`` when known),
    and — for ``q^n ≤ 512`` (or when ``exact_kl``) — ``kl_exact_pi_q`` = KL(π‖q_θ) and ``kl_exact_q_pi`` =
    KL(q_θ‖π) of the full laws (Potts too).

    Potts (``q ≥ 3``; ``reference`` from :func:`~dlm_trl.neural_samplers.ising.potts_statistics` /
    ``exact_potts_statistics`` / ``wolff_potts``): the same keys with the Potts statistics of
    :mod:`~dlm_trl.neural_samplers.ising` — ``err_abs_mag`` is the error of the order parameter
    ``m = (q·n_max/N − 1)/(q − 1)``, ``err_nn_corr`` that of the normalised same-state correlation, and
    ``kl_mag`` / ``tv_mag`` compare the distributions of the majority count ``n_max``. Mode coverage is read
    from the majority-colour histogram ``h`` (``majority_colour_pmf``; exactly uniform for π): ``mode_tv`` =
    TV(h, uniform) (0 exact) and ``mode_min_share`` = ``q · min_k h_k`` (1 exact, 0 when a colour's mode is
    never the majority); ``mode_coverage`` is not reported. ``energy_per_site`` (top level) is kept for
    older callers."""
    if reference is not None and reference.q != target.q:
        raise ValueError(f"reference is for q={reference.q} but the target has q={target.q}")
    model.eval()
    traj = sample_batched(model, target, n_samples, seed=seed)
    lw = log_weights(target, traj)
    out: dict = {"n_samples": n_samples, "ess": normalized_ess(lw)}
    lz, lz_se = log_z_estimate(lw)
    out["log_z_is"], out["log_z_is_se"] = lz, lz_se
    if exact_kl or (exact_kl is None and target.q**target.n_sites <= 512):
        from .ising import exact_log_probs

        lp = exact_log_probs(target.L, target.beta, target.q)
        lq = exact_model_log_probs(model, target.n_sites, target.q)
        out["kl_exact_pi_q"] = kl(lp, lq)
        out["kl_exact_q_pi"] = kl(lq, lp)
    if target.q == 2:
        spins = tokens_to_spins(traj.tokens).reshape(-1, target.L, target.L)
        st = spin_statistics(spins)
        rw = spin_statistics(spins, torch.softmax(lw, 0))
        out["model"] = st.as_dict()
        out["reweighted"] = rw.as_dict()
        M = spins.reshape(n_samples, -1).sum(-1)
        nz = (M != 0).sum().clamp(min=1)
        out["mode_coverage"] = float((M > 0).sum() / nz)
    else:
        q = target.q
        states = traj.tokens.reshape(-1, target.L, target.L)
        st = potts_statistics(states, q)
        rw = potts_statistics(states, q, torch.softmax(lw, 0))
        out["energy_per_site"] = st.energy
        out["model"] = st.as_dict()
        out["reweighted"] = rw.as_dict()
        h = st.majority_pmf
        out["majority_colour_pmf"] = [float(x) for x in h]
        out["mode_tv"] = 0.5 * float(np.abs(h - 1.0 / q).sum())
        out["mode_min_share"] = q * float(h.min())
    if reference is not None:
        for name, attr in (("energy", "energy"), ("abs_mag", "abs_mag"), ("nn_corr", "nn_corr")):
            out[f"err_{name}"] = abs(getattr(st, attr) - getattr(reference, attr))
            out[f"err_{name}_reweighted"] = abs(getattr(rw, attr) - getattr(reference, attr))
        out["kl_mag"], out["tv_mag"] = _pmf_divergences(st.mag_pmf, reference.mag_pmf)
        if reference.log_z is not None:
            out["log_z_exact"] = reference.log_z
            out["err_log_z"] = abs(lz - reference.log_z)
    return out


__all__ = [
    "METHODS",
    "SpinTarget",
    "TrainConfig",
    "Trajectories",
    "denoising_ce",
    "evaluate",
    "exact_model_log_probs",
    "importance_weights",
    "kl",
    "log_weights",
    "log_z_estimate",
    "make_model",
    "normalized_ess",
    "row_generators",
    "sample",
    "sample_batched",
    "spin_log_probs",
    "train",
    "train_step",
    "trajectory_log_prob",
]
