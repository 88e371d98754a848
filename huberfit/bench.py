"""``huberfit bench``: huberfit's engine against the tutorial loop, side by side, one process.

All timings share the data, loss (Huber, delta 1), optimizer (SGD), dtype (float32) and
thread settings; each is warmed up first and reported as the median of repeats. (a), (b)
and (b') are interleaved (three engine epochs and one bare epoch after each tutorial
epoch) so that all see the same state of a shared machine. Nothing here is asserted:
timings are for people, on their machine, and every report names the machine.

Per batch size:
(a)  the tutorial loop: ``TensorDataset`` + ``DataLoader(shuffle=True)`` + the readable
     ``torch.where`` Huber module + ``zero_grad / backward / step`` with ``torch.optim.SGD``;
(b)  huberfit's engine (``loop.fit`` with its batch source, loss and optimizer);
(b') a bare update, the floor: a random-row gather, ``addmv``, the closed-form Huber
     gradient and an in-place SGD step per batch; no autograd, no bookkeeping;
(d)  huberfit's engine with TensorBoard logging on (default intervals) against off.
Once:
(c)  ``HuberLoss`` against ``F.huber_loss``, forward + backward on 1M elements;
(e)  full-batch L-BFGS to a relative objective gap of 1e-6 on the same Huber problem.
``--stream-gb`` instead times a streamed epoch against a bare ``pyarrow.dataset`` scan of
the same files (and the peak memory of a streamed run).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from huberfit.artifacts import atomic_path
from huberfit.data.batches import InMemoryBatches, empty_rows
from huberfit.errors import RunError
from huberfit.loop import FitSettings, TrainState, fit
from huberfit.losses import HuberLoss, huber_reference, loss_spec
from huberfit.model import build_model
from huberfit.optim import SGD


@dataclass
class BenchResult:
    rows: int
    features: int
    batch_sizes: list[int]
    epochs: int
    device: str
    machine: dict[str, Any]
    per_batch: dict[int, dict[str, Any]] = field(default_factory=dict)  # timings, ratios
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # (c), (e)
    ratios: dict[str, float] = field(default_factory=dict)
    # the share of the machine's CPU time other work took while this ran (None: unknown)
    others_cpu_share: float | None = None


# Above this share of the CPUs taken by other work the figures are not worth quoting: with
# one busy-looping process beside it on a 2-core Xeon, the tutorial loop's epoch at batch
# 256 went from 4.8 s to 37 s and the bare update's from 0.29 s to 1.4 s (their ops use
# both threads and wait for the taken core), the engine's from 0.17 s to 0.21 s.
BUSY_SHARE = 0.10


class _OthersClock:
    """CPU time the rest of the machine used from now on: all CPUs' busy time (Linux's
    ``/proc/stat``; a VM's stolen time counts as busy) less this process's own. ``share()``
    is it as a share of the CPUs over the wall time; None where there is no /proc/stat."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        import resource

        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = resource.getrusage(resource.RUSAGE_SELF)
        return busy, own.ru_utime + own.ru_stime, time.perf_counter()

    def share(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, others) / ((end[2] - self.start[2]) * (os.cpu_count() or 1))


class _TutorialHuber(nn.Module):
    """The loss as users first write it: the readable torch.where definition."""

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        return huber_reference(y_pred, y_true, 1.0)


