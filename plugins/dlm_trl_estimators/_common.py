"""Shared building blocks of the first-party likelihood estimators (private).

Every estimator here follows the same three steps:

1. draw its noise — a ``[B*K, L]`` bool mask over the completion (and, for d1, a
   ``[B*K, P]`` mask over the prompt) — row ``b*K + k`` being draw ``k`` of row ``b``, all
   drawn from row ``b``'s generator (:func:`repeat_generators`);
2. run the noisy ``[B*K, P+L]`` batch through the model in chunks of at most
   ``batch_size`` rows and gather ``log f(y_i | x_noisy)`` at every completion position, in
   float32 (:func:`completion_log_probs`; the model projects only the completion's positions onto
   the vocabulary, :func:`completion_logits`);
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

Constant-memory Monte Carlo (``constant_memory`` option of the multi-draw estimators,
:func:`completion_log_probs`): with grad enabled, each chunk of noisy rows — ``batch_size``
rows, or ``B`` rows (one draw's worth) when ``batch_size`` is None — runs under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` around a function that
returns only the float32 gathered log-probabilities ``[c, L]``. The forward then keeps no
activations and no ``[c, T, V]`` logits, only the chunk's inputs and outputs; backward
recomputes one chunk at a time. Peak activation memory is that of one chunk whatever the
number of draws K, the values and gradients are those of the plain path (same masks, same
arithmetic), and the cost is one extra forward per chunk in backward (≈ +1/3 of a
forward+backward step). It is GDPO's memory trick (arXiv 2510.08554: no-grad estimate, then
backprop node by node) done by autograd, and what BGPO's linear bound (arXiv 2510.11683)
buys for its objective — here for any loss of the estimate.

Antithetic (coupled) draws (``antithetic`` option; ESPO, arXiv 2512.03759, ``reduce_var``
in its reference code): draws come in pairs, the second masking exactly the maskable
positions the first keeps (:func:`dlm_trl.masking.complement_mask`), so every maskable
token is predicted once per pair; each member keeps its own unbiased weight. Rows of a
pair are adjacent (draw ``2p`` and ``2p+1`` of a row).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from dlm_trl.estimators import Generators
from dlm_trl.masking import apply_mask, token_log_probs

LENGTH_MODES = ("padded", "true")


def check_batch_size(batch_size: int | None) -> int | None:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (rows per forward) or None (no chunking), got {batch_size!r}")
    return batch_size


def check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def interleave_pairs(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``[R, ...]`` and ``[R, ...]`` → ``[2R, ...]`` with row ``2r`` from ``first``, ``2r+1`` from ``second``."""
    return torch.stack([first, second], dim=1).reshape(2 * first.shape[0], *first.shape[1:])


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
    constant_memory: bool = False,
) -> torch.Tensor:  # [B*K, L] (or [R, L]) float32
    """``log f(y_i | noisy row)`` at every completion position of the ``B*K`` noisy rows.

    The rows are built once as one ``[B*K, P+L]`` batch and forwarded in chunks of at most
    ``batch_size`` rows (one forward when ``None``); log-softmax runs in float32. With
    ``rows``, noisy row r is built from row ``rows[r]`` instead (any number per row).

    ``constant_memory`` (only acts when grad is enabled): chunks of ``batch_size`` rows, or
    of ``B`` rows when ``batch_size`` is None, each run under activation checkpointing
    (module docstring) — peak memory of one chunk, one extra forward per chunk in backward.
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
    recompute = constant_memory and torch.is_grad_enabled()
    step = batch_size if batch_size is not None else (max(B, 1) if recompute else N)

    def chunk_log_probs(chunk, chunk_targets, chunk_attn=None):  # -> [c, L] float32, no logits kept
        return token_log_probs(completion_logits(model, chunk, chunk_attn, L), chunk_targets)

    out = []
    for s in range(0, N, max(step, 1)):
        args = (noisy[s : s + step], targets[s : s + step]) + ((attn[s : s + step],) if attn is not None else ())
        if recompute:
            out.append(checkpoint(chunk_log_probs, *args, use_reentrant=False))  # [c, L]
        else:
            out.append(chunk_log_probs(*args))  # [c, L]
    if not out:  # B == 0
        return torch.zeros(0, L, dtype=torch.float32, device=device)
    return torch.cat(out, dim=0)


def completion_logits(model, ids: torch.Tensor, attention_mask: torch.Tensor | None, L: int) -> torch.Tensor:
    """Logits ``[c, L, V]`` of the last ``L`` positions of ``ids [c, P+L]``. A model that computes selected
    positions only (a :class:`~dlm_trl.models.DLM` over dlm-trl's native classes or the embedded model:
    ``keeps_selected_logits``) is asked for those (``logits_to_keep``: no vocabulary projection or memory for
    the prompt's positions); any other ``ids -> logits`` callable is run in full and sliced."""
    if L > 0 and getattr(model, "keeps_selected_logits", False):
        return model(ids, attention_mask=attention_mask, logits_to_keep=L)
    logits = model(ids, attention_mask=attention_mask) if attention_mask is not None else model(ids)  # [c, P+L, V]
    return logits[:, ids.shape[1] - L :]


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
