"""Flat groups: the groups of a rollout whose rewards are all equal (no learning signal).

Their rows get advantage exactly 0; with ``drop_flat_groups`` (DAPO's dynamic sampling without the
resampling) also ``keep_rows [B]`` = 0, which takes them out of the loss and its normaliser.
``frac_flat_groups`` is logged either way.
"""

from __future__ import annotations

import torch


class _FlatGroupsMixin:
    """:meth:`_zero_flat_group_advantages`, called on TRL's batch after each rollout."""

    def _total_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """TRL's weighted reward sum per row, ``[N]`` from ``[N, F]``; NaN where no reward function scored the row."""
        weights = self.reward_weights.to(rewards.device)
        total = (rewards * weights.unsqueeze(0)).nansum(1)  # [N]
        return torch.where(torch.isnan(rewards).all(1), torch.full_like(total, float("nan")), total)

    def _zero_flat_group_advantages(self, out: dict) -> None:
        """Advantage exactly 0 for every row of a group whose rewards are all equal (a *flat* group);
        with ``drop_flat_groups`` also ``out["keep_rows"]`` ``[B]`` (0 for those rows), which leaves
        them out of the loss and its normaliser. Logs ``frac_flat_groups`` (of all processes' groups).

        TRL computes ``R - mean(R)`` in float32, which leaves ±1e-9 residues in such groups, all of
        one sign; Adam normalises gradients by their running scale, so on the first steps (or when
        every group of a batch is flat) those residues become full-size updates that lower (or raise)
        the likelihood of everything the policy sampled. A flat group carries no signal, so it gets
        none. (On the tiny model's 40-step runs mixed batches dominate and the change was not
        measurable; it matters when whole batches are flat, e.g. early in training on a hard task.)
        """
        self._flat_rows = None
        rewards = self._last_rewards
        if rewards is None or "advantages" not in out:
            return
        G = self.num_generations if self.model.training else self.num_generations_eval
        if G is None or G <= 1 or rewards.numel() % G:
            return
        total = self._total_rewards(rewards)  # [N]
        grouped = total.view(-1, G)
        hi = grouped.masked_fill(grouped.isnan(), float("-inf")).max(1).values
        lo = grouped.masked_fill(grouped.isnan(), float("inf")).min(1).values
        flat_groups = (hi == lo) | (hi < lo)  # [N/G] all equal, or all unscorable
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["frac_flat_groups"].append(flat_groups.float().mean().item())
        flat = flat_groups.repeat_interleave(G)  # [N], every process's rows in TRL's global order
        self._flat_rows = flat
        B = out["advantages"].shape[0]
        start = self.accelerator.process_index * B
        local = flat[start : start + B].to(out["advantages"].device)
        if local.shape[0] != B:
            return
        out["advantages"] = out["advantages"].masked_fill(local, 0.0)
        if self.args.drop_flat_groups:
            out["keep_rows"] = (~local).to(out["advantages"].dtype)  # [B] batch-first: shuffled with its rows