def make_data(rows: int, features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    y = X @ w + 0.5 * torch.randn(rows, 1, generator=g)
    outliers = torch.rand(rows, generator=g) < 0.05
    y[outliers] += 20 * torch.randn(int(outliers.sum()), 1, generator=g)
    return X, y


def tutorial_epoch(X, y, batch_size: int, device: torch.device) -> Callable[[], None]:
    """One epoch of the tutorial loop (a)."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True)
    model = nn.Linear(X.shape[1], 1).to(device)
    loss_fn = _TutorialHuber()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def epoch() -> None:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
        _sync(device)

    return epoch


class _NullSink:
    def step(self, step: int, loss: float) -> None: ...
    def epoch(self, report: Any) -> None: ...


class _EpochClock:
    """Forwards to a sink and notes the time at the end of each epoch."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.ends = sink, []

    def step(self, step: int, loss: float) -> None:
        self.sink.step(step, loss)

    def epoch(self, report: Any) -> None:
        self.sink.epoch(report)
        self.ends.append(time.perf_counter())


def engine_epochs(
    X, y, batch_size: int, device: torch.device, sinks: Any = None, validate: bool = False
) -> Callable[[int], list[float]]:
    """Epochs of huberfit's engine (b), doing what the tutorial loop does: ``epochs(k)``
    trains ``k`` more epochs of one training, as a run does (within a call the next
    epoch's rows are gathered ahead; the first epoch of a call gathers its own), and
    returns each epoch's wall time. With ``validate`` it also scores a validation slice
    each epoch, and ``sinks`` (e.g. TensorBoard) receive everything a run logs (d)."""
    Xd, yd = X.to(device), y.to(device)
    model = build_model(X.shape[1], True, 0, X.dtype).to(device)
    opt = SGD(list(model.parameters()), lr=0.01)
    batches = InMemoryBatches(Xd, yd, batch_size, 0)
    X_val, y_val = Xd[: len(Xd) // 5], yd[: len(yd) // 5]
    loss_fn = HuberLoss(1.0)

    @torch.no_grad()
    def evaluate(m: nn.Module):
        if not validate:
            return None, {}, None
        pred = m(X_val)
        r = (y_val - pred).reshape(-1)
        val = {"loss": float(loss_fn(pred, y_val)), "mse": float((r * r).mean()),
               "mae": float(r.abs().mean()), "r2": math.nan}  # fmt: skip
        w = m.weight.detach().reshape(-1).tolist()
        params = {f"x{i}": v for i, v in enumerate(w)} | {"intercept": float(m.bias)}
        return val, params, r.cpu().numpy()

    state = TrainState()

    def epochs(k: int = 1) -> list[float]:
        clock = _EpochClock(sinks or _NullSink())
        start = time.perf_counter()
        fit(model, loss_fn, batches, opt, clock, FitSettings(epochs=state.epoch + k), evaluate,
            state=state)  # fmt: skip
        _sync(device)
        return [b - a for a, b in zip([start, *clock.ends[:-1]], clock.ends, strict=True)]

    return epochs


def bare_epoch(X, y, batch_size: int, device: torch.device) -> Callable[[], None]:
    """One epoch of the bare update (b'): per batch, a random-row gather, ``addmv``, the
    closed-form Huber gradient and in-place SGD; nothing else. Its rows and permutation
    live where the engine keeps its own (``empty_rows``, one reused buffer), so the two
    differ only in what the engine does per step."""
    XY = torch.cat([X, y], 1).to(device)
    if device.type == "cpu":
        XY = empty_rows((XY.shape[0], XY.shape[1]), XY.dtype).copy_(XY)
    order = torch.empty(len(XY), dtype=torch.int32)
    f = X.shape[1]
    w = torch.zeros(f, device=device)
    b = torch.zeros((), device=device)

    @torch.no_grad()
    def epoch() -> None:
        perm = torch.randperm(len(XY), dtype=torch.int32, out=order).to(device)
        for idx in torch.split(perm, batch_size):
            xy = XY.index_select(0, idx)
            xb = xy[:, :f]
            g = torch.addmv(b, xb, w).sub_(xy[:, f]).clamp_(-1.0, 1.0).mul_(1.0 / len(idx))
            w.add_(torch.mv(xb.t(), g), alpha=-0.01)
            b.add_(g.sum(), alpha=-0.01)
        _sync(device)

    return epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# (b) trains this many consecutive epochs of one training a round, as a run has them: the
# first gathers its own rows and the last prepares no next one, so a median of epochs is
# a run's steady epoch, not one of those two
RUN_EPOCHS = 5
TB_AB_SECONDS = 10.0  # (d): seconds of paired epochs per batch size


def _interleaved(slow: Callable[[], None], fast: Callable[[int], list[float]],
                 bare: Callable[[], None], repeats: int):  # fmt: skip
    """Time ``repeats`` rounds of one epoch of ``slow``, ``RUN_EPOCHS`` consecutive epochs of
    ``fast`` and one of ``bare``, so all see the same machine (a shared one drifts between
    busy and quiet over seconds); medians."""
    slow(), fast(RUN_EPOCHS), bare()  # warm-up
    times: tuple[list[float], list[float], list[float]] = ([], [], [])
    for _ in range(repeats):
        for fn, out in ((slow, times[0]), (bare, times[2])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        times[1].extend(fast(RUN_EPOCHS))
    return tuple(_summary(t) for t in times)


def _summary(t: list[float]) -> dict[str, float]:
    return {"median": statistics.median(t), "min": min(t), "max": max(t)}


def loss_pair(n: int, device: torch.device, repeats: int = 200):
    """Forward+backward of HuberLoss and F.huber_loss on n elements, alternating (c)."""
    g = torch.Generator().manual_seed(1)
    pred = (torch.randn(n, 1, generator=g) * 2).to(device).requires_grad_()
    true = torch.randn(n, 1, generator=g).to(device)
    ours = HuberLoss(1.0)

    def run(loss_fn) -> Callable[[], None]:
        def once() -> None:
            pred.grad = None
            loss_fn(pred, true).backward()
            _sync(device)

        return once

    a, b = run(ours), run(lambda p, t: F.huber_loss(p, t, delta=1.0))
    for _ in range(5):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):  # interleaved so both see the same machine state
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        ta.append(t1 - t0)
        tb.append(time.perf_counter() - t1)
    return statistics.median(ta), statistics.median(tb)


def lbfgs_time_to_gap(X, y, device: torch.device, target: float = 1e-6) -> dict[str, float]:
    """Seconds of full-batch L-BFGS (huberfit's settings) until the relative objective gap
    to a float64 reference optimum is below ``target`` (e)."""
    from huberfit.losses import LOSSES, optimality_gap

    huber = LOSSES["huber"]
    Xn, yn = X.double().numpy(), y.double().numpy().reshape(-1)
    f_star = optimality_gap("huber", Xn, yn, np.zeros(Xn.shape[1]), 0.0)["optimum"]
    Xd, yd = X.to(device), y.to(device)
    model = build_model(X.shape[1], True, 0, X.dtype).to(device)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=1, max_eval=25, history_size=20,
                            tolerance_grad=0.0, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")  # fmt: skip
    loss_fn = HuberLoss(1.0)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(Xd), yd) * 1e8
        loss.backward()
        return loss

    elapsed, gap, iters = 0.0, math.inf, 0
    while gap > target and iters < 200:
        t0 = time.perf_counter()
        opt.step(closure)  # one iteration per call, so the clock can stop at the target
        _sync(device)
        elapsed += time.perf_counter() - t0
        iters += 1
        with torch.no_grad():
            r = (yd - model(Xd)).double().reshape(-1).cpu().numpy()
        gap = (huber.objective(r, 1.0) - f_star) / f_star
    return {"seconds": elapsed, "iterations": iters, "relative_gap": gap}


def run_bench(rows: int, features: int, batch_sizes: list[int], epochs: int,
              device: torch.device, progress: Callable[[str], None] = lambda s: None,
              ) -> BenchResult:  # fmt: skip
    """All measurements in this process; see the module docstring."""
    clock = _OthersClock()
    X, y = make_data(rows, features)
    res = BenchResult(rows, features, batch_sizes, epochs, str(device), machine(device))
    repeats = max(epochs, 1)
    for size in batch_sizes:
        progress(f"batch {size}: tutorial loop, huberfit engine and bare update, interleaved")
        t: dict[str, Any] = {}
        t["tutorial"], t["engine"], t["bare"] = _interleaved(
            tutorial_epoch(X, y, size, device), engine_epochs(X, y, size, device),
            bare_epoch(X, y, size, device), repeats,
        )  # fmt: skip
        progress(f"batch {size}: TensorBoard on vs off")
        t["engine_tb"], t["engine_no_tb"], overhead = _tb_pair(X, y, size, device, repeats)
        tut = t["tutorial"]["median"]
        t["ratios"] = {
            "engine_speedup_vs_tutorial": tut / t["engine"]["median"],
            "bare_speedup_vs_tutorial": tut / t["bare"]["median"],
            "tensorboard_overhead": overhead,
            "tensorboard_time_in_sink": t["engine_tb"]["in_sink"] / t["engine_tb"]["median"],
        }
        res.per_batch[size] = t
    progress("loss forward+backward")
    ours, theirs = loss_pair(1_000_000, device)
    res.timings["huber_loss_custom"] = {"median": ours}
    res.timings["huber_loss_torch"] = {"median": theirs}
    progress("L-BFGS to 1e-6")
    res.timings["lbfgs"] = lbfgs_time_to_gap(X, y, device)
    res.ratios = {"custom_loss_vs_F_huber_loss": ours / theirs}
    res.others_cpu_share = clock.share()
    return res


class _Switch:
    """Forwards to a sink in the epochs whose turn it is (``turns[i]`` for the i-th epoch
    of a call) and adds up the time spent inside it."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.seconds = sink, 0.0
        self.turns: list[bool] = []

    def plan(self, turns: list[bool]) -> None:
        self.turns, self.seconds = list(turns), 0.0

    def step(self, step: int, loss: float) -> None:
        if self.turns[0]:
            t0 = time.perf_counter()
            self.sink.step(step, loss)
            self.seconds += time.perf_counter() - t0

    def epoch(self, report: Any) -> None:
        if self.turns.pop(0):
            t0 = time.perf_counter()
            self.sink.epoch(report)
            self.seconds += time.perf_counter() - t0


def _tb_pair(X, y, batch_size, device, repeats):
    """One training, scoring validation rows each epoch as a run does, with a real
    TensorBoard sink switched on and off epoch by epoch in pairs (on-off, off-on, ...: a
    slow stretch of a shared machine falls on both alike). Both arms share everything else
    (the tables, the rows gathered ahead, the model), so the overhead, the median of the
    pairs' ratios, is the sink's own. The time spent inside the sink (synchronous: it has
    no writer thread) is measured directly as well."""
    from huberfit.sinks import TensorBoardSink

    on: list[float] = []
    off: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        switch = _Switch(TensorBoardSink(folder, flush_secs=5))
        try:
            epochs = engine_epochs(X, y, batch_size, device, sinks=switch, validate=True)
            switch.plan([True, False, True])  # warm-up
            epochs(3)
            seconds, start = 0.0, time.perf_counter()
            # at least 4 pairs an epoch asked for (12 at least) and TB_AB_SECONDS of them:
            # epoch times on a shared machine move by ~5% from one epoch to the next
            while len(on) < max(4 * repeats, 12) or (
                time.perf_counter() - start < TB_AB_SECONDS and len(on) < 400
            ):
                turns = [i % 4 in (0, 3) for i in range(32)]  # on off off on on off ...
                # a call's first epoch gathers its own rows, its second is ~5% slower than
                # the rest (measured at batch 4096: with a sink that does nothing, pairs
                # that included it read +1.2% to +2.3%) and its last prepares no next one:
                # none of the three is timed
                switch.plan([False, False, *turns, False])
                times = epochs(len(turns) + 3)[2:-1]
                seconds += switch.seconds
                on += [t for t, turn in zip(times, turns, strict=True) if turn]
                off += [t for t, turn in zip(times, turns, strict=True) if not turn]
        finally:
            switch.sink.close()
    overhead = statistics.median(a / b for a, b in zip(on, off, strict=True)) - 1
    return {**_summary(on), "in_sink": seconds / len(on), "pairs": len(on)}, _summary(off), overhead


def csv_load_pair(rows: int = 1_000_000, columns: int = 17, repeats: int = 3) -> dict[str, Any]:
    """Loading a ``rows x columns`` float CSV: ``pandas.read_csv`` + ``.to_numpy(float32)``
    against huberfit's reader (with all its checks), alternating, on the same file."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from huberfit.data.tables import read_table

    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(columns - 1)] + ["y"]
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/load.csv"
        table = pa.table({n: rng.standard_normal(rows).astype(np.float32) for n in names})
        pcsv.write_csv(table, path)
        size = Path(path).stat().st_size
        ours, theirs = [], []
        for i in range(2 * repeats):
            t0 = time.perf_counter()
            if i % 2:
                read_table(path, "csv", "y", None, dtype=np.float32)
                ours.append(time.perf_counter() - t0)
            else:
                pd.read_csv(path).to_numpy(np.float32)
                theirs.append(time.perf_counter() - t0)
    return {"bytes": size, "huberfit": statistics.median(ours), "pandas": statistics.median(theirs)}


