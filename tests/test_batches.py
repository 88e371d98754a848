"""The in-memory batch source: its packed table (on huge pages where Linux offers them),
and each epoch's batches against the rows its seeded permutation names."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest
import torch

from huberfit.data.batches import HUGE_FROM_BYTES, HUGE_PAGE, InMemoryBatches, empty_rows


def _mapping_fields(addr: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds ``addr``."""
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside:
            fields[head.rstrip(":")] = line.split(":", 1)[1].strip()
    return fields


def _thp_offered() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and ("[always]" in path.read_text() or "[madvise]" in path.read_text())


def test_a_large_table_is_on_memory_that_asks_for_huge_pages():
    rows = HUGE_FROM_BYTES // (18 * 4) + 1
    table = empty_rows((rows, 18), torch.float32)
    assert table.shape == (rows, 18) and table.is_contiguous()
    table.fill_(2.5)  # writable, and its own memory
    assert float(table.sum()) == 2.5 * rows * 18
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return
    assert table.data_ptr() % HUGE_PAGE == 0
    if sys.platform == "linux" and _thp_offered():
        # the kernel may still be short of free huge pages; what it guarantees is that
        # the mapping is eligible for them
        assert _mapping_fields(table.data_ptr())["THPeligible"] == "1"


def test_a_small_table_is_an_ordinary_tensor():
    table = empty_rows((10, 3), torch.float64)
    assert table.shape == (10, 3) and table.dtype == torch.float64
    assert table.untyped_storage().nbytes() == 10 * 3 * 8  # no mapping of its own


@pytest.mark.parametrize("n, batch", [(300_000, 4096), (1000, 7), (1000, 256)])
def test_each_epoch_serves_the_rows_its_permutation_names(n, batch):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, 16, generator=g)
    y = torch.randn(n, 1, generator=g)
    source = InMemoryBatches(X, y, batch, seed=11)
    for epoch in range(3):  # one reused buffer holds each epoch's permutation
        order = source.order(epoch).long()
        served = list(source.epoch(epoch))
        assert [rows for _, rows in served][:-1] == [batch] * (len(served) - 1)
        assert torch.equal(torch.cat([b.X for b, _ in served]), X[order])
        assert torch.equal(torch.cat([b.y1 for b, _ in served]), y[order, 0])
        ones_and_x = torch.cat([b.X1T for b, _ in served], dim=1).t()
        assert torch.equal(ones_and_x, torch.cat([X[order], torch.ones(n, 1)], 1))
        skip = len(served) // 2  # a resumed epoch: the rest of the same order
        rest = torch.cat([b.X for b, _ in source.epoch(epoch, skip)])
        assert torch.equal(rest, X[order[skip * batch :]])


def test_the_order_does_not_depend_on_the_buffer():
    source = InMemoryBatches(torch.zeros(5000, 2), torch.zeros(5000, 1), 64, seed=5)
    fresh = source.order(4)
    into = torch.full((5000,), -1, dtype=fresh.dtype)
    assert torch.equal(source.order(4, out=into), fresh) and torch.equal(into, fresh)


def test_two_epochs_served_at_once_each_keep_their_own_order():
    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(5000, 3, generator=g), torch.randn(5000, 1, generator=g)
    source = InMemoryBatches(X, y, 100, seed=2)
    first, second = source.epoch(0), source.epoch(1)
    a = [next(first)[0].X for _ in range(3)]
    b = torch.cat([batch.X for batch, _ in second])
    a += [batch.X for batch, _ in first]
    assert torch.equal(torch.cat(a), X[source.order(0).long()])
    assert torch.equal(b, X[source.order(1).long()])
    again = torch.cat([batch.X for batch, _ in source.epoch(0)])  # the buffer is free again
    assert torch.equal(again, X[source.order(0).long()])


def _source(n=200_000, batch=1024, seed=9):
    """A source that gathers ahead (forced: with torch on one thread it would not)."""
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, 6, generator=g), torch.randn(n, 1, generator=g)
    source = InMemoryBatches(X, y, batch, seed)
    source.reads_ahead = True
    return source, X, y


