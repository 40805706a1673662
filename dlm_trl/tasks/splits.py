"""The three splits every task has: ``train``, ``validation`` and ``test``, pairwise disjoint.

* Generated tasks (Countdown, Sudoku) assign each puzzle to a split by a hash of its content
  (:func:`hash_split`): a bucket ``u ∈ [0, 1)`` below ``TEST_FRACTION`` (0.2) is ``test`` — exactly
  the test split these tasks had before validation existed, so test numbers stay comparable —
  ``[0.2, 0.3)`` is ``validation`` and the rest ``train``. Validation was carved out of the old train split.
* File tasks (GSM8K, MATH) have ``train`` and ``test`` files; ``validation`` is a fixed slice of the
  train file — its last :func:`validation_size` rows in file order — and ``train`` is the rest, so
  training never sees a validation row (:func:`carve_validation`).

Choose checkpoints and hyper-parameters on ``validation``; report ``test``.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
#: Rows of a train file held out as validation (GSM8K: the last 500 of 7473), at most a tenth of the file.
MAX_VALIDATION_ROWS = 500


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    return split


def hash_bucket(key: str) -> float:
    """A uniform number in [0, 1) from the first 4 bytes of ``sha256(key)``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32


def hash_split(key: str, test_fraction: float = TEST_FRACTION, validation_fraction: float = VALIDATION_FRACTION) -> str:
    """``test`` below ``test_fraction``, ``validation`` in the next ``validation_fraction``, else ``train``."""
    u = hash_bucket(key)
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + validation_fraction else "train"


def validation_size(num_train_file_rows: int) -> int:
    """How many rows at the end of a train file form the validation split: ``min(500, n // 10)``."""
    return min(MAX_VALIDATION_ROWS, num_train_file_rows // 10)


def carve_validation(train_file_rows: list, split: str) -> list:
    """``train`` → all but the last :func:`validation_size` rows; ``validation`` → those last rows."""
    n_val = validation_size(len(train_file_rows))
    if split == "validation":
        if n_val == 0:
            raise ValueError(
                f"the train file has {len(train_file_rows)} rows, too few to hold out a validation split "
                "(its last tenth, at most 500 rows)"
            )
        return train_file_rows[len(train_file_rows) - n_val :]
    return train_file_rows[: len(train_file_rows) - n_val]


__all__ = ["MAX_VALIDATION_ROWS", "SPLITS", "TEST_FRACTION", "VALIDATION_FRACTION", "carve_validation",
           "check_split", "hash_bucket", "hash_split", "validation_size"]