def parquet_gigabytes(rows: int, features: int = 16) -> float:
    """The size ``write_parquet_dataset`` counts ``rows`` as: float64 features and target."""
    return rows * 8 * (features + 1) / 1e9


def write_parquet_dataset(folder: Path, gigabytes: float, features: int = 16,
                          file_rows: int = 2_000_000, seed: int = 0) -> int:  # fmt: skip
    """Write ~``gigabytes`` of float64 regression rows as Parquet files (row groups of 256k
    rows) into ``folder``, a million rows at a time; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.uniform(-3, 3, size=features)
    total = int(gigabytes * 1e9 / (8 * (features + 1)))  # parquet_gigabytes, inverted
    names = [f"x{i}" for i in range(features)] + ["y"]
    written, part = 0, 0
    while written < total:
        rows_in_file = min(file_rows, total - written)
        path = folder / f"part-{part:04d}.parquet"  # complete, or not there (Ctrl-C, disk full)
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, _schema(names)) as writer:
            done = 0
            while done < rows_in_file:
                n = min(1_000_000, rows_in_file - done)
                X = rng.standard_normal((n, features))
                y = X @ w + 1.0 + 0.5 * rng.standard_normal(n)
                y[rng.random(n) < 0.05] += 20.0
                cols = [pa.array(X[:, i]) for i in range(features)] + [pa.array(y)]
                writer.write_table(pa.table(cols, names=names), row_group_size=262_144)
                done += n
        written += rows_in_file
        part += 1
    return written


def stream_vs_scan(folder: Path, batch_size: int = 4096, repeats: int = 3) -> dict[str, Any]:
    """A streamed training epoch as ``huberfit train`` runs one (its sources built by
    ``load_data`` and ``make_batches``; the engine: Huber, SGD, float32, batches of
    ``batch_size`` from a shuffle buffer of 100,000 rows, then the validation rows
    scored) against a bare ``pyarrow.dataset`` scan of the same files into NumPy
    (each record batch as one row-major float64 array, the form rows are trained from),
    alternating; medians. Both read every row."""
    import pyarrow.dataset as ds

    from huberfit.config import load_config
    from huberfit.data.dataset import load_data, make_batches
    from huberfit.metrics import Scorer

    clock = _OthersClock()
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    cfg = load_config(None, ["data.source=parquet", f"data.path={folder}", "data.target=y",
                             "data.streaming=true", f"train.batch_size={batch_size}",
                             "dtype=float32", "loss.name=huber", "loss.delta=1"])  # fmt: skip
    data = load_data(cfg.data, cfg.seed, cfg.dtype)
    info = data.stream
    source, val = make_batches(cfg, data, torch.device("cpu"))
    model = build_model(len(info.features), True, 0, torch.float32)
    opt, loss_fn = SGD(list(model.parameters()), lr=0.01), HuberLoss(1.0)
    evaluate = Scorer(loss_fn, data, loss_spec("huber").power).evaluator(val)

    def epoch() -> None:
        fit(model, loss_fn, source, opt, _NullSink(), FitSettings(epochs=1), evaluate)

    def bare() -> None:
        for batch in ds.dataset(files, format="parquet").to_batches(batch_size=65_536):
            np.column_stack([c.to_numpy() for c in batch.columns])

    times: dict[str, list[float]] = {"epoch": [], "scan": []}
    for i in range(2 * repeats + 2):  # the first pair warms the page cache and both paths
        for name, fn in (("epoch", epoch), ("scan", bare))[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    epoch_s, scan_s = (statistics.median(times[k]) for k in ("epoch", "scan"))
    return {"rows": info.n_rows, "train_rows": info.n_train, "epoch_seconds": epoch_s,
            "scan_seconds": scan_s, "epoch_vs_scan": epoch_s / scan_s,
            "scan_rows_per_second": info.n_rows / scan_s,
            "epoch_rows_per_second": info.n_rows / epoch_s,
            "others_cpu_share": clock.share()}  # fmt: skip


def _schema(names: list[str]):
    import pyarrow as pa

    return pa.schema([(n, pa.float64()) for n in names])


_HWM_WRAPPER = """
import sys
sys.argv = ['huberfit'] + sys.argv[1:]
from huberfit.cli import app
try:
    app()
    code = 0
