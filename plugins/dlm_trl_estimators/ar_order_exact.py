"""Exact left-to-right likelihood of a masked DLM (JustGRPO, Ni et al., arXiv 2601.15165).

JustGRPO uses the masked diffusion model as an autoregressive policy: completion token i is
predicted from the input in which the prompt and the completion positions ``j < i`` are
visible and every completion position ``j ≥ i`` is the mask token,

    x^{(i)} = (q, y_1, …, y_{i-1}, M, …, M),         log π_θ^{AR}(y | q) = Σ_{i=1..L} log f_θ(y_i | x^{(i)}).

This is not a bound: it is the exact log-probability of ``y`` under the sampler that unmasks
one token per step, left to right (LLaDA sampling with ``block_length = 1``, JustGRPO's
rollout), so plain GRPO applies. ``contrib[b, i] = log f_θ(y_i | x^{(i)})``; the sequence
estimate is the masked sum. Each sequence costs L forward passes (one noisy row per position),
built as one ``[B·L, P+L]`` batch and run in chunks of ``batch_size`` rows; only the scored
position of each row goes through the (float32) log-softmax.

Padding (``completion_mask == 0``, the EOS tokens after the first EOS): they contribute 0 (the
contract), and in the rows of earlier positions they are masked like any other future
position — left to right, everything at or after ``i`` is unknown, padding included, exactly
as during AR sampling. ``length`` only chooses which rows are forwarded:

* ``"padded"`` (default, as the reference code, which loops over all ``gen_length``
  positions): all L rows; the rows of padding positions are forwarded and their values dropped.
* ``"true"``: only the rows of positions with ``completion_mask == 1`` (saves the padding
  forwards; identical values; ``nfe(L)`` is then an upper bound).

Fast variants (``score_fraction < 1``): score only ``k = ceil(score_fraction · n)`` of the n
candidate positions (all L, or the counted ones with ``length="true"``), i.e. k forwards:

* ``select="random"``: a uniform k-subset S drawn from the row's generator, each scored
  token weighted ``n/k``: ``E_S[(n/k) Σ_{i∈S} log f(y_i | x^{(i)})] = Σ_i log f(y_i | x^{(i)})``,
  so the sequence estimate is unbiased for the exact log-likelihood (zero variance at
  fraction 1). Same generators → same subset for old / reference / current estimates.
* ``select="entropy"``: the k candidates whose predictive entropy
  ``H_i = −Σ_v f(v | x^{(i)}) log f(v | x^{(i)})`` (the full softmax of the model at position i
  of row ``x^{(i)}``, temperature 1, float32) is largest, weight 1 — the high-entropy "forking
  token" criterion of arXiv 2506.01939 (shared authors). **Not** an estimate of log p(y):
  the sum over the top-entropy subset is a different objective (a restriction of the
  policy-gradient to those tokens). The entropies need all n rows, forwarded once without
  grad; the k selected rows are then forwarded with grad (under ``no_grad`` their values are
  taken from the selection pass). Consistency: the selection depends on a model, so it is
  memoised per (row generator seed, prompt, completion): the first estimate of a row under a
  seed — in the trainers the old / sampling policy, or the on-policy current model at inner
  iteration 0 — fixes S, and the reference and current estimates with the same seed reuse it
  (``clear_selection_memo()`` forgets; the memo keeps the last ``memo_size`` rows). With
  ``generator=None`` nothing is memoised and each call selects with its own model — not
  common random numbers; pass per-row generators.

Paper vs reference code (github.com/LeapLabTHU/JustGRPO, ``grpo.py``): the code loops over
the positions with one forward and one backward per position (memory of one forward; the
batch of rows here is the same sum, chunked by ``batch_size``), passes no attention mask
(prompts are left-padded with the mask id as pad token; here ``prompt_attention_mask`` is
passed as by the other estimators), divides the logits by the sampling temperature (default
1; here raw logits, as every estimator of this package), and scores every position of
``gen_length`` including the EOS padding (here padding contributes 0 by contract). The
released code has no fast variant. The paper's (§5.3, Fig. 9: "JustGRPO-Fast") scores the top
25 % highest-entropy positions, the entropy recorded during the left-to-right rollout at
temperature 1, with no reweighting: ``select="entropy", score_fraction=0.25`` here. It does not
say whether the 25 % is per sequence or per batch; the per-row ranking here is an assumption.
The default is the exact estimator (``score_fraction=1.0``).

NFE per sequence: ``L`` (exact); ``k = ceil(score_fraction · L)`` for ``"random"``; for
``"entropy"`` ``k`` per estimate once the selection is memoised, plus a one-off no-grad
selection pass of ``L`` rows per (row, seed) (``L`` in all on a first call under ``no_grad``,
``L + k`` with grad). With ``length="true"`` these are upper bounds. ``nfe(L)`` is the per-estimate
count of a memoised row; the rows actually forwarded by the most recent call (selection pass
included) are in ``last_call_nfe``, which the trainers count when an estimator has it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from dlm_trl.estimators import Generators
from dlm_trl.masking import apply_mask, count_mask, token_log_probs

from ._common import check_batch_size, check_inputs, check_length_mode, finish, maskable_positions

SELECTIONS = ("random", "entropy")


def subset_size(n: torch.Tensor, fraction: float) -> torch.Tensor:
    """``k = ceil(fraction · n)`` (at least 1 where ``n ≥ 1``, 0 where ``n = 0``) → ``[B]`` long."""
    n = n.long()
    k = torch.ceil(n.double() * fraction - 1e-9).long()  # -1e-9: 0.7·10 is 7.000000000000001 in floats
    return torch.minimum(k.clamp(min=1), n)


class AROrderExact:
    """``ar_order_exact``: JustGRPO's exact left-to-right log-likelihood (or a subset of its terms).

    Args:
        score_fraction: fraction of the candidate positions scored, in (0, 1] (default 1.0: exact).
        select: ``"random"`` (default; unbiased, reweighted n/k) or ``"entropy"`` (top predictive
            entropy, memoised per row seed) — used only when ``score_fraction < 1``.
        length: ``"padded"`` (default: all L rows are candidates) or ``"true"`` (only positions with
            ``completion_mask == 1``).
        batch_size: rows per forward pass (``None``: all rows of the batch at once).
        memo_size: rows whose entropy selection is remembered (``select="entropy"``).
    """

    name = "ar_order_exact"

    def __init__(
        self,
        *,
        score_fraction: float = 1.0,
        select: str = "random",
        length: str = "padded",
        batch_size: int | None = None,
        memo_size: int = 65536,
    ):
        if isinstance(score_fraction, bool) or not isinstance(score_fraction, (int, float)) or not (
            0.0 < float(score_fraction) <= 1.0
        ):
            raise ValueError(
                f"score_fraction must be a number in (0, 1] (1.0 = exact, e.g. 0.25 scores a quarter of the "
                f"positions), got {score_fraction!r}"
            )
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if not isinstance(memo_size, int) or memo_size < 0:
            raise ValueError(f"memo_size must be a non-negative int (rows remembered), got {memo_size!r}")
        self.score_fraction = float(score_fraction)
        self.select = select
        self.length = check_length_mode(length)
        self.batch_size = check_batch_size(batch_size)
        self.memo_size = memo_size
        self.exact = self.score_fraction == 1.0
        # randomness is used only by the random subset
        self.deterministic = self.exact or self.select == "entropy"
        self._memo: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.last_call_nfe = 0  # row-forwards the most recent call ran (the selection pass included)

    def nfe(self, completion_length: int) -> int:
        L = int(completion_length)
        if self.exact:
            return L
        return int(subset_size(torch.tensor([L]), self.score_fraction)[0])

    def __repr__(self) -> str:
        return (
            f"AROrderExact(score_fraction={self.score_fraction}, select={self.select!r}, length={self.length!r}, "
            f"batch_size={self.batch_size})"
        )

    def clear_selection_memo(self) -> None:
        """Forget every memoised entropy selection."""
        self._memo.clear()

    # ------------------------------------------------------------------ forward passes

    def _score_rows(
        self,
        model,
        prompt_ids: torch.Tensor,  # [B, P]
        completion_ids: torch.Tensor,  # [B, L]
        prompt_attention_mask: torch.Tensor | None,  # [B, P]
        rows: torch.Tensor,  # [R] long: source row
        pos: torch.Tensor,  # [R] long: scored completion position
        *,
        entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # [R] float32 log f(y_pos | x^(pos)), [R] entropies
        """Build the AR rows ``x^{(pos)}`` of ``rows`` and score the one position each predicts."""
        B, P = prompt_ids.shape
        L = completion_ids.shape[1]
        device = completion_ids.device
        rows, pos = rows.to(device), pos.to(device)
        R = rows.shape[0]
        if R == 0:
            empty = torch.zeros(0, dtype=torch.float32, device=device)
            return empty, (empty if entropy else None)
        future = torch.arange(L, device=device)[None, :] >= pos[:, None]  # [R, L] masked: j ≥ i
        noisy = torch.cat(
            [prompt_ids[rows], apply_mask(completion_ids[rows], future, model.mask_token_id)], dim=1
        )  # [R, P+L]
        attn = None
        if prompt_attention_mask is not None:
            attn = torch.cat(
                [prompt_attention_mask.to(device).long(), torch.ones(B, L, dtype=torch.long, device=device)], dim=1
            )[rows]  # [R, P+L]
        targets = completion_ids[rows, pos]  # [R]
        self.last_call_nfe += R
        step = R if self.batch_size is None else self.batch_size
        logps, ents = [], []
        for s in range(0, R, step):
            chunk = noisy[s : s + step]
            kw = {} if attn is None else {"attention_mask": attn[s : s + step]}
            logits = model(chunk, **kw)  # [c, P+L, V]
            at = logits[torch.arange(chunk.shape[0], device=device), P + pos[s : s + step]]  # [c, V]
            logps.append(token_log_probs(at, targets[s : s + step]))  # [c] float32
            if entropy:
                lp = torch.log_softmax(at.detach().float(), dim=-1)  # [c, V]
                plogp = torch.where(lp > float("-inf"), lp.exp() * lp, torch.zeros_like(lp))  # 0·log 0 = 0
                ents.append(-plogp.sum(-1))  # [c]
        return torch.cat(logps), (torch.cat(ents) if entropy else None)

    # ------------------------------------------------------------------ selections

    def _memo_keys(self, generator: Generators, prompt_ids, completion_ids, pam) -> list[tuple | None]:
        B = prompt_ids.shape[0]
        if generator is None or self.memo_size == 0:
            return [None] * B
        gens = [generator] * B if isinstance(generator, torch.Generator) else list(generator)
        p, c = prompt_ids.cpu().numpy(), completion_ids.cpu().numpy()
        a = pam.cpu().numpy() if pam is not None else None
        return [
            (
                self.score_fraction, self.length, int(gens[b].initial_seed()), p[b].tobytes(), c[b].tobytes(),
                a[b].tobytes() if a is not None else None,
            )
            for b in range(B)
        ]

    def _entropy_selection(
        self, model, prompt_ids, completion_ids, pam, cand: torch.Tensor, k: torch.Tensor, generator: Generators
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [B, L] bool selected, [B, L] float32 log-probs (nan = not computed)
        B, L = cand.shape
        device = completion_ids.device
        keys = self._memo_keys(generator, prompt_ids, completion_ids, pam)
        sel = torch.zeros(B, L, dtype=torch.bool, device=device)
        known = torch.full((B, L), float("nan"), dtype=torch.float32, device=device)
        missing = []
        for b, key in enumerate(keys):
            if key is not None and key in self._memo:
                self._memo.move_to_end(key)
                sel[b] = self._memo[key].to(device)
            else:
                missing.append(b)
        if not missing:
            return sel, known
        miss = torch.tensor(missing, dtype=torch.long, device=device)
        rows, pos = cand[miss].nonzero(as_tuple=True)  # [R] into miss, [R]
        rows = miss[rows]
        with torch.no_grad():
            logp, ent = self._score_rows(model, prompt_ids, completion_ids, pam, rows, pos, entropy=True)
        H = torch.full((B, L), float("-inf"), dtype=torch.float32, device=device)
        H[rows, pos] = ent  # [B, L], -inf off the candidates
        known[rows, pos] = logp
        order = torch.sort(H, dim=1, descending=True, stable=True).indices  # ties: earlier position first
        rank = order.argsort(dim=1)  # [B, L]
        top = (rank < k.to(device)[:, None]) & cand  # [B, L]
        for b in missing:
            sel[b] = top[b]
            if keys[b] is not None:
                self._memo[keys[b]] = top[b].cpu()
                if len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
        return sel, known

    # ------------------------------------------------------------------ the estimate

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
        check_inputs(prompt_ids, completion_ids, completion_mask, prompt_attention_mask, generator)
        self.last_call_nfe = 0
        B, L = completion_ids.shape
        device = completion_ids.device
        cand = maskable_positions(completion_mask, self.length).to(device)  # [B, L] candidate positions
        n = cand.sum(1)  # [B]
        weight = torch.ones(B, dtype=torch.float32, device=device)  # [B]
        known = None
        if self.exact:
            sel = cand
        else:
            k = subset_size(n, self.score_fraction).to(device)  # [B]
            if self.select == "random":
                sel = count_mask(k, cand, generator=generator)  # [B, L] uniform k-subset per row
                weight = n.float() / k.clamp(min=1).float()  # [B] n/k: unbiased
            else:
                sel, known = self._entropy_selection(
                    model, prompt_ids, completion_ids, prompt_attention_mask, cand, k, generator
                )
        rows, pos = sel.nonzero(as_tuple=True)  # [R], [R] row-major
        vals = torch.zeros(rows.shape[0], dtype=torch.float32, device=device)  # [R]
        todo = torch.ones(rows.shape[0], dtype=torch.bool, device=device)
        if known is not None and not torch.is_grad_enabled():  # reuse the selection pass's values
            pre = known[rows, pos]
            todo = torch.isnan(pre)
            vals = torch.where(todo, vals, pre)
        if bool(todo.any()):
            idx = todo.nonzero().flatten()
            logp, _ = self._score_rows(
                model, prompt_ids, completion_ids, prompt_attention_mask, rows[idx], pos[idx]
            )  # [R']
            vals = vals.index_put((idx,), logp)
        vals = vals * weight[rows]
        contrib = torch.zeros(B, L, dtype=torch.float32, device=device).index_put((rows, pos), vals)  # [B, L]
        return finish(contrib, completion_mask)


__all__ = ["SELECTIONS", "AROrderExact", "subset_size"]
