"""Tables: CSV and Parquet files, their columns, and their cells, read into memory.

The one header reader (``read_header``: quotes, spaces after commas, a BOM, CRLF) names
the columns for every path that reads a table: loading into memory, streaming,
``huberfit predict`` and ``huberfit eval``. Bad files raise ``DataError`` naming the file,
column and line. Readers (pandas, pyarrow) are imported lazily. numpy otherwise.
"""

from __future__ import annotations

import csv
import difflib
import glob
from pathlib import Path
from typing import Any

import numpy as np

from huberfit.errors import DataError

DATA_SUFFIXES = {"csv": (".csv",), "parquet": (".parquet", ".pq")}


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
    file = check_file(path)
    columns = read_header(file, source)
    features, has_target = check_columns(file, columns, target, features, require_target)
    wanted = features + ([target] if has_target else [])
    frame = _read_frame(file, source, columns, wanted, dtype)
    values, dropped = _to_numeric(frame, wanted, file, source, missing, dtype)
    if values.shape[0] == 0:
        kind = "has a header but no data rows" if not dropped else "has no complete rows left"
        raise DataError(f"{file}: {kind}")
    X = values[:, : len(features)]  # views: the split's row selection copies anyway
    y = values[:, len(features)] if has_target else None
    return X, y, list(features), dropped


def check_columns(
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
    text: bool = False,
):
    """Yield ``(frame, X, y or None)`` per chunk of CSV/Parquet input, in bounded memory.

    ``path`` is a file, a folder (its .csv/.parquet files) or a glob. ``frame`` holds the
    chunk's columns as read (for writing them back out); ``X`` the ``features`` in that
    order as float64; bad cells raise the same located ``DataError`` as training data,
    with line/row numbers counted from the top of their file. ``text``: the frame keeps
    every cell as it was (``huberfit predict`` writes them back): a CSV's cells as their
    text (``007`` stays ``007``, an empty cell stays empty), a Parquet file's columns with
    their Arrow types (integers with nulls stay integers); only ``X`` and ``y`` are numbers.
    """
    files = input_files(str(path))
    for file in files:
        yield from _file_chunks(Path(file), features, target, chunk_rows, require_target, text)


def input_files(path: str) -> list[str]:
    """A file as it is (``data[1].csv`` too); a folder or glob as its CSV and Parquet
    files, sorted."""
    if Path(path).is_file():
        return [path]
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


# The cells pandas reads as missing (its default ``na_values``): as text they are kept for
# the output, and read as NaN for the numbers, as in training data.
NA_TEXT = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
           "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]  # fmt: skip


def _file_chunks(
    file: Path, features, target, chunk_rows: int, require_target: bool, text: bool = False
):
    file = check_file(str(file))
    source = source_of(file)
    columns = read_header(file, source)
    features, has_target = check_columns(file, columns, target, features, require_target)
    wanted = features + ([target] if has_target else [])
    offset = 0
    for frame in _frames(file, source, columns, chunk_rows, text):
        if text and source == "parquet":  # an Arrow batch: its own types out, numbers in
            import pandas as pd
            import pyarrow as pa

            numeric = pa.Table.from_batches([frame]).select(wanted).to_pandas()
            frame = frame.to_pandas(types_mapper=pd.ArrowDtype)
        elif text:
            numeric = frame[wanted].replace(NA_TEXT, np.nan)
        else:
            numeric = frame[wanted].copy()
        values, _ = _to_numeric(numeric, wanted, file, source, "error", np.float64, offset)
        X = values[:, : len(features)]
        y = values[:, len(features)] if has_target else None
        offset += len(frame)
        yield frame, X, y
    if offset == 0:
        raise DataError(f"{file}: has a header but no data rows")


def _frames(file: Path, source: str, columns: list[str], chunk_rows: int, text: bool = False):
    """The file's rows in frames of ``chunk_rows``, named by ``read_header``'s columns
    (``text``: CSV cells as strings, Parquet as Arrow record batches)."""
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
                yield batch if text else batch.to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
        return
    import pandas as pd

    as_text: dict[str, Any] = dict(dtype=str, keep_default_na=False, na_filter=False)
    try:
        yield from pd.read_csv(
            file, chunksize=chunk_rows, encoding="utf-8-sig", skipinitialspace=True, engine="c",
            header=0, names=columns, **(as_text if text else {}),
        )  # fmt: skip
    except pd.errors.ParserError as exc:
        raise DataError(f"{file}: malformed CSV: {exc}") from None


def check_file(path: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise DataError(f"data file not found: {file}")
    if file.is_dir():
        raise DataError(f"data path is a directory, not a file: {file}")
    if file.stat().st_size == 0:
        raise DataError(f"{file}: file is empty")
    return file


def read_header(file: Path, source: str) -> list[str]:
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