except SystemExit as exc:
    code = exc.code
with open('/proc/self/status') as fh:
    for line in fh:
        if line.startswith('VmHWM'):
            sys.stderr.write('VMHWM ' + line.split()[1] + chr(10))
sys.exit(code)
"""


def streaming_peak_rss(folder: Path, budget_mb: int, epochs: int = 1) -> dict[str, Any]:
    """Train on ``folder`` in a child process with ``data.memory_budget_mb=budget_mb`` and
    measure the child's peak RSS; and the same for a tiny in-memory run (the fixed cost of
    Python, torch, pyarrow and pandas)."""
    import json
    import subprocess
    import sys

    def child(args: list[str]) -> tuple[dict[str, Any], float, float]:
        """Run one training; it reports its own peak RSS (VmHWM, Linux) as it exits.
        (rusage's maxrss would count the pages of this process it was forked from.)"""
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", _HWM_WRAPPER, "train", "--json", "--quiet", *args,
               "output.tensorboard=false", "output.images=false"]  # fmt: skip
        with tempfile.TemporaryDirectory() as runs:
            p = subprocess.run([*cmd, "--runs-dir", runs], capture_output=True, text=True)
        if p.returncode != 0:  # its own one-line error says why (a folder of other files)
            lines = [x for x in p.stderr.splitlines() if x.strip() and not x.startswith("VMHWM")]
            why = next((x for x in lines if x.startswith("error: ")), lines[-1] if lines else "")
            raise RunError(f"bench: a training run failed: {why.removeprefix('error: ')}")
        hwm = [line.split()[1] for line in p.stderr.splitlines() if line.startswith("VMHWM ")]
        return json.loads(p.stdout), float(hwm[-1]) / 1024, time.perf_counter() - t0

    _, base_mb, _ = child(["train.epochs=1", "data.n_samples=1000"])
    size = sum(f.stat().st_size for f in folder.glob("*.parquet"))
    metrics, peak_mb, wall = child([
        "data.source=parquet", f"data.path={folder}", "data.target=y", "data.streaming=true",
        f"data.memory_budget_mb={budget_mb}", f"train.epochs={epochs}", "train.batch_size=4096",
    ])  # fmt: skip
    rows = metrics["n_train"] + metrics["n_val"]
    return {
        "bytes": size,
        "rows": rows,
        "streamed": metrics["streamed"],
        "budget_mb": budget_mb,
        "peak_rss_mb": peak_mb,
        "baseline_rss_mb": base_mb,
        "train_seconds": metrics["seconds"],
        "train_rows_per_second": metrics["samples_per_second"],
        "wall_seconds": wall,
        "coefficient_error": metrics["coefficient_error"],
    }


