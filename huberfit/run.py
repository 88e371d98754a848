"""The run: one folder, the rank-0 policy, and every sink, opened and closed together.

``open_run`` names the folder (rank 0 names it, every rank learns it), writes
``config.yaml``, opens the sinks in one ``ExitStack`` so that every path out (success, a
diverged run, an error, Ctrl-C) closes them, and hands back a ``Run`` whose writers do
nothing on ranks other than 0. A new sink is one ``stack.enter_context`` line below.
``stop_on_signals`` turns Ctrl-C / SIGTERM into a request to stop after the current step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huberfit.artifacts import (
    make_run_dir,
    save_checkpoint,
    write_bytes_atomic,
    write_json,
    write_text_atomic,
)
from huberfit.config import Config, dump_config
from huberfit.sinks import ConsoleSink, FigureMaker, Sinks, TensorBoardSink


@dataclass
class Run:
    """An open run folder. Writers act on rank 0 only; ``sinks`` receive every report."""

    dir: Path
    main: bool
    sinks: Sinks
    config_yaml: str
    tensorboard: TensorBoardSink | None = None

    def save(self, checkpoint: dict[str, Any], metrics: dict[str, Any]) -> None:
        """``checkpoint.pt`` and ``metrics.json`` (atomically)."""
        if self.main:
            save_checkpoint(self.dir / "checkpoint.pt", checkpoint)
            write_json(self.dir / "metrics.json", metrics)

    def pictures(self, pictures: list[tuple[str, bytes]]) -> None:
        """PNG files in the folder, and the same pictures in TensorBoard."""
        if not self.main:
            return
        for name, png in pictures:
            write_bytes_atomic(self.dir / f"{name}.png", png)
        if self.tensorboard is not None:
            self.tensorboard.images(pictures)

    def finish(
        self, metrics: dict[str, Any], hparams: dict[str, Any], ticked: list[str] | None
    ) -> None:
        """The summary text and hparams for TensorBoard."""
        if self.tensorboard is not None:
            self.tensorboard.finish(metrics, hparams, self.config_yaml, ticked)


@contextmanager
def open_run(
    config: Config,
    console: ConsoleSink,
    *,
    run_dir: Path | None = None,
    runs_dir: str | None = None,
    dist: Any = None,
    truth: dict[str, float] | None = None,
    figures: FigureMaker | None = None,
    truth_run: bool = True,
) -> Iterator[Run]:
    """Open the run folder ``run_dir`` (default: a new one under ``runs_dir``) and its sinks.

    ``truth``: true coefficients for TensorBoard's charts (written beside the run unless
    ``truth_run`` is off: a comparison writes them once for all its runs). ``figures``:
    draws the run's pictures, for TensorBoard's images every N epochs.
    """
    main = dist is None or dist.is_main
    if main:
        run_dir = run_dir or make_run_dir(runs_dir or config.output.runs_dir, config.name)
    if dist is not None:
        run_dir = Path(dist.broadcast_text(str(run_dir) if main else None))
    config_yaml = dump_config(config)
    if main:
        write_text_atomic(run_dir / "config.yaml", config_yaml)
    with ExitStack() as stack:
        stack.callback(console.close)
        tb = None
        if config.output.tensorboard and main:
            o = config.output
            every = o.images_every_epochs if o.images else None
            tb = stack.enter_context(
                TensorBoardSink(run_dir, o.flush_secs, truth, figures, every, truth_run)
            )
            tb.text("config", f"```yaml\n{config_yaml}```")
        yield Run(run_dir, main, Sinks(console, tb), config_yaml, tb)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that Ctrl-C / SIGTERM set (training finishes its step and saves); a second
    Ctrl-C interrupts at once. A SIGTERM after a Ctrl-C does not: torchrun sends one to its
    workers when the terminal's Ctrl-C reaches it too."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
