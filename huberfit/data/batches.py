"""Batches: the ``BatchSource`` protocol that ``loop.fit`` is typed against, and its three
sources: in memory, sharded over processes (torchrun), and streamed from files.

Every source serves the same global batches for the same seed: epoch ``e``'s order is a
function of ``(seed, e)`` alone, so any epoch is known without replaying the ones before
(exact resume, comparisons with the same batch order). Must not import losses, model,
train or sinks.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import mmap
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from huberfit.data.stream import Piece, StreamInfo, memory_budget_mb, prefetch
from huberfit.errors import DataError

Chunk = tuple[torch.Tensor, torch.Tensor]  # (X (b, f), y (b, 1)), on the training device
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class BatchSource(Protocol):
    """What ``loop.fit`` and the scorer need from the rows of one split.

    ``epoch(e, skip)`` yields ``(item, rows in the whole global batch)`` per micro-batch
    after the first ``skip`` (a resumed epoch), and ``take(item)`` turns an item into
    ``(X, y)`` on ``device`` (a ``Batch`` of views into gathered rows in memory; an index
    tensor gathered late when sharded; the rows themselves when streamed). Close the
    iterator when leaving an epoch early: it may own a background thread. ``full_chunks()`` gives this
    process's rows of the split for a full-batch step or for scoring. ``n`` counts the
    split's rows over all processes.
    """

    device: torch.device
    n: int
    in_memory: bool  # every row in one tensor (exact finishes may use them all at once)

    def steps_per_epoch(self, accum: int = 1) -> int: ...
    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Any, int]]: ...
    def take(self, item: Any) -> Chunk: ...
    def full_chunks(self) -> Iterable[Chunk]: ...
    def order_digest(self) -> str: ...


def _digest(order: np.ndarray) -> str:
    """A short fingerprint of an epoch's order (same order, same digest)."""
    return hashlib.sha1(order.tobytes()).hexdigest()[:16]


class Batch(NamedTuple):
    """One micro-batch, as views into a block of gathered rows: ``X (b, f)``, the target
    as a vector ``y1 (b,)``, and for ``loop``'s fused path ``X1T``, ``[X, 1]`` transposed
    ``(f + 1, b)`` (the gradient of weight and bias in one ``addmv``). ``take`` gives
    ``(X, y (b, 1))``."""

    X: torch.Tensor
    y1: torch.Tensor
    X1T: torch.Tensor


# Rows gathered at a time (a block of whole batches): one gather call per block instead
# of one per batch, on every thread. Blocks stay near BLOCK_BYTES so that one is still in
# cache when its batches are used. Measured on a 2-core Xeon, 1M x 16 rows, epochs side
# by side: batch 256 in blocks of 4096 / 8192 / 16384 rows 156 / 147 / 149 ms; batch 4096
# gathered per batch 49.5 ms, in blocks of 8192 49.5 ms, of 16384 57 ms (half of each
# batch sits in the other core's cache). A background gather thread (or two) beside the
# training thread was no faster (51-53 ms: three threads on two cores).
BLOCK_ROWS, BLOCK_BYTES = 8192, 4 * 2**20


# Row gathers from a large table miss the TLB on almost every row with 4 KiB pages; with
# 2 MiB pages (Linux's transparent huge pages, given on request: "madvise") its page table
# stays cached. Measured on a 2-core Xeon, 1M x 18 float32 rows gathered in batches of
# 4096: 17.4-19.5 ms an epoch on ordinary pages, 12.5 ms on huge pages.
HUGE_PAGE, HUGE_FROM_BYTES = 2**21, 16 * 2**20


