"""Data: synthetic regression with outliers, CSV/Parquet tables, the split and standardization.

Everything here works in numpy float64 until the end; tensors leave this room contiguous, in
the configured dtype, on the CPU (the training step moves them to the device once). Bad
files raise ``DataError`` naming the file, column and line. Readers (pandas, pyarrow) are
imported lazily. Must not import losses, model, train or sinks.
"""

from __future__ import annotations

import csv
import difflib
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from huberfit.config import DataConfig
from huberfit.errors import DataError

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
DATA_SUFFIXES = {"csv": (".csv",), "parquet": (".parquet", ".pq")}


@dataclass
class Scaling:
    """Per-column affine maps: standardized = (original - mean) / scale.

    ``x_mean``/``x_scale`` have one entry per feature; a zero-variance feature keeps scale 1.
    Without standardization every mean is 0 and every scale 1.
    """

    x_mean: list[float]
    x_scale: list[float]
    y_mean: float
    y_scale: float

    def to_original(self, weight: list[float], bias: float) -> tuple[list[float], float]:
        """Map coefficients fitted on standardized data back to original units."""
        w = [self.y_scale * wi / si for wi, si in zip(weight, self.x_scale, strict=True)]
        b = (
            self.y_mean
            + self.y_scale * bias
            - sum(wi * mi for wi, mi in zip(w, self.x_mean, strict=True))
        )
        return w, b

    def apply_x(self, X: np.ndarray) -> np.ndarray:
        return (X - np.asarray(self.x_mean)) / np.asarray(self.x_scale)

    def as_dict(self) -> dict[str, list[float] | float]:
        return {
            "x_mean": self.x_mean,
            "x_scale": self.x_scale,
            "y_mean": self.y_mean,
            "y_scale": self.y_scale,
        }


