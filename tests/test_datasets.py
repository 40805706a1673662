"""File tasks read datasets by name or path, the shared benchmark files, or the shipped fixtures.

Offline throughout (conftest sets HF_HUB_OFFLINE=1): Hugging Face loading is exercised with a stand-in
for ``datasets.load_dataset``, plus one real offline call for the "unreachable name" error.
"""

from __future__ import annotations

import json
import logging

import pytest

from dlm_trl.cli import main
from dlm_trl.models import TINY_CHECKPOINT_DIR
from dlm_trl.tasks import DataSource, data_kwargs, get_task, sources
from dlm_trl.tasks import math as math_task

FILE_TASKS = ("gsm8k", "math", "humaneval", "mbpp")
FIXTURE_ROWS = {  # (train file rows, test rows)
    "gsm8k": (40, 20), "math": (20, 12), "humaneval": (0, 12), "mbpp": (15, 10),
}
needs_tiny = pytest.mark.skipif(
    not (TINY_CHECKPOINT_DIR / "model.safetensors").exists(), reason="embedded checkpoint missing"
)


@pytest.fixture
def no_shared(monkeypatch):
    """A clean clone: no ../shared/data, no DLM_TRL_DATA_DIR."""
    monkeypatch.setattr(sources, "shared_candidates", lambda: [])
    monkeypatch.setattr(sources, "_warned", set())


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------ fixtures


def test_fixtures_are_small_licensed_and_documented():
    files = [p for p in sources.FIXTURE_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 300_000
    readme = (sources.FIXTURE_DIR / "README.md").read_text()
    for task in FILE_TASKS:
        assert f"`{task}/`" in readme
    for task in ("gsm8k", "humaneval"):
        assert "MIT License" in (sources.FIXTURE_DIR / task / "LICENSE").read_text()
    assert readme.count("Apache-2.0") == 2  # math/ and mbpp/ were written for dlm-trl


@pytest.mark.parametrize("task", FILE_TASKS)
def test_every_file_task_runs_on_its_fixture_without_shared_data(task, no_shared, caplog):
    n_train, n_test = FIXTURE_ROWS[task]
    t = get_task(task)
    with caplog.at_level(logging.WARNING, logger="dlm_trl.tasks.sources"):
        rows = t.rows("test", None)
    assert len(rows) == n_test and all(c in rows[0] for c in t.columns)
    assert rows[0]["prompt"][0]["role"] == "user"
    assert "small fixture" in caplog.text and "not for reporting" in caplog.text
    assert t.rows("test", 3, seed=1) == t.rows("test", 3, seed=1) and len(t.rows("test", 3, seed=1)) == 3
    if n_train:
        train, val = t.rows("train", None), t.rows("validation", None)
        assert len(train) + len(val) == n_train and len(val) == n_train // 10
        assert {r["prompt"][0]["content"] for r in train}.isdisjoint(r["prompt"][0]["content"] for r in val)
    else:  # HumanEval has a test split only
        with pytest.raises(FileNotFoundError, match="--dataset"):
            t.rows("train", None)


@pytest.mark.parametrize("task", ["gsm8k", "math"])
def test_fixture_golds_score_one_and_perturbed_answers_zero(task, no_shared):
    t = get_task(task)
    for split in ("train", "validation", "test"):
        rows = t.rows(split, None)
        assert t.correct([r["reference"] for r in rows], rows) == [True] * len(rows)
        if task == "gsm8k":  # the number plus one
            wrong = [f"<answer>\n{float(r['target']) + 1:g}\n</answer>" for r in rows]
        else:  # each row answered with the next row's answer (the answers of a MATH fixture split all differ)
            answers = [r["reference"].split("<answer>\n", 1)[1] for r in rows]
            wrong = [f"<answer>\n{a}" for a in answers[1:] + answers[:1]]
        assert t.correct(wrong, rows) == [False] * len(rows), split


def test_shared_data_is_preferred_when_present(tmp_path, monkeypatch):
    rows = [{"question": f"q{i}?", "answer": f"so\n#### {i}"} for i in range(3)]
    _jsonl(tmp_path / "gsm8k" / "test.jsonl", rows)
    monkeypatch.setenv("DLM_TRL_DATA_DIR", str(tmp_path))
    assert [r["question"] for r in get_task("gsm8k").rows("test", None)] == ["q0?", "q1?", "q2?"]


# ------------------------------------------------------------------------------------------ by path


def test_local_files_jsonl_json_parquet_and_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(4)]
    jsonl = _jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.json", "c.parquet"):
        got = math_task.load_rows("test", dataset=DataSource(str(tmp_path / name)))
        assert [r["answer"] for r in got] == ["0", "2", "4", "6"], name
    # a folder: <split>.<ext>, or <task>/<split>.<ext>; --dataset-split picks another file
    _jsonl(tmp_path / "d" / "math" / "dev.jsonl", rows[:2])
    assert len(math_task.load_rows("test", dataset=DataSource(str(tmp_path / "d"), test_split="dev"))) == 2
    src = DataSource.from_options(str(jsonl), split="whatever", for_split="test")
    assert len(get_task("math").rows("test", None, dataset=src)) == 4  # a file is the split itself


