"""Monte-Carlo tree search over denoising trajectories, batched over prompts (TR2-D2, arXiv 2509.25171).

One tree per prompt. Each iteration, for every prompt still within its budget, at the same time:

1. **select** an expandable leaf (:func:`dlm_trl.search.tree.select_leaf`, UCT by default);
2. **expand** it into ``num_children`` children, each one sampler step drawn from the current model;
3. **roll out** each child to a complete sequence with the same step kernel;
4. **reward** the completed sequences, insert the new unique ones into the prompt's replay buffer;
5. **back up**: each child starts with its own rollout's reward (a step drawn twice is one child with both
   rollouts); the leaf and its ancestors add all of them.

**The step kernel** (why it is not the rollout sampler's): a step of the block sampler commits ``k``
positions of the current block (``SamplerConfig.block_schedule``) chosen *uniformly at random* among the
still-masked ones, each with a token drawn from ``softmax(ℓ_θ / T)``. Positions chosen independently of
the model make the path's importance weight exact and cheap: the probability of choosing them is the same
under the policy and the reference and cancels, leaving

``log_ratio(step) = Σ_{committed i} log p_ref(x_i | x_t) − log q_θ(x_i | x_t)``,

with ``q_θ`` the tempered distribution actually sampled. (Confidence-ranked positions, the rollout
sampler's default, depend on the drawn tokens' probabilities, and their probability has no closed form.)
Summed over a completed path plus ``r/α`` this is TR2-D2's log importance weight against the reward-tilted
reference path measure (up to ``log Z``, which self-normalised weights do not need); with one token per
step and exact-conditional models it equals ``log p_ref(y) − log p_θ(y)`` for every order (tested).

**Budget**: ``iterations`` per prompt and/or ``nfe_budget`` row-forwards per prompt (policy and reference
forwards both count); a prompt stops searching once either is reached. Each iteration costs
``num_children · (S − depth(leaf))`` policy row-forwards, as many reference ones.

**Distributed**: with ``sync_ranks`` every rank runs the same number of iterations and, within one, the same
number of model calls (a one-row call when it has nothing to compute), so ZeRO-3's parameter gathers match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..sampling import SamplerConfig
from .tree import SELECTION_RULES, Node, select_leaf

BUFFER_SELECTIONS = ("top", "entropy")


@dataclass
class SearchConfig:
    """Knobs of :func:`tree_search`."""

    num_children: int = 4  # children per expansion (M)
    iterations: int | None = 8  # MCTS iterations per prompt (None: only the NFE budget)
    nfe_budget: int | None = None  # row-forwards per prompt, policy + reference (None: only iterations)
    exploration: float = 1.0  # c of the selection rule
    selection: str = "uct"  # one of SELECTION_RULES
    temperature: float = 1.0  # the step kernel samples softmax(logits / temperature)
    widening: float | None = None  # progressive widening exponent α (None: expand each node once, as the paper's code)

    def __post_init__(self) -> None:
        if self.num_children < 1:
            raise ValueError(f"num_children must be ≥ 1, got {self.num_children}")
        if self.iterations is None and self.nfe_budget is None:
            raise ValueError("set a search budget: iterations, nfe_budget or both")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be ≥ 1 (or None), got {self.iterations}")
        if self.nfe_budget is not None and self.nfe_budget < 1:
            raise ValueError(f"nfe_budget must be ≥ 1 (or None), got {self.nfe_budget}")
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"selection must be one of {SELECTION_RULES}, got {self.selection!r}")
        if self.exploration < 0:
            raise ValueError(f"exploration must be ≥ 0, got {self.exploration}")
        if self.widening is not None and not 0.0 < self.widening < 1.0:
            raise ValueError(f"widening is an exponent in (0, 1) (e.g. 0.5) or None, got {self.widening}")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature}: the search draws its steps from the model "
                "(at temperature 0 every expansion would repeat the same child)"
            )


@dataclass
class BufferEntry:
    """One unique completed sequence found by the search."""

    completion: torch.Tensor  # [L] as the trainer stores it (after_eos applied)
    reward: float
    log_ratio: float  # Σ over its path of log p_ref − log q (without r/α)
    nfe: int  # the prompt's NFE spent when it was found


@dataclass
class SearchResult:
    """A prompt's search: its buffer (unique sequences, insertion order) and its progress."""

    buffer: list[BufferEntry] = field(default_factory=list)
    nfe: int = 0
    iterations: int = 0
    best_curve: list[tuple[int, float]] = field(default_factory=list)  # (NFE, best reward so far) per iteration
    root: Node | None = None

    def best_reward(self) -> float:
        return max((e.reward for e in self.buffer), default=float("nan"))

    def top(self, n: int, selection: str = "top", pool_factor: int = 2, seed: int = 0) -> tuple[list[int], list[int]]:
        """Indices into :attr:`buffer` of the ``n`` sequences to train on and each one's multiplicity.

        ``"top"``: by reward, then log-ratio (TR2-D2's buffer order). ``"entropy"``: the ``pool_factor · n``
        best, then ``n`` of them by greedy farthest-point selection (:func:`dlm_trl.selection.select`). With
        fewer than ``n`` unique sequences the list cycles and ``multiplicity`` says how often each appears (the
        trainer divides a repeated sequence's weight among its copies)."""
        if selection not in BUFFER_SELECTIONS:
            raise ValueError(f"buffer selection must be one of {BUFFER_SELECTIONS}, got {selection!r}")
        if not self.buffer:
            raise RuntimeError("the search found no sequence (empty buffer)")
        order = sorted(range(len(self.buffer)), key=lambda i: (-self.buffer[i].reward, -self.buffer[i].log_ratio, i))
        if selection == "entropy" and len(order) > n:
            from ..selection import select

            pool = order[: max(n, pool_factor * n)]
            chosen = select(
                [self.buffer[i].completion.tolist() for i in pool], n, method="entropy",
                scores=[self.buffer[i].reward for i in pool], seed=seed,
            )
            order = [pool[i] for i in chosen]
        picked = [order[i % len(order)] for i in range(n)] if len(order) < n else order[:n]
        counts = {i: picked.count(i) for i in picked}
        return picked, [counts[i] for i in picked]


