"""``curriculum="replay"``: revisit the prompts the policy solves 10–90 % of the time.

* with ``curriculum="none"`` the trainer's sampler is TRL's ``RepeatSampler`` (same index stream);
* the curriculum sampler has ``RepeatSampler``'s structure, and with an empty pool its very stream;
* the pool: only groups with a solve rate in range enter it, replays fill the configured fraction of
  later generation batches, no prompt is replayed more than the cap, prompts leaving the range go;
* a short training run replays a prompt of its first rollout in its second, logs ``curriculum/*``
  and never shows the index column to the reward functions;
* two ranks hold the same pool and draw the same replays (slow, torchrun);
* config errors say what to fix.
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from test_trainers import _one_thread, dataset, make_model, make_trainer, tokenizer  # noqa: F401
from test_trainers_distributed import run_two_ranks
from trl.trainer.utils import RepeatSampler

from dlm_trl.trainers import DiffuGRPOConfig, DMPOConfig, GDPOConfig, GDPOTrainer
from dlm_trl.trainers.curriculum import INDEX_COLUMN, CurriculumPool, CurriculumSampler, group_solve_rates

BASE = dict(use_cpu=True, bf16=False, report_to="none", gen_length=8, block_length=4, diffusion_steps=4)


def _repeat_args(sampler):
    return dict(mini_repeat_count=sampler.mini_repeat_count, batch_size=sampler.batch_size,
                repeat_count=sampler.repeat_count, shuffle=sampler.shuffle, seed=sampler.seed)


# ---------------------------------------------------------------- the trainer's sampler


def test_curriculum_none_keeps_trls_repeat_sampler(tokenizer, dataset, tmp_path):  # noqa: F811
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path)
    sampler = trainer._get_train_sampler()
    assert type(sampler) is RepeatSampler
    assert INDEX_COLUMN not in trainer.train_dataset.column_names
    reference = RepeatSampler(trainer.train_dataset, **_repeat_args(sampler))
    assert list(sampler) == list(reference) and len(sampler) == len(reference)


def test_curriculum_replay_swaps_in_its_sampler(tokenizer, dataset, tmp_path):  # noqa: F811
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path, curriculum="replay")
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, CurriculumSampler) and sampler.pool is trainer._curriculum_pool
    # TRL's arguments: G repeats, generation batch / G prompts, μ · steps_per_generation chunk repeats
    args = trainer.args
    assert sampler.mini_repeat_count == args.num_generations
    assert sampler.batch_size == args.generation_batch_size // args.num_generations
    assert sampler.repeat_count == args.num_iterations * args.steps_per_generation
    assert trainer.train_dataset[INDEX_COLUMN] == list(range(len(dataset)))
    assert INDEX_COLUMN not in dataset.column_names  # the caller's dataset is left alone
    reference = RepeatSampler(trainer.train_dataset, **_repeat_args(sampler))
    assert list(sampler) == list(reference)  # empty pool: TRL's stream


# ---------------------------------------------------------------- sampler structure


@pytest.mark.parametrize(
    "n, G, bs, repeat, shuffle, seed",
    [(7, 2, 3, 4, True, 0), (12, 3, 4, 2, True, 5), (10, 1, 2, 1, False, None), (9, 4, 9, 3, True, 1),
     (5, 2, 6, 1, True, 0)],
)
def test_empty_pool_stream_is_repeat_samplers(n, G, bs, repeat, shuffle, seed):
    data = list(range(n))
    ours = CurriculumSampler(data, G, batch_size=bs, repeat_count=repeat, shuffle=shuffle, seed=seed)
    trl = RepeatSampler(data, G, batch_size=bs, repeat_count=repeat, shuffle=shuffle, seed=seed)
    for _epoch in range(3):  # the generator carries over between epochs in both
        stream = list(ours)
        assert stream == list(trl) and len(stream) == len(ours) == len(trl)


def test_structure_and_seeding():
    data = list(range(20))
    stream = list(CurriculumSampler(data, 3, batch_size=4, repeat_count=2, seed=7))
    assert len(stream) == 5 * 4 * 3 * 2
    chunks = [stream[i : i + 24] for i in range(0, len(stream), 24)]
    for chunk in chunks:
        assert chunk[:12] == chunk[12:]  # each chunk repeat_count times
        prompts = chunk[:12:3]
        assert chunk[:12] == [i for i in prompts for _ in range(3)]  # each prompt G times in a row
        assert len(set(prompts)) == 4
    assert sorted(i for c in chunks for i in c[:12:3]) == data  # a permutation of the dataset
    assert stream == list(CurriculumSampler(data, 3, batch_size=4, repeat_count=2, seed=7))
    assert stream != list(CurriculumSampler(data, 3, batch_size=4, repeat_count=2, seed=8))


# ---------------------------------------------------------------- the pool


def test_group_solve_rates():
    G = 4
    totals = torch.tensor([
        0.0, 0.1, 0.1, 0.0,  # never solved: 0
        1.0, 1.1, 0.1, 0.0,  # half: 0.5
        1.0, 1.0, 1.0, 1.0,  # always: 1
        1.0, math.nan, 0.0, math.nan,  # unscorable rows do not count: 1 of 2
        math.nan, math.nan, math.nan, math.nan,  # nothing scorable: NaN
    ])
    rates = group_solve_rates(totals, G, success=1.0)
    assert rates[:4].tolist() == [0.0, 0.5, 1.0, 0.5] and math.isnan(rates[4])


def _chunks(sampler, G):
    """The sampler's chunks (prompt lists), decided one at a time as the stream is consumed."""
    it = iter(sampler)
    per_chunk = sampler.batch_size * G * sampler.repeat_count
    while True:
        rows = [next(it, None) for _ in range(per_chunk)]
        if rows[0] is None:
            return
        yield rows[: sampler.batch_size * G : G]