def as_table_rows(res: BenchResult) -> list[tuple[str, str, str, str, str]]:
    """(what, batch, ms, rows/s, ratio) rows for the Rich table (at most 80 columns)."""
    n = res.rows
    rows: list[tuple[str, str, str, str, str]] = []
    for size, t in res.per_batch.items():
        r, tut = t["ratios"], t["tutorial"]["median"]
        b = f"{size:,}" if size < n else "full"  # one batch of all the rows

        def per_epoch(key: str, t: dict = t) -> tuple[str, str]:
            s = t[key]["median"]
            return _ms(s), f"{n / s:,.0f}"

        rows += [
            ("(a) tutorial loop", b, *per_epoch("tutorial"), "1.0x"),
            ("(b) huberfit engine", b, *per_epoch("engine"),
             f"{tut / t['engine']['median']:.1f}x faster"),
            ("(b') bare update", b, *per_epoch("bare"), f"{tut / t['bare']['median']:.1f}x faster"),
            ("(d) engine+val, TB off", b, *per_epoch("engine_no_tb"), "1.0x"),
            ("(d) engine+val, TB on", b, *per_epoch("engine_tb"),
             f"{100 * r['tensorboard_overhead']:+.1f}% (paired)"),
            ("(d) inside the TB sink", b, _ms(t["engine_tb"]["in_sink"]), "-",
             f"{100 * r['tensorboard_time_in_sink']:.1f}% of TB on"),
        ]  # fmt: skip
    t = res.timings
    rows += [
        ("(c) HuberLoss 1M", "-", _ms(t["huber_loss_custom"]["median"]), "-",
         f"{res.ratios['custom_loss_vs_F_huber_loss']:.2f}x F.huber_loss"),
        ("(c) F.huber_loss 1M", "-", _ms(t["huber_loss_torch"]["median"]), "-", "1.0x"),
        ("(e) L-BFGS to 1e-6 gap", "full", _ms(t["lbfgs"]["seconds"]), "-",
         f"{int(t['lbfgs']['iterations'])} iterations"),
    ]  # fmt: skip
    return rows


