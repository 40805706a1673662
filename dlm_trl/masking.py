"""The forward (masking) process of masked diffusion and LLaDA's SFT objective.

Pure torch. All randomness comes from explicit ``torch.Generator`` arguments; nothing
here touches the global RNG. Shapes are written beside tensors: ``B`` rows, ``T`` total
positions (prompt + completion), ``L`` completion positions.

Linear schedule: at time ``t`` every *maskable* token is replaced by the mask token
independently with probability ``t`` (Bernoulli form), or exactly ``m`` of them are
(count form). The two conventions must not be mixed (see ALGORITHMS.md §0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Generators = torch.Generator | Sequence[torch.Generator] | None


def _per_row(generator: Generators, B: int) -> list[torch.Generator | None]:
    """Normalise ``generator`` to one generator per row (``None`` = global RNG)."""
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * B
    gens = list(generator)
    if len(gens) != B:
        raise ValueError(f"got {len(gens)} generators for {B} rows; pass one generator or one per row")
    return gens


def _uniform(shape: tuple[int, ...], generator: Generators, device, B: int) -> torch.Tensor:
    """U(0,1) of ``shape`` whose row b is drawn from generator b (on CPU, then moved)."""
    gens = _per_row(generator, B)
    if len(set(map(id, gens))) == 1:
        return torch.rand(shape, generator=gens[0]).to(device)
    return torch.stack([torch.rand(shape[1:], generator=g) for g in gens]).to(device)


def sample_times(
    B: int,
    *,
    generator: Generators = None,
    eps: float = 1e-3,
    antithetic: bool = False,
    stratified: bool = False,
    device=None,
) -> torch.Tensor:
    """Draw diffusion times ``t ∈ [eps, 1]`` for ``B`` rows → ``[B]``.

    Plain draws use one generator per row when a list is given. ``stratified``: one
    uniform offset from the first generator, ``t_b = (u + b) / B`` (low-discrepancy).
    ``antithetic``: rows come in pairs ``(t, 1 - t)`` (B must be even).
    """
    if antithetic and B % 2:
        raise ValueError(f"antithetic time draws need an even number of rows, got {B}")
    first = _per_row(generator, B)[0] if B else None
    if stratified:
        u = torch.rand((1,), generator=first)
        t = (u + torch.arange(B, dtype=u.dtype)) / B
    elif antithetic:
        half = torch.rand((B // 2,), generator=first)
        t = torch.cat([half, 1.0 - half])
    else:
        t = _uniform((B,), generator, "cpu", B)
    return (eps + (1.0 - eps) * t).to(device)


def bernoulli_mask(
    t: torch.Tensor,  # [B]
    maskable: torch.Tensor,  # [B, T] bool
    *,
    generator: Generators = None,
) -> torch.Tensor:
    """Each maskable position is masked independently with probability ``t_b`` → ``[B, T]`` bool."""
    B, T = maskable.shape
    u = _uniform((B, T), generator, maskable.device, B)  # [B, T]
    return (u < t.to(u.dtype)[:, None]) & maskable


def count_mask(
    num_masked: torch.Tensor,  # [B] long
    maskable: torch.Tensor,  # [B, T] bool
    *,
    generator: Generators = None,
) -> torch.Tensor:
    """Mask exactly ``num_masked[b]`` maskable positions of row b, uniformly → ``[B, T]`` bool.

    Counts are clamped to ``[0, #maskable]``. Implemented by ranking i.i.d. uniform keys,
    so it is one vectorised op whatever the counts are.
    """
    B, T = maskable.shape
    u = _uniform((B, T), generator, maskable.device, B)
    keys = u.masked_fill(~maskable, 2.0)  # non-maskable sort last
    rank = keys.argsort(dim=1).argsort(dim=1)  # [B, T] rank of each position
    n = torch.minimum(num_masked.to(maskable.device).long(), maskable.sum(1))
    return (rank < n[:, None]) & maskable


def complement_mask(mask: torch.Tensor, maskable: torch.Tensor) -> torch.Tensor:
    """The antithetic partner of a mask: mask exactly the maskable positions ``mask`` keeps."""
    return maskable & ~mask


def apply_mask(input_ids: torch.Tensor, mask: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Replace masked positions by ``mask_token_id`` → ``[B, T]``."""
    return torch.where(mask, torch.full_like(input_ids, mask_token_id), input_ids)


def forward_process(
    input_ids: torch.Tensor,  # [B, T]
    maskable: torch.Tensor,  # [B, T] bool: True where the forward process may mask
    mask_token_id: int,
    *,
    t: torch.Tensor | None = None,  # [B]
    generator: Generators = None,
    eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise ``input_ids`` at time ``t`` (drawn if not given) with Bernoulli masks.

    Returns ``(noisy_ids [B, T], mask [B, T] bool, t [B])``.
    """
    B = input_ids.shape[0]
    if t is None:
        t = sample_times(B, generator=generator, eps=eps, device=input_ids.device)
    mask = bernoulli_mask(t, maskable, generator=generator)
    return apply_mask(input_ids, mask, mask_token_id), mask, t


def completion_maskable(prompt_lengths: torch.Tensor, T: int, *, mask_prompt: bool = False) -> torch.Tensor:
    """``[B, T]`` bool: positions at or after each row's prompt length (all, if ``mask_prompt``)."""
    pos = torch.arange(T, device=prompt_lengths.device)[None, :]
    if mask_prompt:
        return torch.ones(prompt_lengths.shape[0], T, dtype=torch.bool, device=prompt_lengths.device)
    return pos >= prompt_lengths[:, None]


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[targets]`` in float32 → same shape as ``targets``."""
    return -F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)


def sft_loss(
    model,
    input_ids: torch.Tensor,  # [B, T] prompt + answer (answer EOS-padded)
    prompt_lengths: torch.Tensor,  # [B]
    mask_token_id: int,
    *,
    generator: Generators = None,
    eps: float = 1e-3,
    attention_mask: torch.Tensor | None = None,
    t: torch.Tensor | None = None,  # [B] optional, e.g. from sample_times(stratified=True)
) -> torch.Tensor:
    """LLaDA's SFT objective (arXiv 2502.09992, eq. for conditional SFT).

    The prompt is kept; each answer token is masked with probability ``t``; the loss is
    ``Σ_masked CE / t`` per row, normalised by that row's answer length, averaged over rows.
    ``model(ids)`` must return logits ``[B, T, V]`` aligned with positions.
    """
    B, T = input_ids.shape
    maskable = completion_maskable(prompt_lengths, T)  # [B, T]
    noisy, mask, t = forward_process(input_ids, maskable, mask_token_id, t=t, generator=generator, eps=eps)
    out = model(noisy, attention_mask=attention_mask) if attention_mask is not None else model(noisy)
    logits = out.logits if hasattr(out, "logits") else out  # [B, T, V]
    ce = -token_log_probs(logits, input_ids)  # [B, T]
    per_row = (ce * mask).sum(1) / t  # [B]
    answer_len = maskable.sum(1).clamp(min=1)  # [B]
    return (per_row / answer_len).mean()