def test_only_informative_groups_enter_the_pool_and_replays_fill_the_fraction():
    G, bs = 2, 4
    pool = CurriculumPool(low=0.1, high=0.9, replay_fraction=0.5, max_replays=2, seed=0)
    sampler = CurriculumSampler(list(range(40)), G, batch_size=bs, repeat_count=1, seed=0, pool=pool)
    chunks = _chunks(sampler, G)
    first = next(chunks)
    assert len(set(first)) == bs
    # groups solved 0 / 2, 1 / 2, 2 / 2 and 1 / 2 times: only the 0.5 ones are informative
    totals = torch.tensor([0.0, 0.1, 1.0, 0.1, 1.0, 1.0, 0.0, 1.0])
    replayed = pool.observe(first, group_solve_rates(totals, G, 1.0).tolist())
    assert replayed == 0 and set(pool.rates) == {first[1], first[3]} and len(pool) == 2
    second = next(chunks)
    assert len(set(second)) == bs
    assert set(second[2:]) == {first[1], first[3]}  # round(0.5 · 4) = 2 replays; the rest fresh
    assert not set(second[:2]) & set(first)
    assert pool.eligible() == []  # in flight: not replayed again before their rollout is observed
    # the replays' rollout: one still informative, one now always solved (leaves the pool)
    assert pool.observe(second, [0.0, 0.0, 0.5, 1.0]) == 2
    assert set(pool.rates) == {second[2]}
    third = next(chunks)
    assert third.count(second[2]) == 1 and second[3] not in third
    assert len(set(third)) == bs


def test_no_prompt_is_replayed_more_than_the_cap():
    G, bs, cap = 2, 4, 2
    pool = CurriculumPool(replay_fraction=0.5, max_replays=cap, seed=3)
    sampler = CurriculumSampler(list(range(400)), G, batch_size=bs, repeat_count=2, seed=3, pool=pool)
    seen: dict[int, int] = {}
    for chunk in _chunks(sampler, G):
        assert len(set(chunk)) == bs
        for i in chunk:
            seen[i] = seen.get(i, 0) + 1
        pool.observe(chunk, [0.5] * bs)  # every prompt stays informative
    assert max(seen.values()) == 1 + cap
    assert all(pool.replays[i] <= cap for i in seen)
    assert sum(n - 1 for n in seen.values()) == sum(pool.replays.values())
    # the replay slots were used: after the first chunk, half of every chunk is a replay
    assert sum(pool.replays.values()) == (100 - 1) * bs // 2
    assert len(sampler) == 100 * bs * G * 2


