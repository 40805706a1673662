"""Prompt curriculum: replay the prompts the policy solves some of the time (``curriculum="replay"``).

A group whose completions are all right, or all wrong, carries no learning signal (its advantages are
0); a prompt the policy solves 10–90 % of the time does. In a short run almost no prompt is drawn twice
(3000 prompts, 32 per step, ~55 steps), so statistics per prompt only help if the informative prompts
are *revisited*. With ``curriculum="replay"``:

* after each training rollout the trainer computes every group's **solve rate** — the fraction of its
  scorable completions whose total (weighted) reward reaches ``curriculum_success_reward`` — and keeps
  the prompts whose last rate lies in ``[curriculum_low, curriculum_high]`` in a :class:`CurriculumPool`;
  a prompt whose rate leaves the range is dropped from it;
* :class:`CurriculumSampler` (in place of TRL's ``RepeatSampler``, with exactly its index structure)
  fills each new generation batch with ``round(curriculum_replay_fraction × prompts per batch)`` prompts
  drawn at random from the pool (when it has that many; fewer otherwise) and the rest from a seeded
  shuffle of the dataset — the very permutation ``RepeatSampler`` would use, so with an empty pool the
  two index streams are identical. A prompt is replayed at most ``curriculum_max_replays`` times, and
  not again before the rollout of its previous replay has been observed.

The dataset index of each row travels in a column (:data:`INDEX_COLUMN`) that the trainer adds to the
training set and strips from the rows before TRL sees them (reward functions never get it). Every rank
iterates the same sampler and applies the same update (the indices and TRL's rewards are gathered over
processes), so every rank holds the same pool and draws the same replays. The dataloader fetches ahead
(the optimizer step's micro-batches and accelerate's one-batch prefetch), so a rollout's feedback
reaches the generation batch after next (a lag of one generation batch). The pool is saved with the
trainer's rollout state in every checkpoint and restored on resume (the replay draws of the batches the
resumed dataloader skips are not repeated, so a resumed run is not token-identical to an uninterrupted
one). Epochs keep ``RepeatSampler``'s length; replays
take the place of fresh prompts, so an epoch leaves up to that fraction of the fresh prompts unseen.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Sequence, Sized

import torch
from torch.utils.data import Sampler

CURRICULA = ("none", "replay")
#: Column the trainer adds to the training set: each row's index in it (stripped before TRL sees the rows).
INDEX_COLUMN = "_dlm_trl_prompt_index"


def group_solve_rates(totals: torch.Tensor, num_generations: int, success: float) -> torch.Tensor:
    """Per group of ``num_generations`` consecutive rows, the fraction of scorable rows (total reward not
    NaN) whose total reward is ``>= success``; NaN for a group with no scorable row. ``totals [N]`` →
    ``[N / num_generations]``."""
    grouped = totals.detach().float().reshape(-1, num_generations)
    scorable = ~grouped.isnan()
    solved = (grouped >= success) & scorable
    n = scorable.sum(1)
    rates = solved.sum(1).float() / n.clamp_min(1).float()
    return rates.masked_fill(n == 0, float("nan"))


class CurriculumPool:
    """The informative prompts (last solve rate in ``[low, high]``) and their replay counts.

    Every rank must apply the same :meth:`observe` calls in the same order (the trainer feeds the
    gathered indices and rewards), so that :meth:`draw` picks the same prompts everywhere.
    """

    def __init__(self, low: float = 0.1, high: float = 0.9, replay_fraction: float = 0.25,
                 max_replays: int = 2, seed: int | None = 0):
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
        if not 0.0 <= replay_fraction < 1.0:
            raise ValueError(f"replay_fraction must lie in [0, 1), got {replay_fraction}")
        if max_replays < 1:
            raise ValueError(f"max_replays must be >= 1, got {max_replays}")
        self.low, self.high = float(low), float(high)
        self.replay_fraction = float(replay_fraction)
        self.max_replays = int(max_replays)
        #: Informative prompts: dataset index -> last observed solve rate.
        self.rates: dict[int, float] = {}
        #: Times each prompt was scheduled for a replay (never reset: the cap holds for the whole run).
        self.replays: Counter[int] = Counter()
        #: Replays scheduled but whose rollout has not been observed yet.
        self.pending: Counter[int] = Counter()
        self.generator = torch.Generator()
        self.generator.manual_seed((0 if seed is None else int(seed)) + 0x5EED)

    def eligible(self) -> list[int]:
        """Pool prompts that may be replayed now (under the cap, no replay in flight), sorted."""
        return sorted(i for i in self.rates if self.replays[i] < self.max_replays and not self.pending[i])

    def __len__(self) -> int:
        """Prompts in the pool: informative and not yet replayed ``max_replays`` times."""
        return len(self.rates)

    def num_replays(self, batch_size: int) -> int:
        """Replay slots of a generation batch of ``batch_size`` prompts (before the pool's size caps it)."""
        return int(self.replay_fraction * batch_size + 0.5)

    def draw(self, batch_size: int, exclude: Sequence[int] = ()) -> list[int]:
        """Prompts to replay in a new generation batch of ``batch_size`` prompts: up to
        :meth:`num_replays` of them, uniformly at random from the eligible ones not in ``exclude``."""
        want = self.num_replays(batch_size)
        skip = set(exclude)
        candidates = [i for i in self.eligible() if i not in skip]
        if want <= 0 or not candidates:
            return []
        order = torch.randperm(len(candidates), generator=self.generator)[:want].tolist()
        chosen = [candidates[j] for j in order]
        for i in chosen:
            self.replays[i] += 1
            self.pending[i] += 1
        return chosen

    def observe(self, indices: Sequence[int], rates: Sequence[float]) -> int:
        """Record one rollout: ``indices[g]`` is the dataset index of group ``g``, ``rates[g]`` its solve
        rate (NaN: no scorable completion, ignored). A prompt enters (or stays in) the pool when its rate
        lies in ``[low, high]`` and leaves it otherwise. Returns how many of the groups were replays."""
        replayed = 0
        for index, rate in zip(indices, rates, strict=True):
            index, rate = int(index), float(rate)
            if self.pending[index]:
                self.pending[index] -= 1
                replayed += 1
            if rate != rate:  # NaN
                continue
            if self.low <= rate <= self.high:
                self.rates[index] = rate
            else:
                self.rates.pop(index, None)
            if self.replays[index] >= self.max_replays and not self.pending[index]:
                self.rates.pop(index, None)  # replayed as often as allowed: out for good
        return replayed

    def state_dict(self) -> dict:
        return {
            "rates": dict(self.rates), "replays": dict(self.replays), "pending": dict(self.pending),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rates = {int(k): float(v) for k, v in state["rates"].items()}
        self.replays = Counter({int(k): int(v) for k, v in state["replays"].items()})
        self.pending = Counter({int(k): int(v) for k, v in state["pending"].items()})
        self.generator.set_state(state["generator"])


class CurriculumSampler(Sampler[int]):
    """TRL's ``RepeatSampler`` index structure — each prompt index ``mini_repeat_count`` times in a row,
    in chunks of ``batch_size`` prompts, each chunk ``repeat_count`` times — with each chunk decided only
    when its first index is requested: ``pool.draw`` replays, the rest from a seeded permutation of the
    dataset (``RepeatSampler``'s: same seed, same generator use, so an empty pool gives its stream).
    ``len()`` is ``RepeatSampler``'s."""

    def __init__(
        self,
        data_source: Sized,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
        pool: CurriculumPool | None = None,
    ):
        self.data_source = data_source
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_samples = len(data_source)
        self.shuffle = shuffle
        self.seed = seed
        self.pool = pool if pool is not None else CurriculumPool(seed=seed)
        if shuffle:
            self.generator = torch.Generator()  # as RepeatSampler: a local generator, seeded when a seed is given
            if seed is not None:
                self.generator.manual_seed(seed)

    def _chunks(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        else:
            order = list(range(self.num_samples))
        fresh = deque(order)
        bs = self.batch_size
        for _ in range(self.num_samples // bs):
            chunk = [fresh.popleft() for _ in range(bs - min(self.pool.num_replays(bs), bs))]
            replays = self.pool.draw(bs, exclude=chunk)
            taken, skipped = set(replays), []
            while len(chunk) + len(replays) < bs:  # the pool had fewer: fill up with fresh prompts
                index = fresh.popleft()
                (skipped if index in taken else chunk).append(index)
            fresh.extendleft(reversed(skipped))
            yield chunk + replays

    def __iter__(self) -> Iterator[int]:
        for chunk in self._chunks():
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return (self.num_samples // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count


class _CurriculumMixin:
    """The trainer side: the index column, the sampler and the pool update after each training rollout."""

    def _setup_curriculum(self) -> None:
        """Called at the end of ``__init__``: tag each training row with its index (``INDEX_COLUMN``)."""
        self._curriculum_pool: CurriculumPool | None = None
        args = self.args
        if args.curriculum == "none":
            return
        dataset = self.train_dataset
        if dataset is None:
            return
        if INDEX_COLUMN in (getattr(dataset, "column_names", None) or ()):
            raise ValueError(f"the training set already has a column {INDEX_COLUMN!r}; rename it for curriculum")
        self.train_dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
        self._curriculum_pool = CurriculumPool(
            low=args.curriculum_low, high=args.curriculum_high, replay_fraction=args.curriculum_replay_fraction,
            max_replays=args.curriculum_max_replays, seed=args.seed,
        )

    def _curriculum_sampler(self, dataset) -> CurriculumSampler:
        """``RepeatSampler``'s arguments as TRL's ``_get_train_sampler`` sets them, plus the pool."""
        return CurriculumSampler(
            data_source=dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
            pool=self._curriculum_pool,
        )

    @staticmethod
    def _strip_curriculum_index(inputs: list[dict]) -> tuple[list[dict], list[int] | None]:
        """The rows without :data:`INDEX_COLUMN`, and their indices (``None`` when the rows have none)."""
        if not inputs or not isinstance(inputs[0], dict) or INDEX_COLUMN not in inputs[0]:
            return inputs, None
        indices = [int(row[INDEX_COLUMN]) for row in inputs]
        return [{k: v for k, v in row.items() if k != INDEX_COLUMN} for row in inputs], indices

    def _update_curriculum(self, local_indices: list[int] | None) -> None:
        """After a training rollout: the solve rate of every process's groups updates the pool (the same
        update on every rank); logs ``curriculum/pool_size`` and ``curriculum/replayed_fraction``."""
        pool = self._curriculum_pool
        if pool is None or not self.model.training:
            return
        if local_indices is None:
            raise RuntimeError(
                f"curriculum={self.args.curriculum!r}: the training rows carry no {INDEX_COLUMN!r} column; was "
                "trainer.train_dataset replaced after the trainer was built? Build a new trainer instead."
            )
        device = self.accelerator.device
        indices = self.accelerator.gather(torch.tensor(local_indices, dtype=torch.long, device=device)).tolist()
        rewards, G = self._last_rewards, self.num_generations
        if rewards is None or rewards.shape[0] != len(indices) or len(indices) % G:
            raise RuntimeError(
                f"curriculum: {len(indices)} gathered prompt indices for "
                f"{None if rewards is None else rewards.shape[0]} rewards (num_generations={G})"
            )
        total = self._total_rewards(rewards)  # [N] (flat_groups.py; NaN: unscorable)
        rates = group_solve_rates(total, G, self.args.curriculum_success_reward).tolist()  # [N/G]
        groups = indices[::G]
        if any(indices[g * G : (g + 1) * G] != [groups[g]] * G for g in range(len(groups))):
            raise RuntimeError("curriculum: a group's rows come from different prompts (sampler order broken)")
        replayed = pool.observe(groups, rates)
        metrics = self._metrics["train"]
        metrics["curriculum/pool_size"].append(float(len(pool)))
        metrics["curriculum/replayed_fraction"].append(replayed / max(1, len(groups)))
