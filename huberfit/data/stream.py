"""The streamed source: CSV/Parquet data larger than memory, scanned once, then read in
record batches every epoch.

The files (one, a folder, a glob, or an object-store URI) are opened with
``pyarrow.dataset``; Parquet files are cut into row groups, CSV files are read whole, their
columns named by ``tables.read_header`` (the same names every other path sees).

1. ``scan`` reads everything once: it validates every batch (the file and row of a bad
   cell, as in-memory loading does), counts rows, splits them by ``split.in_validation``
   and merges the training rows' ``scaling.Moments`` batch by batch.
2. ``StreamInfo.rows(pieces, split)`` then serves the standardized rows of a split, piece
   by piece; ``batches.StreamBatches`` turns them into shuffled training batches.

Memory stays bounded by one record batch (plus what the batch source holds), whatever the
size of the data. Must not import losses, model, train or sinks.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from huberfit.data.scaling import Moments, Scaling, scaling_from
from huberfit.data.split import check_split, in_validation, row_hash
from huberfit.data.tables import check_columns, read_header, resolve_files
from huberfit.errors import DataError

READ_ROWS = 65_536  # rows per record batch read from a file
SAMPLE_ROWS = 10_000  # rows kept in memory for pictures


@dataclass
class Piece:
    """A unit of reading: a Parquet row group or a whole CSV file."""

    path: str
    fragment: Any
    first_row: int = 0  # global index of its first row
    rows: int = 0
    train_rows: int = 0

    def split_rows(self, split: str) -> int:
        return self.train_rows if split == "train" else self.rows - self.train_rows


def file_columns(files: list[str], source: str) -> list[str]:
    """The columns every file shares (by ``read_header``), or a located error."""
    if "://" in files[0]:  # an object store: pyarrow reads the header
        return []
    names = read_header(Path(files[0]), source)
    for f in files[1:]:
        other = read_header(Path(f), source)
        if other != names:
            raise DataError(f"{f}: its columns {other} differ from {files[0]}'s {names}")
    return names


def open_pieces(files: list[str], source: str, names: list[str], typed: list[str]):
    """The dataset's pieces in a fixed order, and its column names. CSV columns are
    named by ``names`` (when known) and those in ``typed`` parsed as float64."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        if source == "parquet":
            dataset = ds.dataset(files, format="parquet")
        else:
            dataset = ds.dataset(files, format=_csv_format(names, typed))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(_arrow_message(exc, files[0], names)) from None
    pieces = []
    for fragment in dataset.get_fragments():
        if source == "parquet":
            for rg in fragment.split_by_row_group():
                rows = sum(r.num_rows for r in rg.row_groups)
                pieces.append(Piece(fragment.path, rg, rows=rows))
        else:
            pieces.append(Piece(fragment.path, fragment))
    return pieces, list(dataset.schema.names)