@dataclass
class Dataset:
    """A split, scaled regression problem. Shapes: X ``(n, n_features)``, y ``(n, 1)``."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor | None
    y_val: torch.Tensor | None
    feature_names: list[str]
    scaling: Scaling
    source: str
    n_rows: int
    true_weights: list[float] | None = None
    true_bias: float | None = None
    outliers_train: np.ndarray | None = None  # bool per training row (synthetic only)
    outliers_val: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)  # warnings for the console
    stream: Any = None  # a stream.StreamInfo when the rows are streamed (X_*: samples)


# ----------------------------------------------------------------------------- public


def load_dataset(cfg: DataConfig, seed: int, dtype: str = "float32", bias: bool = True) -> Dataset:
    """Build the dataset the config describes: rows, seeded split, standardization.

    ``bias=False`` standardizes by scale only (no centering), so that the model without an
    intercept keeps exactly the same minimizer.
    """
    notes: list[str] = []
    truth_w = truth_b = None
    outliers = None
    if cfg.source == "synthetic":
        X, y, truth_w, truth_b, outliers = make_synthetic(cfg, seed)
        names = [f"x{i}" for i in range(X.shape[1])]
        n_f = cfg.n_features
        source = f"synthetic ({cfg.n_samples} rows, {n_f} feature{'s' * (n_f != 1)})"
    else:
        # parsed straight into the training dtype (float32 parses ~10% faster); the
        # statistics below are computed in float64 either way
        parse_dtype = np.float32 if dtype == "float32" else np.float64
        X, y, names, dropped = read_tables(
            resolve_files(cfg.path or "", cfg.source), cfg.source, cfg.target, cfg.features,
            cfg.missing, parse_dtype,
        )  # fmt: skip
        if dropped:
            notes.append(f"dropped {dropped} rows with missing or non-finite cells")
        source = f"{cfg.path} ({X.shape[0]} rows)"
    train_idx, val_idx = split_indices(X.shape[0], cfg.val_fraction, seed, where=source)
    scaling, scale_notes = fit_scaling(X[train_idx], y[train_idx], cfg.standardize, center=bias)
    notes += [f"feature '{names[i]}' {msg}" for i, msg in scale_notes]
    tdtype = TORCH_DTYPES[dtype]

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        Xs = scaling.apply_x(X[idx])
        ys = (y[idx] - scaling.y_mean) / scaling.y_scale
        return _tensor(Xs, tdtype), _tensor(ys.reshape(-1, 1), tdtype)

    X_train, y_train = tensors(train_idx)
    X_val, y_val = tensors(val_idx) if len(val_idx) else (None, None)
    return Dataset(
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_val,
        feature_names=names,
        scaling=scaling,
        source=source,
        n_rows=int(X.shape[0]),
        true_weights=truth_w,
        true_bias=truth_b,
        outliers_train=None if outliers is None else outliers[train_idx],
        outliers_val=None if outliers is None else outliers[val_idx],
        notes=notes,
    )


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype).contiguous()


def make_synthetic(
    cfg: DataConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, list[float], float, np.ndarray]:
    """``y = X @ w + b + N(0, noise_std**2)``, then exactly ``round(fraction * n)`` outliers.

    Returns ``X (n, f)``, ``y (n,)``, the true ``w`` and ``b``, and the outlier mask. Drawn
    with numpy's PCG64 from ``seed``: the same seed and config give bit-identical data.
    """
    rng = np.random.default_rng([seed, 0])
    n, f = cfg.n_samples, cfg.n_features
    if cfg.true_weights is not None:
        w = np.asarray(cfg.true_weights, dtype=np.float64)
    else:  # round numbers are easier to recognise in a summary
        w = np.round(rng.uniform(-3.0, 3.0, size=f), 1)
    X = rng.standard_normal((n, f))
    y = X @ w + cfg.true_bias + cfg.noise_std * rng.standard_normal(n)
    n_out = int(round(cfg.outlier_fraction * n))
    mask = np.zeros(n, dtype=bool)
    if n_out:
        rows = rng.choice(n, size=n_out, replace=False)
        sign = rng.choice([-1.0, 1.0], size=n_out)
        size = cfg.outlier_scale * rng.uniform(0.5, 1.5, size=n_out)
        y[rows] += sign * size
        mask[rows] = True
    return X, y, [float(v) for v in w], float(cfg.true_bias), mask


def in_validation(rows: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """Whether each global row index is a validation row: a seeded hash of the index
    (splitmix64) below ``val_fraction``. The same rows in every epoch and every run, in
    memory or streamed, whatever order the rows are read in."""
    if val_fraction <= 0:
        return np.zeros(len(rows), dtype=bool)
    return row_hash(rows, seed) < val_fraction


def row_hash(rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row index, from ``seed``."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def split_indices(
    n: int, val_fraction: float, seed: int, where: str = "data"
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices by ``in_validation`` (about ``val_fraction`` of the
    rows; at least one when it is > 0: then the row with the smallest hash)."""
    rows = np.arange(n)
    val = in_validation(rows, seed, val_fraction)
    if val_fraction > 0 and not val.any() and n:
        val[np.argmin(row_hash(rows, seed))] = True
    if n - int(val.sum()) < 2:
        needed = 2 + (1 if val_fraction > 0 else 0)
        raise DataError(
            f"{where}: {n} rows are too few for data.val_fraction={val_fraction}; "
            f"need at least {needed} rows (2 to train on)"
        )
    return np.flatnonzero(~val), np.flatnonzero(val)


def fit_scaling(
    X: np.ndarray, y: np.ndarray, standardize: bool, center: bool = True
) -> tuple[Scaling, list[tuple[int, str]]]:
    """Standardization statistics from the training rows; zero-variance columns keep scale 1."""
    f = X.shape[1]
    if not standardize:
        return Scaling([0.0] * f, [1.0] * f, 0.0, 1.0), []
    notes: list[tuple[int, str]] = []
    if center:
        x_mean, y_mean = X.mean(axis=0), float(y.mean())
        x_std, y_std = X.std(axis=0), float(y.std())
    else:  # scale only: root mean square, so no intercept is introduced
        x_mean, y_mean = np.zeros(f), 0.0
        x_std, y_std = np.sqrt((X**2).mean(axis=0)), float(np.sqrt((y**2).mean()))
    x_scale = x_std.copy()
    for i in np.flatnonzero(~(x_std > 0)):
        x_scale[i] = 1.0
        notes.append((int(i), "has zero variance in the training rows; left unscaled"))
    return (
        Scaling(
            [float(v) for v in x_mean],
            [float(v) for v in x_scale],
            y_mean,
            y_std if y_std > 0 else 1.0,
        ),
        notes,
    )


# ----------------------------------------------------------------------------- files


