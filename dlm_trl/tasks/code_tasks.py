"""Code tasks: HumanEval and MBPP, verified by the sandboxed ``code_unit_tests`` reward.

Data (:mod:`dlm_trl.tasks.sources`): ``../shared/data/<task>/`` when present (HumanEval's
``dev.jsonl`` there, problems 0-81, is its ``test`` split), else the fixtures shipped in
``dlm_trl/tasks/data/{humaneval,mbpp}``, or any dataset by name or path, e.g.
``--dataset openai/openai_humaneval`` or ``--dataset google-research-datasets/mbpp --dataset-config full``
(MBPP-sanitized: ``--dataset-columns text=prompt,test_setup_code=test_imports``).

* **humaneval** rows: ``prompt`` (signature and docstring), ``entry_point``, ``test`` (``check``),
  optional ``canonical_solution``. HumanEval has only a test split: ``train`` / ``validation`` need
  a dataset with a train split.
* **mbpp** rows: ``text`` (the task), ``test_list`` (asserts), optional ``test_setup_code``,
  ``code`` (a reference solution) and ``entry_point`` (default: the function the asserts call).

Both prompt the model for the whole function in a fenced code block; the reward takes the fenced
block (see ``dlm_trl_rewards.code``). ``code_prefix`` is what precedes the completion's code in the
program: HumanEval's prompt (its imports and helpers), nothing for MBPP.
"""

from __future__ import annotations

import random

from dlm_trl_rewards._code_units import asserts_of, mbpp_entry_point

from .sources import DataSource, load_split

HUMANEVAL_INSTRUCTIONS = "Complete the following Python function. Reply with the whole function in a ```python code block."
MBPP_INSTRUCTIONS = "Reply with the Python function in a ```python code block."


def _sample(rows: list[dict], num_samples: int | None, seed: int, task: str) -> list[dict]:
    if num_samples is not None and num_samples < len(rows):
        return random.Random(f"{task}-{seed}").sample(rows, num_samples)
    return rows


def load_humaneval(split: str, path=None, dataset: DataSource | None = None) -> list[dict]:
    return load_split("humaneval", split, required=("prompt", "entry_point", "test"), data_path=path,
                      source=dataset, aliases={"test": ("test", "dev")})


def humaneval(split: str, num_samples: int | None = None, seed: int = 0, data_path=None, dataset=None) -> list[dict]:
    """HumanEval rows of ``split`` (all if ``num_samples`` is None, else a subset seeded by ``seed``)."""
    out = []
    for rec in _sample(load_humaneval(split, data_path, dataset), num_samples, seed, "humaneval"):
        solution = rec.get("canonical_solution") or ""
        out.append({
            "prompt": [{"role": "user", "content": f"{HUMANEVAL_INSTRUCTIONS}\n\n```python\n{rec['prompt']}```"}],
            "task_id": str(rec.get("task_id", "")),
            "code_prefix": rec["prompt"],
            "entry_point": rec["entry_point"],
            "test": rec["test"],
            "reference": f"```python\n{rec['prompt']}{solution}```",
        })
    return out


def load_mbpp(split: str, path=None, dataset: DataSource | None = None) -> list[dict]:
    rows = load_split("mbpp", split, required=("text", "test_list"), data_path=path, source=dataset)
    out = []
    for i, rec in enumerate(rows):
        tests = asserts_of(rec["test_list"])
        if not tests:
            raise ValueError(f"MBPP row {i + 1} ({rec.get('task_id', '?')}) has an empty test_list; drop it or fix the data")
        setup = rec.get("test_setup_code") or ""
        setup = setup if isinstance(setup, str) else "\n".join(map(str, setup))
        for source in (setup, *tests):
            try:
                compile(source, "<test>", "exec")
            except SyntaxError as err:
                raise ValueError(f"MBPP row {i + 1} ({rec.get('task_id', '?')}): test code is not valid Python "
                                 f"({err.msg}): {source[:80]!r}") from None
        entry = rec.get("entry_point") or mbpp_entry_point(tests, setup)
        out.append(dict(rec, test_list=tests, test_setup_code=setup, entry_point=entry))
    return out


def mbpp(split: str, num_samples: int | None = None, seed: int = 0, data_path=None, dataset=None) -> list[dict]:
    """MBPP rows of ``split`` (all if ``num_samples`` is None, else a subset seeded by ``seed``)."""
    out = []
    for rec in _sample(load_mbpp(split, data_path, dataset), num_samples, seed, "mbpp"):
        tests = "\n".join(rec["test_list"])
        out.append({
            "prompt": [{"role": "user", "content": f"{rec['text']}\nYour code should pass these tests:\n{tests}\n"
                        f"{MBPP_INSTRUCTIONS}"}],
            "task_id": str(rec.get("task_id", "")),
            "code_prefix": "",
            "entry_point": rec["entry_point"],
            "test_list": rec["test_list"],
            "test_setup_code": rec["test_setup_code"],
            "reference": f"```python\n{(rec.get('code') or '').strip()}\n```",
        })
    return out


__all__ = ["humaneval", "load_humaneval", "load_mbpp", "mbpp"]
