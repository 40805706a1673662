"""The sampling loop: blocks left to right, one model call per step, the parts of the package per step."""

from __future__ import annotations

from typing import Any

import torch

from ._names import Generators
from .config import SamplerConfig, SamplerOutput
from .guidance import guidance_scales
from .noise import _exponential, _origin_uniforms, _per_row_generators, _rand
from .runner import BlockRunner
from .schedules import unmask_fractions
from .scorers import drawn_logprob, score_candidates
from .transfer import factor_commit, origin_commit, threshold_commit, topk_commit


def _rank_sync(enabled: bool | None, device: torch.device):
    """``pending -> any rank pending``: an all-reduce across ranks when ``enabled`` and distributed, else identity."""
    import torch.distributed as dist

    if not enabled or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return lambda pending: pending

    def sync(pending: bool) -> bool:
        flag = torch.tensor([1 if pending else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    return sync


def _gumbel(
    shape: tuple[int, ...],  # [R, K, V]
    temperature: float,
    generator: Generators,
    per_row: list[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Float64 Gumbel noise of the fixed-count path (the reference samplers' noise); ``None`` at ``T = 0``."""
    if temperature > 0:
        u = _rand(shape, generator, per_row, device)  # [R, K, V] float64
        return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    return None


def _draw_tokens(
    logits: torch.Tensor,  # [R, K, V] float64, mask logit −inf
    temperature: float,
    gumbel: torch.Tensor | None,  # [R, K, V] from _gumbel
) -> torch.Tensor:
    """Gumbel-max draws ``argmax(ℓ / T + g)`` (argmax of ``ℓ`` at ``T = 0``), ``[R, K]``."""
    if gumbel is not None:
        return torch.argmax(logits / temperature + gumbel, dim=-1)
    return torch.argmax(logits, dim=-1)


def _inverse_cdf_draws(
    logits: torch.Tensor,  # [N, V] float64, mask logit −inf
    uniforms: torch.Tensor,  # [N] float64 in [0, 1)
    temperature: float,
) -> torch.Tensor:
    """One categorical draw per row of ``logits`` from ``softmax(logits / T)`` by inverting its CDF, ``[N]``.

    One uniform per position instead of ``V`` Gumbel variables: the same distribution as Gumbel-max.
    """
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)  # [N, V]
    idx = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp_max(logits.shape[-1] - 1)


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    *,
    config: SamplerConfig,
    prompt_attention_mask: torch.Tensor | None = None,  # [B, P] 1 = real token
    generator: Generators = None,
    sync_ranks: bool = False,
) -> SamplerOutput:
    """Sample completions with the block sampler described in :mod:`dlm_trl.sampling`.

    ``model`` is a :class:`dlm_trl.models.DLM` or any callable
    ``model(input_ids [B, T], attention_mask=None) -> logits [B, T, V]`` (aligned with the
    positions; an object with ``.logits`` is accepted too) that has ``mask_token_id`` and,
    optionally, ``eos_token_id`` attributes. Key/value caches and block-only logits need a
    :class:`~dlm_trl.models.DLM` over a model that implements them (dlm-trl's native classes).

    ``prompt_attention_mask`` marks real prompt tokens; the model is called with it
    extended by ones over the completion (or with ``attention_mask=None`` when it is
    ``None``, meaning no padding). ``generator`` is ``None`` (global RNG), one
    ``torch.Generator`` for the whole batch, or a list with one per row — then row b's
    randomness comes only from generator b, so its output does not depend on the rest
    of the batch (package docstring, "Randomness"). At ``temperature=0`` the confidence
    rules (``low_confidence``, ``margin``, ``entropy``) with ``alg_temp`` unset use no
    randomness and leave the global RNG untouched.
    Noise is drawn on each generator's device: on a GPU pass generators created with
    ``torch.Generator(device=...)``.

    ``transfer="topk"`` performs exactly ``config.steps`` model calls. The threshold rules call the
    model until every row has filled the block (at most ``block_length`` calls per block); with
    ``sync_ranks=True`` under ``torch.distributed`` every rank keeps calling the model (on one idle
    row once its own rows are done) until all ranks are done, so ZeRO-3's collective parameter
    gathers stay matched. Pass it only when every rank calls :func:`generate` together.
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
    commit_lp = torch.full((B, L), float("nan"), dtype=torch.float32, device=device)  # [B, L]
    row_nfe = torch.zeros(B, dtype=torch.long, device=device)  # [B]

    use_cfg = config.cfg_scale > 0
    uncond_prompt = prompt_ids.masked_fill(real_prompt, mask_id) if use_cfg else None  # [B, P]
    runner = BlockRunner(model, config, prompt_width=P, attention_mask=attn, uncond_prompt=uncond_prompt)

    rule = config.remasking
    S = config.steps_per_block
    counts = config.block_schedule()  # [S] per-step commits of topk
    fractions = unmask_fractions(config.schedule, S, config.eps)  # [S] float32, origin's probabilities
    temperature = float(config.temperature)
    alg_temp = float(config.alg_temp or 0.0)
    nfe_per_call = 2 if use_cfg else 1  # the unconditional forward runs even at steps whose scales are all 0
    rate_preserving = use_cfg and config.guidance_rate_preserving

    def step_scales(rows: torch.Tensor | None) -> torch.Tensor | None:
        """The guidance scale of each of ``rows`` at this step, ``[R]`` (``None`` without CFG), from the
        fraction of its completion still masked (:mod:`.guidance`)."""
        if not use_cfg:
            return None
        m = (masked if rows is None else masked[rows]).double().mean(dim=1)  # [R]
        return guidance_scales(
            config.guidance_schedule, config.cfg_scale, m, float(config.guidance_late_fraction)
        )

    calls = 0

    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        total = config.steps if not config.dynamic else None
        bar = tqdm(total=total, desc="diffusion sampling", leave=False, unit="forward")

    def record(rows: torch.Tensor | None, lo: int, hi: int, commit, x0, logprob, step: int) -> None:
        """Write the committed tokens (``commit``, ``x0``, ``logprob``: ``[R, K]``) into the rows' block."""
        sl = slice(lo - P, hi - P)
        idx = slice(None) if rows is None else rows
        x[idx, lo:hi] = torch.where(commit, x0.to(x.dtype), x[idx, lo:hi])
        masked[idx, sl] = masked[idx, sl] & ~commit
        commit_step[idx, sl] = torch.where(commit, step, commit_step[idx, sl])
        commit_lp[idx, sl] = torch.where(commit, logprob.float(), commit_lp[idx, sl])

    stop_after_eos = config.dynamic and config.after_eos == "eos" and eos_id is not None
    sync = _rank_sync(sync_ranks and config.dynamic, device)

    for block in range(config.num_blocks):
        lo, hi = P + block * K, P + (block + 1) * K  # block slice in the full sequence
        if not config.dynamic:
            for j in range(S):
                step = block * S + j
                logits, cond = runner.block_logits(x, None, lo, hi, j, scales=step_scales(None))  # [B, K, V]
                logits = logits.double()
                calls += 1
                if mask_id < logits.shape[-1]:
                    logits[..., mask_id] = -torch.inf  # never commit the mask token itself
                noise = _gumbel(tuple(logits.shape), temperature, generator, per_row, logits.device)
                x0 = _draw_tokens(logits, temperature, noise)  # [B, K] committed tokens (guided with CFG)
                # Rate-preserving CFG decides which positions to commit as the unguided sampler would (its
                # logits, the same noise); plain CFG and no CFG decide on the logits the tokens come from.
                decide, x0_decide = logits, x0
                if rate_preserving:
                    decide = cond.double()
                    if mask_id < decide.shape[-1]:
                        decide[..., mask_id] = -torch.inf
                    x0_decide = _draw_tokens(decide, temperature, noise)  # [B, K]
                candidates = masked[:, lo - P : hi - P]  # [B, K] still masked in the current block
                if rule == "origin":
                    u_t = _origin_uniforms(candidates, generator, per_row)  # [B, K]
                    # The reference still draws at its last step, where every draw passes.
                    commit = candidates.clone() if j == S - 1 else origin_commit(u_t, candidates, fractions[j])
                else:
                    k = counts[j]
                    if k == 0:  # a dream_linspace step may commit nothing (the forward still ran)
                        commit = torch.zeros_like(candidates)
                    else:
                        if rule == "random":
                            score = _rand((B, K), generator, per_row, logits.device)  # [B, K]
                        else:
                            score = score_candidates(
                                rule, decide, x0_decide, temperature, config.tempered_scores
                            )
                        if alg_temp > 0:
                            # k positions without replacement ∝ softmax(score / alg_temp): an exponential race
                            # (torch.multinomial's own algorithm), in log space.
                            if per_row is not None:
                                e = _exponential((B, K), generator, per_row, logits.device, torch.float64)
                            else:  # the reference's draw: float32 over the whole [B, T] sequence
                                e = _exponential(tuple(x.shape), generator, None, logits.device, torch.float32)
                                e = e[:, lo:hi].double()
                            score = score / alg_temp - torch.log(e)
                        # Every row's block starts fully masked and loses exactly `k` masks per step, so the
                        # same k fits all rows and never exceeds the number of candidates.
                        commit = topk_commit(score, candidates, k)
                logprob = torch.full(commit.shape, float("nan"), dtype=torch.float64, device=logits.device)
                if bool(commit.any()):
                    logprob[commit] = drawn_logprob(logits[commit], x0[commit], temperature)
                record(None, lo, hi, commit, x0, logprob, step)
                row_nfe += nfe_per_call
                if bar is not None:
                    bar.update(1)
            continue

        # Threshold / factor rules: rows leave the batch when their block is full; with after_eos="eos" a
        # row whose finished blocks hold an EOS is done (what follows would be overwritten by EOS).
        active = torch.ones(B, dtype=torch.bool, device=device)
        if stop_after_eos:
            active &= ~(x[:, P:lo] == int(eos_id)).any(dim=1)
        j = 0
        while sync(bool(active.any())):
            if not bool(active.any()):  # another rank is still decoding this block
                runner.idle_forward(x)
                calls += 1
                j += 1
                continue
            rows = active.nonzero().squeeze(1)  # [R]
            R = rows.shape[0]
            logits, cond = runner.block_logits(x, rows, lo, hi, j, scales=step_scales(rows))  # [R, K, V]
            calls += 1
            candidates = masked[rows, lo - P : hi - P]  # [R, K]
            # Only the candidates' logits are needed (in float64, for scores and draws).
            cand_logits = logits[candidates].double()  # [N, V]
            if mask_id < cand_logits.shape[-1]:
                cand_logits[:, mask_id] = -torch.inf
            # Rate-preserving CFG: the scores (and so how many and which positions) come from the unguided
            # logits and a token drawn from them with the same uniform, the committed token from the guided ones.
            cand_decide = cand_logits
            if rate_preserving:
                cand_decide = cond[candidates].double()  # [N, V]
                if mask_id < cand_decide.shape[-1]:
                    cand_decide[:, mask_id] = -torch.inf
            if temperature > 0:
                gens = None if per_row is None else [per_row[int(r)] for r in rows]
                u = _rand((R, K), generator, gens, logits.device)  # [R, K] one uniform per position
                x0_c = _inverse_cdf_draws(cand_logits, u[candidates], temperature)  # [N]
                x0_d = _inverse_cdf_draws(cand_decide, u[candidates], temperature) if rate_preserving else x0_c
            else:
                x0_c = cand_logits.argmax(-1)
                x0_d = cand_decide.argmax(-1) if rate_preserving else x0_c
            score_c = score_candidates(rule, cand_decide[:, None], x0_d[:, None], temperature, config.tempered_scores)
            score = torch.full((R, K), -torch.inf, dtype=torch.float64, device=logits.device)
            score[candidates] = score_c[:, 0]
            x0 = torch.zeros(R, K, dtype=torch.long, device=logits.device)
            x0[candidates] = x0_c
            if config.transfer == "threshold":
                commit = threshold_commit(score, candidates, float(config.threshold))
            else:
                commit = factor_commit(score, candidates, float(config.factor))
            logprob = torch.full((R, K), float("nan"), dtype=torch.float64, device=logits.device)
            logprob[candidates] = drawn_logprob(cand_logits, x0_c, temperature)
            record(rows, lo, hi, commit, x0, logprob, calls - 1)
            row_nfe[rows] += nfe_per_call
            active[rows] = masked[rows, lo - P : hi - P].any(dim=1)
            j += 1
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
        nfe=calls * nfe_per_call,
        num_model_calls=calls,
        commit_logprob=commit_lp,
        row_nfe=row_nfe,
    )


__all__ = ["generate"]
