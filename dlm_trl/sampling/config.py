"""The sampler's options (:class:`SamplerConfig`, validated on construction) and its output."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._names import (
    AFTER_EOS,
    CACHES,
    DREAM_ALGS,
    DYNAMIC_TRANSFERS,
    GUIDANCE_SCHEDULES,
    REMASKING_STRATEGIES,
    SAMPLER_FAMILIES,
    SCHEDULES,
    TRANSFERS,
    _choice_error,
)
from .guidance import check_schedule
from .schedules import transfer_counts


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
    transfer: str = field(
        default="topk",
        metadata={
            "help": f"How many masked positions a step commits, one of {TRANSFERS}: 'topk' takes the schedule's "
            "count (fixed forwards per call); 'threshold' every candidate whose score reaches `threshold` (at least "
            "one); 'factor' Fast-dLLM's rule, the largest n whose n-th best confidence is ≥ 1 − factor/(n + 1). The "
            "last two finish a block in a data-dependent number of forwards (at most block_length)."
        },
    )
    threshold: float = field(
        default=0.9, metadata={"help": "Confidence threshold of transfer='threshold' (Fast-dLLM: 0.9)."}
    )
    factor: float = field(default=1.0, metadata={"help": "Fast-dLLM's factor f of transfer='factor' (f > 0)."})
    cache: str = field(
        default="none",
        metadata={
            "help": f"Key/value cache policy, one of {CACHES}: 'prefix' reuses the keys/values of everything before "
            "the current block, 'dual' also those after it (Fast-dLLM); both are rebuilt by a full forward at "
            "every block start and every `cache_refresh` steps. Needs a model with a block cache (dlm-trl's "
            "native LLaDA / Dream or the embedded model)."
        },
    )
    cache_refresh: int | None = field(
        default=None,
        metadata={
            "help": "With a cache: run a full forward (and rebuild the cache) every this many steps inside a block; "
            "None = only at block starts (Fast-dLLM). 1 = every step, which is the uncached sampler."
        },
    )
    cfg_scale: float = field(
        default=0.0, metadata={"help": "Classifier-free guidance scale s ≥ 0; 0 disables guidance."}
    )
    guidance_schedule: str | Callable = field(
        default="constant",
        metadata={
            "help": f"When to guide, one of {GUIDANCE_SCHEDULES} or a callable f(s, m) -> scale (m: the [R] "
            "fractions of each row's completion still masked at the step): 'constant' s at every step, 'linear' "
            "s·(1 − m), 'late' s once m ≤ guidance_late_fraction (dlm_trl.sampling.guidance). No effect at "
            "cfg_scale=0."
        },
    )
    guidance_late_fraction: float = field(
        default=0.5,
        metadata={"help": "The 'late' schedule guides once at most this fraction of the completion is masked, in [0, 1]."},
    )
    guidance_rate_preserving: bool = field(
        default=False,
        metadata={
            "help": "Rate-preserving CFG (arXiv 2507.08965): decide which / how many positions to unmask from the "
            "unguided (conditional) logits and draw the committed tokens from the guided ones. False: guided "
            "logits for both (plain CFG). No effect at cfg_scale=0."
        },
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
        if self.transfer not in TRANSFERS:
            raise _choice_error("transfer", self.transfer, TRANSFERS)
        if self.cache not in CACHES:
            raise _choice_error("cache", self.cache, CACHES)
        if self.transfer == "threshold" and not (isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1):
            raise ValueError(
                f"threshold must be a number in (0, 1] (a probability; Fast-dLLM uses 0.9), got {self.threshold!r}"
            )
        if self.transfer == "factor" and not (isinstance(self.factor, (int, float)) and self.factor > 0):
            raise ValueError(f"factor must be a number > 0 (Fast-dLLM uses 1.0), got {self.factor!r}")
        if self.transfer != "topk" and self.remasking not in ("low_confidence", "margin"):
            raise ValueError(
                f"transfer={self.transfer!r} compares scores with a probability threshold and needs a probability-"
                f"scale scorer, remasking='low_confidence' (Fast-dLLM's confidence, also for Dream) or 'margin'; "
                f"got remasking={self.remasking!r}"
            )
        if self.transfer != "topk" and self.alg_temp:
            raise ValueError(
                f"alg_temp={self.alg_temp} samples the positions of a fixed count; transfer={self.transfer!r} "
                "chooses them by a threshold. Set alg_temp=None or transfer='topk'"
            )
        if self.cache_refresh is not None and (
            isinstance(self.cache_refresh, bool) or not isinstance(self.cache_refresh, int) or self.cache_refresh < 1
        ):
            raise ValueError(f"cache_refresh must be None or an integer ≥ 1, got {self.cache_refresh!r}")
        # The guidance options are checked but allowed at cfg_scale=0 (they have no effect there), so a recipe
        # or a command line can switch guidance on and off with cfg_scale alone.
        check_schedule(self.guidance_schedule, self.guidance_late_fraction)
        if not isinstance(self.guidance_rate_preserving, bool):
            raise ValueError(
                f"guidance_rate_preserving must be True or False, got {self.guidance_rate_preserving!r}"
            )
        if self.cache != "none" and self.cfg_scale > 0:
            raise ValueError(
                "cfg_scale > 0 with a key/value cache is not supported (the unconditional half would need its own "
                "cache); set cache='none' or cfg_scale=0"
            )

    @property
    def dynamic(self) -> bool:
        """Whether a row's number of forwards depends on the data (threshold / factor transfer)."""
        return self.transfer in DYNAMIC_TRANSFERS

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
    the number of times the model was called: always ``steps`` (a CFG call has ``2B`` rows)
    for ``transfer="topk"``; for the threshold rules the number of calls until every row was done.
    ``commit_logprob[b, i]`` is the log-probability of completion token ``i`` under the distribution it
    was drawn from at the step that committed it (``softmax(ℓ / T)``, or ``softmax(ℓ)`` at ``T = 0``;
    CFG-guided logits with guidance, also under rate-preserving guidance, whose tokens are drawn from the guided
    logits), NaN where it was never drawn (positions skipped after EOS).
    ``row_nfe[b]`` is how many forward passes row ``b`` took part in (CFG counted twice).
    """

    sequences: torch.Tensor  # [B, P+L] prompt (as given) + completion
    completion_ids: torch.Tensor  # [B, L]
    completion_mask: torch.Tensor  # [B, L] long
    commit_step: torch.Tensor  # [B, L] long
    nfe: int
    num_model_calls: int
    commit_logprob: torch.Tensor | None = None  # [B, L] float32
    row_nfe: torch.Tensor | None = None  # [B] long

    @property
    def mean_nfe(self) -> float:
        """Forward passes per sequence, averaged over rows (``nfe`` for the fixed-count rules)."""
        if self.row_nfe is None:
            return float(self.nfe)
        return float(self.row_nfe.float().mean())



#: Named rollout decoders (``--rollout NAME`` on ``dlm-trl eval``, ``rollout: NAME`` in recipes). ``"fast"``:
#: confidence-threshold decoding at 0.9 without a cache, 3.5x faster rollouts at -0.1 points of greedy accuracy
#: on the whole Countdown test split and no loss in GDPO's RL result (README "Fast rollouts";
#: ``benchmarks/rollout_speed.py``). The threshold compares probabilities, so the preset scores by confidence
#: for every family (Dream's default scorer, entropy, is not a probability). Explicit options win over a preset.
ROLLOUT_PRESETS: dict[str, dict[str, Any]] = {
    "plain": {"transfer": "topk", "cache": "none"},
    "fast": {"transfer": "threshold", "threshold": 0.9, "cache": "none", "remasking": "low_confidence"},
}


def rollout_overrides(preset: str | None = None, **explicit: Any) -> dict[str, Any]:
    """:class:`SamplerConfig` fields of a rollout ``preset`` (:data:`ROLLOUT_PRESETS`) updated by the ``explicit``
    values that are not ``None``."""
    out: dict[str, Any] = {}
    if preset is not None:
        if preset not in ROLLOUT_PRESETS:
            raise _choice_error("rollout", preset, list(ROLLOUT_PRESETS))
        out.update(ROLLOUT_PRESETS[preset])
    out.update({k: v for k, v in explicit.items() if v is not None})
    return out
