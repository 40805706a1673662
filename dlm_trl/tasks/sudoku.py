"""4×4 Sudoku with a unique solution (the d1 task).

Grids are 16-character strings read row by row, digits 1-4, ``0`` for an empty cell.
A solved grid is drawn by relabelling digits and permuting rows/columns (within and
across 2×2 bands) of a base solution; cells are then emptied in random order as long as
the puzzle keeps exactly one solution. The train/validation/test split is by a hash of the puzzle
(:func:`split_of`; test as before the validation split existed, validation carved out of the old train).
"""

from __future__ import annotations

import random

from .prompts import completion_text, user_turn
from .splits import TEST_FRACTION, VALIDATION_FRACTION, check_split, hash_split

BASE = [[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]]


def _box(r: int, c: int) -> int:
    return (r // 2) * 2 + c // 2


def is_valid_solution(grid: str) -> bool:
    """A complete 4×4 grid whose rows, columns and 2×2 boxes each hold 1-4 once."""
    if len(grid) != 16 or any(ch not in "1234" for ch in grid):
        return False
    cells = [[int(grid[4 * r + c]) for c in range(4)] for r in range(4)]
    full = {1, 2, 3, 4}
    rows = all(set(row) == full for row in cells)
    cols = all({cells[r][c] for r in range(4)} == full for c in range(4))
    boxes = all({cells[r][c] for r in range(4) for c in range(4) if _box(r, c) == b} == full for b in range(4))
    return rows and cols and boxes


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of ``puzzle`` (stops counting at ``limit``)."""
    cells = [int(ch) for ch in puzzle]

    def ok(i: int, d: int) -> bool:
        r, c = divmod(i, 4)
        for j in range(16):
            if cells[j] == d:
                rj, cj = divmod(j, 4)
                if rj == r or cj == c or _box(rj, cj) == _box(r, c):
                    return False
        return True

    def solve() -> int:
        try:
            i = cells.index(0)
        except ValueError:
            return 1
        total = 0
        for d in range(1, 5):
            if ok(i, d):
                cells[i] = d
                total += solve()
                cells[i] = 0
                if total >= limit:
                    break
        return total

    return solve()


def _random_solution(rng: random.Random) -> list[int]:
    digits = [1, 2, 3, 4]
    rng.shuffle(digits)
    bands = rng.sample([0, 1], 2)
    rows = [2 * b + r for b in bands for r in rng.sample([0, 1], 2)]
    stacks = rng.sample([0, 1], 2)
    cols = [2 * s + c for s in stacks for c in rng.sample([0, 1], 2)]
    grid = [[digits[BASE[r][c] - 1] for c in cols] for r in rows]
    if rng.random() < 0.5:
        grid = [list(col) for col in zip(*grid, strict=True)]
    return [v for row in grid for v in row]


def make_puzzle(rng: random.Random, *, min_empty: int = 6, max_empty: int = 10) -> dict:
    solution = _random_solution(rng)
    want = rng.randint(min_empty, max_empty)
    puzzle = list(solution)
    for i in rng.sample(range(16), 16):
        if sum(v == 0 for v in puzzle) >= want:
            break
        keep = puzzle[i]
        puzzle[i] = 0
        if count_solutions("".join(map(str, puzzle))) != 1:
            puzzle[i] = keep
    return {"puzzle": "".join(map(str, puzzle)), "solution": "".join(map(str, solution))}


def question(puzzle: str) -> str:
    rows = "\n".join(puzzle[4 * r : 4 * r + 4] for r in range(4))
    return (
        "Solve this 4x4 Sudoku. Each row, column and 2x2 box must hold the digits 1-4 once; "
        f"0 marks an empty cell.\n{rows}\nAnswer with the 16 digits of the solved grid, row by row."
    )


def split_of(puzzle: str, test_fraction: float = TEST_FRACTION, validation_fraction: float = VALIDATION_FRACTION) -> str:
    return hash_split(f"sudoku:{puzzle}", test_fraction, validation_fraction)


def generate(split: str, num_samples: int, seed: int = 0, **kwargs) -> list[dict]:
    check_split(split)
    rng = random.Random(f"sudoku-{seed}")
    rows, seen, attempts = [], set(), 0
    while len(rows) < num_samples:
        attempts += 1
        if attempts > 200 * num_samples + 10_000:
            raise RuntimeError(f"could not draw {num_samples} distinct sudoku puzzles for split {split!r}")
        p = make_puzzle(rng, **kwargs)
        if p["puzzle"] in seen or split_of(p["puzzle"]) != split:
            continue
        seen.add(p["puzzle"])
        empties = [i for i, ch in enumerate(p["puzzle"]) if ch == "0"]
        reasoning = ", ".join(f"r{i // 4 + 1}c{i % 4 + 1}={p['solution'][i]}" for i in empties)
        rows.append(
            {
                "prompt": user_turn(question(p["puzzle"])),
                "puzzle": p["puzzle"],
                "solution": p["solution"],
                "reference": completion_text(reasoning, p["solution"]),
            }
        )
    return rows
