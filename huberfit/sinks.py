"""Sinks: where training reports go. The console (Rich progress and summary) and TensorBoard,
behind one small interface: ``step``, ``epoch``, ``note``, ``finish``, ``close``.

The console sink is the only place below the CLI that prints. The TensorBoard sink writes
into the run folder itself (hparams included) and is closed on every exit path by its owner.
Must not import data, losses, model or train.
"""

from __future__ import annotations

import math
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from shlex import quote
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from huberfit.errors import RunError

HISTOGRAM_ROWS = 10_000
PENDING_EPOCHS = 16
FigureMaker = Callable[[], list[tuple[str, bytes]]]  # -> [(name, PNG bytes)]


class Sinks:
    """Fan-out to several sinks; each method is forwarded to every sink that has it.
    ``step`` is called every log interval, so its targets are looked up once."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]
        self._steps = [s.step for s in self.sinks if hasattr(s, "step")]

    def step(self, step: int, train_loss: float) -> None:
        for method in self._steps:
            method(step, train_loss)

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            for sink in self.sinks:
                method = getattr(sink, name, None)
                if method is not None:
                    method(*args, **kwargs)

        return call


# ----------------------------------------------------------------------------- console


def prose(console: Console, text: Text) -> None:
    """A line of prose: wrapped at word breaks on a terminal, one line in a file or a pipe
    (a log keeps each message whole, as it keeps an ``error:`` line)."""
    console.print(text, soft_wrap=not console.is_terminal)


class ConsoleSink:
    """Progress on stderr: on a terminal or in a notebook a Rich bar that moves at every log
    interval and stays on screen at the end; otherwise one plain line per epoch. Notes are printed once
    each (a comparison trains several runs that would repeat them)."""

    REFRESH_SECONDS = 0.1  # the bar is redrawn at most this often from ``step``

    def __init__(self, epochs: int, quiet: bool = False, err: Console | None = None) -> None:
        self.err = err or Console(stderr=True, markup=False, emoji=False, highlight=False)
        self.quiet = quiet
        self.epochs = epochs
        self.progress: Progress | None = None
        self.task = None
        self.steps_per_epoch = 0
        self.epoch_info = ""  # the last epoch's validation loss and speed, beside the loss
        self._shown: set[str] = set()
        self._next_refresh = 0.0

    def note(self, message: str) -> None:
        if self.quiet or message in self._shown:
            return
        self._shown.add(message)
        prose(self.err, Text(message, style="dim"))

    def start(self, first_epoch: int = 0, steps_per_epoch: int = 0) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.epoch_info = ""
        if self.quiet or not (self.err.is_terminal or self.err.is_jupyter):  # a notebook: live too
            return
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.total:.0f}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.err,
            transient=False,  # the last state stays on screen above the summary
        )
        self.task = self.progress.add_task(
            "train", total=self.epochs, completed=first_epoch, info="", epoch=first_epoch
        )
        self.progress.start()

    def step(self, step: int, train_loss: float) -> None:
        if self.progress is None or self.steps_per_epoch <= 0:
            return
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.REFRESH_SECONDS
        done = min(step / self.steps_per_epoch, float(self.epochs))
        info = f"loss {train_loss:#.5g}" + (f"  {self.epoch_info}" if self.epoch_info else "")
        running = min(int(done) + 1, self.epochs)  # the epoch under way, counted from 1
        self.progress.update(self.task, completed=done, info=info, epoch=running)

    def epoch(self, report: Any) -> None:
        if self.quiet:
            return
        val = f"val {report.val['loss']:#.5g}  " if report.val else ""  # #: fixed width
        self.epoch_info = f"{val}{report.samples_per_second:,.0f} samples/s"
        info = f"loss {report.train_loss:#.5g}  {self.epoch_info}"
        if self.progress is not None:
            self.progress.update(self.task, completed=report.epoch, info=info, epoch=report.epoch)
        else:
            self.err.print(Text(f"epoch {report.epoch}/{self.epochs}  {info}"))

    def close(self) -> None:
        if self.progress is not None:
            task = self.progress.tasks[0]
            if task.total and task.completed < task.total:  # the summary below says why
                self.progress.update(self.task, info=f"{task.fields['info']}  stopped early")
            self.progress.stop()
            self.progress = None


def render_summary(metrics: dict[str, Any], run_dir: str, console: Console) -> None:
    """The end-of-run summary: coefficients (beside the truth when known), metrics, status,
    the run folder and the command that shows this run in TensorBoard."""
    console.print(coefficient_table(metrics))
    table = Table(title="metrics (original units)", title_justify="left")
    for col in ("split", f"loss ({loss_label(metrics)})", "MSE", "MAE", "R^2"):
        table.add_column(Text(col), justify="right" if col != "split" else "left")
    for split in ("train", "val"):
        m = metrics.get(split)
        if m:
            table.add_row(*_texts(split, *(_fmt(m[k]) for k in ("loss", "mse", "mae", "r2"))))
    console.print(table)
    if not metrics.get("val"):
        console.print(Text("no validation rows (data.val_fraction: 0): metrics on training rows"))
    sps = metrics.get("samples_per_second")
    lines = [
        f"status: {metrics['status']}   epochs: {metrics['epochs']}   steps: {metrics['steps']}",
        f"time: {metrics['seconds']:.2f} s"
        + (f"   {sps:,.0f} samples/s overall" if sps else "")
        + f"   device: {metrics['device']}",
    ]
    message = metrics.get("message") if metrics["status"] != "diverged" else None
    if message:  # why it stopped (a diverged run's error says it)
        lines.append(str(message))
    if metrics.get("coefficient_error") is not None:
        lines.append(f"coefficient error vs truth (L2): {metrics['coefficient_error']:.4g}")
    lines.append(optimum_line(metrics))
    if metrics.get("standard_error_note"):
        lines.append(f"standard errors: {metrics['standard_error_note']}")
    lines.append(f"run folder: {run_dir}")
    if any(Path(run_dir).rglob("events.out.tfevents.*")):  # output.tensorboard: false writes none
        lines.append(f"look at it: tensorboard --logdir {quote(run_dir)}")
    for line in lines:  # prose wraps at word breaks; a path is never broken
        console.print(Text(line), soft_wrap="/" in line)


def coefficient_table(metrics: dict[str, Any]) -> Table:
    """Fitted coefficients and intercept in original units, with the true values (synthetic
    data) and their differences beside them."""
    table = Table(title="coefficients (original units)", title_justify="left")
    table.add_column("parameter")
    table.add_column("fitted", justify="right")
    se = metrics.get("standard_errors")
    if se:
        table.add_column("std err", justify="right")
    truth = metrics.get("true_coefficients")
    fitted = {**metrics["coefficients"], "intercept": metrics["intercept"]}
    if truth is not None:
        truth = {**truth, "intercept": metrics.get("true_intercept")}
        table.add_column("true", justify="right")
        table.add_column("fitted - true", justify="right")
    for name, value in fitted.items():
        cells = [name, f"{value:.6g}"]
        if se:
            cells.append(_short(se.get(name)))
        if truth is not None:
            true = truth.get(name)
            diff = None if true is None else value - true
            cells += [_fmt(true), "-" if diff is None else f"{diff:+.3g}"]
        table.add_row(*_texts(*cells))
    return table


def loss_label(metrics: dict[str, Any]) -> str:
    """``huber, delta 1`` / ``huber, delta 1.62 (auto)`` / ``quantile, tau 0.9`` / ``mse``:
    the loss as a person names it."""
    delta, tau = metrics.get("delta"), metrics.get("quantile")
    if delta is not None:
        return f"{metrics['loss']}, delta {delta:.4g}" + (", auto" if metrics.get("scale") else "")
    if tau is not None:
        return f"{metrics['loss']}, tau {tau:g}"
    return str(metrics["loss"])


def optimum_line(metrics: dict[str, Any]) -> str:
    """How far the run is from its loss's certified optimum on the training rows."""
    opt, gap = metrics.get("optimum"), metrics.get("gap")
    if not opt or not gap:
        return f"optimum: {metrics.get('optimum_note') or 'not computed'}"
    verdict = "converged (<" if metrics.get("converged") else "NOT converged (>"
    f_star = opt["objective"]
    if gap.get("optimum_is_zero"):  # then its gap is absolute
        measured = f"{f_star:.3g}: 0 to rounding (a perfect fit)   gap {gap['absolute']:.2g}"
    else:
        measured = f"{f_star:.6g}   relative gap {gap['relative']:.2g}"
    line = f"optimum (certified): {measured}: {verdict} {gap['threshold']:g})"
    scale = metrics.get("scale")
    if scale:
        line += f"\ndelta: auto = 1.345 x the residuals' robust scale {scale:.4g}"
    return line


