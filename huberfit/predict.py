"""Use a trained run: predictions for new rows, and scores on new labelled rows.

The run's ``checkpoint.pt`` is loaded with ``weights_only=True`` (never unpickled as code);
its stored standardization and feature order are applied to the input, which is read and
written in chunks so memory stays bounded whatever the file size. Everything is float64
numpy; torch is needed only to read the checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from huberfit.artifacts import atomic_path, load_checkpoint
from huberfit.data.scaling import Moments
from huberfit.data.tables import (
    check_file,
    header_line,
    input_files,
    iter_chunks,
    read_header,
    source_of,
)
from huberfit.errors import DataError, RunError

CHUNK_ROWS = 100_000


@dataclass
class TrainedRun:
    """What prediction needs from a run: the fitted model in its training units, the
    standardization to reach them, and the names of the columns it reads."""

    run_dir: Path
    features: list[str]
    target: str
    weight: np.ndarray  # (n_features,), standardized units
    bias: float
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: float
    y_scale: float
    loss: str
    delta: float
    quantile: float
    loss_kwargs: dict[str, Any]

    def predict_frame(self, X: Any) -> np.ndarray:
        """``predict`` for a DataFrame (its columns picked by the run's feature names, in
        the run's order) or anything array-like with the features in the run's order."""
        if hasattr(X, "columns"):
            missing = [f for f in self.features if f not in X.columns]
            if missing:
                raise DataError(
                    f"the input has no column {missing[0]!r} (features: {self.features})"
                )
            X = X[self.features].to_numpy(dtype=np.float64)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise DataError(f"X has shape {X.shape}; the run has {len(self.features)} features")
        return self.predict(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions in original units for ``X (n, n_features)`` in original units."""
        with np.errstate(over="ignore", invalid="ignore"):
            Xs = (X - self.x_mean) / self.x_scale
            out = (Xs @ self.weight + self.bias) * self.y_scale + self.y_mean
        if not np.isfinite(out).all():  # finite cells far beyond the training data's scale
            row = int(np.flatnonzero(~np.isfinite(out))[0])
            col = int(np.argmax(np.abs(np.nan_to_num(Xs[row], nan=np.inf))))
            raise DataError(
                f"a prediction overflows float64: column {self.features[col]!r} holds "
                f"{X[row, col]:.3g}, far beyond the training data's scale; rescale the input"
            )
        return out


def load_run(run_dir: str | Path) -> TrainedRun:
    """Read a run folder's checkpoint into a ``TrainedRun`` (or a RunError saying why not)."""
    ckpt = load_checkpoint(run_dir)
    try:
        model, scaling = ckpt["model"], ckpt["scaling"]
        weight = model["weight"].double().reshape(-1).numpy()
        bias = float(model["bias"].double()) if "bias" in model else 0.0
        features = list(ckpt["feature_names"])
        run = TrainedRun(
            run_dir=Path(run_dir),
            features=features,
            target=ckpt.get("target") or "y",
            weight=weight,
            bias=bias,
            x_mean=np.asarray(scaling["x_mean"], dtype=np.float64),
            x_scale=np.asarray(scaling["x_scale"], dtype=np.float64),
            y_mean=float(scaling["y_mean"]),
            y_scale=float(scaling["y_scale"]),
            loss=ckpt["loss"]["name"],
            delta=float(ckpt["loss"]["delta"]),
            quantile=float(ckpt["loss"].get("quantile", 0.5)),
            loss_kwargs=dict(ckpt["loss"].get("kwargs") or {}),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise RunError(f"{run_dir}: checkpoint is missing or has a bad entry ({exc})") from None
    if len(run.weight) != len(features):
        raise RunError(
            f"{run_dir}: checkpoint has {len(run.weight)} weights for {len(features)} features"
        )
    return run


def predict_file(
    run: TrainedRun,
    input_path: str,
    output: str | None,
    stdout: TextIO | None = None,
    overwrite: bool = False,
) -> int:
    """Write the input rows with a ``prediction`` column (CSV or Parquet by the output's
    extension; stdout as CSV without one). Returns the number of rows written.

    The input's cells are written back as they were (CSV text as text, Parquet types as
    they are). Everything is checked before anything is written: the output is never one of
    the inputs (by name, link or hard link), never an existing file unless ``overwrite``,
    and every input file has the same columns. The output is written to a temporary file
    beside it and renamed when complete: an error, Ctrl-C or SIGTERM leaves nothing behind.
    """
    files = input_files(input_path)
    _same_columns(files)
    if output is None:
        return _write_csv(_chunks(files, run), run, stdout or sys.stdout)
    out, kind = _check_output(output, files, overwrite)
    with _sigterm_as_interrupt(), atomic_path(out) as tmp:
        if kind == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                return _write_csv(_chunks(files, run), run, fh)
        return _write_parquet(_chunks(files, run), run, tmp, out)


def _chunks(files: list[str], run: TrainedRun):
    """``(file, frame, X)`` per chunk, the frame's cells as they were in the file."""
    for file in files:
        for frame, X, _ in iter_chunks(file, run.features, None, CHUNK_ROWS, text=True):
            yield file, frame, X


def _check_output(output: str, inputs: list[str], overwrite: bool) -> tuple[Path, str]:
    """The output's path and kind, or a DataError saying why it cannot be written."""
    out = Path(output)
    if out.is_dir():
        raise DataError(f"--output {output} is a folder; give a file name (.csv or .parquet)")
    kind = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(out.suffix.lower())
    if kind is None:
        raise DataError(f"--output {output}: use a .csv or .parquet file name")
    parent = out.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise DataError(f"--output {output}: its folder {parent} {what}")
    for file in inputs:
        if out.exists() and _same_file(out, Path(file)):
            raise DataError(
                f"--output {output} is the input file {file}; write the predictions to "
                "another file (the input is never replaced)"
            )
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DataError(
            f"--output {output} already exists; choose another name, or pass --overwrite "
            "to replace it"
        )
    return out, kind


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same name, a link to it, or a hard link."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _same_columns(files: list[str]) -> list[str]:
    """The columns of the first file; every other file must have the same, in the same
    order (their rows go under one header), and none may be called ``prediction``."""
    first = files[0]
    columns = read_header(check_file(first), source_of(first))
    if "prediction" in columns:
        raise DataError(f"{first}: already has a 'prediction' column; rename it first")
    for file in files[1:]:
        these = read_header(check_file(file), source_of(file))
        if these == columns:
            continue
        missing = [c for c in columns if c not in these]
        extra = [c for c in these if c not in columns]
        parts = [f"no column {', '.join(map(repr, missing))}"] if missing else []
        parts += [f"extra column {', '.join(map(repr, extra))}"] if extra else []
        how = "; ".join(parts) or f"the same columns in another order ({', '.join(these)})"
        raise DataError(
            f"{file}: its columns differ from those of {first} ({how}); predict writes every "
            "row under one header, so the files must have the same columns"
        )
    return columns


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the write as Ctrl-C does (the temporary file is removed, exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_prediction(frame, X: np.ndarray, run: TrainedRun):
    if "prediction" in frame.columns:
        raise DataError("the input already has a 'prediction' column; rename it first")
    return frame.assign(prediction=run.predict(X))


def _write_csv(chunks, run: TrainedRun, fh: TextIO) -> int:
    rows = 0
    for _, frame, X in chunks:
        out = _with_prediction(frame, X, run)
        if rows == 0:  # the header as read: " a x " keeps its quotes and spaces
            fh.write(header_line(list(out.columns)) + os.linesep)
        out.to_csv(fh, index=False, header=False)
        rows += len(frame)
    return rows


def _write_parquet(chunks, run: TrainedRun, path: str, out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, rows, first = None, 0, None
    try:
        for file, frame, X in chunks:
            table = pa.Table.from_pandas(_with_prediction(frame, X, run), preserve_index=False)
            if writer is None:
                writer, first = pq.ParquetWriter(path, table.schema), file
            writer.write_table(_same_schema(table, writer.schema, file, first, out))
            rows += len(frame)
    finally:
        if writer is not None:
            writer.close()
    return rows


def _same_schema(table: Any, schema: Any, file: str, first: str, out: Path) -> Any:
    """``table`` in the Parquet file's ``schema`` (set by the first rows written), or a
    DataError naming the column whose type differs: a Parquet column has one type."""
    import pyarrow as pa

    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError):
        pass
    for field in schema:
        there = table.schema.field(field.name).type
        if there != field.type:
            raise DataError(
                f"{file}: column {field.name!r} is {there} here but {field.type} in {first}; a "
                f"Parquet column has one type (write {out.with_suffix('.csv').name} instead, "
                "or give the inputs one type per column)"
            )
    raise DataError(f"{file}: its columns' types differ from {first}'s; {out} cannot hold both")


def evaluate_file(
    run: TrainedRun, input_path: str, target: str | None = None, own_loss: Any = None
) -> dict[str, Any]:
    """MSE, MAE, R^2 and the run's own training objective on a labelled file, original units.

    Streams the file; the target's variance (for R^2) is merged chunk by chunk
    (``scaling.Moments``), which stays accurate where sum-of-squares formulas cancel. A run
    of your own loss is scored with it only when you hand its module over (``own_loss``,
    ``--loss FILE:CLASS``): the checkpoint never names code to import.
    """
    from huberfit.losses import loss_spec, own_label

    spec = loss_spec(run.loss)
    target = target or run.target
    if target in run.features:
        raise DataError(
            f"--target {target!r} is one of the model's features ({', '.join(map(repr, run.features))}); "
            "name the column that holds the target"
        )
    sq, ab, obj = 0.0, 0.0, 0.0
    moments = Moments()
    for _, X, y in iter_chunks(input_path, run.features, target, CHUNK_ROWS, require_target=True):
        r = y - run.predict(X)
        sq += float(r @ r)
        ab += float(np.abs(r).sum())
        if spec.objective is not None:
            obj += spec.objective(r, run.delta, run.quantile) * len(y)
        elif own_loss is not None:  # your loss sees (rows, 1) tensors in the target's units
            obj += _own_objective(own_loss, y - r, y) * len(y)
        moments.add(y)
    n, m2 = moments.n, float(moments.m2)
    return {
        **_run_uncertainty(run.run_dir),
        "rows": n,
        "loss": own_label(run.loss),
        "delta": run.delta if spec.uses_delta else None,
        "quantile": run.quantile if spec.uses_quantile else None,
        "objective": obj / n if spec.objective is not None or own_loss is not None else None,
        "mse": sq / n,
        "mae": ab / n,
        "r2": 1.0 - sq / m2 if m2 > 0 else math.nan,
    }


def _run_uncertainty(run_dir: Path) -> dict[str, Any]:
    """The trained coefficients, their standard errors and 95% intervals, as the run's
    ``metrics.json`` has them (from its training rows), for ``huberfit eval --json``."""
    import json

    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("coefficients", "intercept", "standard_errors", "standard_errors_hc3", "intervals95",
            "standard_error_method", "converged")  # fmt: skip
    if not isinstance(metrics, dict):
        return {}
    return {k: metrics[k] for k in keys if metrics.get(k) is not None}


def _own_objective(loss: Any, pred: np.ndarray, true: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        value = loss(torch.tensor(pred.reshape(-1, 1)), torch.tensor(true.reshape(-1, 1)))
    return float(value)