def read_tables(
    files: list[str],
    source: str,
    target: str | None,
    features: list[str] | None,
    missing: str,
    dtype: type,
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """``read_table`` over several files with the same columns, rows concatenated (float64)."""
    parts = [read_table(f, source, target, features, missing, dtype) for f in files]
    names = parts[0][2]
    for f, part in zip(files, parts, strict=True):
        if part[2] != names:
            raise DataError(f"{f}: its columns {part[2]} differ from {files[0]}'s {names}")
    X = np.concatenate([p[0] for p in parts]).astype(np.float64, copy=False)
    y = np.concatenate([p[1] for p in parts]).astype(np.float64, copy=False)
    return X, y, names, sum(p[3] for p in parts)


def read_table(
    path: str,
    source: str,
    target: str | None,
    features: list[str] | None,
    missing: str = "error",
    dtype: type = np.float64,
    require_target: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, list[str], int]:
    """Read a CSV or Parquet table into ``X (n, f)``, ``y (n,)`` (None if absent and not
    required), the feature names and the number of rows dropped for missing cells."""
    file = _check_file(path)
    columns = _read_header(file, source)
    features, has_target = _check_columns(file, columns, target, features, require_target)
    wanted = features + ([target] if has_target else [])
    frame = _read_frame(file, source, columns, wanted, dtype)
    values, dropped = _to_numeric(frame, wanted, file, source, missing, dtype)
    if values.shape[0] == 0:
        kind = "has a header but no data rows" if not dropped else "has no complete rows left"
        raise DataError(f"{file}: {kind}")
    X = values[:, : len(features)]  # views: the split's row selection copies anyway
    y = values[:, len(features)] if has_target else None
    return X, y, list(features), dropped


def _check_columns(
    file: Path,
    columns: list[str],
    target: str | None,
    features: list[str] | None,
    require_target: bool,
) -> tuple[list[str], bool]:
    """The feature columns to read (default: all but the target) and whether the target is
    there; duplicate or absent columns are located errors with a did-you-mean."""
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise DataError(f"{file}: duplicate column names: {', '.join(dupes)}")
    has_target = target is not None and target in columns
    if require_target and not has_target:
        raise DataError(f"{file}: target column {target!r} not found{_suggest(target, columns)}")
    if features is None:
        features = [c for c in columns if c != target]
        if not features:
            raise DataError(f"{file}: no feature columns besides the target {target!r}")
    for name in features:
        if name not in columns:
            raise DataError(f"{file}: feature column {name!r} not found{_suggest(name, columns)}")
    return list(features), has_target


def resolve_files(path: str, source: str) -> list[str]:
    """The files ``data.path`` names: a file, a folder (its .csv or .parquet files,
    recursively), a glob, or a URI (left to pyarrow)."""
    if "://" in path:
        return [path]
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"data.path {path!r}: the pattern matches no files")
        return files
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in DATA_SUFFIXES[source])
        if not files:
            raise DataError(f"data.path {path}: the folder holds no {source} files")
        return files
    if not p.exists():
        raise DataError(f"data file not found: {path}")
    return [str(p)]


def source_of(path: str | Path) -> str:
    """``parquet`` for ``.parquet``/``.pq`` files, else ``csv``."""
    return "parquet" if Path(path).suffix.lower() in (".parquet", ".pq") else "csv"


def iter_chunks(
    path: str | Path,
    features: list[str],
    target: str | None,
    chunk_rows: int = 100_000,
    require_target: bool = False,
):
    """Yield ``(frame, X, y or None)`` per chunk of CSV/Parquet input, in bounded memory.

    ``path`` is a file, a folder (its .csv/.parquet files) or a glob. ``frame`` holds the
    chunk's columns as read (for writing them back out); ``X`` the ``features`` in that
    order as float64; bad cells raise the same located ``DataError`` as training data,
    with line/row numbers counted from the top of their file.
    """
    files = input_files(str(path))
    for file in files:
        yield from _file_chunks(Path(file), features, target, chunk_rows, require_target)


def input_files(path: str) -> list[str]:
    """A file as it is; a folder or glob as its CSV and Parquet files, sorted."""
    if any(ch in path for ch in "*?[") or Path(path).is_dir():
        found = [f for src in DATA_SUFFIXES for f in _glob_source(path, src)]
        if not found:
            raise DataError(f"{path}: no .csv or .parquet files there")
        return sorted(found)
    return [path]