COMPARE_COLUMNS = [  # (header, row key, lower is better?)
    ("objective", "train_objective", None),
    ("rel. gap", "relative_gap", True),
    ("val MSE", "val_mse", True),
    ("val MAE", "val_mae", True),
    ("coef err", "coefficient_error", True),
]


def render_comparison(
    rows: list[dict[str, Any]], verdict: str, parent: str, console: Console
) -> None:
    """The comparison table, the best value of each column marked with *, and the verdict.
    The fitted coefficients are a column when the terminal is wide enough, else a list
    under the table."""
    best = {}
    settled = all(r.get("converged") for r in rows)  # gaps all at rounding: no star there
    for _, key, lower in COMPARE_COLUMNS:
        values = [r[key] for r in rows if r[key] is not None]
        if lower and values and not (key == "relative_gap" and settled):
            best[key] = min(values)
    coefs = {r["label"]: " ".join(f"{v:.4g}" for v in [*r["coefficients"].values(), r["intercept"]])
             for r in rows}  # fmt: skip
    table = _comparison_table(rows, best, coefs)
    wide = fits(table, console)
    console.print(table if wide else _comparison_table(rows, best, None))
    if not wide:
        console.print(Text("coefficients, intercept (original units):"))
        for label, text in coefs.items():
            prose(console, Text(f"  {label}: {text}"))
    epochs = {r["epochs"] for r in rows}
    ran = (f"{epochs.pop()} each" if len(epochs) == 1
           else ", ".join(f"{r['label']} {r['epochs']}" for r in rows))  # fmt: skip
    seconds = sum(r["seconds"] for r in rows)
    below = any((r["relative_gap"] or 0) < 0 for r in rows)
    note = (
        "* best in its column (ties to the digits shown all marked). "
        * bool(best)
        + "rel. gap: the training objective's distance above the certified optimum of the "
        "same loss on the training rows, relative to it (see README"
        + "; below 0: under the optimum by rounding"
        * below
        + f"); objectives are in each loss's own units. epochs run: {ran}; {seconds:.2g} s of "
        "training in all"
    )
    prose(console, Text(note))
    prose(console, Text(f"verdict: {verdict}"))
    console.print(Text(f"runs: {parent}\nlook at it: tensorboard --logdir {quote(str(parent))}"))