def test_column_mapping_and_options(tmp_path):
    rows = [{"q": "Compute 2+2.", "final": "4", "src": "x"}, {"q": "Compute 3*3.", "final": "9", "src": "y"}]
    path = _jsonl(tmp_path / "m.jsonl", rows)
    src = DataSource.from_options(str(path), columns="problem=q, answer=final")
    assert src.columns == (("problem", "q"), ("answer", "final"))
    got = get_task("math").rows("test", None, dataset=src)
    assert [r["answer"] for r in got] == ["4", "9"] and "Compute 2+2." in got[0]["prompt"][0]["content"]
    assert DataSource.from_options(None) is None
    assert DataSource.from_options("x", split="dev", for_split="validation") == DataSource("x", train_split="dev")
    assert DataSource.from_options("x", columns={"a": "b"}).columns == (("a", "b"),)
    with pytest.raises(ValueError, match="TASK_COLUMN=DATASET_COLUMN"):
        DataSource.from_options("x", columns="problem")
    with pytest.raises(ValueError, match="generated"):
        data_kwargs("countdown", None, src)
    assert data_kwargs("countdown", "/some/dir") == {} and data_kwargs("gsm8k", None, src) == {"dataset": src}


# ------------------------------------------------------------------------------------------ by name


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset`` replaced by a stand-in serving ``fake_hub[(name, config)][split]``."""
    import datasets

    served: dict = {}
    calls: list = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if (name, config) not in served:
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")
        splits = served[(name, config)]
        if split not in splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {sorted(splits)}.')
        return datasets.Dataset.from_list(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    sources._hub_rows.cache_clear()
    yield served, calls
    sources._hub_rows.cache_clear()


def test_hub_dataset_by_name_is_cached_and_mapped(fake_hub):
    served, calls = fake_hub
    train = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(20)]
    served[("org/gsm", "main")] = {"train": train, "test": train[:3]}
    src = DataSource("org/gsm", "main")
    t = get_task("gsm8k")
    assert [r["question"] for r in t.rows("validation", None, dataset=src)] == ["q18", "q19"]
    assert len(t.rows("train", None, dataset=src)) == 18 and len(t.rows("test", None, dataset=src)) == 3
    assert calls == [("org/gsm", "main", "train"), ("org/gsm", "main", "test")]  # train read once: cached
    served[("org/mbpp", None)] = {"test": [{"task_id": 7, "prompt": "Add two numbers.", "test_imports": [],
                                            "test_list": ["assert add(1, 2) == 3"], "code": "def add(a, b): return a+b"}]}
    rows = get_task("mbpp").rows("test", None, dataset=DataSource.from_options(
        "org/mbpp", columns="text=prompt,test_setup_code=test_imports"))
    assert rows[0]["entry_point"] == "add" and rows[0]["task_id"] == "7" and rows[0]["test_setup_code"] == ""


def test_errors_are_one_line_and_say_what_to_fix(fake_hub, tmp_path):
    served, _ = fake_hub
    served[("org/d", None)] = {"train": [{"question": "q", "answer": "#### 1"}], "test": []}
    cases = [
        (DataSource("org/nope"), "could not be loaded.*Check the name"),
        (DataSource("org/d", test_split="tst"), "Unknown split"),
        (DataSource("org/d"), "has no rows"),
        (DataSource(str(_jsonl(tmp_path / "x.jsonl", [{"q": "a", "answer": "#### 1"}]))),
         r"lacks column\(s\) \['question'\].*--dataset-columns question=<column>"),
        (DataSource(str(tmp_path / "x.jsonl"), columns=(("question", "qq"),)), "no column.*question=qq"),
        (DataSource(str(_jsonl(tmp_path / "empty.jsonl", []))), "has no rows"),
        (DataSource(str(tmp_path / "missing.jsonl")), "does not exist"),
    ]
    for src, pattern in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=pattern) as info:
            get_task("gsm8k").rows("test", None, dataset=src)
        assert "\n" not in str(info.value), str(info.value)


def test_unreachable_name_offline_is_one_clear_line():
    """The real ``datasets`` under HF_HUB_OFFLINE=1 (conftest): a name that is not cached."""
    sources._hub_rows.cache_clear()
    with pytest.raises(ValueError, match="no-such-org/no-such-dataset.*could not be loaded.*offline") as info:
        get_task("gsm8k").rows("test", None, dataset=DataSource("no-such-org/no-such-dataset"))
    assert "\n" not in str(info.value)


def test_recipe_dataset_options(tmp_path):
    from trl import TrlParser

    from dlm_trl.trainers.recipe_utils import RecipeArguments, task_data_kwargs, train_dataset

    _jsonl(tmp_path / "train.jsonl", [{"q": f"What is {i}+1?", "a": f"#### {i + 1}"} for i in range(30)])
    (args,) = TrlParser((RecipeArguments,)).parse_args_and_config(
        ["--task", "gsm8k", "--dataset_name", str(tmp_path), "--dataset_columns", "question=q,answer=a",
         "--num_train_prompts", "5"])
    kwargs = task_data_kwargs(args)
    assert kwargs == {"dataset": DataSource(str(tmp_path), columns=(("question", "q"), ("answer", "a")))}
    ds = train_dataset(args)
    assert len(ds) == 5 and set(ds["target"]) <= {str(i + 1) for i in range(27)}  # the last 3 rows are validation
    (plain,) = TrlParser((RecipeArguments,)).parse_args_and_config(["--task", "countdown"])
    assert task_data_kwargs(plain) == {}


# ------------------------------------------------------------------------------------------ the CLI


@needs_tiny
def test_eval_cli_file_tasks_in_a_clean_clone(no_shared, tmp_path):
    out = tmp_path / "r.json"
    for task in ("gsm8k", "math"):
        rc = main(["eval", "--task", task, "--num-samples", "2", "--gen-length", "32", "--block-length", "32",
                   "--no-progress", "--output", str(out)])
        assert rc == 0
        res = json.loads(out.read_text())
        assert res["task"] == task and res["num_samples"] == 2 and 0.0 <= res["accuracy"] <= 1.0


@needs_tiny
def test_eval_cli_dataset_flags(tmp_path, capsys):
    path = _jsonl(tmp_path / "qa.jsonl", [{"q": f"What is {i}+1?", "sol": f"#### {i + 1}"} for i in range(3)])
    out = tmp_path / "r.json"
    rc = main(["eval", "--task", "gsm8k", "--dataset", str(path), "--dataset-columns", "question=q,answer=sol",
               "--num-samples", "3", "--gen-length", "32", "--block-length", "32", "--no-progress", "--samples",
               "--output", str(out)])
    assert rc == 0
    assert [s["prompt"].rsplit("\n\n", 1)[1] for s in json.loads(out.read_text())["samples"]] == [
        "What is 0+1?", "What is 1+1?", "What is 2+1?"]
    capsys.readouterr()
    rc = main(["eval", "--task", "gsm8k", "--dataset", str(path), "--num-samples", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()  # the model loading's progress bar, then the error
    assert rc == 2 and [line for line in err if "error" in line] == err[-1:]
    assert err[-1].startswith("dlm-trl: error: ") and "--dataset-columns question=<column>" in err[-1]
