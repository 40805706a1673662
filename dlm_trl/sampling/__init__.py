"""Masked-diffusion samplers of LLaDA, Dream and Fast-dLLM, built from small parts.

The package, one concept per module:

* :mod:`.config` — :class:`SamplerConfig` (every option, validated) and :class:`SamplerOutput`;
* :mod:`.schedules` — how many tokens a step commits under the count-based rules (``even``,
  ``dream_linspace``);
* :mod:`.scorers` — the confidence of a candidate (``low_confidence``, ``margin``, ``entropy``);
* :mod:`.transfer` — which candidates a step commits (``topk``, ``threshold``, ``factor``, ``origin``);
* :mod:`.runner` — the model calls and the key/value cache policy (``none``, ``prefix``, ``dual``);
* :mod:`.guidance` — classifier-free guidance: the per-step scale (``constant``, ``linear``, ``late``)
  and rate-preserving guidance (arXiv 2507.08965);
* :mod:`.noise` — randomness (one generator per row makes a row independent of its batch);
* :mod:`.memory` — keep freed memory in the process (page faults were half of a rollout's time);
* :mod:`.loop` — :func:`generate`, which puts them together.

The reverse process used for rollouts and evaluation (ALGORITHMS.md §3). The sequence is
the (left-padded) prompt followed by ``gen_length`` mask tokens. The completion is split
into ``num_blocks = gen_length / block_length`` blocks decoded left to right, ``steps /
num_blocks`` steps each (one block of ``gen_length`` when ``block_length == gen_length``,
which is how Dream's sampler works). At every step:

1. one forward pass over the whole sequence predicts every position (with classifier-free
   guidance the guided logits ``ℓ_u + (s + 1)(ℓ_c − ℓ_u)``; the unconditional forward sees
   the real prompt tokens replaced by the mask token, and both run as one ``2B`` batch; the scale
   of a row at a step follows ``guidance_schedule``, and with ``guidance_rate_preserving`` step 3's
   decision is made on ``ℓ_c`` while the tokens come from the guided logits — :mod:`.guidance`);
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

**Parallel decoding** (``transfer``, Fast-dLLM, arXiv 2505.22618): ``"threshold"`` commits every
candidate whose score reaches ``threshold`` (at least the best one per step), ``"factor"`` the
largest ``n`` whose ``n``-th best confidence is at least ``1 − factor / (n + 1)``. A block then
takes between 1 and ``block_length`` forwards, fewer when the model is confident; ``steps`` and the
schedule are not used. Rows leave the batch as soon as their block is full, and with
``after_eos="eos"`` a row whose finished blocks contain an EOS is not decoded further (what
follows would be overwritten by EOS, so the output is the same). Tokens are drawn by inverting the
CDF of ``softmax(ℓ / T)`` at the still-masked positions only (one uniform each), the same
distribution as Gumbel-max with a fraction of the work; ``SamplerOutput.row_nfe`` counts each
row's forwards.

**Key/value caches** (``cache``, Fast-dLLM): ``"prefix"`` and ``"dual"`` reuse keys/values from
the full forward at each block start (and every ``cache_refresh`` steps), see :mod:`.runner`. They
are approximations unless refreshed every step, and opt-in.

**Fixed number of forward passes.** With ``transfer="topk"`` a call always runs exactly ``steps`` model calls,
whatever the data and the rule (no early exit when every row has emitted EOS, when a
block is full, or when a ``dream_linspace`` / ``origin`` step commits nothing). Under
DeepSpeed ZeRO-3 every forward gathers parameters collectively, so all ranks must run the
same number of forwards or training hangs. With CFG it is still ``steps`` calls, each on
a doubled batch. The threshold rules keep ranks in step with ``generate(..., sync_ranks=True)``
(one all-reduce per step; a rank whose rows are done runs idle one-row forwards).

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

from ._names import (
    AFTER_EOS,
    CACHES,
    COUNT_BASED,
    DREAM_ALGS,
    DYNAMIC_TRANSFERS,
    GUIDANCE_SCHEDULES,
    REMASKING_STRATEGIES,
    SAMPLER_FAMILIES,
    SCHEDULES,
    TRANSFERS,
)
from .config import ROLLOUT_PRESETS, SamplerConfig, SamplerOutput, rollout_overrides
from .guidance import guidance_scales, guide
from .loop import generate
from .memory import keep_freed_memory, minor_page_faults
from .schedules import (
    dream_transfer_counts,
    num_transfer_tokens,
    schedule_times,
    transfer_counts,
    unmask_fractions,
)

__all__ = [
    "AFTER_EOS",
    "CACHES",
    "COUNT_BASED",
    "DREAM_ALGS",
    "DYNAMIC_TRANSFERS",
    "GUIDANCE_SCHEDULES",
    "REMASKING_STRATEGIES",
    "SAMPLER_FAMILIES",
    "ROLLOUT_PRESETS",
    "SCHEDULES",
    "TRANSFERS",
    "SamplerConfig",
    "SamplerOutput",
    "dream_transfer_counts",
    "generate",
    "guidance_scales",
    "guide",
    "keep_freed_memory",
    "minor_page_faults",
    "num_transfer_tokens",
    "rollout_overrides",
    "schedule_times",
    "transfer_counts",
    "unmask_fractions",
]