def test_replay_fraction_rounds_and_a_small_pool_gives_fewer_replays():
    pool = CurriculumPool(replay_fraction=0.25, max_replays=1, seed=0)
    assert [pool.num_replays(b) for b in (1, 2, 4, 6, 32)] == [0, 1, 1, 2, 8]
    sampler = CurriculumSampler(list(range(64)), 1, batch_size=32, seed=0, pool=pool)
    chunks = _chunks(sampler, 1)
    first = next(chunks)
    pool.observe(first, [0.5, 0.5, 0.5] + [1.0] * 29)  # three informative prompts, eight slots
    second = next(chunks)
    assert set(second) & set(first) == set(first[:3]) and len(set(second)) == 32


def test_pool_state_round_trips():
    pool = CurriculumPool(replay_fraction=0.5, seed=0)
    pool.observe([3, 4, 5], [0.5, 0.2, 0.95])
    pool.draw(2)
    clone = CurriculumPool(replay_fraction=0.5, seed=9)
    clone.load_state_dict(pool.state_dict())
    assert clone.rates == pool.rates and clone.replays == pool.replays and clone.pending == pool.pending
    pool.observe([3, 4], [0.5, 0.5])
    clone.observe([3, 4], [0.5, 0.5])
    assert clone.draw(4) == pool.draw(4)


def test_checkpointed_rollout_state_keeps_the_pool(tokenizer, dataset, tmp_path):  # noqa: F811
    trainer = make_trainer("gdpo", tokenizer, dataset, tmp_path / "a", curriculum="replay")
    trainer._curriculum_pool.observe([1, 2, 3], [0.5, 0.0, 0.25])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    trainer._save_rollout_state(str(ckpt))
    resumed = make_trainer("gdpo", tokenizer, dataset, tmp_path / "b", curriculum="replay")
    assert resumed._curriculum_pool.rates == {}
    resumed._load_rollout_state(str(ckpt))
    assert resumed._curriculum_pool.rates == {1: 0.5, 3: 0.25}


# ---------------------------------------------------------------- training


def half_solved(prompts, completions, **kwargs):
    """1.0 for every other row: each group of an even G is solved half of the time (informative)."""
    assert INDEX_COLUMN not in kwargs
    half_solved.calls.append(list(prompts))
    return [1.0 if j % 2 == 0 else 0.0 for j in range(len(completions))]


