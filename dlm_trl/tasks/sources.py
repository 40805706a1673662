"""Where the rows of a file task (GSM8K, MATH, HumanEval, MBPP) come from.

A task reads one *source split* per task split: ``test`` reads the source's test split; ``train``
and ``validation`` both read its train split, ``validation`` being its last
:func:`~dlm_trl.tasks.splits.validation_size` rows and ``train`` the rest
(:func:`~dlm_trl.tasks.splits.carve_validation`), so training never sees a validation row.

Sources, in this order:

1. a :class:`DataSource` (``--dataset`` on the command line, ``dataset_name`` in a recipe):
   a Hugging Face dataset name, loaded with :func:`datasets.load_dataset` (cached on disk by
   ``datasets`` and in memory here), or a local ``.jsonl`` / ``.json`` / ``.parquet`` file (one
   split), or a folder holding ``<split>.<ext>`` or ``<task>/<split>.<ext>``;
2. an explicit data folder (``--data-dir`` / ``data_path``) holding ``<task>/<split>.jsonl``
   (or ``<split>.jsonl`` directly): used strictly, an absent file is an error;
3. otherwise the first of ``$DLM_TRL_DATA_DIR``, ``<repo>/../shared/data``, ``<repo>/shared/data``
   and ``../shared/data`` that has a ``<task>/`` folder: the full benchmark files, **preferred when
   present**, so reported numbers keep their splits;
4. otherwise the small fixtures shipped in ``dlm_trl/tasks/data/<task>/`` (tens of rows, see its
   ``README.md``): enough for tests and demos, not for reporting. Using them logs a warning.

``HF_HUB_OFFLINE=1`` (the tests, ``make``) loads only datasets already in the Hugging Face
cache; the defaults (3, 4) need no network. Every error is one line that says what to fix.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .splits import carve_validation, check_split

logger = logging.getLogger(__name__)

FIXTURE_DIR = Path(__file__).with_name("data")
SUFFIXES = (".jsonl", ".json", ".parquet")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_warned: set[str] = set()


@dataclass(frozen=True)
class DataSource:
    """A dataset for a file task: where it is and how to read it.

    ``name``: a Hugging Face dataset name (``openai/gsm8k``), a local file or a folder; ``None``
    keeps the default files (the mapping and split names still apply). ``config``: the dataset's
    configuration (``main`` for ``openai/gsm8k``). ``train_split`` / ``test_split``: the source splits
    read for the task's train+validation and test splits. ``columns``: ``{task column: dataset
    column}`` for datasets whose columns are named differently.
    """

    name: str | None = None
    config: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    columns: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_options(
        cls, name: str | None = None, config: str | None = None, split: str | None = None,
        columns: str | Mapping[str, str] | None = None, *, for_split: str = "test",
        train_split: str | None = None, test_split: str | None = None,
    ) -> DataSource | None:
        """From command-line style options; ``None`` when none is set. ``split`` names the source
        split read for the task split ``for_split``; ``columns`` is ``"task=dataset,..."`` or a dict."""
        if not any(v for v in (name, config, split, columns, train_split, test_split)):
            return None
        test = test_split or (split if for_split == "test" else None) or "test"
        train = train_split or (split if for_split != "test" else None) or "train"
        return cls(name or None, config or None, train, test, parse_columns(columns))

    def split_for(self, task_split: str) -> str:
        return self.test_split if check_split(task_split) == "test" else self.train_split

    def describe(self) -> str:
        return f"{self.name!r}" + (f" (config {self.config!r})" if self.config else "")


def parse_columns(columns: str | Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``"question=problem,answer=solution"`` (or a dict) → ``(("question", "problem"), ...)``."""
    if not columns:
        return ()
    if isinstance(columns, Mapping):
        pairs = [(str(k), str(v)) for k, v in columns.items()]
    else:
        pairs = []
        for item in str(columns).split(","):
            task_col, eq, data_col = item.partition("=")
            if not eq or not task_col.strip() or not data_col.strip():
                raise ValueError(
                    f"column mapping {columns!r}: expected TASK_COLUMN=DATASET_COLUMN pairs separated by "
                    "commas, e.g. question=problem,answer=solution"
                )
            pairs.append((task_col.strip(), data_col.strip()))
    return tuple(pairs)


# ------------------------------------------------------------------------------------------ reading


