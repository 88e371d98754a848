"""Streaming datasets: CSV/Parquet data larger than memory, read in record batches.

The files (one, a folder, a glob, or an object-store URI) are opened with
``pyarrow.dataset``; Parquet files are cut into row groups, CSV files are read whole.

1. ``scan`` reads everything once: it validates every batch (the file and row of a bad
   cell, as in-memory loading does), counts rows, and computes the standardization
   statistics of the training rows with Chan's parallel merge of per-batch means and
   squared deviations (stable where running sums of squares cancel).
2. Rows are split by a deterministic hash of their global row index, so a row is in the
   validation set in every epoch and every run, whatever order the files are read in.
3. ``StreamBatches`` serves training epochs: pieces (row groups / files) in a seeded order,
   rows mixed in a shuffle buffer of ``data.shuffle_buffer`` rows, batches built by a
   background thread a few batches ahead, so the training step does not wait on I/O.

Memory stays bounded by the shuffle buffer, one record batch and the prefetch queue,
whatever the size of the data. Must not import losses, model, train or sinks.
"""

from __future__ import annotations

import math
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from huberfit.data import (
    TORCH_DTYPES,
    Scaling,
    _check_columns,
    in_validation,
    resolve_files,
    row_hash,
)
from huberfit.errors import DataError

READ_ROWS = 65_536  # rows per record batch read from a file
SAMPLE_ROWS = 10_000  # rows kept in memory for pictures


# ----------------------------------------------------------------------------- files


@dataclass
class Piece:
    """A unit of reading: a Parquet row group or a whole CSV file."""

    path: str
    fragment: Any
    first_row: int = 0  # global index of its first row
    rows: int = 0
    train_rows: int = 0


def open_pieces(
    files: list[str], source: str, columns: list[str] | None
) -> tuple[list[Piece], list[str]]:
    """The dataset's pieces in a fixed order, and its column names."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        if source == "parquet":
            dataset = ds.dataset(files, format="parquet")
        else:
            dataset = ds.dataset(files, format=_csv_format(files[0], columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(_arrow_message(exc, files[0])) from None
    names = list(dataset.schema.names)
    pieces = []
    for fragment in dataset.get_fragments():
        if source == "parquet":
            for rg in fragment.split_by_row_group():
                rows = sum(r.num_rows for r in rg.row_groups)
                pieces.append(Piece(fragment.path, rg, rows=rows))
        else:
            pieces.append(Piece(fragment.path, fragment))
    return pieces, names


def _csv_format(first_file: str, columns: list[str] | None):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    types = {c: pa.float64() for c in columns} if columns else None
    return ds.CsvFileFormat(
        parse_options=pcsv.ParseOptions(),
        convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        read_options=pcsv.ReadOptions(block_size=1 << 22),
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


# ----------------------------------------------------------------------------- split


# ----------------------------------------------------------------------------- pass 1


@dataclass
class Moments:
    """Count, mean and summed squared deviations per column, merged batch by batch with
    Chan et al.'s parallel algorithm."""

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, a: np.ndarray) -> None:
        k = a.shape[0]
        if k == 0:
            return
        mean_b = a.mean(axis=0)
        m2_b = ((a - mean_b) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = k, mean_b, m2_b
            return
        delta = mean_b - self.mean
        total = self.n + k
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * k / total)
        self.n = total

    def add_squares(self, a: np.ndarray) -> None:
        """Root-mean-square scaling (no centering) accumulates E[x^2] as the 'mean'."""
        self.add(a * a)


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


def scan(path: str, source: str, target: str | None, features: list[str] | None,
         seed: int, val_fraction: float, standardize: bool, center: bool) -> StreamInfo:  # fmt: skip
    """Pass 1: validate every batch, count, split, and compute the training statistics."""
    files = resolve_files(path, source)
    pieces, names = open_pieces(files, source, None)
    features, _ = _check_columns(Path(files[0]), names, target, features, require_target=True)
    columns = features + [target]
    if source == "csv":  # reopen with every used column typed as float64
        pieces, names = open_pieces(files, source, columns)
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
            (stats.add if center else stats.add_squares)(train)
            _keep_sample(samples, train, a[val])
            n_val += int(val.sum())
            row, line_in_file = row + len(a), line_in_file + len(a)
        piece.rows, piece.train_rows = row - piece.first_row, train_rows
    forced = -1
    if val_fraction > 0 and n_val == 0 and row:  # as split_indices does in memory
        forced, n_val = smallest[1], 1
        for piece in pieces:
            if piece.first_row <= forced < piece.first_row + piece.rows:
                piece.train_rows -= 1
        stats = _rescan_without(pieces, columns, names, forced, center)
    n_train = row - n_val
    if n_train < 2:
        raise DataError(f"{path}: {row} rows are too few for data.val_fraction={val_fraction}")
    scaling, notes = _scaling(stats, features, standardize, center)
    info = StreamInfo(
        pieces, names, features, target, seed, val_fraction, row, n_train, n_val, scaling,
        {k: np.concatenate(v) if v else np.empty((0, len(columns))) for k, v in samples.items()},
        notes, forced,
    )  # fmt: skip
    if forced >= 0:
        info.samples = _samples(info)
    return info


