"""The masked-diffusion ELBO computed exactly, by enumerating every mask (test oracle).

Count form (ALGORITHMS.md §0), with n maskable completion positions,

    ELBO(y) = E_{l ~ U{1..n}} E_{|S| = l} [ (n/l) Σ_{i ∈ S} log f_θ(y_i | y_S→M, q) ]
            = Σ_{l=1..n} (1/l) Σ_i C[l, i],   C[l, i] = E_{|S|=l}[1[i ∈ S] log f_θ(y_i | y_S→M, q)],

so token i contributes ``Σ_l C[l, i] / l``. Every non-empty subset S of the maskable
positions is forwarded once (``2^n − 1`` forward passes per sequence), hence the limit
n ≤ 10 (``max_length``). Deterministic: ``generator`` is ignored. It equals the time form
``∫_0^1 E_{Bern(t)}[(1/t) Σ_masked log f] dt`` exactly, so it is the expectation of
``double_mc_elbo`` (up to its eps floor on t) and of ``stratified_elbo``.

``length``: ``"padded"`` (default) — n = L, every completion position is maskable;
``"true"`` — n = the row's ``completion_mask`` count. Contributions of positions with
``completion_mask == 0`` are 0 in both modes — the same conventions as the MC estimators.

NFE: ``2^L − 1`` forward passes per sequence (exact in ``"padded"`` mode; in ``"true"``
mode a row runs ``2^{n_b} − 1`` ≤ that, so ``nfe(L)`` is an upper bound). Default
``batch_size`` 256 rows per forward to bound memory.
"""

from __future__ import annotations

import math

import torch

from dlm_trl.estimators import Generators

from ._common import (
    check_batch_size,
    check_inputs,
    check_length_mode,
    completion_log_probs,
    finish,
    maskable_positions,
)


class ExactELBO:
    """``exact_elbo``: the count-form ELBO by enumeration, for completions of ≤ 10 maskable tokens.

    Args:
        length: ``"padded"`` (default) or ``"true"`` — which completion positions are maskable.
        max_length: the largest n allowed (default 10: 1023 forwards per sequence).
        batch_size: rows per forward pass (default 256; ``None``: all at once).
    """

    name = "exact_elbo"
    deterministic = True

    def __init__(self, *, length: str = "padded", max_length: int = 10, batch_size: int | None = 256):
        self.length = check_length_mode(length)
        self.max_length = int(max_length)
        self.batch_size = check_batch_size(batch_size)

    def nfe(self, completion_length: int) -> int:
        return 2 ** int(completion_length) - 1

    def __repr__(self) -> str:
        return f"ExactELBO(length={self.length!r}, max_length={self.max_length}, batch_size={self.batch_size})"

    def count_table(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P]
        completion_ids: torch.Tensor,  # [B, L]
        completion_mask: torch.Tensor,  # [B, L]
        *,
        prompt_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C [B, L+1, L] float64, n [B])`` with ``C[b, l, i] = E_{|S|=l}[1[i∈S] log f(y_i | y_S→M)]``.

        ``C[b, l]`` is 0 for ``l = 0`` and ``l > n_b``. Runs every mask of every row once.
        """
        check_inputs(prompt_ids, completion_ids, completion_mask, prompt_attention_mask)
        B, L = completion_ids.shape
        maskable = maskable_positions(completion_mask, self.length).cpu()  # [B, L]
        n = maskable.sum(1)  # [B]
        if B and int(n.max()) > self.max_length:
            what = "completion length L" if self.length == "padded" else "true completion length"
            raise ValueError(
                f"exact_elbo enumerates all 2^n - 1 masks and supports n ≤ {self.max_length}; got a {what} of "
                f"{int(n.max())}. Use a shorter completion (truncate it) or another estimator "
                "(stratified_elbo, double_mc_elbo, sdmc_elbo)."
            )
        rows, masks = [], []
        for b in range(B):
            pos = maskable[b].nonzero().flatten()  # [n_b]
            nb = pos.numel()
            if nb == 0:
                continue
            bits = torch.arange(1, 2**nb)[:, None].bitwise_right_shift(torch.arange(nb)[None, :]) & 1  # [2^nb-1, nb]
            m = torch.zeros(bits.shape[0], L, dtype=torch.bool)
            m[:, pos] = bits.bool()
            masks.append(m)
            rows.append(torch.full((bits.shape[0],), b, dtype=torch.long))
        device = completion_ids.device
        table = torch.zeros(B, L + 1, L, dtype=torch.float64, device=device)
        if not masks:
            return table, n
        masks_t = torch.cat(masks).to(device)  # [R, L]
        rows_t = torch.cat(rows).to(device)  # [R]
        logp = completion_log_probs(
            model,
            prompt_ids,
            completion_ids,
            masks_t,
            prompt_attention_mask=prompt_attention_mask,
            batch_size=self.batch_size,
            rows=rows_t,
        )  # [R, L]
        vals = torch.where(masks_t, logp.double(), torch.zeros((), dtype=torch.float64, device=device))  # [R, L]
        sizes = masks_t.sum(1)  # [R]
        flat = (rows_t * (L + 1) + sizes)[:, None].expand(-1, L)  # [R, L] index into [B*(L+1)]
        table = table.view(B * (L + 1), L).scatter_add(0, flat, vals).view(B, L + 1, L)
        n_subsets = torch.tensor(
            [[math.comb(int(nb), k) for k in range(L + 1)] for nb in n.tolist()], dtype=torch.float64
        ).to(device)  # [B, L+1]
        return table / n_subsets.clamp(min=1)[:, :, None], n

    def __call__(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        completion_ids: torch.Tensor,  # [B, L]
        completion_mask: torch.Tensor,  # [B, L]
        *,
        generator: Generators = None,
        prompt_attention_mask: torch.Tensor | None = None,  # [B, P]
    ) -> torch.Tensor:  # [B, L]
        check_inputs(prompt_ids, completion_ids, completion_mask, prompt_attention_mask, generator)  # generator unused
        table, _ = self.count_table(
            model, prompt_ids, completion_ids, completion_mask, prompt_attention_mask=prompt_attention_mask
        )  # [B, L+1, L]
        L = completion_ids.shape[1]
        inv_l = torch.cat(
            [torch.zeros(1, dtype=torch.float64), 1.0 / torch.arange(1, L + 1, dtype=torch.float64)]
        ).to(table.device)  # [L+1]
        return finish((table * inv_l[None, :, None]).sum(1), completion_mask)