def test_epochs_are_gathered_ahead_only_with_a_core_for_it():
    X, y = torch.zeros(200_000, 6), torch.zeros(200_000, 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a sweep's worker: one core of its own
        assert not InMemoryBatches(X, y, 1024, 0).reads_ahead
        torch.set_num_threads(2)
        assert InMemoryBatches(X, y, 1024, 0).reads_ahead
        assert not InMemoryBatches(X, y, 10_000, 0).reads_ahead  # 20 steps an epoch
    finally:
        torch.set_num_threads(before)


def _served(source, epoch, skip=0):
    return torch.cat([b.X1T for b, _ in source.epoch(epoch, skip)], dim=1)


def test_epochs_gathered_ahead_are_the_epochs_gathered_by_blocks():
    ahead, X, y = _source()
    blocks = InMemoryBatches(X, y, 1024, 9)
    blocks.reads_ahead = False
    # in turn, repeated, skipping ahead and back (4 while 3 is gathered ahead, then 3)
    for epoch, skip in [(0, 0), (1, 0), (2, 7), (2, 0), (4, 0), (3, 0), (5, 0), (6, 195)]:
        assert torch.equal(_served(ahead, epoch, skip), _served(blocks, epoch, skip))
    ahead.settle()


def test_a_draw_on_the_training_thread_never_overwrites_the_order_being_gathered(monkeypatch):
    """Epoch 4 asked for while epoch 3 is gathered ahead: the training thread must not draw
    epoch 5 into 3's slot (``orders[1]``) while the gather reads it. Made certain, not
    left to timing: a gather ahead waits (at most 0.2 s) for a permutation drawn on the
    training thread meanwhile, so such a draw always lands while the gather is under way."""
    import threading

    ahead, X, y = _source()
    blocks = InMemoryBatches(X, y, 1024, 9)
    blocks.reads_ahead = False
    drawn, clashes = threading.Event(), []
    gather, order = torch.index_select, ahead.order

    def gated(*args, **kwargs):
        if threading.current_thread().name == "huberfit-epoch-ahead":
            drawn.wait(0.2)
        return gather(*args, **kwargs)

    def noted(epoch, out=None):
        state = ahead._ahead
        meanwhile = (threading.current_thread() is threading.main_thread()
                     and state is not None and state.thread is not None
                     and state.thread.is_alive())  # fmt: skip
        if meanwhile and state.gathering != epoch and state.gathering % 2 == epoch % 2:
            clashes.append((epoch, state.gathering))
        result = order(epoch, out)
        if meanwhile:
            drawn.set()
        return result

    monkeypatch.setattr(torch, "index_select", gated)
    monkeypatch.setattr(ahead, "order", noted)
    for epoch in (2, 4, 3):  # 3 is gathered ahead while 4 is asked for, then served
        assert torch.equal(_served(ahead, epoch), _served(blocks, epoch))
        drawn.clear()
    ahead.settle()
    assert clashes == []


def test_no_epoch_is_gathered_ahead_past_the_planned_last():
    source, _, _ = _source()
    source.plan(2)
    _served(source, 0)
    assert source._ahead.thread is not None  # epoch 1, being gathered
    _served(source, 1)
    assert source._ahead.thread is None  # epoch 2 will not come
    source.settle()


def test_a_failed_gather_ahead_is_raised_on_the_training_thread(monkeypatch):
    source, _, _ = _source()
    original = source.order

    def broken(epoch, out=None):
        if epoch == 2:
            raise MemoryError("no room for epoch 2")
        return original(epoch, out)

    monkeypatch.setattr(source, "order", broken)
    _served(source, 0)  # epoch 1 is gathered ahead meanwhile and epoch 2 drawn: it fails
    with pytest.raises(MemoryError, match="no room for epoch 2"):
        source.settle()
    # the failed draw is not taken for a drawn one: epoch 2 is drawn again when it comes
    monkeypatch.setattr(source, "order", original)
    for epoch in (1, 2):
        assert torch.equal(_served(source, epoch), _served(_source()[0], epoch))
    source.settle()


@pytest.mark.parametrize("stop", ["completed", "diverged"])
def test_training_leaves_no_thread_behind_and_the_same_weights(stop):
    import threading

    from huberfit.loop import FitSettings, fit
    from huberfit.losses import build_loss
    from huberfit.model import build_model
    from huberfit.optim import SGD

    weights = []
    for ahead in (True, False):
        source, _, _ = _source(batch=2048)
        source.reads_ahead = ahead
        if stop == "diverged":
            source.XY[:, -1] *= 1e30  # targets that make MSE overflow in the second epoch
        model = build_model(6, True, 0, torch.float32)
        opt = SGD(list(model.parameters()), lr=0.05 if stop == "completed" else 0.5)
        loss = build_loss("huber" if stop == "completed" else "mse")
        result = fit(model, loss, source, opt, _Quiet(), FitSettings(epochs=4),
                     lambda m: (None, {}, None))  # fmt: skip
        assert result.status == stop
        assert not [t for t in threading.enumerate() if t.name == "huberfit-epoch-ahead"]
        weights.append(torch.cat([model.weight.reshape(-1), model.bias]).detach())
    if stop == "completed":  # gathered ahead or by blocks: the same batches, bit for bit
        assert torch.equal(weights[0], weights[1])


class _Quiet:
    def step(self, step: int, loss: float) -> None: ...
    def epoch(self, report) -> None: ...