def empty_rows(shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor for a table that rows are gathered from: from
    ``HUGE_FROM_BYTES`` on, in memory that asks the kernel for huge pages (aligned to
    them), where the platform offers that; an ordinary ``torch.empty`` elsewhere."""
    nbytes = shape[0] * shape[1] * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_FROM_BYTES or advice is None:
        return torch.empty(shape, dtype=dtype)
    try:
        area = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        area.madvise(advice)
    except (OSError, ValueError):  # no such mapping or advice here: ordinary pages
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(area, dtype=torch.uint8)  # the tensor keeps the mapping alive
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start : start + nbytes].view(dtype).view(shape)


# On the CPU, a whole epoch's rows are gathered into a table of their own on a background
# thread while the epoch before is trained (two tables, lent to one epoch at a time), when
# both fit in AHEAD_BYTES (and an eighth of the RAM) and the epoch has AHEAD_MIN_STEPS
# steps or more: the step then never waits for a gather or a permutation. Measured on a
# 2-core Xeon, 1M x 16 float32, consecutive epochs of the same step: batch 4096 32.3 ms
# against 43.4 ms gathering by blocks, batch 256 92.6 ms against 115.2 ms; whole runs of
# 8 epochs 42.6-46.3 ms an epoch against 45.4-55.6 (the first epoch gathers its own).
AHEAD_BYTES, AHEAD_MIN_STEPS = 512 * 2**20, 64
VIEWS_AT_ONCE = 64  # batches whose views one ``_batches`` call makes from a gathered table


class _EpochsAhead:
    """The next epoch's rows, gathered on a background thread into the table the epoch
    being trained does not use. ``take(e)`` gives epoch ``e``'s table (waiting for the
    thread if it is making it; making it here otherwise); ``ahead(e)`` starts epoch ``e``;
    ``settle()`` waits for the thread, and raises what it raised.

    The permutation of the epoch after the one being gathered is drawn by whichever thread
    is free first: the background thread once its gather is done, or the training thread
    when its epoch ends (``take``). At batch 4096 (2-core Xeon, 1M x 16 float32) an epoch's
    steps take ~18 ms and a gather ~25 ms and a draw ~7.5 ms; both on the background
    thread, the training thread waited ~14 ms an epoch for them.
    """

    def __init__(self, source: InMemoryBatches) -> None:
        self.source = source
        shape = tuple(source.XY.shape)
        # huge pages as well (2-core Xeon, 1M x 18 float32): a one-thread gather into one
        # took 16.7-19.6 ms against 20-23.7 ms, a 4096-row step's first product of its rows
        # 29 us against 36 us, so epochs at batch 4096 / 256 took ~28 / ~82 ms against
        # ~30 / ~90 ms. Faulting 72 MB of them in costs 7 ms where the kernel has free
        # 2 MiB blocks, ~100 ms where it must compact memory first (once, in the gather).
        self.tables = [empty_rows(shape, source.XY.dtype) for _ in range(2)]
        self.made: list[int | None] = [None, None]  # the epoch each table holds
        # epoch e's permutation in orders[e % 2]; the epoch each holds, or is being drawn
        self.orders = [torch.empty(source.n, dtype=source._index_dtype()) for _ in range(2)]
        self.drawn: list[int | None] = [None, None]
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.gathering: int | None = None  # the epoch the thread makes
        self.error: BaseException | None = None

    def _planned(self, epoch: int) -> bool:
        return self.source.last_epoch is None or epoch < self.source.last_epoch

    def _draw(self, epoch: int) -> torch.Tensor:
        """Epoch's permutation, drawn unless it is drawn already (or being drawn by the
        other thread: ``take`` waits for that one before it is used)."""
        slot = epoch % 2
        with self.lock:
            if self.drawn[slot] == epoch:
                return self.orders[slot]
            self.drawn[slot] = epoch
        try:
            return self.source.order(epoch, out=self.orders[slot])
        except BaseException:
            self.drawn[slot] = None
            raise

    def _make(self, epoch: int, slot: int, background: bool) -> None:
        try:
            if background:  # one thread of its own: the training thread has the other core
                torch.set_num_threads(1)
            order = self._draw(epoch)
            torch.index_select(self.source.XY, 0, order, out=self.tables[slot])
            self.made[slot] = epoch
            if background and self._planned(epoch + 1):
                self._draw(epoch + 1)
        except BaseException as exc:  # noqa: BLE001 - raised on the training thread
            self.made[slot], self.error = None, exc

    def settle(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None and thread.ident is not None:  # None: start was cut short
            thread.join()
        error, self.error = self.error, None
        if error is not None:
            raise error

    def take(self, epoch: int) -> tuple[torch.Tensor, int]:
        """``(table, slot)`` of ``epoch``."""
        if self.thread is not None and self.gathering == epoch and self._planned(epoch + 1):
            self._draw(epoch + 1)  # while the thread still gathers this one
        self.settle()
        slot = self.made.index(epoch) if epoch in self.made else None
        if slot is None:  # the first epoch, or one not planned: made here, on every thread
            slot = 0 if self.made[0] is None or self.made[1] is not None else 1
            with self.source.every_thread():
                self._make(epoch, slot, background=False)
            self.settle()
        return self.tables[slot], slot

    def ahead(self, epoch: int, busy: int) -> None:
        """Start making ``epoch`` in the table other than ``busy`` (the one being trained)."""
        slot = 1 - busy
        self.made[slot], self.gathering = None, epoch
        self.thread = threading.Thread(target=self._make, args=(epoch, slot, True),
                                       name="huberfit-epoch-ahead")  # fmt: skip
        self.thread.start()


class InMemoryBatches:
    """Mini-batches over in-memory tensors, in a seeded order per epoch.

    Epoch ``e`` uses the permutation of a ``torch.Generator`` seeded from ``(seed, e)``.
    Tensors must already be on the training device; ``batch_size=None`` is full batch.
    X, a column of ones and y are packed side by side in one ``(n, f + 2)`` tensor, so
    that a block of batches is one row gather and each batch's parts are views into it
    (see ``Batch``).
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int):
        self.n, self.f = X.shape
        shape = (self.n, self.f + 2)
        on_cpu = X.device.type == "cpu"
        self.XY = empty_rows(shape, X.dtype) if on_cpu else X.new_empty(shape)
        self.XY[:, : self.f] = X
        self.XY[:, self.f] = 1
        self.XY[:, self.f + 1] = y.reshape(-1)
        self.X, self.y = self.XY[:, : self.f], self.XY[:, self.f + 1 :]
        self.device = X.device
        self.in_memory = True
        self.batch_size = min(batch_size or self.n, self.n)
        self.seed = seed
        self.threads = torch.get_num_threads()
        self._order_buffer: torch.Tensor | None = None  # epoch()'s, when no epoch holds it
        self.last_epoch: int | None = None  # plan(): no epoch is gathered ahead past it
        self._ahead: _EpochsAhead | None = None
        self._serving = 0  # epochs being served now
        # the two tables: at most AHEAD_BYTES, and at most an eighth of this machine's RAM;
        # and a core for the thread (torch on one thread, as in a sweep's workers: none)
        room = min(AHEAD_BYTES, memory_budget_mb(None) * 2**20 / 2)
        self.reads_ahead = (on_cpu and self.threads > 1 and 2 * self.XY.nbytes <= room
                            and self.steps_per_epoch() >= AHEAD_MIN_STEPS)  # fmt: skip

    def plan(self, last_epoch: int) -> None:
        """Training ends before epoch ``last_epoch``: no epoch from there on is gathered
        ahead."""
        self.last_epoch = last_epoch

    def settle(self) -> None:
        """Wait for an epoch being gathered ahead (before forking, exiting, or timing
        something else); raises what that gather raised."""
        if self._ahead is not None:
            self._ahead.settle()

    def steps_per_epoch(self, accum: int = 1) -> int:
        return math.ceil(math.ceil(self.n / self.batch_size) / accum)

    def order(self, epoch: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The permutation of row indices for ``epoch`` (on the CPU; int32 below 2**31
        rows, which torch draws in half the time of int64), written into ``out`` if given
        (the same numbers)."""
        # torch seeds are 64-bit: wrap (identical for every seed that did not overflow)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
        return torch.randperm(self.n, generator=gen, dtype=self._index_dtype(), out=out)

    def _index_dtype(self) -> torch.dtype:
        return torch.int32 if self.n < 2**31 else torch.int64

    def indices(self, epoch: int) -> list[tuple[torch.Tensor, int]]:
        """``(row indices, rows in the whole batch)`` per batch of ``epoch``, on the data's
        device. In one process the two sizes agree; a sharded source takes a part."""
        if self.batch_size >= self.n:
            return [(torch.arange(self.n, device=self.device), self.n)]
        perm = self.order(epoch).to(self.device)
        return [(idx, idx.shape[0]) for idx in torch.split(perm, self.batch_size)]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Batch, int]]:
        """``(batch, rows)`` for each batch of ``epoch`` after the first ``skip``, gathered
        a block at a time."""
        B = self.batch_size
        if B >= self.n:
            if skip == 0:
                yield self._batches(self.XY)[0], self.n
            return
        if self.reads_ahead and self._serving == 0:
            yield from self._epoch_ahead(epoch, skip)
            return
        # drawn into one buffer kept for every epoch: a fresh 4 MB (1M rows) is fresh pages
        # each epoch, 8.4 ms against 6.1 ms for the draw itself (2-core Xeon). An epoch
        # begun while another is still being served draws into its own tensor.
        buffer, self._order_buffer = self._order_buffer, None
        if buffer is None:
            buffer = torch.empty(self.n, dtype=self._index_dtype())
        try:
            perm = self.order(epoch, out=buffer)[skip * B :]
            if self.device.type == "cuda":  # copied without a host sync (pinned memory)
                perm = perm.pin_memory().to(self.device, non_blocking=True)
            elif self.device.type != "cpu":
                perm = perm.to(self.device)
            per_block = B * max(1, min(BLOCK_ROWS, BLOCK_BYTES // self.XY[0].nbytes) // B)
            for idx in torch.split(perm, per_block):
                for batch in self._gather(idx):
                    yield batch, batch.X.shape[0]
        finally:  # served, or left early (closed): the buffer is free again
            self._order_buffer = buffer

    def _epoch_ahead(self, epoch: int, skip: int) -> Iterator[tuple[Batch, int]]:
        """The batches of ``epoch`` from its whole table (gathered ahead, or now), while
        the next epoch is gathered into the other table."""
        if self._ahead is None:
            self._ahead = _EpochsAhead(self)
        self._serving += 1
        try:
            table, slot = self._ahead.take(epoch)
            if self.last_epoch is None or epoch + 1 < self.last_epoch:
                self._ahead.ahead(epoch + 1, slot)
            B = self.batch_size
            per_views = B * VIEWS_AT_ONCE  # the rows are there already: views in bulk
            for start in range(skip * B, self.n, per_views):
                for batch in self._batches(table[start : start + per_views]):
                    yield batch, batch.X.shape[0]
        finally:
            self._serving -= 1

    def _gather(self, idx: torch.Tensor) -> list[Batch]:
        """One block's rows, gathered with every thread torch had when this source was
        made: a gather is bound by memory latency, and two threads fetch twice the rows
        (the step itself may run on one thread; see ``loop.step_threads``)."""
        with self.every_thread():
            return self._batches(self.XY.index_select(0, idx))

    @contextlib.contextmanager
    def every_thread(self) -> Iterator[None]:
        """Run with every thread torch had when this source was made (a gather is bound by
        memory latency: two threads fetch twice the rows)."""
        now = torch.get_num_threads()
        if now == self.threads or self.device.type != "cpu":
            yield
            return
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(now)

    def _batches(self, block: torch.Tensor) -> list[Batch]:
        """The batches of a gathered block, as views: the whole batches by one ``unbind``
        per part (a block of 32 batches of 256 rows: 84 us, against 238 us slicing each
        batch's three parts), a short last batch by slicing."""
        f, B = self.f, self.batch_size
        full = block.shape[0] // B
        out: list[Batch] = []
        if full:
            rows = block[: full * B].view(full, B, f + 2)
            parts = (rows[:, :, :f].unbind(0), rows[:, :, f + 1].unbind(0),
                     rows[:, :, : f + 1].transpose(1, 2).unbind(0))  # fmt: skip
            out = list(map(Batch, *parts))
        if full * B < block.shape[0]:
            xy = block[full * B :]
            out.append(Batch(xy[:, :f], xy[:, f + 1], xy[:, : f + 1].t()))
        return out

    def full_chunks(self) -> list[Chunk]:
        """This process's rows for a full-batch step, in chunks (here: one)."""
        return [(self.X, self.y)]

    def take(self, item: Batch | torch.Tensor) -> Chunk:
        """``(X (b, f), y (b, 1))`` of a batch, or of the rows ``item`` (indices)."""
        if isinstance(item, Batch):
            return item.X, item.y1.unsqueeze(1)
        if item.numel() == self.n:
            return self.X, self.y
        # index_select is ~2x faster than X[idx] for row gathers on the CPU
        xy = self.XY.index_select(0, item)
        return xy[:, : self.f], xy[:, self.f + 1 :]

    def order_digest(self) -> str:
        full = self.batch_size >= self.n
        return _digest((torch.arange(self.n) if full else self.order(0)).numpy())


class ShardedBatches(InMemoryBatches):
    """One rank's share of the same global batches: every rank draws the same seeded
    permutation, cuts the same batches of ``batch_size`` rows (the global batch) and takes
    every ``world``-th row of each, so the shares are disjoint and cover the batch."""

    def __init__(self, X, y, batch_size: int | None, seed: int, rank: int, world: int):
        super().__init__(X, y, batch_size, seed)
        self.rank, self.world = rank, world
        self.reads_ahead = False  # its epochs are index lists, gathered late by ``take``

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        """Row indices (gathered late, by ``take``), this rank's share of each batch."""
        for idx, n in self.indices(epoch)[skip:]:
            yield idx[self.rank :: self.world], n

    def full_chunks(self) -> list[Chunk]:
        return [(self.X[self.rank :: self.world], self.y[self.rank :: self.world])]


class StreamBatches:
    """Batches of one split, streamed from the files (see ``stream``).

    Pieces (row groups / files) in a seeded order per epoch, rows mixed in a shuffle
    buffer of ``shuffle_buffer`` rows by a background thread a buffer or two ahead (on a
    GPU, batches a few ahead, copied to pinned memory there), so the training step does
    not wait on I/O. Under torchrun each rank streams
    its own pieces. ``full_chunks()`` streams the split in file order.
    """

    def __init__(self, info: StreamInfo, split: str, batch_size: int | None, device: torch.device,
                 dtype: torch.dtype, shuffle_buffer: int, prefetch: int = 4, rank: int = 0,
                 world: int = 1, keep_bytes: float = 0) -> None:  # fmt: skip
        self.info, self.split, self.device, self.dtype = info, split, device, dtype
        self.keep_bytes = keep_bytes  # full_chunks keeps its rows when they take at most this
        self._kept: list[np.ndarray] | None = None
        self.rank, self.world = rank, world
        self.in_memory = False
        self.n = info.n_train if split == "train" else info.n_val
        self.batch_size = min(batch_size or self.n, max(self.n, 1))
        if self.batch_size < world:
            raise DataError(
                f"train.batch_size={self.batch_size} is less than the {world} processes"
            )
        self.shuffle_buffer = max(shuffle_buffer, self.batch_size)
        self.prefetch = prefetch

    def steps_per_epoch(self, accum: int = 1) -> int:
        if self.world > 1:
            return math.ceil(self._plan(self.info.pieces)[2] / accum)
        return math.ceil(math.ceil(self.n / self.batch_size) / accum)

    def _plan(self, order: list[Piece]) -> tuple[list[int], list[int], int]:
        """Under torchrun each rank streams its own pieces (``order[rank::world]``) in
        batches of its share of the global batch; every rank computes every rank's row
        total, so all agree on the number of steps and on each step's global row count."""
        W, B = self.world, self.batch_size
        totals = [sum(p.split_rows(self.split) for p in order[q::W]) for q in range(W)]
        sizes = [B // W + (1 if q < B % W else 0) for q in range(W)]
        steps = max(math.ceil(t / b) for t, b in zip(totals, sizes, strict=True))
        return totals, sizes, steps

    def take(self, item: Chunk) -> Chunk:
        return item

    def _tensors(self, a: np.ndarray) -> Chunk:
        """Rows as ``(X, y)`` in the training dtype, on the device. NumPy converts them and
        torch shares its array: torch's own ``.to(float32)`` spreads even a 4096 x 17
        batch over every core (2-core Xeon: 2.7 ms a batch while the training thread
        holds the other core, against 0.05 ms in NumPy)."""
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=_NUMPY_DTYPES[self.dtype]))
        if self.device.type == "cuda":  # no host sync: the training thread never waits
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            t = t.to(self.device)
        return t[:, :-1], t[:, -1:]

    def _piece_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.info.seed, epoch, 17]).permutation(len(self.info.pieces))

    def order_digest(self) -> str:
        """The first epoch's order of file pieces (rows are mixed within the buffer)."""
        return _digest(self._piece_order(0))

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Chunk, int]]:
        """``((X, y), rows in the global batch)`` per batch of ``epoch`` after the first
        ``skip`` (read and dropped: a stream cannot seek into its shuffle buffer)."""
        rng = np.random.default_rng([self.info.seed, epoch, 17])
        order = [self.info.pieces[i] for i in rng.permutation(len(self.info.pieces))]
        if self.world == 1 and self.device.type == "cpu":
            # whole shuffled buffers cross threads, cut into batches here: with a hand-off
            # per batch, a streamed epoch took 1.05x-1.06x as long (0.05-0.1 GB, 2-core
            # Xeon, side by side; the same batches)
            blocks = prefetch(self._shuffled(order, rng, self.batch_size), 2)
            items = self._cut(blocks, self.batch_size)
        elif self.world == 1:  # batches copied to pinned memory off the training thread
            batches = self._cut(self._shuffled(order, rng, self.batch_size), self.batch_size)
            items = prefetch(batches, self.prefetch)
        else:
            local = np.random.default_rng([self.info.seed, epoch, 17, self.rank])
            items = prefetch(self._sharded(order, local), self.prefetch)
        try:
            yield from itertools.islice(items, skip, None)
        finally:
            items.close()

    def _cut(self, blocks: Iterator[np.ndarray], batch: int) -> Iterator[tuple[Chunk, int]]:
        """Shuffled blocks of rows as batches (each block a whole number of batches, but
        for the epoch's last)."""
        try:
            for rows in blocks:
                for i in range(0, len(rows), batch):
                    chunk = rows[i : i + batch]
                    yield self._tensors(chunk), len(chunk)
        finally:
            blocks.close()

    def _sharded(self, order: list[Piece], rng: np.random.Generator):
        totals, sizes, steps = self._plan(order)
        mine = self._cut(self._shuffled(order[self.rank :: self.world], rng, sizes[self.rank]),
                         sizes[self.rank])  # fmt: skip
        empty = torch.empty((0, len(self.info.columns)), device=self.device, dtype=self.dtype)
        for i in range(steps):
            n_global = sum(min(b, max(0, t - i * b)) for t, b in zip(totals, sizes, strict=True))
            item = next(mine, None)
            yield (item[0] if item is not None else (empty[:, :-1], empty[:, -1:])), n_global

    def _shuffled(self, order: list[Piece], rng: np.random.Generator, batch: int):
        # stages on threads of their own: reading (see StreamInfo.rows), standardizing
        # (here), shuffling (the epoch's prefetch thread); one thread for the last two
        # took 1.07 s for an epoch of 3.7M x 17 rows on a 2-core Xeon, two 0.87 s
        read = prefetch(self.info.rows(order, self.split, _NUMPY_DTYPES[self.dtype]), 2)
        try:
            yield from self._shuffle(read, rng, batch)
        finally:
            read.close()

    def _shuffle(self, read: Iterator[np.ndarray], rng: np.random.Generator, batch: int):
        """Rows mixed in a buffer of ``shuffle_buffer`` rows, as blocks of whole batches
        (the rows left over stay for the next buffer; the last block takes the rest). The
        rows are gathered by ``np.take``, not by indexing: 100,000 x 17 float32 rows on a
        2-core Xeon, 0.9 ms against 2.1 ms (indexing copies row by row)."""
        buffer: list[np.ndarray] = []
        held = 0
        for a in read:
            buffer.append(a)
            held += len(a)
            if held >= self.shuffle_buffer:
                rows = np.concatenate(buffer)
                rows = np.take(rows, rng.permutation(len(rows)), axis=0)
                cut = len(rows) - len(rows) % batch
                yield rows[:cut]
                buffer, held = [rows[cut:]], len(rows) - cut
        if held:
            rows = np.concatenate(buffer)
            yield np.take(rows, rng.permutation(len(rows)), axis=0)

    def full_chunks(self) -> Iterator[Chunk]:
        """This process's rows of the split (all of them in one process; under torchrun
        its own pieces), in file order, one record batch at a time.

        The validation rows are scored after every epoch, and L-BFGS evaluates its
        objective over all training rows many times an epoch: each pass would read every
        file again (the split's rows are spread over all of them). So the first complete
        pass keeps the rows, as the training dtype, when they take at most ``keep_bytes``,
        and later passes serve them from memory: the same arrays, so the same numbers."""
        if self._kept is not None:
            for a in self._kept:
                yield self._tensors(a)
            return
        pieces = self.info.pieces[self.rank :: self.world]
        dtype = _NUMPY_DTYPES[self.dtype]
        rows = sum(p.split_rows(self.split) for p in pieces)
        fits = rows * len(self.info.columns) * np.dtype(dtype).itemsize <= self.keep_bytes
        kept: list[np.ndarray] | None = [] if fits else None
        for a in self.info.rows(pieces, self.split, dtype):
            if kept is not None:
                kept.append(a)
            yield self._tensors(a)
        self._kept = kept  # only once the pass is complete
