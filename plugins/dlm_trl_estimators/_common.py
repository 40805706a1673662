"""Shared building blocks of the first-party likelihood estimators (private).

Every estimator here follows the same three steps:

1. draw its noise — a ``[B*K, L]`` bool mask over the completion (and, for d1, a
   ``[B*K, P]`` mask over the prompt) — row ``b*K + k`` being draw ``k`` of row ``b``, all
   drawn from row ``b``'s generator (:func:`repeat_generators`);
2. run the noisy ``[B*K, P+L]`` batch through the model in chunks of at most
   ``batch_size`` rows and gather ``log f(y_i | x_noisy)`` at every completion position, in
   float32 (:func:`completion_log_probs`);
3. weight, average over the K draws and zero the positions that do not count
   (:func:`finish`).

Which completion positions may be masked (``length`` option of the ELBO estimators,
:func:`maskable_positions`):

* ``"padded"`` (default, as GDPO's reference code): all ``L`` completion positions —
  EOS padding included, since the sampler produced it — are maskable and ``n = L``;
  the contributions of positions with ``completion_mask == 0`` are dropped at the end.
  The sequence estimate is the padded-length ELBO restricted to the tokens that count.
* ``"true"``: only positions with ``completion_mask == 1`` are maskable, ``n = n_b`` is the
  row's true length; the other completion positions stay visible as clean tokens.
"""

from __future__ import annotations

import torch

from dlm_trl.estimators import Generators
from dlm_trl.masking import apply_mask, token_log_probs

LENGTH_MODES = ("padded", "true")


def check_batch_size(batch_size: int | None) -> int | None:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (rows per forward) or None (no chunking), got {batch_size!r}")
    return batch_size


def check_length_mode(length: str) -> str:
    if length not in LENGTH_MODES:
        raise ValueError(f"length must be one of {LENGTH_MODES}, got {length!r}")
    return length


def check_inputs(
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    prompt_attention_mask: torch.Tensor | None,
    generator: Generators = None,
) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) != prompt_ids.shape[0] or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(
                f"generator must be one torch.Generator or a list of one per row ({prompt_ids.shape[0]} rows), "
                f"got {len(gens)} items; build them with dlm_trl.estimators.row_generators(seeds)"
            )
    if prompt_ids.dim() != 2 or completion_ids.dim() != 2:
        raise ValueError(
            f"prompt_ids and completion_ids must be [B, P] and [B, L]; got {tuple(prompt_ids.shape)} "
            f"and {tuple(completion_ids.shape)}"
        )
    if prompt_ids.shape[0] != completion_ids.shape[0]:
        raise ValueError(f"prompt_ids has {prompt_ids.shape[0]} rows but completion_ids has {completion_ids.shape[0]}")
    if completion_mask.shape != completion_ids.shape:
        raise ValueError(
            f"completion_mask {tuple(completion_mask.shape)} must have the shape of completion_ids "
            f"{tuple(completion_ids.shape)}"
        )
    if prompt_attention_mask is not None and prompt_attention_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_attention_mask {tuple(prompt_attention_mask.shape)} must have the shape of prompt_ids "
            f"{tuple(prompt_ids.shape)}"
        )


def repeat_generators(generator: Generators, B: int, K: int) -> Generators:
    """Generators for ``B*K`` rows (row ``b*K + k`` uses generator ``b``).

    Consecutive draws then come from the same generator, so row b's K draws depend only on
    generator b (not on the batch). One generator (or ``None``) is passed through.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    if len(gens) != B:
        raise ValueError(f"got {len(gens)} generators for {B} rows; pass one generator or one per row")
    return [g for g in gens for _ in range(K)]


def maskable_positions(completion_mask: torch.Tensor, length: str) -> torch.Tensor:
    """``[B, L]`` bool: completion positions the forward process may mask (see module doc)."""
    if length == "padded":
        return torch.ones(completion_mask.shape, dtype=torch.bool, device=completion_mask.device)
    return completion_mask.bool()


def completion_log_probs(
    model,
    prompt_ids: torch.Tensor,  # [B, P]
    completion_ids: torch.Tensor,  # [B, L]
    completion_noise: torch.Tensor,  # [B*K, L] bool, True = masked
    *,
    prompt_noise: torch.Tensor | None = None,  # [B*K, P] bool
    prompt_attention_mask: torch.Tensor | None = None,  # [B, P]
    batch_size: int | None = None,
    rows: torch.Tensor | None = None,  # [R] long: source row of each noisy row (default: each row K times)
) -> torch.Tensor:  # [B*K, L] (or [R, L]) float32
    """``log f(y_i | noisy row)`` at every completion position of the ``B*K`` noisy rows.

    The rows are built once as one ``[B*K, P+L]`` batch and forwarded in chunks of at most
    ``batch_size`` rows (one forward when ``None``); log-softmax runs in float32. With
    ``rows``, noisy row r is built from row ``rows[r]`` instead (any number per row).
    """
    B, P = prompt_ids.shape
    L = completion_ids.shape[1]
    device = completion_ids.device
    if rows is None:
        K = completion_noise.shape[0] // max(B, 1)
        if completion_noise.shape != (B * K, L):
            raise ValueError(f"completion noise {tuple(completion_noise.shape)} is not [B*K, L] with B={B}, L={L}")
        rows = torch.arange(B, device=device).repeat_interleave(K)  # [B*K]
    rows = rows.to(device)
    ids = torch.cat([prompt_ids, completion_ids], dim=1)[rows]  # [B*K, P+L]
    if prompt_noise is None:
        prompt_noise = torch.zeros(rows.shape[0], P, dtype=torch.bool, device=device)
    noise = torch.cat([prompt_noise.to(device), completion_noise.to(device)], dim=1)  # [B*K, P+L]
    noisy = apply_mask(ids, noise, model.mask_token_id)  # [B*K, P+L]
    attn = None
    if prompt_attention_mask is not None:
        attn = torch.cat(
            [prompt_attention_mask.to(device).long(), torch.ones(B, L, dtype=torch.long, device=device)], dim=1
        )[rows]  # [B*K, P+L]
    targets = completion_ids[rows]  # [B*K, L]
    N = noisy.shape[0]
    step = N if batch_size is None else batch_size
    out = []
    for s in range(0, N, max(step, 1)):
        chunk = noisy[s : s + step]
        logits = model(chunk, attention_mask=attn[s : s + step]) if attn is not None else model(chunk)  # [c, P+L, V]
        out.append(token_log_probs(logits[:, P:], targets[s : s + step]))  # [c, L] float32
    if not out:  # B == 0
        return torch.zeros(0, L, dtype=torch.float32, device=device)
    return torch.cat(out, dim=0)


def masked_weighted(
    logp: torch.Tensor,  # [B*K, L]
    noise: torch.Tensor,  # [B*K, L] bool
    weight: torch.Tensor,  # [B*K]
    B: int,
) -> torch.Tensor:  # [B, L]
    """``mean_k weight_k · 1[i masked in draw k] · log f(y_i | ·)`` per row and position."""
    w = weight.to(logp.device, torch.float32)[:, None]  # [B*K, 1]
    per_draw = torch.where(noise, logp * w, torch.zeros_like(logp))  # [B*K, L]
    return per_draw.view(B, -1, logp.shape[1]).mean(dim=1)  # [B, L]


def finish(contrib: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """float32 contributions with exact zeros where ``completion_mask == 0``."""
    contrib = contrib.float()
    return torch.where(completion_mask.to(contrib.device).bool(), contrib, torch.zeros_like(contrib))