def busy_note(res: BenchResult | dict[str, Any]) -> str | None:
    """A warning when other work took more than ``BUSY_SHARE`` of the CPUs meanwhile."""
    share = res["others_cpu_share"] if isinstance(res, dict) else res.others_cpu_share
    if share is None or share <= BUSY_SHARE:
        return None
    return (f"note: other work took {share:.0%} of the CPUs meanwhile: the ratios can be off "
            "by far\n  (a taken core slows the tutorial loop and the bare update most)")  # fmt: skip


def table_notes(res: BenchResult) -> list[str]:
    """What the table's figures are: units, and of how many epochs each is the median."""
    e = res.epochs
    pairs = [t["engine_tb"]["pairs"] for t in res.per_batch.values()]
    paired = f"{min(pairs)}" if min(pairs) == max(pairs) else f"{min(pairs)}-{max(pairs)}"
    return [  # each line fits 80 columns
        "ms: per epoch; (c) per forward+backward, (e) in all",
        f"medians: (a) and (b') of {e} epoch{'s' * (e != 1)}, (b) of {RUN_EPOCHS * e} "
        f"({RUN_EPOCHS} a round), (d) of "
        f"{paired} pairs",
        "(d): one training, TB on and off by turns, epoch by epoch; validation scored;",
        "  its % is the median of the pairs' differences, not of the two medians above",
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.{2 if seconds < 0.01 else 1}f}"


