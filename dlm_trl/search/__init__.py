"""Search over denoising trajectories: TR2-D2's Monte-Carlo tree search (arXiv 2509.25171).

* :mod:`.tree` — the tree: :class:`Node` (a partially unmasked completion), selection rules
  (:data:`SELECTION_RULES`: UCT, the paper code's softmax), back-up;
* :mod:`.mcts` — :func:`tree_search`: one tree per prompt, batched over prompts, a replay buffer of unique
  completed sequences with their path log-ratio against a reference (:class:`SearchResult`).

Usage::

    from dlm_trl.search import SearchConfig, tree_search
    results = tree_search(policy, reference, prompt_ids, reward_fn, sampler_config=cfg,
                          config=SearchConfig(num_children=4, iterations=8), mask_token_id=mask_id,
                          generators=[torch.Generator().manual_seed(i) for i in range(len(prompt_ids))])
    best = results[0].buffer[results[0].top(8)[0][0]]

The trainer built on it is :class:`dlm_trl.trainers.TR2D2Trainer`.
"""

from __future__ import annotations

from .mcts import (
    BUFFER_SELECTIONS,
    BufferEntry,
    SearchConfig,
    SearchResult,
    apply_after_eos,
    search_nfe_per_iteration,
    tree_search,
)
from .tree import SELECTION_RULES, Node, child_scores, select_leaf

__all__ = [
    "BUFFER_SELECTIONS",
    "SELECTION_RULES",
    "BufferEntry",
    "Node",
    "SearchConfig",
    "SearchResult",
    "apply_after_eos",
    "child_scores",
    "search_nfe_per_iteration",
    "select_leaf",
    "tree_search",
]
