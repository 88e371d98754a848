"""The split: a seeded hash of each row's global index decides train or validation.

The same rows are validation rows in every epoch and every run, in memory or streamed,
whatever order the files are read in. numpy only.
"""

from __future__ import annotations

import numpy as np

from huberfit.errors import DataError


def row_hash(rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row index, from ``seed`` (splitmix64)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def in_validation(rows: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """Whether each global row index is a validation row: its hash below ``val_fraction``."""
    if val_fraction <= 0:
        return np.zeros(len(rows), dtype=bool)
    return row_hash(rows, seed) < val_fraction


def check_split(n: int, n_val: int, val_fraction: float, where: str) -> None:
    """At least two rows to train on after the validation split, or a located error
    saying how many rows there are, how many the split took and how many training needs."""
    if n - n_val >= 2:
        return
    if n_val == 0:
        raise DataError(f"{where}: has {n} row{'s' * (n != 1)}; training needs at least 2")
    raise DataError(
        f"{where}: of {n} rows, data.val_fraction={val_fraction} puts {n_val} in validation "
        f"and leaves {n - n_val} to train on; training needs at least 2: add rows or lower "
        "data.val_fraction"
    )


def split_indices(
    n: int, val_fraction: float, seed: int, where: str = "data"
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices by ``in_validation`` (about ``val_fraction`` of the
    rows; at least one when it is > 0: then the row with the smallest hash)."""
    rows = np.arange(n)
    val = in_validation(rows, seed, val_fraction)
    if val_fraction > 0 and not val.any() and n:
        val[np.argmin(row_hash(rows, seed))] = True
    check_split(n, int(val.sum()), val_fraction, where)
    return np.flatnonzero(~val), np.flatnonzero(val)