class _Sync:
    """Collectives that keep ranks in lockstep (identity without torch.distributed or with one process)."""

    def __init__(self, enabled: bool, device: torch.device):
        import torch.distributed as dist

        self.on = bool(enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
        self.device = device

    def _reduce(self, value: int, op) -> int:
        if not self.on:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], device=self.device, dtype=torch.long)
        dist.all_reduce(t, op=op)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        return bool(self._reduce(int(flag), dist.ReduceOp.MAX if self.on else None))

    def min(self, value: int) -> int:
        import torch.distributed as dist

        return self._reduce(value, dist.ReduceOp.MIN if self.on else None)


def _masked_log_softmax(logits: torch.Tensor, mask_id: int, temperature: float = 1.0) -> torch.Tensor:
    logits = logits.double()
    if mask_id < logits.shape[-1]:
        logits[..., mask_id] = -torch.inf
    return torch.log_softmax(logits / temperature, dim=-1)


def apply_after_eos(completion: torch.Tensor, eos_id: int | None, after_eos: str) -> torch.Tensor:
    """``[N, L]`` completions as the sampler returns them: every token after the first EOS set to EOS with
    ``after_eos="eos"``, unchanged with ``"keep"``."""
    if eos_id is None or after_eos != "eos":
        return completion
    is_eos = completion == int(eos_id)
    seen_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return completion.masked_fill(seen_before > 0, int(eos_id))