def read_file(path: Path) -> list[dict]:
    """Rows of a ``.jsonl`` (one object a line), ``.json`` (a list of objects, or JSON lines) or
    ``.parquet`` file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    else:
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i + 1}: not a JSON object per line ({err.msg})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: every row must be a JSON object with named columns")
    return rows


@functools.lru_cache(maxsize=16)
def _hub_rows(name: str, config: str | None, split: str) -> tuple[dict, ...]:
    import datasets

    try:
        return tuple(datasets.load_dataset(name, config, split=split).to_list())
    except Exception as err:  # noqa: BLE001 — one line that says what to fix
        first = " ".join(str(err).split())[:300] or type(err).__name__
        offline = " (offline: only datasets already in the cache load)" if any(
            os.environ.get(v, "0").lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS) else ""
        raise ValueError(
            f"dataset {name!r}{f' config {config!r}' if config else ''} split {split!r} could not be loaded"
            f"{offline}: {type(err).__name__}: {first}. Check the name, config and split on "
            "huggingface.co/datasets, or pass a local .jsonl/.json/.parquet file"
        ) from None


def _in_folder(folder: Path, task: str, stems: Sequence[str]) -> Path | None:
    for base in (folder / task, folder):
        for stem in stems:
            for suffix in SUFFIXES:
                if (base / f"{stem}{suffix}").is_file():
                    return base / f"{stem}{suffix}"
    return None


def shared_candidates() -> list[Path]:
    """Folders that may hold the shared benchmark data: ``$DLM_TRL_DATA_DIR``, ``<repo>/../shared/data``,
    ``<repo>/shared/data``, ``../shared/data`` from the working directory."""
    candidates = [Path(os.environ["DLM_TRL_DATA_DIR"])] if os.environ.get("DLM_TRL_DATA_DIR") else []
    repo = Path(__file__).resolve().parents[2]
    return candidates + [repo.parent / "shared" / "data", repo / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def _default_file(task: str, stems: Sequence[str]) -> Path:
    """The default data file of ``task``: the shared data when it has ``<task>/``, else the fixture."""
    for folder in shared_candidates():
        if (folder / task).is_dir():
            found = _in_folder(folder, task, stems)
            if found is None:
                raise FileNotFoundError(
                    f"{folder / task} has no {' or '.join(stems)} file ({', '.join(SUFFIXES)}); add it, or pass "
                    f"--dataset NAME_OR_FILE (recipes: dataset_name)"
                )
            return found
    found = _in_folder(FIXTURE_DIR, task, stems)
    if found is None:
        raise FileNotFoundError(
            f"task {task!r} has no default {' or '.join(stems)} split (looked in "
            f"{', '.join(str(c) for c in shared_candidates())} and {FIXTURE_DIR}); pass --dataset NAME_OR_FILE with "
            f"--dataset-split (recipes: dataset_name, dataset_train_split)"
        )
    if task not in _warned:
        _warned.add(task)
        logger.warning(
            "%s: using the small fixture shipped in %s (tests and demos only; not for reporting). For the "
            "benchmark pass --dataset NAME_OR_FILE or put the data in ../shared/data/%s or $DLM_TRL_DATA_DIR",
            task, FIXTURE_DIR / task, task,
        )
    return found


def _source_rows(task: str, split: str, data_path, source: DataSource | None, aliases: Mapping[str, Sequence[str]]):
    """``(rows of the source split, a description for messages)``."""
    if source is not None and source.name:
        src_split = source.split_for(split)
        path = Path(source.name).expanduser()
        if path.is_file():
            return read_file(path), str(path)
        if path.is_dir():
            found = _in_folder(path, task, aliases.get(src_split, (src_split,)))
            if found is None:
                raise FileNotFoundError(
                    f"{path} has no {src_split}{'|'.join(SUFFIXES)} file (nor {task}/{src_split}.*); name the "
                    "file itself or the split with --dataset-split (recipes: dataset_train_split/dataset_test_split)"
                )
            return read_file(found), str(found)
        if source.name.endswith(SUFFIXES) or source.name.startswith((".", "/", "~")):
            raise FileNotFoundError(f"dataset file {source.name} does not exist; check the path")
        return [dict(r) for r in _hub_rows(source.name, source.config, src_split)], (
            f"dataset {source.describe()} split {src_split!r}")
    src_split = source.split_for(split) if source is not None else ("test" if split == "test" else "train")
    stems = aliases.get(src_split, (src_split,))
    if data_path is not None:
        found = _in_folder(Path(data_path), task, stems)
        if found is None:
            raise FileNotFoundError(
                f"no {task} {src_split} data in {data_path} (looked for {task}/{stems[0]}.jsonl and {stems[0]}.jsonl); "
                "fix --data-dir (recipes: --data_path), or pass --dataset NAME_OR_FILE"
            )
        return read_file(found), str(found)
    found = _default_file(task, stems)
    return read_file(found), str(found)


def load_split(
    task: str, split: str, *, required: Sequence[str], data_path=None, source: DataSource | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[dict]:
    """The rows of the task split ``split`` of ``task`` with the columns mapped, checked and carved.

    ``required``: task columns every row must have (after the mapping). ``aliases``: other file
    names of a source split in the default folders (HumanEval's ``test`` may be ``dev.jsonl``).
    """
    check_split(split)
    rows, where = _source_rows(task, split, data_path, source, aliases or {})
    if not rows:
        raise ValueError(f"{where} has no rows; pick a non-empty split (--dataset-split) or another file")
    mapping = dict(source.columns) if source is not None else {}
    unknown = [f"{t}={d}" for t, d in mapping.items() if d not in rows[0]]
    if unknown:
        raise ValueError(
            f"{where} has no column(s) named in the mapping {', '.join(unknown)} (it has {sorted(rows[0])}); "
            "fix --dataset-columns (recipes: dataset_columns)"
        )
    if mapping:
        rows = [{**r, **{t: r[d] for t, d in mapping.items() if d in r}} for r in rows]
    missing = [c for c in required if c not in rows[0]]
    if not missing:
        missing = sorted({c for r in rows for c in required if c not in r})
    if missing:
        have = sorted(rows[0])
        hint = ",".join(f"{c}=<column>" for c in missing)
        raise ValueError(
            f"{where} lacks column(s) {missing} (it has {have}); map them with --dataset-columns {hint} "
            "(recipes: dataset_columns)"
        )
    return rows if split == "test" else carve_validation(rows, split)


__all__ = ["FIXTURE_DIR", "DataSource", "load_split", "parse_columns", "read_file", "shared_candidates"]
