"""Reward lookup through entry points (incl. a third-party distribution) and the checked wrapper."""

from __future__ import annotations

import asyncio
import importlib
import sys
import textwrap

import pytest

from dlm_trl import registry
from dlm_trl.rewards import RewardError, checked_reward, reset_reward_metrics, resolve_rewards, reward_metrics

FIRST_PARTY = ["code_unit_tests", "countdown", "format", "gsm8k_accuracy", "math_accuracy", "sudoku"]


@pytest.fixture
def foo_distribution(tmp_path, monkeypatch):
    """A distribution 'foo' (not installed, just on sys.path) registering reward 'foo_length'."""
    (tmp_path / "foo_rewards.py").write_text(
        textwrap.dedent(
            """
            def length_reward(prompts, completions, **columns):
                return [float(len(c)) for c in completions]
            """
        )
    )
    info = tmp_path / "foo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: foo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dlm_trl.rewards]\nfoo_length = foo_rewards:length_reward\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("foo_rewards", None)


def test_first_party_rewards_are_registered():
    # An entry point added to pyproject.toml is only visible after `pip install -e .`; if this fails
    # right after editing pyproject.toml, reinstall the package.
    assert set(FIRST_PARTY) <= set(registry.available(registry.REWARDS))


def test_third_party_reward_found_by_name(foo_distribution):
    fn = registry.load_reward("foo_length")
    assert fn(None, ["ab", "abcd"]) == [2.0, 4.0]
    [wrapped] = resolve_rewards(["foo_length"])
    assert wrapped.__name__ == "length_reward"  # TRL logs rewards under __name__
    assert wrapped(None, ["abc"]) == [3.0]


def test_describe_gives_each_plugin_one_line(foo_distribution, tmp_path, capsys):
    from dlm_trl.cli import main

    # no docstring: says so; a docstring: its first paragraph on one line; a broken plugin: its error
    assert "no docstring" in registry.describe(registry.REWARDS, "foo_length")
    (tmp_path / "foo_broken.py").write_text("raise RuntimeError('boom at import')\n")
    ep = tmp_path / "foo-0.1.dist-info" / "entry_points.txt"
    ep.write_text(ep.read_text() + "foo_broken = foo_broken:reward\n")
    assert "fails to import" in registry.describe(registry.REWARDS, "foo_broken")
    assert "boom at import" in registry.describe(registry.REWARDS, "foo_broken")
    desc = registry.describe(registry.ESTIMATORS, "double_mc_elbo")
    assert "\n" not in desc and desc.startswith("K random times")  # the "``name``: " prefix is dropped
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in FIRST_PARTY + ["sdmc_elbo", "foo_length", "foo_broken"]:
        line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == name)
        assert len(line.split(None, 1)) == 2  # every plugin has a description
    sys.modules.pop("foo_broken", None)


def test_unknown_name_suggests_the_closest(foo_distribution):
    with pytest.raises(registry.PluginNotFoundError, match="Did you mean 'foo_length'"):
        registry.load_reward("foo_lenght")
    with pytest.raises(registry.PluginNotFoundError, match="Did you mean 'math_accuracy'"):
        resolve_rewards(["math_acuracy"])


def test_resolve_mixes_names_paths_and_callables():
    def mine(prompts, completions, **kw):
        return [0.5] * len(completions)

    out = resolve_rewards(["format", "dlm_trl_rewards.sudoku:sudoku_reward", mine])
    assert [f.__name__ for f in out] == ["format_reward", "sudoku_reward", "mine"]
    assert out[2](None, ["x"]) == [0.5]
    plain = resolve_rewards("format", on_error=None)
    assert plain[0].__module__ == "dlm_trl_rewards.format"
    with pytest.raises(TypeError, match="name or a callable"):
        resolve_rewards([42])


# ----------------------------------------------------------------------------- checked_reward


def _divide(prompts, completions, divisor, **kw):
    return [1.0 / d for d in divisor]


def test_raise_names_reward_row_and_cause():
    reward = checked_reward(_divide, "divide")
    assert reward(None, ["a", "b"], divisor=[1, 2]) == [1.0, 0.5]
    with pytest.raises(RewardError, match=r"reward 'divide' failed on row 2: raised ZeroDivisionError"):
        reward(None, ["a", "b", "c"], divisor=[1, 2, 0])


