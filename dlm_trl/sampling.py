"""LLaDA semi-autoregressive block sampler with low-confidence remasking.

Implements the reverse process used by LLaDA (Nie et al., "Large Language Diffusion
Models", arXiv 2502.09992) for rollouts and evaluation, as specified in ALGORITHMS.md §3:

1. the sequence is the (left-padded) prompt followed by ``gen_length`` mask tokens;
2. the completion is split into ``num_blocks = gen_length / block_length`` blocks that are
   decoded left to right, ``steps / num_blocks`` steps each;
3. at every step one forward pass over the whole sequence predicts every position; a
   token is drawn for each still-masked position of the current block by Gumbel-max at
   temperature ``T`` (float64 noise; ``T = 0`` is plain argmax);
4. each candidate gets a confidence — the softmax probability of the drawn token
   (``"low_confidence"``) or a uniform random number (``"random"``) — and the most
   confident ones are committed: exactly ``k`` of them, where ``k`` splits the block's
   masked count evenly over its steps and the first ``remainder`` steps get one more;
5. committed tokens are never re-masked.

Optional classifier-free guidance (arXiv 2507.08965): the unconditional forward replaces
the real prompt tokens by the mask token, both forwards run as one batch of ``2B`` rows,
and the guided logits are ``ℓ_u + (s + 1)(ℓ_c − ℓ_u)``.

Evaluation protocol of d1 (arXiv 2504.12216): temperature 0, ``steps = gen_length / 2``,
``block_length = 32``, lengths 128/256/512 — see :meth:`SamplerConfig.d1_eval`.

**Fixed number of forward passes.** A call always runs exactly ``steps`` model calls,
whatever the data (no early exit when every row has emitted EOS or when a block is full).
Under DeepSpeed ZeRO-3 every forward gathers parameters collectively, so all ranks must
run the same number of forwards or training hangs. With CFG it is still ``steps`` calls,
each on a doubled batch.

Deliberate departures from LLaDA's reference ``generate.py`` (none changes the sampled
distribution of a trained model in practice):

* Gumbel-max is written in log space, ``argmax(ℓ / T + g)`` with ``g = −log(−log u)``,
  which is the same distribution as the reference ``argmax(exp(ℓ) / (−log u)^T)`` but
  cannot overflow ``exp`` for large logits.
* The mask token itself is never sampled (its logit is set to ``−inf``); a trained model
  gives it ~0 probability anyway, and committing it would leave a mask in the output.
* Noise is drawn only for the positions of the current block (the only candidates), one
  row at a time when a list of generators is given, so a row's output depends only on its
  own generator and prompt — not on the rest of the batch or on the padded prompt width.
* For CFG only the *real* prompt tokens are masked in the unconditional half; left
  padding stays padding (it is hidden by the attention mask either way).

Shapes: ``B`` rows, ``P`` padded prompt width, ``L = gen_length``, ``T = P + L``,
``V`` vocabulary, ``K = block_length``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

REMASKING_STRATEGIES = ("low_confidence", "random")

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SamplerConfig:
    """Hyper-parameters of the block sampler (validated on construction)."""

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
        metadata={"help": f"Which candidates to commit first: one of {REMASKING_STRATEGIES}."},
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
                f"steps={self.steps} is more than gen_length={self.gen_length}: every step must commit at "
                f"least one token, so use steps ≤ gen_length (steps={self.gen_length} commits one token per step)"
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
            close = difflib.get_close_matches(str(self.remasking), REMASKING_STRATEGIES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown remasking={self.remasking!r}; choose one of {list(REMASKING_STRATEGIES)}.{hint}"
            )

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @classmethod
    def d1_eval(cls, gen_length: int = 256, **overrides: Any) -> SamplerConfig:
        """d1's evaluation protocol: temperature 0, ``steps = gen_length / 2``, block 32."""
        kwargs: dict[str, Any] = dict(
            gen_length=gen_length, block_length=32, steps=gen_length // 2, temperature=0.0
        )
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclass
class SamplerOutput:
    """What :func:`generate` returns.

    ``completion_ids`` is EOS-padded: every token after a row's first EOS is set to EOS.
    ``completion_mask`` is ``torch.long`` (as TRL uses it): 1 up to and including the first
    EOS, 0 after (all ones when the row has no EOS or the model has no ``eos_token_id``).
    ``commit_step[b, i]`` is the global step ``0..steps-1`` at which completion token ``i``
    of row ``b`` was committed (recorded before EOS padding, so it is defined everywhere).
    ``nfe`` counts network function evaluations per sequence: ``steps``, or ``2 * steps``
    with classifier-free guidance (conditional + unconditional). ``num_model_calls`` is
    the number of times the model was called: always ``steps`` (a CFG call has ``2B`` rows).
    """

    sequences: torch.Tensor  # [B, P+L] prompt (as given) + EOS-padded completion
    completion_ids: torch.Tensor  # [B, L]
    completion_mask: torch.Tensor  # [B, L] long
    commit_step: torch.Tensor  # [B, L] long
    nfe: int
    num_model_calls: int


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """How many tokens to commit at each of ``steps`` steps so that ``num_masked`` are filled.

    The count is split evenly; the first ``num_masked % steps`` steps get one more, e.g.
    ``num_transfer_tokens(10, 4) == [3, 3, 2, 2]``.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if s < remainder else 0) for s in range(steps)]


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
) -> torch.Tensor:
    """float64 U[0, 1) of ``shape``; with ``per_row`` generators row b comes from generator b only.

    Noise is drawn on the generator's own device and then moved, so CPU and CUDA
    generators both work.
    """
    if per_row is not None:
        rows = [torch.rand(shape[1:], generator=g, device=g.device, dtype=torch.float64) for g in per_row]
        return torch.stack(rows).to(device)
    if generator is None:
        return torch.rand(shape, device=device, dtype=torch.float64)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)


def _logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    *,
    config: SamplerConfig,
    prompt_attention_mask: torch.Tensor | None = None,  # [B, P] 1 = real token
    generator: Generators = None,
) -> SamplerOutput:
    """Sample completions with LLaDA's block sampler (arXiv 2502.09992; see module docstring).

    ``model`` is a :class:`dlm_trl.models.DLM` or any callable
    ``model(input_ids [B, T], attention_mask=None) -> logits [B, T, V]`` (aligned with the
    positions; an object with ``.logits`` is accepted too) that has ``mask_token_id`` and,
    optionally, ``eos_token_id`` attributes.

    ``prompt_attention_mask`` marks real prompt tokens; the model is called with it
    extended by ones over the completion (or with ``attention_mask=None`` when it is
    ``None``, meaning no padding). ``generator`` is ``None`` (global RNG), one
    ``torch.Generator`` for the whole batch, or a list with one per row — then row b's
    randomness comes only from generator b, so its output does not depend on the rest
    of the batch. With ``temperature=0`` and ``"low_confidence"`` no randomness is used.
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

    schedule = num_transfer_tokens(K, config.steps_per_block)  # [steps_per_block]
    temperature = float(config.temperature)
    calls = 0

    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc="diffusion sampling", leave=False)

    for block in range(config.num_blocks):
        lo, hi = P + block * K, P + (block + 1) * K  # block slice in the full sequence
        for j, k in enumerate(schedule):
            step = block * config.steps_per_block + j

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

            if config.remasking == "low_confidence":
                probs = torch.softmax(logits, dim=-1)  # [B, K, V] float64
                confidence = torch.gather(probs, -1, x0[..., None]).squeeze(-1)  # [B, K]
            else:
                confidence = _rand((B, K), generator, per_row, logits.device)  # [B, K]

            candidates = masked[:, lo - P : hi - P]  # [B, K] still masked in the current block
            confidence = confidence.masked_fill(~candidates, -torch.inf)
            # Every row's block starts fully masked and loses exactly `k` masks per step, so
            # the same k fits all rows and never exceeds the number of candidates.
            chosen = torch.topk(confidence, k, dim=1).indices  # [B, k]
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


__all__ = ["REMASKING_STRATEGIES", "SamplerConfig", "SamplerOutput", "generate", "num_transfer_tokens"]