def _rescan_without(pieces, columns, names, forced: int, center: bool) -> Moments:
    """Tiny data only: the statistics again, without the one forced validation row."""
    stats = Moments()
    for piece in pieces:
        row = piece.first_row
        for a in read_piece(piece, columns, names):
            keep = np.arange(row, row + len(a)) != forced
            (stats.add if center else stats.add_squares)(a[keep])
            row += len(a)
    return stats


def _samples(info: StreamInfo) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for piece in info.pieces:
        row = piece.first_row
        for a in read_piece(piece, info.columns, info.names):
            val = info.validation_mask(np.arange(row, row + len(a)))
            _keep_sample(out, a[~val], a[val])
            row += len(a)
    return {k: np.concatenate(v) for k, v in out.items()}


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


def _scaling(stats: Moments, features: list[str], standardize: bool, center: bool):
    f = len(features)
    if not standardize:
        return Scaling([0.0] * f, [1.0] * f, 0.0, 1.0), []
    if center:
        mean, std = stats.mean, np.sqrt(stats.m2 / stats.n)
    else:
        mean, std = np.zeros(f + 1), np.sqrt(stats.mean)
    scale = np.where(std > 0, std, 1.0)
    notes = [
        f"feature '{features[i]}' has zero variance in the training rows; left unscaled"
        for i in np.flatnonzero(~(std[:f] > 0))
    ]
    return Scaling(
        [float(v) for v in mean[:f]], [float(v) for v in scale[:f]], float(mean[f]), float(scale[f])
    ), notes


# ----------------------------------------------------------------------------- epochs


