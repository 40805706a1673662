"""The search tree of TR2-D2 (arXiv 2509.25171): nodes are partially unmasked completions, edges are
unmasking steps drawn from the current model.

A :class:`Node` holds the completion state after ``depth`` sampler steps, its visit count and the sum of
the rewards of the completed sequences rolled out below it (so ``value / visits`` is a mean reward), and
the path log-ratio ``Σ_steps log p_ref(step) − log q(step)`` from the root to it. Selection descends from
the root to an expandable leaf by one of :data:`SELECTION_RULES`:

* ``"uct"`` (default): the child maximising ``Q + c·sqrt(ln N_parent / n_child)`` (UCB1 applied to trees);
* ``"softmax"``: the rule of TR2-D2's released code — a child drawn with probability
  ``∝ exp(Q + c·log q(step)·sqrt(N_parent)/n_child)``, where ``log q(step)`` is the log-probability of the
  step into the child under the sampling policy (≤ 0, so the exploration term *penalises* improbable
  steps, less so as they are revisited).

Terminal nodes (every sampler step done) cannot be expanded; a node whose children are all exhausted is
exhausted itself, and selection never enters an exhausted node. Without widening (the paper's code) a node
is expanded once: its children are the ``M`` steps drawn then, so a step the model rarely samples is never
tried below it. **Progressive widening** (``widening=α``, an option of ours) lets an expanded node draw
more children while it has fewer than ``N^α`` of them (``N`` its visits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SELECTION_RULES = ("uct", "softmax")


@dataclass(eq=False)
class Node:
    """A partially unmasked completion ``state [L]`` (mask token at the undecided positions)."""

    state: torch.Tensor  # [L] long, on CPU
    depth: int  # sampler steps done (0 = the root, fully masked)
    log_ratio: float = 0.0  # Σ over the steps root → here of log p_ref − log q
    step_logq: float = 0.0  # log q of the step into this node (0 at the root)
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0  # sum of the rewards of the completed sequences counted in visits
    exhausted: bool = False

    @property
    def mean_value(self) -> float:
        return self.value / self.visits if self.visits else 0.0

    def backup(self, reward_sum: float, count: int) -> None:
        """Add ``count`` completed sequences with rewards summing to ``reward_sum`` here and in every ancestor."""
        node: Node | None = self
        while node is not None:
            node.visits += count
            node.value += reward_sum
            node = node.parent

    def mark_exhausted_upwards(self) -> None:
        """Mark this node exhausted, then every ancestor whose children are now all exhausted."""
        node: Node | None = self
        while node is not None:
            if node is not self and not all(c.exhausted for c in node.children):
                return
            node.exhausted = True
            node = node.parent


def child_scores(node: Node, rule: str, exploration: float) -> list[float]:
    """The selection score of each child of ``node`` (−inf for exhausted ones)."""
    parent_visits = max(node.visits, 1)
    scores = []
    for c in node.children:
        if c.exhausted:
            scores.append(-math.inf)
        elif rule == "uct":
            n = max(c.visits, 1)
            scores.append(c.mean_value + exploration * math.sqrt(math.log(parent_visits) / n))
        else:  # "softmax"
            n = max(c.visits, 1)
            scores.append(c.mean_value + exploration * c.step_logq * math.sqrt(parent_visits) / n)
    return scores


def may_widen(node: Node, widening: float | None) -> bool:
    """Progressive widening: an expanded node takes new children while it has fewer than ``N^widening``
    (``N`` = its visits); never with ``widening=None``."""
    return widening is not None and len(node.children) < max(1.0, node.visits**widening)


def select_leaf(
    root: Node, rule: str, exploration: float, generator: torch.Generator, widening: float | None = None
) -> Node | None:
    """Descend from ``root`` to the node to expand: a leaf (no children yet, not terminal) or, with
    ``widening``, an expanded node allowed more children (:func:`may_widen`); ``None`` when the whole tree is
    exhausted. ``"uct"`` breaks ties by the first child; ``"softmax"`` draws from ``generator``."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"selection rule must be one of {SELECTION_RULES}, got {rule!r}")
    node = root
    while not node.exhausted:
        if not node.children or may_widen(node, widening):
            return node
        if widening is not None and all(c.exhausted for c in node.children):
            return node  # with widening a node is never exhausted by its children: draw more
        scores = child_scores(node, rule, exploration)
        if rule == "uct":
            best = max(range(len(scores)), key=lambda i: scores[i])
        else:
            s = torch.tensor(scores, dtype=torch.float64)
            best = int(torch.multinomial(torch.softmax(s, 0), 1, generator=generator))
        node = node.children[best]
    return None


__all__ = ["SELECTION_RULES", "Node", "child_scores", "may_widen", "select_leaf"]
