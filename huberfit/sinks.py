"""Sinks: where training reports go. The console (Rich progress and summary) and TensorBoard,
behind one small interface: ``step``, ``epoch``, ``note``, ``finish``, ``close``.

The console sink is the only place below the CLI that prints. The TensorBoard sink writes
into the run folder itself (hparams included) and is closed on every exit path by its owner.
Must not import data, losses, model or train.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

FigureMaker = Callable[[], list[tuple[str, Any]]]  # -> [(name, matplotlib Figure)]


class Sinks:
    """Fan-out to several sinks; each method is forwarded to every sink that has it."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            for sink in self.sinks:
                method = getattr(sink, name, None)
                if method is not None:
                    method(*args, **kwargs)

        return call


# ----------------------------------------------------------------------------- console


class ConsoleSink:
    """Progress on stderr (a Rich bar on a terminal, one plain line per epoch otherwise)."""

    def __init__(self, epochs: int, quiet: bool = False, err: Console | None = None) -> None:
        self.err = err or Console(stderr=True)
        self.quiet = quiet
        self.epochs = epochs
        self.progress: Progress | None = None
        self.task = None
        self.last_loss = math.nan

    def note(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"[dim]{message}[/dim]", highlight=False)

    def start(self, first_epoch: int = 0) -> None:
        if self.quiet or not self.err.is_terminal:
            return
        self.progress = Progress(
            TextColumn("epoch {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        )
        self.task = self.progress.add_task(
            "train", total=self.epochs, completed=first_epoch, info=""
        )
        self.progress.start()

    def step(self, step: int, train_loss: float) -> None:
        self.last_loss = train_loss

    def epoch(self, report: Any) -> None:
        if self.quiet:
            return
        val = report.val["loss"] if report.val else math.nan
        info = (
            f"loss {report.train_loss:.5g}  val {val:.5g}  "
            f"{report.samples_per_second:,.0f} samples/s"
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=report.epoch, info=info)
        else:
            self.err.print(f"epoch {report.epoch}/{self.epochs}  {info}", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def render_summary(metrics: dict[str, Any], run_dir: str, console: Console) -> None:
    """The end-of-run summary: coefficients beside the truth, metrics, status, where to look."""
    coef = Table(title="coefficients (original units)", title_justify="left")
    coef.add_column("parameter")
    coef.add_column("fitted", justify="right")
    truth = metrics.get("true_coefficients")
    if truth is not None:
        coef.add_column("true", justify="right")
    rows = list(metrics["coefficients"].items()) + [("intercept", metrics["intercept"])]
    true_rows = list((truth or {}).values()) + [metrics.get("true_intercept")]
    for (name, value), true in zip(rows, true_rows, strict=True):
        cells = [name, f"{value:.6g}"] + ([_fmt(true)] if truth is not None else [])
        coef.add_row(*cells)
    console.print(coef)
    table = Table(title="metrics (original units)", title_justify="left")
    for col in ("split", f"loss ({metrics['loss']})", "MSE", "MAE", "R^2"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split in ("train", "val"):
        m = metrics.get(split)
        if m:
            table.add_row(split, *(_fmt(m[k]) for k in ("loss", "mse", "mae", "r2")))
    console.print(table)
    lines = [
        f"status: {metrics['status']}   epochs: {metrics['epochs']}   steps: {metrics['steps']}"
        f"   time: {metrics['seconds']:.2f} s   {metrics['samples_per_second']:,.0f} samples/s"
        f"   device: {metrics['device']}",
    ]
    if metrics.get("coefficient_error") is not None:
        lines.append(f"coefficient error vs truth (L2): {metrics['coefficient_error']:.4g}")
    lines.append(f"run folder: {run_dir}")
    lines.append(f"look at it: tensorboard --logdir {Path(run_dir).parent}")
    for line in lines:
        console.print(line, highlight=False)


COMPARE_COLUMNS = [  # (header, row key, lower is better?)
    ("objective", "train_objective", None),
    ("gap", "optimality_gap", True),
    ("val MSE", "val_mse", True),
    ("val MAE", "val_mae", True),
    ("coef err", "coefficient_error", True),
]


def render_comparison(
    rows: list[dict[str, Any]], verdict: str, parent: str, console: Console
) -> None:
    """The comparison table, the best value of each column marked with *, and the verdict."""
    table = Table(
        title="losses compared on the same data (original units)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("run", no_wrap=True)
    for header, _, _ in COMPARE_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("coefficients, intercept", overflow="fold", min_width=16)
    table.add_column("s", justify="right", no_wrap=True)
    best = {}
    for _, key, lower in COMPARE_COLUMNS:
        values = [r[key] for r in rows if r[key] is not None]
        if lower and values:
            best[key] = min(values, key=abs) if key == "optimality_gap" else min(values)
    for r in rows:
        cells = [r["label"]]
        for _, key, _lower in COMPARE_COLUMNS:
            mark = "*" if key in best and r[key] == best[key] else ""
            cells.append(_short(r[key]) + mark)
        coefs = " ".join(f"{v:.4g}" for v in [*r["coefficients"].values(), r["intercept"]])
        cells += [coefs, f"{r['seconds']:.1f}"]
        table.add_row(*cells)
    console.print(table)
    epochs = sorted({r["epochs"] for r in rows})
    console.print(
        "* best in its column. gap: the training objective minus the exact optimum of the "
        f"same loss on the training rows (see README). epochs: {', '.join(map(str, epochs))}",
        highlight=False,
    )
    console.print(f"verdict: {verdict}", highlight=False)
    console.print(f"runs: {parent}\nlook at it: tensorboard --logdir {parent}", highlight=False)


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
    for key in ("status", "loss", "delta", "optimizer", "epochs", "steps", "seconds"):
        lines.append(f"| {key} | {_fmt(metrics.get(key))} |")
    for split in ("train", "val"):
        for k, v in (metrics.get(split) or {}).items():
            lines.append(f"| {split} {k} | {_fmt(v)} |")
    for name, value in metrics["coefficients"].items():
        true = (metrics.get("true_coefficients") or {}).get(name)
        lines.append(f"| coef {name} | {_fmt(value)} (true {_fmt(true)}) |")
    lines.append(f"| intercept | {_fmt(metrics['intercept'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tensorboard


class TensorBoardSink:
    """One ``SummaryWriter`` per run folder; events go into the folder itself.

    Per step: ``loss/train`` (at the log interval). Per epoch: losses, validation metrics,
    learning rate, gradient norm, parameters in original units (with the truth, when known,
    as ``params/<name>_true``), throughput and a residual histogram. At the end: hparams,
    the summary text and the pictures.
    """

    def __init__(
        self,
        run_dir: str | Path,
        flush_secs: int,
        truth: dict[str, float] | None = None,
        figures: FigureMaker | None = None,
        images_every: int | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), flush_secs=flush_secs)
        self.truth = truth or {}
        self.figures = figures
        self.images_every = images_every
        self.last_step = 0

    def text(self, tag: str, markdown: str) -> None:
        self.writer.add_text(tag, markdown, 0)

    def step(self, step: int, train_loss: float) -> None:
        self.writer.add_scalar("loss/train", train_loss, step)
        self.last_step = step

    def epoch(self, report: Any) -> None:
        w, s = self.writer, report.step
        self.last_step = s
        w.add_scalar("loss/train_epoch", report.train_loss, s)
        if report.val:
            w.add_scalar("loss/val", report.val["loss"], s)
            for key in ("mse", "mae", "r2"):
                w.add_scalar(f"metrics/val_{key}", report.val[key], s)
        w.add_scalar("optim/lr", report.lr, s)
        if math.isfinite(report.grad_norm):
            w.add_scalar("optim/grad_norm", report.grad_norm, s)
        for name, value in report.params.items():
            w.add_scalar(f"params/{name}", value, s)
            if name in self.truth:
                w.add_scalar(f"params/{name}_true", self.truth[name], s)
        w.add_scalar("perf/samples_per_second", report.samples_per_second, s)
        if report.residuals is not None and len(report.residuals):
            w.add_histogram("residuals/val", report.residuals, s)
        if self.images_every and self.figures and report.epoch % self.images_every == 0:
            self.images(self.figures())

    def images(self, figures: list[tuple[str, Any]]) -> None:
        for name, fig in figures:
            self.writer.add_figure(f"images/{name}", fig, self.last_step, close=False)

    def finish(self, metrics: dict[str, Any], hparams: dict[str, Any], config_yaml: str) -> None:
        """Summary text, coefficient error and hparams (into this run's own folder)."""
        from torch.utils.tensorboard.summary import hparams as make_hparams

        w = self.writer
        if metrics.get("coefficient_error") is not None:
            w.add_scalar("metrics/coefficient_error", metrics["coefficient_error"], self.last_step)
        w.add_text("summary", summary_markdown(metrics), self.last_step)
        final = hparam_metrics(metrics)
        # SummaryWriter.add_hparams would open a second, timestamped run folder; writing the
        # three hparams summaries with this run's own writer keeps one run per folder.
        for summary in make_hparams(hparams, final):
            w.file_writer.add_summary(summary)
        w.flush()

    def close(self) -> None:
        self.writer.close()


def hparam_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Final metrics under the names of their scalar tags, so the HPARAMS tab lines them up."""
    val = metrics.get("val") or {}
    train = metrics.get("train") or {}
    err = metrics.get("coefficient_error")
    return {
        "loss/val": val.get("loss", math.nan),
        "loss/train_epoch": train.get("loss", math.nan),
        "metrics/val_mse": val.get("mse", math.nan),
        "metrics/val_mae": val.get("mae", math.nan),
        "metrics/val_r2": val.get("r2", math.nan),
        "metrics/coefficient_error": math.nan if err is None else err,
    }


def plain_console(width: int = 100) -> Console:
    """A colourless console writing into a string buffer (tests, captured output)."""
    return Console(width=width, file=io.StringIO(), color_system=None)


def render_runs(rows: list[dict[str, Any]], runs_dir: str, console: Console) -> None:
    """The ``huberfit runs`` table; a comparison's runs are indented under it. The run
    folder (relative to ``runs_dir``) starts with the run's name."""
    table = Table(box=box.SIMPLE_HEAD, title=f"runs in {runs_dir}", title_justify="left")
    columns = [("started", "started"), ("status", "status"), ("loss", "loss"),
               ("delta", "delta"), ("optim", "optimizer"), ("epochs", "epochs"),
               ("val loss", "val_loss"), ("val MAE", "val_mae"), ("coef err", "coefficient_error")]  # fmt: skip
    table.add_column("run folder", overflow="fold", min_width=20)
    for header, _ in columns:
        table.add_column(header, no_wrap=True)
    notes = []
    for row in rows:
        folder = Path(row["folder"])
        first = f"└ {folder.name}" if row.get("parent") else folder.name
        cells = [first] + [_short(row.get(key)) for _, key in columns]
        cells[1] = str(row.get("started") or "-")[:16]
        table.add_row(*cells)
        if row.get("kind") == "comparison" and row.get("verdict"):
            notes.append(f"{folder.name}: {row['verdict']}")
        if row.get("detail"):
            notes.append(f"{folder.name}: {row['detail']}")
    console.print(table)
    for line in notes:
        console.print(line, highlight=False)


def render_scores(scores: dict[str, Any], console: Console) -> None:
    """``huberfit eval``: the metrics on the given file, original units."""
    table = Table(box=box.SIMPLE_HEAD, title="scores (original units)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    loss = scores["loss"] + (f" (delta {scores['delta']:g})" if scores.get("delta") else "")
    for name, value in (("rows", scores["rows"]), (f"objective: {loss}", scores["objective"]),
                        ("MSE", scores["mse"]), ("MAE", scores["mae"]), ("R^2", scores["r2"])):  # fmt: skip
        table.add_row(name, _fmt(value))
    console.print(table)