def fits(table: Table, console: Console) -> bool:
    """Whether ``table`` at its natural width (nothing wrapped or cut) fits the console."""
    unbounded = console.options.update(width=10_000)
    return console.measure(table, options=unbounded).maximum <= console.width


def _comparison_table(
    rows: list[dict[str, Any]], best: dict[str, Any], coefs: dict[str, str] | None
) -> Table:
    table = Table(
        title="losses compared on the same data (original units)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("run", no_wrap=True)
    # a column no run has a value for (no validation rows, no truth) is left out
    columns = [c for c in COMPARE_COLUMNS if any(r[c[1]] is not None for r in rows)]
    for header, _, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    if coefs is not None:
        table.add_column("coefficients, intercept", no_wrap=True)
    for r in rows:
        cells = [r["label"]]
        for _, key, _lower in columns:
            # the best, and any value shown as the same digits (a tie on the screen)
            mark = "*" if key in best and _short(r[key]) == _short(best[key]) else ""
            cells.append(_short(r[key]) + mark)
        if coefs is not None:
            cells.append(coefs[r["label"]])
        table.add_row(*_texts(*cells))
    return table


def _texts(*cells: Any) -> list[Text]:
    """Table cells as plain text: column names, labels and values are the user's text and
    never read as Rich markup (``x[/]`` is shown as it is, whatever the console)."""
    return [Text(str(c)) for c in cells]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else _fmt(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def summary_markdown(metrics: dict[str, Any]) -> str:
    """The final summary as a markdown table (for TensorBoard's TEXT tab)."""
    lines = ["| key | value |", "|---|---|"]
    for key in ("status", "loss", "delta", "quantile", "optimizer", "epochs", "steps", "seconds"):
        lines.append(f"| {key} | {_fmt(metrics.get(key))} |")
    gap = metrics.get("gap")
    if gap:
        lines.append(f"| relative gap to the optimum | {_fmt(gap['relative'])} |")
        lines.append(f"| converged | {_fmt(metrics.get('converged'))} |")
    for split in ("train", "val"):
        for k, v in (metrics.get(split) or {}).items():
            lines.append(f"| {split} {k} | {_fmt(v)} |")
    for name, value in metrics["coefficients"].items():
        true = (metrics.get("true_coefficients") or {}).get(name)
        lines.append(f"| coef {name} | {_fmt(value)} (true {_fmt(true)}) |")
    lines.append(f"| intercept | {_fmt(metrics['intercept'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tensorboard


class EventFile:
    """A TensorBoard event file written synchronously (no writer thread).

    ``SummaryWriter`` hands every event to a background thread; on a 2-core machine each
    hand-off costs a GIL switch that the training step pays for. Events here are appended
    to a buffer and written every ``flush_secs``, when the buffer passes 1 MB, and on close.

    A write that fails (a full disk, a file-size limit) cuts the file back to its last
    complete event, so TensorBoard reads every event in it, and stops the file: later
    events are dropped, training goes on (its checkpoint is worth more than its curves),
    and ``close`` raises a ``RunError`` naming the file: one ``error:`` line at the end.
    """

    BUFFER_BYTES = 1 << 20

    def __init__(self, folder: str | Path, flush_secs: int) -> None:
        import os
        import socket

        from tensorboard.compat.proto.event_pb2 import Event

        self._Event = Event
        self._crc = _masked_crc32c()
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = Path(folder) / name
        try:
            self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            raise _event_error(self.path, exc) from None
        self.error: RunError | None = None  # the failed write, raised by close
        self.written = os.fstat(self.fd).st_size  # bytes on disk: complete events only
        self.buffer = bytearray()
        self.flush_secs, self.last_flush = flush_secs, time.monotonic()
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    @property
    def closed(self) -> bool:
        return self.fd is None

    def add(self, summaries: list[Any], step: int, wall_time: float | None = None) -> None:
        """One event per summary, at ``step`` (and ``wall_time``: now by default)."""
        if self.fd is None:  # closed, or stopped by a failed write
            return
        when = time.time() if wall_time is None else wall_time
        for summary in summaries:
            self._write(self._Event(wall_time=when, step=step, summary=summary))

    def add_series(self, summary: Any, points: list[tuple[float, int, float]]) -> None:
        """One event per ``(wall_time, step, value)``: ``summary`` (one scalar value) with
        that value. One proto is reused and the records joined once: 1.2 us an event
        against 2.4 us through ``add`` (390 events, 2-core Xeon)."""
        if self.fd is None or not points:
            return
        event = self._Event(summary=summary)
        value = event.summary.value[0]
        records = []
        for when, step, x in points:
            event.wall_time, event.step, value.simple_value = when, step, x
            records.append(self._record(event.SerializeToString()))
        self.buffer += b"".join(records)
        self._flush_if_due()

    def _write(self, event: Any) -> None:
        self.buffer += self._record(event.SerializeToString())
        self._flush_if_due()

    def _record(self, data: bytes) -> bytes:
        """TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of it."""
        header = struct.pack("<Q", len(data))
        crc = self._crc
        return header + struct.pack("<I", crc(header)) + data + struct.pack("<I", crc(data))

    def _flush_if_due(self) -> None:
        if (
            time.monotonic() - self.last_flush >= self.flush_secs
            or len(self.buffer) >= self.BUFFER_BYTES
        ):
            self.flush()

    def flush(self) -> None:
        import os

        self.last_flush = time.monotonic()
        if self.fd is None or not self.buffer:
            return
        data = memoryview(bytes(self.buffer))  # os.write may take only part of it
        try:
            done = 0
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as exc:
            self._abandon()
            self.error = _event_error(self.path, exc)
            return
        self.written += len(data)
        self.buffer.clear()

    def _abandon(self) -> None:
        """After a failed write: cut the file back to its last complete event, stop."""
        import os

        fd, self.fd = self.fd, None
        self.buffer.clear()
        if fd is None:
            return
        try:
            os.ftruncate(fd, self.written)
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        """Write what is left and close; a write that failed, now or before, is raised."""
        import os

        if self.fd is not None:
            self.flush()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        error, self.error = self.error, None
        if error is not None:
            raise error


def _event_error(path: Path, exc: OSError) -> RunError:
    return RunError(
        f"cannot write TensorBoard events to {path}: {exc.strerror or exc} (the events "
        "before it are kept; output.tensorboard: false trains without them)"
    )


def _masked_crc32c() -> Callable[[bytes], int]:
    """TensorBoard's masked CRC32C; the C implementation (google-crc32c) is ~20x faster
    than TensorBoard's pure-Python one, which costs ~8 us per logged scalar."""
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - a declared dependency; keep working without it
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        return masked_crc32c

    def masked(data: bytes) -> int:
        x = google_crc32c.value(data)
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    return masked


class TensorBoardSink:
    """TensorBoard output of one run, into the run folder itself (hparams included).

    Tags are grouped so that TensorBoard's first screen (it opens the first two groups,
    alphabetically) shows the loss curves and the coefficients: ``loss/``, ``params/``,
    then ``pictures/``, ``residuals/``, ``train/`` (lr, gradient norm, speed), ``val/``.
    Two small sibling runs put related lines into one chart: ``<run>/val`` holds the
    validation loss under the train loss's tag ``loss/epoch``, and ``<run>/truth`` the true
    coefficients under ``params/<name>`` (synthetic data; a comparison writes it once, in
    its parent folder). A ``custom_scalars`` layout draws the same pairs in the CUSTOM
    SCALARS tab. At the end: hparams (the keys that matter ticked), summary text, pictures.
    """

    def __init__(
        self,
        run_dir: str | Path,
        flush_secs: int,
        truth: dict[str, float] | None = None,
        figures: FigureMaker | None = None,
        images_every: int | None = None,
        truth_run: bool = True,
    ) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import summary

        self.summary, self._Summary = summary, Summary
        self._loss_summary = Summary(value=[Summary.Value(tag="loss/train", simple_value=0.0)])
        self.run_dir, self.flush_secs = Path(run_dir), flush_secs
        self.events = EventFile(run_dir, flush_secs)
        self.val_events: EventFile | None = None
        self.truth = truth or {}
        self.truth_events = None
        if self.truth and truth_run:  # from step 0, once (a resumed run continues its line)
            there = any((self.run_dir / "truth").glob("events.out.tfevents.*"))
            self.truth_events = write_truth_run(
                self.run_dir / "truth", self.truth, [] if there else [0], flush_secs
            )
        self.figures = figures
        self.images_every = images_every
        self.last_step = 0
        self.layout_written = False
        self._steps: list[tuple[float, int, float]] = []  # (wall time, step, loss/train)
        self._epochs: list[tuple[float, int, dict[str, float], Any]] = []  # see _write_pending
        self._due = time.time() + flush_secs  # wall time: step() reads the clock anyway

    def _scalars(
        self,
        values: dict[str, float],
        step: int,
        events: EventFile | None = None,
        wall_time: float | None = None,
    ) -> None:
        # the Summary proto built directly: torch's summary.scalar costs ~30 us a value
        Value = self._Summary.Value
        summary = self._Summary(value=[Value(tag=t, simple_value=v) for t, v in values.items()])
        (events or self.events).add([summary], step, wall_time)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        self.events.add([self.summary.text(tag, markdown)], step)

    # Events reach the disk only when the file is flushed (every flush_secs), so until then
    # they are kept as the numbers they are made from, and made in one go: the protobuf
    # and NumPy code stays in cache. Measured on a 2-core Xeon, in a training: a loss/train
    # event 11 us made between steps, ~1.2 us in one go; an epoch's events with its
    # residual histogram ~1 ms made at its end, ~0.4 ms in a batch (1M rows at batch 4096:
    # 1.3-1.4% of an epoch against 2.4-3.1%). At most PENDING_EPOCHS epochs are kept (with
    # their residual samples, 10,000 numbers each).

    def step(self, step: int, train_loss: float) -> None:
        now = time.time()
        self._steps.append((now, step, train_loss))
        self.last_step = step
        if now >= self._due:
            self._write_pending()

    def epoch(self, report: Any) -> None:
        s = self.last_step = report.step
        if not self.layout_written:
            self._layout(list(report.params), report.val is not None)
        values = {"loss/epoch": report.train_loss}
        for name, value in report.params.items():
            values[f"params/{name}"] = value
        if self.truth:
            values["params/coefficient_error"] = coefficient_error(report.params, self.truth)
        values["train/lr"] = report.lr
        if math.isfinite(report.grad_norm):
            values["train/grad_norm"] = report.grad_norm
        values["train/samples_per_second"] = report.samples_per_second
        if report.val:
            values.update({f"val/{k}": report.val[k] for k in ("loss", "mse", "mae", "r2")})
            if self.val_events is None:
                (self.run_dir / "val").mkdir(exist_ok=True)
                self.val_events = EventFile(self.run_dir / "val", self.flush_secs)
        sample = None
        if report.residuals is not None and len(report.residuals):
            import numpy as np

            # an evenly strided sample of at most 10k rows, taken while they are in cache:
            # the shape of the distribution at a fraction of the cost of all of them
            stride = max(1, len(report.residuals) // HISTOGRAM_ROWS)
            sample = np.array(report.residuals[::stride], dtype=np.float64)
        now = time.time()
        self._epochs.append((now, s, values, sample))
        if len(self._epochs) >= PENDING_EPOCHS or now >= self._due:
            self._write_pending()
        if self.images_every and self.figures and report.epoch % self.images_every == 0:
            self.images(self.figures())

    def _write_pending(self) -> None:
        """The events ``step`` and ``epoch`` kept back, in the order they came."""
        steps, self._steps = self._steps, []
        self.events.add_series(self._loss_summary, steps)
        epochs, self._epochs = self._epochs, []
        for when, s, values, sample in epochs:
            if "val/loss" in values and self.val_events is not None:
                self._scalars({"loss/epoch": values["val/loss"]}, s, self.val_events, when)
            self._scalars(values, s, wall_time=when)
            histo = None if sample is None else histogram_proto(sample, 64)
            if histo is not None:
                Value = self._Summary.Value
                summary = self._Summary(value=[Value(tag="residuals/val", histo=histo)])
                self.events.add([summary], s, when)
        # when the file is due to be flushed next (it flushes itself as events come)
        self._due = time.time() + self.flush_secs - (time.monotonic() - self.events.last_flush)

    def _layout(self, names: list[str], has_val: bool) -> None:
        """The CUSTOM SCALARS tab: train and validation loss in one chart, and each
        coefficient with its true value in one chart."""
        self.layout_written = True
        self.events.add([self.summary.custom_scalars(custom_scalars_layout(names, has_val))], 0)

    def images(self, pictures: list[tuple[str, bytes]]) -> None:
        """Log PNG pictures as TensorBoard images (the PNG bytes as they are)."""
        for name, png in pictures:
            width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
            image = self._Summary.Image(
                height=height, width=width, colorspace=4, encoded_image_string=png
            )
            tag = f"pictures/{name}"
            summary = self._Summary(value=[self._Summary.Value(tag=tag, image=image)])
            self.events.add([summary], self.last_step)

    def finish(
        self,
        metrics: dict[str, Any],
        hparams: dict[str, Any],
        config_yaml: str,
        ticked: list[str] | None = None,
    ) -> None:
        """Summary text and hparams (into this run's own folder). ``ticked``: the hparams
        shown by default in the HPARAMS tab (it shows five; default: the first five)."""
        self._write_pending()
        self.text("summary", summary_markdown(metrics), self.last_step)
        if metrics.get("gap"):  # how far the final weights are from the loss's optimum
            self._scalars({"loss/gap": metrics["gap"]["relative"]}, self.last_step)
        if self.truth_events is not None:  # the truth spans the whole x-axis of its charts
            self._scalars({f"params/{k}": v for k, v in self.truth.items()}, self.last_step,
                          self.truth_events)  # fmt: skip
        # SummaryWriter.add_hparams would open a second, timestamped run folder; writing the
        # three hparams summaries into this run's own event file keeps one run per folder.
        exp, start, end = self.summary.hparams(hparams, hparam_metrics(metrics))
        tick_hparams(exp, ticked if ticked is not None else list(hparams)[:5])
        for summary in (exp, start, end):
            self.events.add([summary], 0)
        self.events.flush()

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Closed on every way out; leaving on an error, that error is the one reported
        (a full disk fails the checkpoint first, then the events)."""
        try:
            self.close()
        except RunError as failed:
            if exc is None:  # the run's own files were written after the events stopped
                raise RunError(f"{failed}; the run's other files are written") from None

    def close(self) -> None:
        """Close every event file; the first that cannot be written is the error."""
        self._write_pending()
        failed = None
        for events in (self.events, self.val_events, self.truth_events):
            try:
                if events is not None:
                    events.close()
            except RunError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed


def histogram_proto(values: Any, bins: int) -> Any:
    """TensorBoard's ``HistogramProto`` of the finite ``values`` in ``bins`` equal bins:
    the proto ``torch.utils.tensorboard.summary.histogram`` builds (the same edges, counts
    and sums; a test compares them), in a dozen NumPy calls instead of ~40. In an epoch
    (2-core Xeon, 10,000 residuals, caches cold from training) 950 us went into torch's,
    1.4% of a 4096-row epoch. The counts come from ``np.histogram`` given the edges (the
    same counts as its equal-bin arithmetic with its corrections: 47 us against 78 us).
    ``None`` when no value is finite (torch's raises)."""
    import numpy as np
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    if v.size == 0:
        return None
    vmin, vmax = v.min(), v.max()
    lo, hi = (vmin - 0.5, vmax + 0.5) if vmin == vmax else (vmin, vmax)  # NumPy's, one value
    edges = np.linspace(lo, hi, bins + 1)
    # counted by the edges themselves: np.histogram's equal-bin arithmetic (with its
    # corrections) gives the same counts, and takes 1.7x as long
    counts = np.histogram(v, edges)[0]
    nonzero = np.flatnonzero(counts)
    start, end = int(nonzero[0]), int(nonzero[-1]) + 1
    # TensorBoard keeps right limits only: an empty bin on the left carries the first one
    counts = counts[start - 1 : end] if start > 0 else np.concatenate([[0], counts[:end]])
    return HistogramProto(min=vmin, max=vmax, num=len(v), sum=v.sum(),
                          sum_squares=v.dot(v), bucket_limit=edges[start : end + 1].tolist(),
                          bucket=counts.tolist())  # fmt: skip


def write_truth_run(
    folder: Path, truth: dict[str, float], steps: list[int], flush_secs: int
) -> EventFile:
    """A run holding only the true coefficients, as ``params/<name>`` at ``steps``: beside
    a training run, TensorBoard draws them in the same charts as the fitted ones. Returns
    the open event file (more steps may follow); its owner closes it."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    folder.mkdir(exist_ok=True)
    events = EventFile(folder, flush_secs)
    values = [Summary.Value(tag=f"params/{k}", simple_value=v) for k, v in truth.items()]
    for step in steps:
        events.add([Summary(value=values)], step)
    events.flush()
    return events


def custom_scalars_layout(names: list[str], has_val: bool) -> dict[str, Any]:
    """``{category: {chart: ["Multiline", [tag regexes]]}}`` for the CUSTOM SCALARS tab."""
    loss_title = "train and validation loss" if has_val else "train loss"
    return {
        "loss": {loss_title: ["Multiline", [r"^loss/epoch$"]]},
        "coefficients (fitted and true)": {
            name: ["Multiline", [rf"^params/{re.escape(name)}$"]] for name in names
        },
    }


def tick_hparams(exp: Any, ticked: list[str]) -> None:
    """Make TensorBoard's HPARAMS tab show ``ticked`` by default. It shows the first five
    hyperparameters after sorting by (not ``differs``, name); ``differs`` is therefore set
    on the ticked ones (and on those alone, so that ``loss`` comes before ``batch_size``
    only by this choice, not by the alphabet)."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    value = exp.value[0]
    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in ticked
    value.metadata.plugin_data.content = data.SerializeToString()


def coefficient_error(fitted: dict[str, float], truth: dict[str, float]) -> float:
    """L2 distance between fitted and true parameters (intercept included); hypot: huge
    but finite coefficients (a run on its way to diverging) give inf, never OverflowError."""
    return math.hypot(*(fitted[k] - v for k, v in truth.items() if k in fitted))


def hparam_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Final metrics under the names of their scalar tags, so the HPARAMS tab lines them up;
    most telling first (the tab ticks the first five), only those the run has."""
    val = metrics.get("val") or {}
    train = metrics.get("train") or {}
    out = {
        "val/loss": val.get("loss"),
        "params/coefficient_error": metrics.get("coefficient_error"),
        "val/mae": val.get("mae"),
        "val/mse": val.get("mse"),
        "loss/epoch": train.get("loss"),
        "loss/gap": (metrics.get("gap") or {}).get("relative"),
        "val/r2": val.get("r2"),
    }
    return {k: v for k, v in out.items() if v is not None}


RUN_COLUMNS = [  # (header, cell of a row), most important first: narrow screens drop the last
    ("status", lambda r: str(r.get("status") or "-")),
    ("loss", lambda r: _loss_cell(r)),
    ("val loss", lambda r: _short(r.get("val_loss"))),
    ("val MAE", lambda r: _short(r.get("val_mae"))),
    ("coef err", lambda r: _short(r.get("coefficient_error"))),
    ("optim", lambda r: _fmt(r.get("optimizer"))),
    ("epochs", lambda r: _fmt(r.get("epochs"))),
    ("started", lambda r: str(r.get("started") or "-")[5:16] or "-"),  # MM-DD HH:MM
]


def _loss_cell(row: dict[str, Any]) -> str:
    if not row.get("loss"):
        return "-"
    if isinstance(row.get("quantile"), float):
        return f"{row['loss']} q{row['quantile']:g}"
    return row["loss"] + (f" {row['delta']:.4g}" if isinstance(row.get("delta"), float) else "")


def _tree(rows: list[dict[str, Any]], i: int) -> str:
    """Row ``i``'s folder name, a child under its parent as a tree: ``├`` and, last, ``└``."""
    name, parent = Path(rows[i]["folder"]).name, rows[i].get("parent")
    if not parent:
        return name
    last = i + 1 == len(rows) or rows[i + 1].get("parent") != parent
    return f"{'└' if last else '├'} {name}"


def render_runs(rows: list[dict[str, Any]], runs_dir: str, console: Console) -> None:
    """The ``huberfit runs`` table; a comparison's runs are indented under it. The run
    folder is never cut or wrapped; on a narrow terminal the least important columns go
    (in a file or a pipe none do; the status always stays), and a table that still does
    not fit is printed whole, wider than the screen, rather than cut."""
    folders = [_tree(rows, i) for i in range(len(rows))]
    cells = [[cell(r) for _, cell in RUN_COLUMNS] for r in rows]
    keep = len(RUN_COLUMNS)
    table = _runs_table(folders, cells, keep)
    while console.is_terminal and keep > 1 and not fits(table, console):
        keep -= 1
        table = _runs_table(folders, cells, keep)
    console.print(Text(f"runs in {runs_dir}", style="italic"))
    natural = console.measure(table, options=console.options.update(width=10_000)).maximum
    width = console.width
    console.width = max(natural, width)  # the terminal wraps a wider table; Rich would cut it
    try:
        console.print(table)
    finally:
        console.width = width
    if keep < len(RUN_COLUMNS):
        hidden = ", ".join(h for h, _ in RUN_COLUMNS[keep:])
        prose(
            console, Text(f"(huberfit runs --json has them all; not shown on this width: {hidden})")
        )
    for row in rows:
        name = Path(row["folder"]).name
        if row.get("kind") in ("comparison", "sweep") and row.get("verdict"):
            prose(console, Text(f"{name}: {row['verdict']}"))
        if row.get("detail"):
            prose(console, Text(f"{name}: {row['detail']}"))


def _runs_table(folders: list[str], cells: list[list[str]], keep: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run folder", no_wrap=True)
    for header, _ in RUN_COLUMNS[:keep]:
        table.add_column(header, no_wrap=True)
    for folder, row_cells in zip(folders, cells, strict=True):
        table.add_row(Text(folder), *(Text(c) for c in row_cells[:keep]))
    return table


def render_scores(scores: dict[str, Any], console: Console) -> None:
    """``huberfit eval``: the metrics on the given file, original units."""
    table = Table(box=box.SIMPLE_HEAD, title="scores (original units)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    loss = scores["loss"] + (f" (delta {scores['delta']:.4g})" if scores.get("delta") else "")
    loss += f" (tau {scores['quantile']:g})" if scores.get("quantile") else ""
    objective = scores["objective"]
    if objective is None:
        objective = "- (your loss: pass --loss FILE.py:Class)"
    for name, value in (("rows", scores["rows"]), (f"objective: {loss}", objective),
                        ("MSE", scores["mse"]), ("MAE", scores["mae"]), ("R^2", scores["r2"])):  # fmt: skip
        table.add_row(*_texts(name, _fmt(value)))
    console.print(table)
    se, ci = scores.get("standard_errors"), scores.get("intervals95") or {}
    if se and scores.get("converged") is False:
        prose(console, Text("note: the run did not reach its loss's optimum (see its summary); "
                            "these describe its coefficients, not the optimum's"))  # fmt: skip
    if se:
        table = Table(box=box.SIMPLE_HEAD, title="the trained coefficients' uncertainty "
                      "(from the run's training rows)", title_justify="left")  # fmt: skip
        fitted = {**(scores.get("coefficients") or {}), "intercept": scores.get("intercept")}
        for col in ("parameter", "fitted", "std err", "95% from", "to"):
            table.add_column(col, justify="left" if col == "parameter" else "right")
        for name, value in se.items():
            low, high = ci.get(name, (None, None))
            table.add_row(*_texts(name, _short(fitted.get(name)), _short(value), _short(low),
                                  _short(high)))  # fmt: skip
        console.print(table)


def render_checks(label: str, rows: list[tuple[str, bool, str]], console: Console) -> None:
    """``huberfit check-loss``: one row per check, with what it found."""
    table = Table(box=box.SIMPLE_HEAD, title=Text(f"check-loss {label}"), title_justify="left")
    table.add_column("check")
    table.add_column("", no_wrap=True)
    table.add_column("found")
    for name, passed, detail in rows:  # your loss's own text: never read as markup
        table.add_row(Text(name), "pass" if passed else "FAIL", Text(detail))
    console.print(table)


# ----------------------------------------------------------------------------- sweeps


def render_trials(
    rows: list[dict[str, Any]], metric: str, keys: list[str], parent: str,
    best: str | None, console: Console,
) -> None:  # fmt: skip
    """A sweep's trials, best first (pruned and failed after); columns the terminal has
    no room for are dropped from the right, and said."""
    columns = ["#", "trial", "state", metric, *keys, "epochs", "s", "note"]
    cells = [
        [str(r["trial"]), r.get("name") or "", r["state"], _cell(r.get(metric)),
         *[_cell(r.get(k)) for k in keys], _cell(r.get("epochs")), _cell(r.get("seconds"), 2),
         r.get("note") or ""]
        for r in rows
    ]  # fmt: skip
    shown = len(columns) - 1  # the note wraps into whatever room is left (at least 16)
    while shown > 4:
        table = _trials_table(columns[:shown], [c[:shown] for c in cells])
        width = console.measure(table, options=console.options.update(width=10_000)).maximum
        if width + 16 <= console.width or (width <= console.width and shown < 5):
            break
        shown -= 1
    if shown == len(columns) - 1 and any(c[-1] for c in cells):
        shown += 1  # the note, wrapped
    elif not any(c[-1] for c in cells):
        columns, cells = columns[:-1], [c[:-1] for c in cells]
    table = _trials_table(columns[:shown], [c[:shown] for c in cells])
    console.print(table)
    if shown < len(columns):
        prose(console, Text(f"(trials.csv has them all; not shown for width: "
                            f"{', '.join(columns[shown:])})"))  # fmt: skip
    if best:
        prose(console, Text(f"best: {rows[0]['name']}  {metric} {_cell(rows[0][metric])}  "
                            f"-> {best}"))  # fmt: skip
    elif not any(r["state"] == "complete" for r in rows):
        console.print(Text("no trial completed: no best.yaml"))
    console.print(
        Text(f"trials: {parent}/trials.csv\nlook at it: tensorboard --logdir {quote(str(parent))}")
    )


def _trials_table(columns: list[str], cells: list[list[str]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title_justify="left")
    for name in columns:
        numeric = name not in ("trial", "state", "note")
        table.add_column(Text(name), justify="right" if numeric else "left",
                         no_wrap=name != "note", overflow="fold")  # fmt: skip
    for row in cells:
        table.add_row(*[Text(c) for c in row])
    return table


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
