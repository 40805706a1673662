"""TR2-D2 — tree-search-guided, trajectory-aware fine-tuning of discrete diffusion (Tang et al., arXiv 2509.25171).

On-policy rollouts reinforce whatever the current model already samples; TR2-D2 searches instead. At each
rollout, for every prompt, a Monte-Carlo tree search over denoising trajectories (:mod:`dlm_trl.search`:
nodes are partially unmasked completions, edges one sampler step drawn from the current model, UCT
selection, rewards at completed leaves, back-up) fills a **replay buffer** of unique completed sequences,
each with its path log-ratio against the reference ``ℓ = Σ_steps log p_ref − log q_θ``. The ``G`` rows of the
prompt's group are the buffer's best ``G`` sequences (by reward, then ℓ; optionally a diverse subset by the
entropy selection module, ``buffer_selection="entropy"``), and the model is fine-tuned on them with DMPO's
weighted denoising cross-entropy, weights ``softmax_G(c·(ℓ + r/α))`` — TR2-D2's importance weight
``log dP*/dP^θ = ℓ + r/α − log Z`` self-normalised over the group. The buffer is rebuilt every rollout, i.e.
every ``num_iterations`` (μ) optimizer steps (TRL's reuse of a generation batch).

Everything after the rollout is :class:`~dlm_trl.trainers.dmpo.DMPOTrainer` (its loss code, weights, ESS
tempering, baselines, metrics); this class overrides only the rollout (``_generate_single_turn``) and where
ℓ comes from (``_log_ratio``: the search's path log-ratio instead of ELBOs).

Where this follows the paper's released code and where it does not:

* edges: one step of the block sampler whose positions are drawn uniformly among the block's masked ones
  (the code's MDLM reverse step also unmasks positions independently of the model), so the path log-ratio
  is exact (:mod:`dlm_trl.search.mcts`); the rollout sampler of the other trainers ranks positions by
  confidence instead;
* selection: UCT by default; the code's rule (a softmax draw over ``Q + c·log q(step)·sqrt(N)/n``) is
  ``search_selection="softmax"``; each child's statistics are its rollout's reward and visit count 1, and an
  expansion adds all ``M`` rewards and ``M`` visits to the leaf and its ancestors (the code adds the sum of
  the ``M`` rewards but one visit);
* one tree and one buffer per prompt, rebuilt at each rollout (the code searches one unconditional tree and
  may keep it between refreshes, re-scoring the policy's step log-probabilities along the selected path);
* weight baseline: ``weight_baseline="none"`` by default (the code's default; its ``centering`` option is
  ``"mean"``);
* budget: ``search_iterations`` per prompt and/or ``search_nfe_budget`` (row-forwards per prompt, policy and
  reference both counted); the rollout's NFE is logged (``search/nfe_per_prompt``) with the buffer's reward
  (``search/buffer_best_reward``, ``search/buffer_mean_reward``) and its number of unique sequences.

A prompt's rows must sit on one process (one search per prompt per process: with several processes each
searches its own rows of a split group, and their buffers may overlap).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from trl.data_utils import is_conversational

from ..sampling import SamplerOutput
from ..search import BUFFER_SELECTIONS, SELECTION_RULES, SearchConfig, tree_search
from .dmpo import DMPOConfig, DMPOTrainer
from .seeds import mix_seed

SEARCH_STREAM = 0x5452


@dataclass
class TR2D2Config(DMPOConfig):
    """Configuration of :class:`TR2D2Trainer`: DMPO's fields (α, tempering, WDCE) plus the search's."""

    estimator: str = field(
        default="sdmc_elbo",
        metadata={"help": "Unused by TR2-D2: its log-ratio ℓ is the search's exact path log-ratio, not an ELBO difference."},
    )
    search_children: int = field(default=4, metadata={"help": "M: children per expansion (each rolled out)."})
    search_iterations: int | None = field(
        default=8, metadata={"help": "MCTS iterations per prompt per rollout (None: only search_nfe_budget)."}
    )
    search_nfe_budget: int | None = field(
        default=None,
        metadata={
            "help": "Row-forwards per prompt per rollout (policy + reference); the search of a prompt stops when "
            "it is reached. An iteration expanding a leaf at depth d costs 2·M·(steps − d)."
        },
    )
    search_exploration: float = field(default=1.0, metadata={"help": "c of the selection rule."})
    search_selection: str = field(
        default="uct", metadata={"help": f"Selection rule, one of {SELECTION_RULES} ('softmax': the paper's code)."}
    )
    search_widening: float | None = field(
        default=None,
        metadata={
            "help": "Progressive widening exponent α in (0, 1): an expanded node draws more children while it has "
            "fewer than N^α (N its visits). None: each node is expanded once, as the paper's code."
        },
    )
    buffer_selection: str = field(
        default="top",
        metadata={
            "help": f"Which buffer sequences form the group, one of {BUFFER_SELECTIONS}: 'top' (best reward, then "
            "log-ratio) or 'entropy' (a diverse subset of the 2G best, dlm_trl.selection)."
        },
    )
    weight_baseline: str = field(
        default="none", metadata={"help": "Baseline subtracted from the weights (TR2-D2's code: none)."}
    )

    def _check_dlm_fields(self) -> None:
        super()._check_dlm_fields()
        SearchConfig(  # the search's own checks, with this config's names in the message
            num_children=self.search_children, iterations=self.search_iterations,
            nfe_budget=self.search_nfe_budget, exploration=self.search_exploration,
            selection=self.search_selection, temperature=self.temperature if self.temperature > 0 else 1.0,
            widening=self.search_widening,
        )
        if self.temperature <= 0:
            raise self._unsupported(
                "temperature", self.temperature,
                "the tree search expands nodes by sampling steps from the model; at temperature 0 every child "
                "of a node is the same. Use temperature > 0 (1.0 samples the model itself).",
            )
        if self.buffer_selection not in BUFFER_SELECTIONS:
            raise ValueError(f"buffer_selection must be one of {BUFFER_SELECTIONS}, got {self.buffer_selection!r}")


class TR2D2Trainer(DMPOTrainer):
    """TR2-D2 (arXiv 2509.25171): tree search fills each prompt's replay buffer; WDCE on the buffer.

    Overrides, beyond DMPO's: ``_generate_and_score_completions`` (keeps the batch's dataset rows for the
    search's rewards), ``_generate_single_turn`` (the search) and ``_log_ratio`` (the path log-ratio).
    """

    _name = "TR2-D2"
    _paper = {"title": "Tree Search Guided Trajectory-Aware Fine-Tuning for Discrete Diffusion", "id": "2509.25171"}
    config_class = TR2D2Config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True):
            if isinstance(func, nn.Module) or not callable(func):
                raise ValueError(
                    f"TR2D2Trainer: reward function {name!r} is a model; the tree search scores thousands of partial "
                    "rollouts with plain Python reward functions only. Pass a callable reward "
                    "(prompts, completions, **columns) -> list[float]."
                )
        self._search_inputs: list[dict] | None = None
        self._search_rows: dict | None = None
        self._search_row_rewards: list | None = None
        #: rows whose rewards TRL took from the search instead of calling the reward functions again
        self.reward_cache_hits = 0

    def _search_config(self) -> SearchConfig:
        a = self.args
        return SearchConfig(
            num_children=a.search_children, iterations=a.search_iterations, nfe_budget=a.search_nfe_budget,
            exploration=a.search_exploration, selection=a.search_selection, temperature=float(a.temperature),
            widening=a.search_widening,
        )

    def _generate_and_score_completions(self, inputs):
        self._search_inputs = list(inputs)
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._search_inputs = None

    def search_rewards(self, inputs: list[dict], completion_ids: list[list[int]]) -> list[float]:
        """The weighted sum of the reward functions for completions of the dataset rows ``inputs`` (one each),
        computed on this process only (TRL's ``_calculate_rewards`` gathers across processes)."""
        return self._weighted_total(self.search_rewards_per_func(inputs, completion_ids))

    def _weighted_total(self, per_func: torch.Tensor) -> list[float]:
        """Each row's reward-weighted sum of ``[n, F]`` per-function rewards, None / NaN counted as 0."""
        weights = self.reward_weights.detach().cpu().double()
        return (torch.nan_to_num(per_func, nan=0.0) * weights).sum(1).tolist()

    def search_rewards_per_func(self, inputs: list[dict], completion_ids: list[list[int]]) -> torch.Tensor:
        """``[n, F]`` float64: each reward function's value (NaN where it returned None) for completions of the
        dataset rows ``inputs``, called as TRL calls it (decoded text, the rows' columns, ``trainer_state``)."""
        prompts = [x["prompt"] for x in inputs]
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if is_conversational({"prompt": prompts[0]}):
            completions = [[{"role": "assistant", "content": t}] for t in texts]
        else:
            completions = texts
        keys = [k for k in inputs[0] if k not in ("prompt", "completion", "completion_ids")]
        kwargs = {k: [x[k] for x in inputs] for k in keys}
        per_func = torch.zeros(len(inputs), len(self.reward_funcs), dtype=torch.float64)
        for i, (func, name) in enumerate(zip(self.reward_funcs, self.reward_func_names, strict=True)):
            out = func(prompts=prompts, completions=completions, completion_ids=completion_ids,
                       trainer_state=self.state, **kwargs)
            out = [math.nan if v is None else float(v) for v in out]
            if len(out) != len(inputs):
                raise ValueError(
                    f"reward function {name!r} returned {len(out)} rewards for {len(inputs)} completions during the "
                    "tree search; it must return one reward per completion"
                )
            per_func[:, i] = torch.tensor(out, dtype=torch.float64)
        return per_func

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None or multimodal_fields:
            raise ValueError("the diffusion sampler takes text prompts only (no images / multimodal fields)")
        inputs = self._search_inputs
        if inputs is None or len(inputs) != len(prompt_ids):
            raise RuntimeError(
                "TR2D2Trainer: the tree search needs the batch's dataset rows (for rewards); "
                "_generate_single_turn was called outside _generate_and_score_completions"
            )
        device = self.accelerator.device
        # the prompts of this process, in order of first appearance, and which rows belong to each
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, ids in enumerate(prompt_ids):
            groups.setdefault(tuple(ids), []).append(r)
        keys = list(groups)
        ids, attn = self._left_pad([list(k) for k in keys])  # [N, P], one row per prompt
        mode = 0 if self.model.training else 1
        first_rows = [groups[k][0] for k in keys]
        global_rows = self._global_rows(len(prompt_ids))
        gens = [
            torch.Generator().manual_seed(mix_seed(self.args.seed, SEARCH_STREAM, mode, self._rollout_index, global_rows[r]))
            for r in first_rows
        ]

        scored: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}  # (prompt, completion) -> [F]

        def reward_fn(p: int, completions: list[torch.Tensor]) -> list[float]:
            row = inputs[first_rows[p]]
            trimmed = [self._trim(c) for c in completions]
            per_func = self.search_rewards_per_func([row] * len(completions), trimmed)
            for ids, values in zip(trimmed, per_func, strict=True):
                scored[(p, tuple(ids))] = values
            return self._weighted_total(per_func)

        t0 = time.perf_counter()
        search = {
            "sampler_config": self.sampler_config, "config": self._search_config(), "mask_token_id": self.mask_token_id,
            "prompt_attention_mask": attn, "generators": gens, "eos_token_id": self.eos_token_id,
            "sync_ranks": self.accelerator.num_processes > 1,
        }
        with self._rollout_model() as unwrapped:
            policy = self.as_dlm(unwrapped)
            if self.args.reference == "initial":
                with self._reference_policy() as ref:
                    results = tree_search(policy, self.as_dlm(ref), ids, reward_fn, **search)
            else:
                results = tree_search(policy, None, ids, reward_fn, **search)
        self.seconds_counts["sampler"] += time.perf_counter() - t0
        # the group's rows: the buffer's best sequences of the row's prompt
        B, L = len(prompt_ids), self.sampler_config.gen_length
        completion = torch.empty(B, L, dtype=torch.long)
        log_ratio = torch.zeros(B, dtype=torch.float64)
        multiplicity = torch.ones(B, dtype=torch.float64)
        for p, key in enumerate(keys):
            rows = groups[key]
            picked, mult = results[p].top(len(rows), self.args.buffer_selection, seed=self._rollout_index)
            for r, i, m in zip(rows, picked, mult, strict=True):
                completion[r] = results[p].buffer[i].completion
                log_ratio[r] = results[p].buffer[i].log_ratio
                multiplicity[r] = m
        completion = completion.to(device)
        if self.eos_token_id is not None:
            is_eos = completion == int(self.eos_token_id)
            completion_mask = ((torch.cumsum(is_eos.long(), 1) - is_eos.long()) == 0).long()
        else:
            completion_mask = torch.ones(B, L, dtype=torch.long, device=device)
        nfe = sum(r.nfe for r in results)
        policy_nfe = nfe // 2 if self.args.reference == "initial" else nfe
        self.nfe_counts["sampler"] += policy_nfe
        self.nfe_counts["ref"] += nfe - policy_nfe
        self._search_rows = {"log_ratio": log_ratio, "multiplicity": multiplicity}
        # the rows' rewards as the search computed them, for _calculate_rewards (no second call per row)
        self._search_row_rewards = [None] * B
        for p, key in enumerate(keys):
            for r in groups[key]:
                ids = self._trim(completion[r].cpu())
                self._search_row_rewards[r] = (ids, scored.get((p, tuple(ids))))
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["search/nfe_per_prompt"].append(nfe / len(results))
        metrics["search/iterations"].append(sum(r.iterations for r in results) / len(results))
        metrics["search/buffer_unique"].append(sum(len(r.buffer) for r in results) / len(results))
        metrics["search/buffer_best_reward"].append(sum(r.best_reward() for r in results) / len(results))
        metrics["search/buffer_mean_reward"].append(
            sum(sum(e.reward for e in r.buffer) / len(r.buffer) for r in results) / len(results)
        )
        steps = self.sampler_config.steps
        self._rollout = SamplerOutput(
            sequences=completion,  # the prompt is not needed downstream
            completion_ids=completion, completion_mask=completion_mask,
            commit_step=torch.full((B, L), -1, dtype=torch.long, device=device), nfe=steps, num_model_calls=steps,
        )
        lengths = completion_mask.sum(1).tolist()
        return [row[: int(n)] for row, n in zip(completion.cpu().tolist(), lengths, strict=True)], None

    def _rewards_from_cache(self, inputs, completion_ids_list) -> torch.Tensor | None:
        """The search's own rewards of this rollout's rows, when TRL asks for exactly those completions (the reward
        functions are not called a second time); ``None`` (TRL recomputes) otherwise."""
        cached, self._search_row_rewards = self._search_row_rewards, None
        if cached is None or len(cached) != len(completion_ids_list):
            return None
        if any(v is None or list(ids) != list(c) for (ids, v), c in zip(cached, completion_ids_list, strict=True)):
            return None
        self.reward_cache_hits += len(cached)
        return torch.stack([v for _, v in cached])

    def _trim(self, completion: torch.Tensor) -> list[int]:
        """A completion's token list up to and including its first EOS (what TRL passes to rewards)."""
        ids = completion.tolist()
        if self.eos_token_id is not None and int(self.eos_token_id) in ids:
            return ids[: ids.index(int(self.eos_token_id)) + 1]
        return ids

    def _log_ratio(self, out: dict) -> torch.Tensor:  # [B]
        """The search's path log-ratio of each row, less the log of its multiplicity when the buffer had fewer
        unique sequences than rows (a sequence repeated m times then carries one sequence's weight)."""
        rows, self._search_rows = self._search_rows, None
        if rows is None:
            raise RuntimeError("TR2D2Trainer: no search result for this rollout")
        ell = rows["log_ratio"] - torch.log(rows["multiplicity"])
        return ell.float().to(self.accelerator.device)


__all__ = ["TR2D2Config", "TR2D2Trainer"]
