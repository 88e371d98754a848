"""The run: one folder, the rank-0 policy, and every sink, opened and closed together.

``open_run`` names the folder (rank 0 names it, every rank learns it), writes
``config.yaml``, opens the sinks in one ``ExitStack`` so that every path out (success, a
diverged run, an error, Ctrl-C) closes them, and hands back a ``Run`` whose writers do
nothing on ranks other than 0. A new sink is one ``stack.enter_context`` line below.
Signals while the folder is open: ``huberfit.interrupts`` (the policy) and
``experiment.train_run`` (what is saved at each stage). ``Checkpoints`` writes the
periodic and final checkpoints, never a non-finite one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huberfit.artifacts import (
    is_finite,
    make_run_dir,
    save_checkpoint,
    write_bytes_atomic,
    write_json,
    write_text_atomic,
)
from huberfit.config import Config, dump_config
from huberfit.runs import folder_lock
from huberfit.sinks import ConsoleSink, FigureMaker, Sinks, TensorBoardSink


@dataclass
class Run:
    """An open run folder. Writers act on rank 0 only; ``sinks`` receive every report."""

    dir: Path
    main: bool
    sinks: Sinks
    config_yaml: str
    tensorboard: TensorBoardSink | None = None

    def checkpoint(self, payload: dict[str, Any]) -> None:
        """``checkpoint.pt`` (atomically)."""
        if self.main:
            save_checkpoint(self.dir / "checkpoint.pt", payload)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """``metrics.json`` (atomically): written last, it marks the run as ended."""
        if self.main:
            write_json(self.dir / "metrics.json", metrics)

    def reopen(self) -> None:
        """A resumed run: its old ``metrics.json`` describes an end it is about to move, so
        it goes; until the run ends again the folder is its checkpoint (``runs``, like
        ``--resume``, calls it interrupted if the process is killed)."""
        if self.main:
            (self.dir / "metrics.json").unlink(missing_ok=True)

    def pictures(self, pictures: list[tuple[str, bytes]]) -> None:
        """PNG files in the folder, and the same pictures in TensorBoard."""
        if not self.main:
            return
        for name, png in pictures:  # atomically: a signal or a full disk never cuts one
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
        run_dir = run_dir or make_run_dir(
            config.output.runs_dir if runs_dir is None else runs_dir, config.name
        )
    if dist is not None:
        run_dir = Path(dist.broadcast_text(str(run_dir) if main else None))
    config_yaml = dump_config(config)
    with ExitStack() as stack:
        if main:  # one process writes a run folder at a time
            stack.enter_context(folder_lock(run_dir))
            write_text_atomic(run_dir / "config.yaml", config_yaml)
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


AUTO_CHECKPOINT_SECONDS = 5.0


class Checkpoints:
    """The run's checkpoints: every ``every`` epochs (``train.checkpoint_every``; None:
    after the first epoch, then after each epoch that ends ``AUTO_CHECKPOINT_SECONDS`` or
    more after the last checkpoint) and when the run stops. A state already saved is not written again, and a
    non-finite one (a diverged run) never replaces the last finite checkpoint.

    Why the default is by time: a checkpoint costs 1-12 ms (mostly the two fsyncs; measured
    on ext4 here, idle to busy), as much as a few epochs of the quickstart (3.6 ms each),
    and a kill costs at most the work since the last checkpoint: 5 s bounds both."""

    def __init__(
        self, run: Run, payload: Callable[[Any], dict[str, Any]], every: int | None,
        saved: Any = None,
    ) -> None:  # fmt: skip
        self.run, self.payload, self.every = run, payload, every
        self.saved_at = None if saved is None else self._key(saved)
        self.saved_epoch: int | None = None if saved is None else saved.epoch
        self.saved_time = time.monotonic()

    @staticmethod
    def _key(state: Any) -> tuple[int, int, int]:
        return state.epoch, state.step, state.batch

    def periodic(self, state: Any) -> None:
        """``fit``'s ``on_epoch``: once every ``every`` epochs (None: the first, then by time)."""
        if self.every is None:
            first = self.saved_at is None
            if first or time.monotonic() - self.saved_time >= AUTO_CHECKPOINT_SECONDS:
                self.save(state)
        elif state.epoch % self.every == 0:
            self.save(state)

    def save(self, state: Any) -> None:
        if not self.run.main or self._key(state) == self.saved_at:
            return
        payload = self.payload(state)
        if not is_finite(payload):
            return
        self.run.checkpoint(payload)
        self.saved_at, self.saved_epoch = self._key(state), state.epoch
        self.saved_time = time.monotonic()