class StreamBatches:
    """Batches of one split, streamed from the files (see the module docstring).

    ``epoch(e)`` yields ``((X, y), n)`` items like the in-memory source; ``take`` returns
    the pair. ``full_chunks()`` streams the split in file order (full-batch L-BFGS, scoring).
    """

    def __init__(self, info: StreamInfo, split: str, batch_size: int | None, device: torch.device,
                 dtype: str, shuffle_buffer: int, prefetch: int = 4, rank: int = 0,
                 world: int = 1) -> None:  # fmt: skip
        self.info, self.split, self.device = info, split, device
        self.rank, self.world = rank, world
        self.dtype = TORCH_DTYPES[dtype]
        self.n = info.n_train if split == "train" else info.n_val
        self.batch_size = min(batch_size or self.n, max(self.n, 1))
        if self.batch_size < world:
            raise DataError(
                f"train.batch_size={self.batch_size} is less than the {world} processes"
            )
        self.shuffle_buffer = max(shuffle_buffer, self.batch_size)
        self.prefetch = prefetch
        s = info.scaling
        self._shift = np.array([*s.x_mean, s.y_mean])
        self._scale = np.array([*s.x_scale, s.y_scale])
        self.XY = torch.empty(0, device=device)  # for device queries by the loop

    def _split_rows(self, piece: Piece) -> int:
        return piece.train_rows if self.split == "train" else piece.rows - piece.train_rows

    def steps_per_epoch(self, accum: int = 1) -> int:
        if self.world > 1:
            return math.ceil(self._plan(self.info.pieces)[2] / accum)
        return math.ceil(math.ceil(self.n / self.batch_size) / accum)

    def _plan(self, order: list[Piece]) -> tuple[list[int], list[int], int]:
        """Under torchrun each rank streams its own pieces (``order[rank::world]``) in
        batches of its share of the global batch; every rank computes every rank's row
        total, so all agree on the number of steps and on each step's global row count."""
        W, B = self.world, self.batch_size
        totals = [sum(self._split_rows(p) for p in order[q::W]) for q in range(W)]
        sizes = [B // W + (1 if q < B % W else 0) for q in range(W)]
        steps = max(math.ceil(t / b) for t, b in zip(totals, sizes, strict=True))
        return totals, sizes, steps

    def take(self, item: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return item

    def _rows(self, order: list[Piece]) -> Iterator[np.ndarray]:
        """Standardized rows of this split, piece by piece."""
        info = self.info
        for piece in order:
            row = piece.first_row
            for a in read_piece(piece, info.columns, info.names):
                val = info.validation_mask(np.arange(row, row + len(a)))
                row += len(a)
                keep = a[val] if self.split == "val" else a[~val]
                if len(keep):
                    yield (keep - self._shift) / self._scale

    def _tensors(self, a: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(device=self.device, dtype=self.dtype)
        return t[:, :-1], t[:, -1:]

    def epoch(self, epoch: int) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], int]]:
        rng = np.random.default_rng([self.info.seed, epoch, 17])
        order = [self.info.pieces[i] for i in rng.permutation(len(self.info.pieces))]
        if self.world == 1:
            return _prefetch(self._shuffled(order, rng, self.batch_size), self.prefetch)
        local = np.random.default_rng([self.info.seed, epoch, 17, self.rank])
        return _prefetch(self._sharded(order, local), self.prefetch)

    def _sharded(self, order: list[Piece], rng: np.random.Generator):
        totals, sizes, steps = self._plan(order)
        mine = self._shuffled(order[self.rank :: self.world], rng, sizes[self.rank])
        empty = torch.empty((0, len(self._shift)), device=self.device, dtype=self.dtype)
        for i in range(steps):
            n_global = sum(min(b, max(0, t - i * b)) for t, b in zip(totals, sizes, strict=True))
            item = next(mine, None)
            yield (item[0] if item is not None else (empty[:, :-1], empty[:, -1:])), n_global

    def _shuffled(self, order: list[Piece], rng: np.random.Generator, batch: int):
        buffer: list[np.ndarray] = []
        held = 0
        for a in self._rows(order):
            buffer.append(a)
            held += len(a)
            if held >= self.shuffle_buffer:
                rows = np.concatenate(buffer)
                rows = rows[rng.permutation(len(rows))]
                cut = len(rows) - len(rows) % batch
                for i in range(0, cut, batch):
                    yield self._tensors(rows[i : i + batch]), batch
                buffer, held = [rows[cut:]], len(rows) - cut
        if held:
            rows = np.concatenate(buffer)
            rows = rows[rng.permutation(len(rows))]
            for i in range(0, len(rows), batch):
                chunk = rows[i : i + batch]
                yield self._tensors(chunk), len(chunk)

    def full_chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's rows of the split (all of them in one process; under torchrun
        its own pieces), in file order, one record batch at a time."""
        for a in self._rows(self.info.pieces[self.rank :: self.world]):
            yield self._tensors(a)


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Produce ``items`` in a background thread, ``depth`` ahead; errors re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ----------------------------------------------------------------------------- choosing


def memory_budget_mb(configured: int | None) -> float:
    """The configured budget, or a quarter of this machine's RAM."""
    if configured is not None:
        return float(configured)
    import os

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


def load_streaming(cfg: Any, seed: int, dtype: str, bias: bool) -> Any:
    """A ``data.Dataset`` whose rows stay on disk: ``stream`` holds the scan, the tensors
    hold a sample of up to 10k rows per split (for pictures)."""
    from huberfit.data import Dataset

    info = scan(cfg.path, cfg.source, cfg.target, cfg.features, seed, cfg.val_fraction,
                cfg.standardize, center=bias)  # fmt: skip
    s = info.scaling
    shift, scale = np.array([*s.x_mean, s.y_mean]), np.array([*s.x_scale, s.y_scale])

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if len(rows) == 0:
            return None, None
        t = torch.from_numpy((rows - shift) / scale).to(TORCH_DTYPES[dtype]).contiguous()
        return t[:, :-1].contiguous(), t[:, -1:].contiguous()

    X_train, y_train = tensors(info.samples["train"])
    X_val, y_val = tensors(info.samples["val"])
    files = len({p.path for p in info.pieces})
    return Dataset(
        X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val,
        feature_names=info.features, scaling=s,
        source=f"{cfg.path} ({info.n_rows} rows in {files} file(s), streamed)",
        n_rows=info.n_rows, notes=info.notes, stream=info,
    )  # fmt: skip