def _csv_format(names: list[str], typed: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    # our header reader's names replace pyarrow's own reading of the first line, which
    # keeps quotes after a space (`"x 1", "x2"` would give a column ` "x2"`)
    read = pcsv.ReadOptions(block_size=1 << 22)
    if names:
        read = pcsv.ReadOptions(block_size=1 << 22, column_names=names, skip_rows=1)
    types = {c: pa.float64() for c in typed} or None
    return ds.CsvFileFormat(
        parse_options=pcsv.ParseOptions(),
        convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        read_options=read,
    )


_ROW = re.compile(
    r"In CSV column #(\d+): Row #(\d+): CSV conversion error to \w+: invalid value '([^']*)'"
)


def _arrow_message(exc: Exception, path: str, names: list[str] | None = None) -> str:
    text = str(exc)
    m = _ROW.search(text)
    if m and names:
        col, line, value = int(m.group(1)), int(m.group(2)), m.group(3)
        name = names[col] if col < len(names) else f"#{col}"
        return f"{path}: non-numeric value {value!r} in column {name!r} at line {line}"
    return f"{path}: cannot read ({text.splitlines()[0]})"


def read_piece(piece: Piece, columns: list[str], names: list[str]) -> Iterator[np.ndarray]:
    """The piece's rows as float64 arrays ``(n, len(columns))``, batch by batch."""
    import pyarrow as pa

    try:
        # little read-ahead: arrow's defaults (16 batches, 4 files) hold hundreds of MB
        batches = piece.fragment.to_batches(
            columns=columns, batch_size=READ_ROWS, batch_readahead=1, fragment_readahead=1
        )
        for batch in batches:
            if batch.num_rows:
                yield np.column_stack(
                    [batch.column(i).to_numpy(zero_copy_only=False) for i in range(len(columns))]
                ).astype(np.float64, copy=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(_arrow_message(exc, piece.path, names)) from None


@dataclass
class StreamInfo:
    """What a scan found: where the rows are and how to scale them."""

    pieces: list[Piece]
    names: list[str]
    features: list[str]
    target: str
    seed: int
    val_fraction: float
    n_rows: int
    n_train: int
    n_val: int
    scaling: Scaling
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # 'train'/'val' raw rows
    notes: list[str] = field(default_factory=list)
    forced_val: int = -1  # tiny data: the one validation row when the hash picked none

    def validation_mask(self, rows: np.ndarray) -> np.ndarray:
        val = in_validation(rows, self.seed, self.val_fraction)
        if self.forced_val >= 0:
            val |= rows == self.forced_val
        return val

    @property
    def columns(self) -> list[str]:
        return self.features + [self.target]

    def raw_rows(self, pieces: list[Piece], split: str) -> Iterator[np.ndarray]:
        """The rows of ``split`` (``train``/``val``) in ``pieces``, as read (original units)."""
        for piece in pieces:
            row = piece.first_row
            for a in read_piece(piece, self.columns, self.names):
                val = self.validation_mask(np.arange(row, row + len(a)))
                row += len(a)
                keep = a[val] if split == "val" else a[~val]
                if len(keep):
                    yield keep

    def rows(self, pieces: list[Piece], split: str) -> Iterator[np.ndarray]:
        """Standardized rows ``(n, f + 1)`` of ``split`` in ``pieces``, piece by piece."""
        for a in self.raw_rows(pieces, split):
            yield self.scaling.apply(a)


def scan(path: str, source: str, target: str | None, features: list[str] | None,
         seed: int, val_fraction: float, standardize: bool, center: bool) -> StreamInfo:  # fmt: skip
    """Pass 1: validate every batch, count, split, and compute the training statistics."""
    files = resolve_files(path, source)
    header = file_columns(files, source)
    pieces, names = open_pieces(files, source, header, [])
    features, _ = check_columns(Path(files[0]), names, target, features, require_target=True)
    columns = features + [target]
    if source == "csv":  # reopen with every used column typed as float64
        pieces, names = open_pieces(files, source, header, columns)
    stats, row, line_in_file, last_path = Moments(), 0, 0, None
    smallest = (math.inf, -1)  # (hash, row): the validation row of last resort
    samples: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    n_val = 0
    for piece in pieces:
        line_in_file = 0 if piece.path != last_path else line_in_file
        last_path, piece.first_row = piece.path, row
        train_rows = 0
        for a in read_piece(piece, columns, names):
            _check_finite(a, piece, line_in_file, source, columns)
            rows = np.arange(row, row + len(a))
            val = in_validation(rows, seed, val_fraction)
            h = row_hash(rows, seed)
            if h.min() < smallest[0]:
                smallest = (float(h.min()), int(rows[np.argmin(h)]))
            train = a[~val]
            train_rows += len(train)
            stats.add(train if center else train * train)
            _keep_sample(samples, train, a[val])
            n_val += int(val.sum())
            row, line_in_file = row + len(a), line_in_file + len(a)
        piece.rows, piece.train_rows = row - piece.first_row, train_rows
    info = StreamInfo(pieces, names, features, target, seed, val_fraction, row, row - n_val,
                      n_val, Scaling([], [], 0.0, 1.0))  # fmt: skip
    if val_fraction > 0 and n_val == 0 and row:  # as split.split_indices does in memory
        _force_validation_row(info, smallest[1])
        stats = Moments()
        for a in info.raw_rows(pieces, "train"):
            stats.add(a if center else a * a)
    check_split(row, info.n_val, val_fraction, path)
    f = len(features)
    per_column = (Moments(stats.n, stats.mean[:f], stats.m2[:f]),
                  Moments(stats.n, stats.mean[f], stats.m2[f]))  # fmt: skip
    info.scaling, notes = scaling_from(per_column, f, standardize, center)
    info.notes = [f"feature '{features[i]}' {msg}" for i, msg in notes]
    info.samples = _samples(info) if info.forced_val >= 0 else _stack(samples, len(columns))
    return info


def _force_validation_row(info: StreamInfo, row: int) -> None:
    """Tiny data only: the row with the smallest hash becomes the one validation row."""
    info.forced_val, info.n_val, info.n_train = row, 1, info.n_rows - 1
    for piece in info.pieces:
        if piece.first_row <= row < piece.first_row + piece.rows:
            piece.train_rows -= 1


def _samples(info: StreamInfo) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for split in ("train", "val"):
        for a in info.raw_rows(info.pieces, split):
            _keep_sample(out, a if split == "train" else a[:0], a if split == "val" else a[:0])
    return _stack(out, len(info.columns))


def _stack(samples: dict[str, list[np.ndarray]], width: int) -> dict[str, np.ndarray]:
    return {k: np.concatenate(v) if v else np.empty((0, width)) for k, v in samples.items()}


def _check_finite(a: np.ndarray, piece: Piece, first: int, source: str, columns: list[str]) -> None:
    finite = np.isfinite(a)
    if finite.all():
        return
    r, c = np.argwhere(~finite)[0]
    where = f"line {first + r + 2}" if source == "csv" else f"row {first + r + 1}"
    raise DataError(
        f"{piece.path}: missing or non-finite cell in column {columns[c]!r} at {where}; "
        "streaming needs complete rows"
    )


def _keep_sample(samples: dict[str, list[np.ndarray]], train: np.ndarray, val: np.ndarray) -> None:
    for key, rows in (("train", train), ("val", val)):
        have = sum(len(s) for s in samples[key])
        if have < SAMPLE_ROWS:
            samples[key].append(rows[: SAMPLE_ROWS - have].copy())


# ----------------------------------------------------------------------------- choosing


def memory_budget_mb(configured: int | None) -> float:
    """The configured budget, or a quarter of this machine's RAM."""
    if configured is not None:
        return float(configured)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**20
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4096.0


def should_stream(streaming: bool | str, path: str, source: str, budget_mb: int | None) -> bool:
    """``auto``: stream when loading into memory would need more than the budget (about
    four times the files' size: parsed float64 values, the split copies, the tensors)."""
    if streaming != "auto":
        return bool(streaming)
    if "://" in path:
        return True
    size = sum(Path(f).stat().st_size for f in resolve_files(path, source))
    return 4 * size / 2**20 > memory_budget_mb(budget_mb)