def _glob_source(path: str, source: str) -> list[str]:
    try:
        files = resolve_files(path, source)
    except DataError:
        return []
    return [f for f in files if source_of(f) == source]


def _file_chunks(file: Path, features, target, chunk_rows: int, require_target: bool):
    file = _check_file(str(file))
    source = source_of(file)
    columns = _read_header(file, source)
    features, has_target = _check_columns(file, columns, target, features, require_target)
    wanted = features + ([target] if has_target else [])
    offset = 0
    for frame in _frames(file, source, chunk_rows):
        frame.columns = [str(c).strip() for c in frame.columns]
        values, _ = _to_numeric(
            frame[wanted].copy(), wanted, file, source, "error", np.float64, offset
        )
        X = values[:, : len(features)]
        y = values[:, len(features)] if has_target else None
        offset += len(frame)
        yield frame, X, y
    if offset == 0:
        raise DataError(f"{file}: has a header but no data rows")


def _frames(file: Path, source: str, chunk_rows: int):
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
        return
    import pandas as pd

    try:
        yield from pd.read_csv(
            file, chunksize=chunk_rows, encoding="utf-8-sig", skipinitialspace=True, engine="c"
        )
    except pd.errors.ParserError as exc:
        raise DataError(f"{file}: malformed CSV: {exc}") from None


def _check_file(path: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise DataError(f"data file not found: {file}")
    if file.is_dir():
        raise DataError(f"data path is a directory, not a file: {file}")
    if file.stat().st_size == 0:
        raise DataError(f"{file}: file is empty")
    return file


def _read_header(file: Path, source: str) -> list[str]:
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(file).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            row = next(csv.reader(fh, skipinitialspace=True), None)
    except UnicodeDecodeError:
        raise DataError(f"{file}: not a UTF-8 text CSV file") from None
    if not row or all(not c.strip() for c in row):
        raise DataError(f"{file}: file is empty (no header row)")
    return [c.strip() for c in row]


def _read_frame(file: Path, source: str, columns: list[str], wanted: list[str], dtype: type):
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(file, columns=wanted).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
    import pandas as pd

    # The header as the csv module read it (quotes, spaces, BOM handled) replaces pandas'
    # own reading of it; data cells parse as numbers with or without spaces around them.
    options: dict[str, Any] = dict(encoding="utf-8-sig", engine="c", header=0, names=columns)
    if len(wanted) < len(columns):
        options["usecols"] = wanted
    try:  # fast path: parse straight to floats; a bad cell falls back to the slow diagnosis
        return pd.read_csv(file, dtype=dtype, **options)
    except ValueError:
        return pd.read_csv(file, dtype=str, skipinitialspace=True, **options)
    except pd.errors.ParserError as exc:
        raise DataError(f"{file}: malformed CSV: {exc}") from None


def _to_numeric(
    frame, wanted: list[str], file: Path, source: str, missing: str, dtype: type, offset: int = 0
):
    import pandas as pd

    def where(row: int) -> str:  # row: 0-based data row of this frame
        row += offset
        return f"line {row + 2}" if source == "csv" else f"row {row + 1}"

    for name in wanted:
        col = frame[name]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            as_num = pd.to_numeric(col, errors="coerce")
            bad = as_num.isna() & col.notna() & (col.astype(str).str.strip() != "")
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                value = col.iloc[row]
                raise DataError(
                    f"{file}: non-numeric value {value!r} in column {name!r} at {where(row)}"
                )
            frame[name] = as_num
    values = frame[wanted].to_numpy(dtype=dtype)
    finite = np.isfinite(values)
    if finite.all():
        return values, 0
    bad_rows = ~finite.all(axis=1)
    if missing == "drop":
        return values[~bad_rows], int(bad_rows.sum())
    row = int(np.flatnonzero(bad_rows)[0])
    col = wanted[int(np.flatnonzero(~finite[row])[0])]
    raise DataError(
        f"{file}: {int((~finite).sum())} missing or non-finite cells, the first in column "
        f"{col!r} at {where(row)}; fix them or set data.missing: drop"
    )


def _suggest(name: str | None, columns: list[str]) -> str:
    close = difflib.get_close_matches(name or "", columns, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; columns are: {', '.join(columns[:20])}"
