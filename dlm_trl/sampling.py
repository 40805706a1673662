"""Masked-diffusion samplers of LLaDA and Dream: one loop, named schedules and unmasking rules.

The reverse process used for rollouts and evaluation (ALGORITHMS.md §3). The sequence is
the (left-padded) prompt followed by ``gen_length`` mask tokens. The completion is split
into ``num_blocks = gen_length / block_length`` blocks decoded left to right, ``steps /
num_blocks`` steps each (one block of ``gen_length`` when ``block_length == gen_length``,
which is how Dream's sampler works). At every step:

1. one forward pass over the whole sequence predicts every position (with classifier-free
   guidance the guided logits ``ℓ_u + (s + 1)(ℓ_c − ℓ_u)``; the unconditional forward sees
   the real prompt tokens replaced by the mask token, and both run as one ``2B`` batch);
2. the mask token's logit is set to ``−inf``, then a token is drawn for every position of
   the current block by Gumbel-max at temperature ``T`` (float64 noise; ``T = 0`` is argmax);
3. the *unmasking rule* (``remasking``) picks which still-masked positions of the block
   take their drawn token; the *schedule* says how many. Committed tokens are never
   re-masked.

**Schedules** (``schedule``), for a block of ``K`` masks and ``S = steps / num_blocks`` steps:

* ``"even"`` — LLaDA (arXiv 2502.09992): the block's ``K`` masks are split evenly over its
  ``S`` steps, the first ``K mod S`` steps committing one more
  (:func:`num_transfer_tokens`). Time runs on ``t_j = 1 − j/S``.
* ``"dream_linspace"`` — Dream 7B (Ye et al. 2025; its ``diffusion_generate``): time runs on
  ``t = linspace(1, eps, S + 1)`` and step ``j`` commits ``int(n_j · (1 − t_{j+1}/t_j))`` of
  the ``n_j`` masks still in the block, the last step all that remain
  (:func:`dream_transfer_counts`; computed in float32 like the reference, so the counts
  are the reference's exactly). Early steps of a long run may commit nothing. Dream has no
  blocks; with ``block_length < gen_length`` the linspace restarts in every block, over
  that block's ``S`` steps.

**Unmasking rules** (``remasking``). The count-based rules score every candidate and commit
the ``k`` best (``k`` from the schedule); ``p`` below is the distribution a token is drawn
from (``softmax(ℓ)``, or ``softmax(ℓ / T)`` with ``tempered_scores=True`` as Dream does at
``T > 0``; the two coincide at ``T = 0``), ``x̂`` the drawn token:

* ``"low_confidence"`` — score ``p(x̂)``: LLaDA's ``low_confidence``, Dream's ``maskgit_plus``.
* ``"margin"`` — score ``p₁ − p₂``, the gap between the two most likely tokens: Dream's
  ``topk_margin``.
* ``"entropy"`` — score ``Σ_v p_v log p_v`` (negative entropy: confident = low entropy):
  Dream's ``entropy``.
* ``"random"`` — score uniform noise: LLaDA's ``random`` (a uniformly random order).
* ``"origin"`` — not count-based: every still-masked position of the block takes its
  drawn token independently with probability ``1 − t_{j+1}/t_j`` on the schedule's time
  grid (all that remain at the block's last step), so the number committed per step is
  random: Dream's ``origin`` (the default ``alg`` of its generation config). Under
  ``"even"`` the probability is ``1/(S − j)``, whose expected count is the even split.

With ``alg_temp > 0`` (count-based rules scored by confidence) the ``k`` positions are not
the top-k but a sample without replacement from ``softmax(score / alg_temp)`` over the
candidates, as Dream's ``alg_temp`` does; it is drawn as a Gumbel/exponential race
(``top-k of score/alg_temp − log E``, ``E ~ Exp(1)``), which is how ``torch.multinomial``
samples without replacement and which never underflows. ``alg_temp`` ``None`` or 0 is top-k.

Family defaults (:meth:`SamplerConfig.for_family`): LLaDA and bidirectional models get the
even schedule with ``low_confidence``; Dream gets ``dream_linspace`` with ``entropy`` in one
block (:meth:`SamplerConfig.dream_default` says why).

Evaluation protocol of d1 (arXiv 2504.12216): temperature 0, ``steps = gen_length / 2``,
``block_length = 32``, lengths 128/256/512 — see :meth:`SamplerConfig.d1_eval`.

**Fixed number of forward passes.** A call always runs exactly ``steps`` model calls,
whatever the data and the rule (no early exit when every row has emitted EOS, when a
block is full, or when a ``dream_linspace`` / ``origin`` step commits nothing). Under
DeepSpeed ZeRO-3 every forward gathers parameters collectively, so all ranks must run the
same number of forwards or training hangs. With CFG it is still ``steps`` calls, each on
a doubled batch.

**Randomness.** ``generator`` is ``None`` (the global RNG), one ``torch.Generator`` for the
batch, or one per row. With one per row, row b's draws come only from generator b and
have a fixed size per step, so a row's output depends only on its own generator and
prompt, never on the rest of the batch or the padded prompt width. With ``None`` or one
generator the ``origin`` and ``alg_temp`` draws mirror Dream's reference: ``origin``
draws one float32 uniform per still-masked position of the block, row-major, every step
(the last one included); ``alg_temp`` draws float32 ``Exp(1)`` over the whole
``[B, P + L]`` sequence at every step that commits something (``torch.multinomial``
without replacement draws exactly these on the CPU). So at ``T = 0``, in one block, on
unpadded prompts and with the global RNG seeded alike, the outputs equal
``diffusion_generate``'s token for token and the RNG ends in the same state
(``tests/test_sampler_golden.py``; exact when the model gives the mask token
probability 0 — see the departures below). At ``T > 0`` token draws use Gumbel noise,
not Dream's ``Categorical``, so only the distribution matches.

**Tokens after EOS** (``after_eos``): ``"eos"`` (default) rewrites every completion token
after a row's first EOS to EOS, as TRL's completions are padded; ``"keep"`` returns the
tokens as sampled. ``completion_mask`` ends at the first EOS either way.

Deliberate departures from the reference samplers (LLaDA's ``generate.py``, Dream's
``diffusion_generate``; none changes the sampled distribution of a trained model in practice):

* Gumbel-max is written in log space, ``argmax(ℓ / T + g)`` with ``g = −log(−log u)``,
  which is the same distribution as LLaDA's ``argmax(exp(ℓ) / (−log u)^T)`` and Dream's
  categorical draw from ``softmax(ℓ / T)`` but cannot overflow ``exp``.
* The mask token itself is never sampled: its logit is ``−inf`` before the draw and the
  scores, so confidences are renormalised over the real tokens. A trained model gives it
  ~0 probability anyway, and committing it would leave a mask in the output. (On a
  random tiny model, with mask probability ~1e-3, this alone can reorder near-equal
  confidences; the golden tests therefore give the mask a ``−1e4`` logit.)
* Noise for tokens is drawn only for the positions of the current block.
* For CFG only the *real* prompt tokens are masked in the unconditional half; left
  padding stays padding (it is hidden by the attention mask either way).
* Dream's ``top_p`` / ``top_k`` truncation is not implemented.

Shapes: ``B`` rows, ``P`` padded prompt width, ``L = gen_length``, ``T = P + L``,
``V`` vocabulary, ``K = block_length``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

SCHEDULES = ("even", "dream_linspace")
REMASKING_STRATEGIES = ("low_confidence", "random", "margin", "entropy", "origin")
#: Rules that commit a scheduled number ``k`` of candidates ranked by a score.
COUNT_BASED = ("low_confidence", "random", "margin", "entropy")
AFTER_EOS = ("eos", "keep")
#: Dream's ``alg`` names → the ``remasking`` value that implements them here.
DREAM_ALGS = {
    "maskgit_plus": "low_confidence",
    "topk_margin": "margin",
    "entropy": "entropy",
    "origin": "origin",
}
#: Model families with a sampler default (see :meth:`SamplerConfig.for_family`).
SAMPLER_FAMILIES = ("llada", "dream", "bidirectional")

Generators = torch.Generator | Sequence[torch.Generator] | None


def _choice_error(name: str, value: Any, choices: Sequence[str], extra: str = "") -> ValueError:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {name}={value!r}; choose one of {list(choices)}.{hint}{extra}")


@dataclass
class SamplerConfig:
    """Hyper-parameters of the sampler (validated on construction; see the module docstring)."""

    gen_length: int = field(default=64, metadata={"help": "Number of completion tokens L."})
    block_length: int = field(
        default=32, metadata={"help": "Tokens per semi-autoregressive block; must divide gen_length."}
    )
    steps: int = field(
        default=32,
        metadata={
            "help": "Total denoising steps (= forward passes); a multiple of the number of blocks, ≤ gen_length."
        },
    )
    temperature: float = field(
        default=0.0, metadata={"help": "Gumbel-max temperature; 0 = greedy argmax (deterministic)."}
    )
    remasking: str = field(
        default="low_confidence",
        metadata={
            "help": f"Unmasking rule, one of {REMASKING_STRATEGIES} (Dream's maskgit_plus = low_confidence, "
            "topk_margin = margin, entropy = entropy, origin = origin)."
        },
    )
    schedule: str = field(
        default="even",
        metadata={
            "help": f"How many tokens each step commits, one of {SCHEDULES}: 'even' (LLaDA) splits a block's "
            "masks evenly over its steps; 'dream_linspace' (Dream) commits int(n·(1 − s/t)) of the n remaining "
            "on t = linspace(1, eps, steps + 1), per block."
        },
    )
    eps: float = field(
        default=1e-3,
        metadata={"help": "Final time of the dream_linspace schedule (Dream's eps), 0 ≤ eps < 1."},
    )
    alg_temp: float | None = field(
        default=None,
        metadata={
            "help": "Dream's alg_temp: > 0 samples the positions to commit from softmax(score / alg_temp) "
            "instead of taking the top-k; None or 0 = top-k."
        },
    )
    tempered_scores: bool = field(
        default=False,
        metadata={
            "help": "Score candidates under softmax(logits / T) (Dream) instead of softmax(logits) (LLaDA); "
            "no effect at temperature 0."
        },
    )
    after_eos: str = field(
        default="eos",
        metadata={
            "help": f"Completion tokens after a row's first EOS, one of {AFTER_EOS}: 'eos' rewrites them to EOS, "
            "'keep' returns them as sampled (completion_mask ends at the first EOS either way)."
        },
    )
    cfg_scale: float = field(
        default=0.0, metadata={"help": "Classifier-free guidance scale s ≥ 0; 0 disables guidance."}
    )
    progress: bool = field(default=False, metadata={"help": "Show a tqdm progress bar over the steps."})

    def __post_init__(self):
        for name in ("gen_length", "block_length", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}; set {name} to an integer ≥ 1")
        if self.gen_length % self.block_length != 0:
            lower = max(self.block_length, self.gen_length // self.block_length * self.block_length)
            raise ValueError(
                f"gen_length={self.gen_length} is not a multiple of block_length={self.block_length}; "
                f"use a gen_length that is a multiple of block_length (e.g. {lower}) or a block_length "
                f"that divides gen_length (e.g. block_length={self.gen_length} for a single block)"
            )
        if self.steps > self.gen_length:
            raise ValueError(
                f"steps={self.steps} is more than gen_length={self.gen_length}: a block cannot use more steps "
                f"than it has tokens (extra steps would only add forwards that commit nothing), so use "
                f"steps ≤ gen_length (steps={self.gen_length} commits one token per step on average)"
            )
        nb = self.num_blocks
        if self.steps % nb != 0:
            down = max(nb, self.steps // nb * nb)
            raise ValueError(
                f"steps={self.steps} is not divisible by the number of blocks "
                f"gen_length/block_length={nb}; every block gets the same number of steps, so use a "
                f"multiple of {nb} (e.g. steps={down}) or change block_length"
            )
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature}")
        if not self.cfg_scale >= 0:
            raise ValueError(
                f"cfg_scale must be ≥ 0 (0 disables classifier-free guidance), got {self.cfg_scale}"
            )
        if self.remasking not in REMASKING_STRATEGIES:
            extra = ""
            if self.remasking in DREAM_ALGS:
                extra = f" Dream's alg={self.remasking!r} is remasking={DREAM_ALGS[self.remasking]!r} here."
            raise _choice_error("remasking", self.remasking, REMASKING_STRATEGIES, extra)
        if self.schedule not in SCHEDULES:
            raise _choice_error("schedule", self.schedule, SCHEDULES)
        if self.after_eos not in AFTER_EOS:
            raise _choice_error("after_eos", self.after_eos, AFTER_EOS)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 <= self.eps < 1:
            yaml_hint = " (YAML reads 1e-3 as a string; write 1.0e-3)" if isinstance(self.eps, str) else ""
            raise ValueError(
                f"eps must be a number with 0 ≤ eps < 1 (the dream_linspace schedule ends at time eps; "
                f"Dream uses 1e-3), got {self.eps!r}{yaml_hint}"
            )
        if self.alg_temp is not None:
            if isinstance(self.alg_temp, bool) or not isinstance(self.alg_temp, (int, float)):
                raise ValueError(f"alg_temp must be None or a number ≥ 0, got {self.alg_temp!r}")
            if not (self.alg_temp >= 0 and math.isfinite(self.alg_temp)):
                raise ValueError(
                    f"alg_temp must be None or a finite number ≥ 0 (None/0 = commit the top-k), got {self.alg_temp}"
                )
            if self.alg_temp > 0 and self.remasking in ("origin", "random"):
                raise ValueError(
                    f"alg_temp={self.alg_temp} has no effect with remasking={self.remasking!r} (it samples "
                    "positions by confidence; origin/random already choose them at random); use "
                    "low_confidence, margin or entropy, or set alg_temp=None"
                )
        if not isinstance(self.tempered_scores, bool):
            raise ValueError(f"tempered_scores must be True or False, got {self.tempered_scores!r}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def block_schedule(self) -> list[int]:
        """Tokens committed at each step of a block by the count-based rules (sums to ``block_length``)."""
        return transfer_counts(self.schedule, self.block_length, self.steps_per_block, self.eps)

    @classmethod
    def d1_eval(cls, gen_length: int = 256, **overrides: Any) -> SamplerConfig:
        """d1's evaluation protocol: temperature 0, ``steps = gen_length / 2``, block 32."""
        kwargs: dict[str, Any] = dict(
            gen_length=gen_length, block_length=32, steps=gen_length // 2, temperature=0.0
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def dream_default(cls, gen_length: int = 64, **overrides: Any) -> SamplerConfig:
        """Dream's sampler: ``dream_linspace`` (eps 1e-3), ``entropy`` top-k, one block, tempered scores.

        Defaults (each can be overridden): ``block_length = gen_length`` (Dream has no
        blocks), ``steps = gen_length // 2`` (the budget of :meth:`d1_eval`; Dream's README
        uses ``steps = max_new_tokens``).

        Why ``entropy`` and not ``origin``: ``origin`` is only the fallback ``alg`` of
        Dream's generation-config class, while the usage documented for the released
        Dream-v0-Instruct-7B (and Dream-Coder / DiffuCoder) is ``alg="entropy",
        alg_temp=0``: a confidence-ordered decoder is what those checkpoints are evaluated
        with, and a rollout should follow it. ``origin`` unmasks in a random order; ask for
        it with ``remasking="origin"``.
        """
        kwargs: dict[str, Any] = dict(
            gen_length=gen_length,
            block_length=gen_length,
            steps=max(1, gen_length // 2),
            schedule="dream_linspace",
            eps=1e-3,
            remasking="entropy",
            alg_temp=None,
            tempered_scores=True,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> SamplerConfig:
        """The sampler a model family decodes with, updated by ``overrides``.

        ``"llada"`` and ``"bidirectional"``: the class defaults (``even`` +
        ``low_confidence``, LLaDA's sampler). ``"dream"``: :meth:`dream_default`.
        """
        if family == "dream":
            return cls.dream_default(**overrides)
        if family in SAMPLER_FAMILIES:
            return cls(**overrides)
        raise _choice_error("family", family, SAMPLER_FAMILIES)


@dataclass
class SamplerOutput:
    """What :func:`generate` returns.

    ``completion_ids`` is EOS-padded with ``after_eos="eos"`` (every token after a row's
    first EOS is set to EOS) and as sampled with ``after_eos="keep"``.
    ``completion_mask`` is ``torch.long`` (as TRL uses it): 1 up to and including the first
    EOS, 0 after (all ones when the row has no EOS or the model has no ``eos_token_id``).
    ``commit_step[b, i]`` is the global step ``0..steps-1`` at which completion token ``i``
    of row ``b`` was committed (recorded before EOS padding, so it is defined everywhere).
    ``nfe`` counts network function evaluations per sequence: ``steps``, or ``2 * steps``
    with classifier-free guidance (conditional + unconditional). ``num_model_calls`` is
    the number of times the model was called: always ``steps`` (a CFG call has ``2B`` rows).
    """

    sequences: torch.Tensor  # [B, P+L] prompt (as given) + completion
    completion_ids: torch.Tensor  # [B, L]
    completion_mask: torch.Tensor  # [B, L] long
    commit_step: torch.Tensor  # [B, L] long
    nfe: int
    num_model_calls: int


# --------------------------------------------------------------------------- schedules


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """The ``"even"`` schedule: how many tokens each of ``steps`` steps commits so that ``num_masked`` are filled.

    The count is split evenly; the first ``num_masked % steps`` steps get one more, e.g.
    ``num_transfer_tokens(10, 4) == [3, 3, 2, 2]``.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if s < remainder else 0) for s in range(steps)]


def _check_schedule_args(num_masked: int | None, steps: int, eps: float) -> None:
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if num_masked is not None and num_masked < 0:
        raise ValueError(f"num_masked must be ≥ 0, got {num_masked}")
    if not 0 <= eps < 1:
        raise ValueError(f"eps must satisfy 0 ≤ eps < 1, got {eps}")


def schedule_times(schedule: str, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """The time grid ``t_0 = 1 > t_1 > … > t_steps`` of a schedule, float32 on the CPU.

    ``"even"``: ``linspace(1, 0, steps + 1)``; ``"dream_linspace"``: ``linspace(1, eps, steps + 1)``.
    """
    _check_schedule_args(None, steps, eps)
    if schedule not in SCHEDULES:
        raise _choice_error("schedule", schedule, SCHEDULES)
    end = 0.0 if schedule == "even" else float(eps)
    return torch.linspace(1.0, end, steps + 1, dtype=torch.float32)


def unmask_fractions(schedule: str, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """``1 − t_{j+1} / t_j`` for each step (float32 ``[steps]``), with the last one forced to 1.

    The fraction of the still-masked tokens that step ``j`` unmasks: the ``origin`` rule's
    per-token probability, and the ``dream_linspace`` count's factor.
    """
    t = schedule_times(schedule, steps, eps)
    frac = 1 - t[1:] / t[:-1]  # float32 arithmetic, as Dream's reference does it
    frac[-1] = 1.0
    return frac


def dream_transfer_counts(num_masked: int, steps: int, eps: float = 1e-3) -> list[int]:
    """The ``"dream_linspace"`` schedule: tokens committed at each of ``steps`` steps, ``num_masked`` in all.

    Step ``j`` commits ``int(n_j · (1 − t_{j+1}/t_j))`` of the ``n_j`` tokens still masked,
    ``t = linspace(1, eps, steps + 1)``, and the last step commits the rest. The product
    is rounded in float32, like Dream's reference, so the counts are identical to its.
    E.g. ``dream_transfer_counts(16, 8) == [1, 2, 2, 2, 2, 2, 2, 3]``.
    """
    _check_schedule_args(num_masked, steps, eps)
    frac = unmask_fractions("dream_linspace", steps, eps)
    counts, remaining = [], int(num_masked)
    for j in range(steps):
        if j == steps - 1:
            k = remaining
        else:
            k = int((torch.tensor(float(remaining), dtype=torch.float32) * frac[j]).item())
        counts.append(k)
        remaining -= k
    return counts


def transfer_counts(schedule: str, num_masked: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Per-step commit counts of ``schedule`` (:func:`num_transfer_tokens` or :func:`dream_transfer_counts`)."""
    if schedule == "even":
        return num_transfer_tokens(num_masked, steps)
    if schedule == "dream_linspace":
        return dream_transfer_counts(num_masked, steps, eps)
    raise _choice_error("schedule", schedule, SCHEDULES)


# --------------------------------------------------------------------------- randomness


def _per_row_generators(generator: Generators, B: int) -> list[torch.Generator] | None:
    """``None`` / one generator → returned as is (whole-batch draws); a list → checked, one per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != B:
        raise ValueError(
            f"got {len(gens)} generators for {B} prompt rows; pass one generator or exactly one per row"
        )
    for g in gens:
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generator list must hold torch.Generator objects, got {type(g).__name__}")
    return gens


def _rand(
    shape: tuple[int, ...],  # (B, ...)
    generator: Generators,
    per_row: list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """U[0, 1) of ``shape``; with ``per_row`` generators row b comes from generator b only.

    Noise is drawn on the generator's own device and then moved, so CPU and CUDA
    generators both work.
    """
    if per_row is not None:
        rows = [torch.rand(shape[1:], generator=g, device=g.device, dtype=dtype) for g in per_row]
        return torch.stack(rows).to(device)
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _exponential(
    shape: tuple[int, ...],  # (B, ...)
    generator: Generators,
    per_row: list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Exp(1) draws of ``shape``, per row with ``per_row`` generators (see :func:`_rand`)."""
    if per_row is not None:
        rows = [
            torch.empty(shape[1:], device=g.device, dtype=dtype).exponential_(generator=g) for g in per_row
        ]
        return torch.stack(rows).to(device)
    gen_device = device if generator is None else generator.device
    return torch.empty(shape, device=gen_device, dtype=dtype).exponential_(generator=generator).to(device)


def _origin_uniforms(
    candidates: torch.Tensor,  # [B, K] bool
    generator: Generators,
    per_row: list[torch.Generator] | None,
) -> torch.Tensor:
    """U[0, 1) for the ``origin`` rule, ``[B, K]`` (values at non-candidates are meaningless).

    Per-row generators draw a fixed ``K`` float64 values each. Otherwise one float32 value
    per candidate, in row-major order — the draws Dream's reference makes each step.
    """
    B, K = candidates.shape
    if per_row is not None:
        return _rand((B, K), generator, per_row, candidates.device)
    n = int(candidates.sum())
    gen_device = candidates.device if generator is None else generator.device
    draws = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float32)
    u = torch.ones(B, K, dtype=torch.float32, device=candidates.device)
    u[candidates] = draws.to(candidates.device)
    return u


def _logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def _scores(
    rule: str,
    logits: torch.Tensor,  # [B, K, V] float64, mask logit already −inf
    x0: torch.Tensor,  # [B, K] drawn tokens
    temperature: float,
    tempered: bool,
) -> torch.Tensor:
    """The confidence of each candidate under ``rule`` (higher = committed earlier), ``[B, K]`` float64."""
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


# --------------------------------------------------------------------------- the sampler


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    *,
    config: SamplerConfig,
    prompt_attention_mask: torch.Tensor | None = None,  # [B, P] 1 = real token
    generator: Generators = None,
) -> SamplerOutput:
    """Sample completions with the block sampler described in the module docstring.

    ``model`` is a :class:`dlm_trl.models.DLM` or any callable
    ``model(input_ids [B, T], attention_mask=None) -> logits [B, T, V]`` (aligned with the
    positions; an object with ``.logits`` is accepted too) that has ``mask_token_id`` and,
    optionally, ``eos_token_id`` attributes.

    ``prompt_attention_mask`` marks real prompt tokens; the model is called with it
    extended by ones over the completion (or with ``attention_mask=None`` when it is
    ``None``, meaning no padding). ``generator`` is ``None`` (global RNG), one
    ``torch.Generator`` for the whole batch, or a list with one per row — then row b's
    randomness comes only from generator b, so its output does not depend on the rest
    of the batch (module docstring, "Randomness"). At ``temperature=0`` the confidence
    rules (``low_confidence``, ``margin``, ``entropy``) with ``alg_temp`` unset use no
    randomness and leave the global RNG untouched.
    Noise is drawn on each generator's device: on a GPU pass generators created with
    ``torch.Generator(device=...)`` to avoid copying ``[B, K, V]`` float64 noise per step.

    Always performs exactly ``config.steps`` model calls (see "Fixed number of forward
    passes" in the module docstring).
    """
    if not isinstance(config, SamplerConfig):
        raise ValueError(f"config must be a SamplerConfig, got {type(config).__name__}")
    if prompt_ids.dim() != 2:
        raise ValueError(
            f"prompt_ids must be [B, P], got shape {tuple(prompt_ids.shape)}; add a batch dim with [None]"
        )
    mask_id = getattr(model, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(
            "the model has no mask_token_id attribute; wrap it with dlm_trl.models.DLM.wrap(module) "
            "or give the callable a mask_token_id"
        )
    mask_id = int(mask_id)
    eos_id = getattr(model, "eos_token_id", None)
    B, P = prompt_ids.shape
    L, K = config.gen_length, config.block_length
    device = prompt_ids.device
    per_row = _per_row_generators(generator, B)

    attn = None  # [B, T] or None
    real_prompt = torch.ones(B, P, dtype=torch.bool, device=device)  # [B, P]
    if prompt_attention_mask is not None:
        if prompt_attention_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"prompt_attention_mask has shape {tuple(prompt_attention_mask.shape)} but prompt_ids has "
                f"{tuple(prompt_ids.shape)}; they must match"
            )
        pam = prompt_attention_mask.to(device)
        if P > 1 and bool((pam[:, 1:].long() < pam[:, :-1].long()).any()):
            raise ValueError(
                "prompt_attention_mask has padding after real tokens: prompts must be LEFT-padded "
                "(tokenizer.padding_side = 'left') so the completion follows the prompt directly"
            )
        real_prompt = pam.bool()
        attn = torch.cat([pam, torch.ones(B, L, dtype=pam.dtype, device=device)], dim=1)  # [B, T]

    x = torch.cat(
        [prompt_ids, torch.full((B, L), mask_id, dtype=prompt_ids.dtype, device=device)], dim=1
    )  # [B, T]
    masked = torch.ones(B, L, dtype=torch.bool, device=device)  # [B, L] still-masked completion positions
    commit_step = torch.full((B, L), -1, dtype=torch.long, device=device)  # [B, L]

    use_cfg = config.cfg_scale > 0
    if use_cfg:
        uncond_prompt = prompt_ids.masked_fill(real_prompt, mask_id)  # [B, P]
        cfg_attn = None if attn is None else torch.cat([attn, attn], dim=0)  # [2B, T]

    rule = config.remasking
    S = config.steps_per_block
    counts = config.block_schedule()  # [S] per-step commits of the count-based rules
    fractions = unmask_fractions(config.schedule, S, config.eps)  # [S] float32, origin's probabilities
    temperature = float(config.temperature)
    alg_temp = float(config.alg_temp or 0.0)
    calls = 0

    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc="diffusion sampling", leave=False)

    for block in range(config.num_blocks):
        lo, hi = P + block * K, P + (block + 1) * K  # block slice in the full sequence
        for j in range(S):
            step = block * S + j

            # One forward over the full sequence (both halves batched together under CFG).
            if use_cfg:
                x_uncond = torch.cat([uncond_prompt, x[:, P:]], dim=1)  # [B, T]
                both = _logits_of(
                    model(torch.cat([x, x_uncond], dim=0), attention_mask=cfg_attn)
                )  # [2B, T, V]
                cond, uncond = both[:B, lo:hi].double(), both[B:, lo:hi].double()  # [B, K, V]
                logits = uncond + (config.cfg_scale + 1.0) * (cond - uncond)  # [B, K, V]
            else:
                logits = _logits_of(model(x, attention_mask=attn))[:, lo:hi].double()  # [B, K, V]
            calls += 1
            if mask_id < logits.shape[-1]:
                logits[..., mask_id] = -torch.inf  # never commit the mask token itself

            if temperature > 0:
                u = _rand(tuple(logits.shape), generator, per_row, logits.device)  # [B, K, V] float64
                gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
                x0 = torch.argmax(logits / temperature + gumbel, dim=-1)  # [B, K]
            else:
                x0 = torch.argmax(logits, dim=-1)  # [B, K]

            candidates = masked[:, lo - P : hi - P]  # [B, K] still masked in the current block
            if rule == "origin":
                if j == S - 1:
                    # The reference still draws at its last step (where every draw passes).
                    _origin_uniforms(candidates, generator, per_row)
                    commit = candidates.clone()
                else:
                    u_t = _origin_uniforms(candidates, generator, per_row)  # [B, K]
                    commit = candidates & (u_t < fractions[j].to(u_t.device, u_t.dtype))
            else:
                k = counts[j]
                if k == 0:  # a dream_linspace step may commit nothing (the forward still ran)
                    commit = torch.zeros_like(candidates)
                else:
                    if rule == "random":
                        score = _rand((B, K), generator, per_row, logits.device)  # [B, K]
                    else:
                        score = _scores(rule, logits, x0, temperature, config.tempered_scores)  # [B, K]
                    if alg_temp > 0:
                        # Sample k positions without replacement ∝ softmax(score / alg_temp): an
                        # exponential race (torch.multinomial's own algorithm), in log space.
                        if per_row is not None:
                            e = _exponential((B, K), generator, per_row, logits.device, torch.float64)
                        else:  # the reference's draw: float32 over the whole [B, T] sequence
                            e = _exponential(tuple(x.shape), generator, None, logits.device, torch.float32)
                            e = e[:, lo:hi].double()
                        score = score / alg_temp - torch.log(e)
                    score = score.masked_fill(~candidates, -torch.inf)
                    # Every row's block starts fully masked and loses exactly `k` masks per step, so
                    # the same k fits all rows and never exceeds the number of candidates.
                    chosen = torch.topk(score, k, dim=1).indices  # [B, k]
                    commit = torch.zeros_like(candidates).scatter_(1, chosen, True) & candidates  # [B, K]

            block_x = x[:, lo:hi]
            x[:, lo:hi] = torch.where(commit, x0.to(x.dtype), block_x)
            masked[:, lo - P : hi - P] = candidates & ~commit
            commit_step[:, lo - P : hi - P] = torch.where(commit, step, commit_step[:, lo - P : hi - P])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    completion = x[:, P:].clone()  # [B, L]
    if eos_id is not None:
        is_eos = completion == int(eos_id)  # [B, L]
        seen_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # [B, L] EOS count strictly before i
        completion_mask = (seen_before == 0).long()  # [B, L] 1 up to and including the first EOS
        if config.after_eos == "eos":
            completion = completion.masked_fill(seen_before > 0, int(eos_id))
    else:
        completion_mask = torch.ones(B, L, dtype=torch.long, device=device)

    return SamplerOutput(
        sequences=torch.cat([prompt_ids, completion], dim=1),  # [B, P+L]
        completion_ids=completion,
        completion_mask=completion_mask,
        commit_step=commit_step,
        nfe=calls * (2 if use_cfg else 1),
        num_model_calls=calls,
    )


__all__ = [
    "AFTER_EOS",
    "COUNT_BASED",
    "DREAM_ALGS",
    "REMASKING_STRATEGIES",
    "SAMPLER_FAMILIES",
    "SCHEDULES",
    "SamplerConfig",
    "SamplerOutput",
    "dream_transfer_counts",
    "generate",
    "num_transfer_tokens",
    "schedule_times",
    "transfer_counts",
    "unmask_fractions",
]