@torch.no_grad()
def tree_search(
    policy: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor] | None,
    prompt_ids: torch.Tensor,  # [N, P] left-padded, one row per prompt
    reward_fn: Callable[[int, list[torch.Tensor]], Sequence[float]],
    *,
    sampler_config: SamplerConfig,
    config: SearchConfig,
    mask_token_id: int,
    prompt_attention_mask: torch.Tensor | None = None,  # [N, P]
    generators: Sequence[torch.Generator],  # one per prompt
    eos_token_id: int | None = None,
    sync_ranks: bool = False,
    progress: bool = False,
) -> list[SearchResult]:
    """Search every prompt's tree (module docstring); returns one :class:`SearchResult` per prompt.

    ``policy`` / ``reference``: ``(input_ids [R, P+L], attention_mask [R, P+L] | None) → logits [R, P+L, V]``.
    Without a reference every log-ratio is 0. ``reward_fn(prompt_index, completions)`` scores completed
    sequences (``[L]`` tensors, after ``sampler_config.after_eos``) of one prompt.
    """
    N, P = prompt_ids.shape
    if len(generators) != N:
        raise ValueError(f"need one generator per prompt: {N} prompts, {len(generators)} generators")
    L, K = sampler_config.gen_length, sampler_config.block_length
    S_b = sampler_config.steps_per_block
    counts = sampler_config.block_schedule()
    S = sampler_config.steps
    device = prompt_ids.device
    mask_id = int(mask_token_id)
    sync = _Sync(sync_ranks, device)
    uses_ref = reference is not None
    per_forward = 2 if uses_ref else 1

    roots = [Node(state=torch.full((L,), mask_id, dtype=torch.long), depth=0) for _ in range(N)]
    results = [SearchResult(root=r) for r in roots]
    seen: list[dict[tuple[int, ...], int]] = [{} for _ in range(N)]

    def active(p: int) -> bool:
        r = results[p]
        if roots[p].exhausted:
            return False
        if config.iterations is not None and r.iterations >= config.iterations:
            return False
        return config.nfe_budget is None or r.nfe < config.nfe_budget

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="tree search", unit="iteration", leave=False)
    M = config.num_children
    while sync.any(any(active(p) for p in range(N))):
        # 1. select one leaf per active prompt
        leaves: list[tuple[int, Node]] = []
        for p in range(N):
            if active(p):
                leaf = select_leaf(roots[p], config.selection, config.exploration, generators[p], config.widening)
                if leaf is not None:
                    leaves.append((p, leaf))
        R = len(leaves) * M
        row_prompt = [p for p, _ in leaves for _ in range(M)]
        start = torch.tensor([leaf.depth for _, leaf in leaves for _ in range(M)], dtype=torch.long)  # [R]
        x = (
            torch.cat([prompt_ids[row_prompt], torch.stack([leaf.state for _, leaf in leaves for _ in range(M)]).to(device)], 1)
            if R
            else prompt_ids[:0]
        )  # [R, P+L]
        attn = None
        if prompt_attention_mask is not None:
            attn = torch.cat(
                [prompt_attention_mask[row_prompt], torch.ones(R, L, dtype=prompt_attention_mask.dtype, device=device)], 1
            )
        log_ratio = torch.zeros(R, dtype=torch.float64)
        first_logq = torch.zeros(R, dtype=torch.float64)
        child_state: list[torch.Tensor | None] = [None] * R
        child_ratio = torch.zeros(R, dtype=torch.float64)
        nfe_rows = torch.zeros(R, dtype=torch.long)
        s0 = sync.min(int(start.min()) if R else S)
        # 2-3. expand (the first step of each row) and roll out (the rest), all rows in lockstep
        for s in range(s0, S):
            k = counts[s % S_b]
            rows = (start <= s).nonzero().flatten() if R else torch.zeros(0, dtype=torch.long)
            if k == 0:
                continue
            lo, hi = P + (s // S_b) * K, P + (s // S_b + 1) * K
            if len(rows):
                ids = x[rows.to(device)]
                a = None if attn is None else attn[rows.to(device)]
            else:  # nothing to compute on this rank: a one-row call keeps ranks' collectives matched
                ids = torch.cat([prompt_ids[:1], torch.full((1, L), mask_id, dtype=prompt_ids.dtype, device=device)], 1)
                a = None if prompt_attention_mask is None else torch.cat(
                    [prompt_attention_mask[:1], torch.ones(1, L, dtype=prompt_attention_mask.dtype, device=device)], 1
                )
            logq = _masked_log_softmax(policy(ids, attention_mask=a)[:, lo:hi], mask_id, config.temperature)  # [r, K, V]
            logp_ref = (
                _masked_log_softmax(reference(ids, attention_mask=a)[:, lo:hi], mask_id) if uses_ref else None
            )
            if not len(rows):
                continue
            nfe_rows[rows] += per_forward
            for j, r in enumerate(rows.tolist()):
                g = generators[row_prompt[r]]
                cand = (x[r, lo:hi] == mask_id).nonzero().flatten().cpu()  # still-masked block positions
                take = cand[torch.randperm(len(cand), generator=g)[:k]]  # uniformly random, model-free
                probs = logq[j, take.to(logq.device)].exp().cpu()  # [k, V]
                tok = torch.multinomial(probs, 1, generator=g).flatten()  # [k]
                lq = logq[j, take.to(logq.device), tok.to(logq.device)].sum().item()
                step = (logp_ref[j, take.to(logq.device), tok.to(logq.device)].sum().item() - lq) if uses_ref else 0.0
                x[r, lo + take.to(device)] = tok.to(device=device, dtype=x.dtype)
                log_ratio[r] += step
                if s == int(start[r]):  # the expansion step: this state is the child node
                    child_state[r] = x[r, P:].cpu().clone()
                    child_ratio[r] = step
                    first_logq[r] = lq
        if bar is not None:
            bar.update(1)
        if not R:
            continue
        # 4. reward the completed rows, fill the buffers
        final = apply_after_eos(x[:, P:], eos_token_id, sampler_config.after_eos).cpu()  # [R, L]
        rewards = torch.zeros(R, dtype=torch.float64)
        for i, (p, _leaf) in enumerate(leaves):
            sl = slice(i * M, (i + 1) * M)
            got = list(reward_fn(p, [final[r] for r in range(sl.start, sl.stop)]))
            if len(got) != M:
                raise ValueError(f"reward_fn returned {len(got)} rewards for {M} completions")
            rewards[sl] = torch.tensor([float(v) for v in got], dtype=torch.float64)
        # 5. children and back-up
        for i, (p, leaf) in enumerate(leaves):
            res = results[p]
            res.iterations += 1
            res.nfe += int(nfe_rows[i * M : (i + 1) * M].sum())
            by_state = {tuple(c.state.tolist()): c for c in leaf.children}  # widening adds to existing children
            for r in range(i * M, (i + 1) * M):
                total = float(leaf.log_ratio + log_ratio[r])
                key = tuple(final[r].tolist())
                if key not in seen[p]:
                    seen[p][key] = len(res.buffer)
                    res.buffer.append(BufferEntry(final[r], float(rewards[r]), total, res.nfe))
                state_key = tuple(child_state[r].tolist())
                if state_key in by_state:  # the same step drawn twice: one child, every rollout counted
                    by_state[state_key].visits += 1
                    by_state[state_key].value += float(rewards[r])
                    continue
                child = Node(
                    state=child_state[r], depth=leaf.depth + 1, log_ratio=float(leaf.log_ratio + child_ratio[r]),
                    step_logq=float(first_logq[r]), parent=leaf, visits=1, value=float(rewards[r]),
                )
                by_state[state_key] = child
                leaf.children.append(child)
                if child.depth >= S:
                    child.exhausted = True
            # each child holds its own rollout (visits 1); the leaf and its ancestors add all M
            leaf.backup(float(rewards[i * M : (i + 1) * M].sum()), M)
            if config.widening is None and all(c.exhausted for c in leaf.children):
                leaf.mark_exhausted_upwards()
            res.best_curve.append((res.nfe, res.best_reward()))
    if bar is not None:
        bar.close()
    return results


def search_nfe_per_iteration(num_children: int, steps: int, depth: int = 0, reference: bool = True) -> int:
    """Row-forwards one iteration costs when it expands a leaf at ``depth``: ``M · (S − depth)`` policy
    forwards, as many reference ones."""
    return num_children * (steps - depth) * (2 if reference else 1)


__all__ = [
    "BUFFER_SELECTIONS",
    "BufferEntry",
    "SearchConfig",
    "SearchResult",
    "apply_after_eos",
    "search_nfe_per_iteration",
    "tree_search",
]