def test_training_replays_a_prompt_of_the_first_rollout(tokenizer, dataset, tmp_path):  # noqa: F811
    # 2 prompts per generation batch, each chunk read twice (μ = 2): rollouts at steps 1 and 3; the second
    # generation batch is decided after the first rollout (the dataloader prefetches within a chunk only).
    half_solved.calls = []
    args = GDPOConfig(
        output_dir=str(tmp_path / "gdpo"), per_device_train_batch_size=4, num_generations=2,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=2, max_steps=3,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0,
        curriculum="replay", curriculum_replay_fraction=0.5, **BASE,
    )
    trainer = GDPOTrainer(model=make_model(tokenizer), reward_funcs=[half_solved], args=args,
                          train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 3
    assert len(half_solved.calls) == 2
    first, second = ([p for p in prompts[::2]] for prompts in half_solved.calls)
    assert len(first) == len(second) == 2
    assert sum(p in first for p in second) == 1  # one replay (round(0.5 · 2)), one fresh prompt
    logs = [h for h in trainer.state.log_history if "curriculum/pool_size" in h]
    assert [h["curriculum/replayed_fraction"] for h in logs] == [0.0, 0.5]
    assert logs[0]["curriculum/pool_size"] == 2.0  # both groups of the first rollout: solve rate 0.5
    assert sum(trainer._curriculum_pool.replays.values()) >= 1


# ---------------------------------------------------------------- several processes (slow)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, os.environ["DLM_TEST_DIR"])
    from test_trainers import make_model
    from dlm_trl.models.tiny.train import build_tokenizer
    from dlm_trl.tasks import get_task
    from dlm_trl.trainers import GDPOConfig, GDPOTrainer

    def reward(prompts, completions, **kwargs):
        return [1.0 if sum(map(ord, str(p))) % 2 else float(j % 2) for j, p in enumerate(prompts)]

    rows = get_task("countdown").rows("train", 40, seed=1)
    tok = build_tokenizer([r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows], 300)
    args = GDPOConfig(
        output_dir=os.environ["DLM_TEST_OUT"], per_device_train_batch_size=2, num_generations=2,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=2, max_steps=5, gen_length=8,
        block_length=4, diffusion_steps=4, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, seed=0, curriculum="replay", curriculum_replay_fraction=0.5,
    )
    trainer = GDPOTrainer(model=make_model(tok), reward_funcs=[reward], args=args,
                          train_dataset=get_task("countdown").dataset("train", 16, seed=0), processing_class=tok)
    seen = []
    original = trainer._update_curriculum
    def recording(local):
        seen.append(local)
        original(local)
    trainer._update_curriculum = recording
    trainer.train()
    pool = trainer._curriculum_pool
    with open(os.path.join(os.environ["DLM_TEST_OUT"], f"rank{trainer.accelerator.process_index}.json"), "w") as f:
        json.dump({"seen": seen, "rates": pool.rates, "replays": pool.replays}, f)
    """
)


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_hold_the_same_pool(tmp_path):
    ranks = run_two_ranks(SCRIPT, tmp_path)
    assert ranks[0]["rates"] == ranks[1]["rates"] and ranks[0]["replays"] == ranks[1]["replays"]
    assert sum(ranks[0]["replays"].values()) >= 1  # something was replayed
    # each rank holds one of the generation batch's two prompts (its G = 2 rows)
    for local0, local1 in zip(ranks[0]["seen"], ranks[1]["seen"], strict=True):
        assert len(set(local0)) == len(set(local1)) == 1 and local0 != local1


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("config_cls", [DiffuGRPOConfig, GDPOConfig, DMPOConfig])
def test_every_config_has_the_curriculum_off_by_default(config_cls, tmp_path):
    args = config_cls(output_dir=str(tmp_path), **BASE)
    assert args.curriculum == "none"
    assert (args.curriculum_low, args.curriculum_high) == (0.1, 0.9)
    assert args.curriculum_replay_fraction == 0.25 and args.curriculum_max_replays == 2
    assert args.curriculum_success_reward == 1.0


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"curriculum": "replya"}, r"unknown curriculum='replya'.*Did you mean 'replay'"),
        ({"curriculum_low": 0.8, "curriculum_high": 0.2}, r"curriculum_low=0.8 and curriculum_high=0.2 must satisfy"),
        ({"curriculum_high": 1.5}, r"curriculum_high=1.5 must satisfy 0 <= curriculum_low"),
        ({"curriculum_replay_fraction": 1.0}, r"curriculum_replay_fraction=1.0 must lie in \[0, 1\)"),
        ({"curriculum_replay_fraction": -0.1}, r"curriculum_replay_fraction=-0.1"),
        ({"curriculum_max_replays": 0}, r"curriculum_max_replays=0 must be an integer >= 1"),
        ({"curriculum": "replay", "remove_unused_columns": True}, r"remove_unused_columns=True is not supported"),
    ],
)
def test_config_errors_say_what_to_fix(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        GDPOConfig(output_dir=str(tmp_path), **BASE, **overrides)


def test_command_line_flags_parse(tmp_path):
    from trl import TrlParser

    (args,) = TrlParser((GDPOConfig,)).parse_args_and_config([
        "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--gen_length", "8",
        "--block_length", "4", "--curriculum", "replay", "--curriculum_low", "0.2", "--curriculum_high", "0.8",
        "--curriculum_replay_fraction", "0.5", "--curriculum_max_replays", "3", "--curriculum_success_reward", "0.9",
    ])
    assert (args.curriculum, args.curriculum_low, args.curriculum_high) == ("replay", 0.2, 0.8)
    assert (args.curriculum_replay_fraction, args.curriculum_max_replays, args.curriculum_success_reward) == (0.5, 3, 0.9)


def test_iterable_training_set_is_refused(tokenizer, dataset, tmp_path):  # noqa: F811
    args = GDPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=4,
                      curriculum="replay", **BASE)
    with pytest.raises(ValueError, match="curriculum='replay' needs a map-style training set"):
        GDPOTrainer(model=make_model(tokenizer), reward_funcs=[half_solved], args=args,
                    train_dataset=dataset.to_iterable_dataset(), processing_class=tokenizer)