def to_json(res: BenchResult) -> dict[str, Any]:
    out = dict(res.__dict__)
    out["per_batch"] = {str(k): v for k, v in res.per_batch.items()}
    keys = ("what", "batch", "ms", "rows_per_second", "ratio")
    out["table"] = [dict(zip(keys, r, strict=True)) for r in as_table_rows(res)]
    return out


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """What the figures were measured on: CPU model and cores, torch's CPU capability
    (the vector instructions its kernels use: AVX512, AVX2, DEFAULT), threads, versions,
    and the GPU's name when one is used."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       cpu)  # fmt: skip
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def host_description(device: torch.device | None = None) -> str:
    """``machine()`` in one line."""
    return "; ".join(_host_parts(machine(device)))


def host_lines(device: torch.device | None = None) -> list[str]:
    """``machine()`` as two labelled lines (each fits 80 columns with a usual CPU name)."""
    hardware, software = _host_parts(machine(device))
    return [f"machine: {hardware}", f"software: {software}"]


def _host_parts(m: dict[str, Any]) -> tuple[str, str]:
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return (f"{m['cpu']}, {m['cpus']} CPUs, {m['threads']} threads{gpu}",
            f"torch {m['torch']} (CPU capability {m['cpu_capability']}), "
            f"numpy {m['numpy']}")  # fmt: skip