def test_wrong_length_and_non_sequences():
    reward = checked_reward(lambda p, c, **k: [1.0], "short")
    with pytest.raises(RewardError, match=r"'short' failed on a batch .*returned 1 scores for 2 completions"):
        reward(None, ["a", "b"])
    reward = checked_reward(lambda p, c, **k: 1.0, "scalar")
    with pytest.raises(RewardError, match="returned float, not a list of 2 scores"):
        reward(None, ["a", "b"])


@pytest.mark.parametrize(
    "bad, cause",
    [
        (float("nan"), "returned nan"),
        (float("inf"), "returned inf"),
        ("1.0", "returned str '1.0', not a number"),
        ([1.0], "returned list"),
    ],
)
def test_invalid_values_name_the_row(bad, cause):
    reward = checked_reward(lambda p, c, **k: [1.0, bad, 0.0], "values")
    with pytest.raises(RewardError, match=rf"'values' failed on row 1: {cause}"):
        reward(None, ["a", "b", "c"])


def test_none_and_zero_modes_score_and_count(caplog):
    reset_reward_metrics()
    as_none = checked_reward(_divide, "divide_none", on_error="none")
    assert as_none(None, ["a", "b", "c"], divisor=[1, 0, 4]) == [1.0, None, 0.25]
    as_zero = checked_reward(lambda p, c, **k: [float("nan"), 2], "nan_zero", on_error="zero")
    assert as_zero(None, ["a", "b"]) == [0.0, 2.0]
    metrics = reward_metrics()
    assert metrics["divide_none"] == {"calls": 1, "rows": 3, "failed_calls": 1, "bad_rows": 1}
    assert metrics["nan_zero"]["bad_rows"] == 1
    assert "reward 'divide_none': 1 of 3 rows scored None (row 1: raised ZeroDivisionError" in caplog.text


def test_none_is_a_valid_score_and_scalars_are_converted():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    reward = checked_reward(lambda p, c, **k: [None, True, np.float32(0.5), torch.tensor(2.0)], "mixed")
    assert reward(None, list("abcd")) == [None, 1.0, 0.5, 2.0]


def test_per_row_retry_does_not_log_twice():
    calls = []

    def flaky(prompts, completions, answer, log_metric=None, **kw):
        log_metric("seen", len(completions))
        if len(completions) > 1:
            raise RuntimeError("only fails on batches")
        return [1.0]

    reward = checked_reward(flaky, "flaky", on_error="zero")
    assert reward(["p1", "p2"], ["a", "b"], answer=["x", "y"], log_metric=lambda k, v: calls.append(v)) == [
        1.0,
        1.0,
    ]
    assert calls == [2]  # the one-row re-runs got a no-op log_metric
    with pytest.raises(RewardError, match="failed on a batch .*only fails on batches"):
        checked_reward(flaky, "flaky")(
            ["p1", "p2"], ["a", "b"], answer=["x", "y"], log_metric=lambda k, v: None
        )


def test_async_rewards_stay_async():
    from trl.trainer.utils import get_callable_name, is_async_callable

    async def judge(prompts, completions, **kw):
        return [float("nan")] * len(completions)

    reward = checked_reward(judge, on_error="none")
    assert is_async_callable(reward) and get_callable_name(reward) == "judge"
    assert asyncio.run(reward(None, ["a"])) == [None]
    sync = checked_reward(_divide)
    assert not is_async_callable(sync) and get_callable_name(sync) == "_divide"


def test_every_installed_reward_passes_the_contract():
    """One call per first-party reward with a tiny batch through the checked wrapper."""
    batch = {
        "math_accuracy": (["<answer>2</answer>"], {"answer": ["#### 2"]}, [1.0]),
        "gsm8k_accuracy": (["<answer>2</answer>"], {"answer": ["#### 2"]}, [1.0]),
        "countdown": (["<answer>1+2</answer>"], {"numbers": [[1, 2]], "target": [3]}, [1.0]),
        "sudoku": (["<answer>1234</answer>"], {"puzzle": ["1030"], "solution": ["1234"]}, [1.0]),
        "format": (["<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>\n"], {}, [1.0]),
        "code_unit_tests": (
            ["    return a + b\n"],
            {
                "code_prefix": ["def add(a, b):\n"],
                "test": ["def check(c):\n    assert c(1, 2) == 3\n"],
                "entry_point": ["add"],
            },
            [1.0],
        ),
    }
    for name in FIRST_PARTY:
        completions, columns, expected = batch[name]
        [reward] = resolve_rewards([name])
        assert reward(["prompt"], completions, trainer_state=None, **columns) == expected, name
        chat = [[{"role": "assistant", "content": c}] for c in completions]
        assert reward(["prompt"], chat, **columns) == expected, name
