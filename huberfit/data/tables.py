"""Tables: CSV and Parquet files, their columns, and their cells, read into memory.

The one header reader (``read_header``: quotes, spaces after commas, a BOM, CRLF) names
the columns for every path that reads a table: loading into memory, streaming,
``huberfit predict`` and ``huberfit eval``. Bad files raise ``DataError`` naming the file,
column and line, worded here once for every reader (pandas, pyarrow). Readers (pandas, pyarrow) are imported lazily. numpy otherwise.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import difflib
import glob
import itertools
import warnings
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
    try:
        frame = _read_frame(file, source, columns, wanted, dtype)
        values, dropped = numeric_values(frame, wanted, file, source, missing, dtype)
    except _Float32Overflow:
        frame = _read_frame(file, source, columns, wanted, np.float64)
        values, dropped = numeric_values(frame, wanted, file, source, missing, np.float64)
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
    there; duplicate, unnamed or absent columns are located errors with a did-you-mean."""
    unnamed = [i + 1 for i, c in enumerate(columns) if not c]
    if unnamed and features is None:
        comma = " (a trailing comma?)" if unnamed[0] == len(columns) else ""
        raise DataError(
            f"{file}: column {unnamed[0]} of the header has no name{comma}; "
            "name it, or list the columns to use in data.features"
        )
    dupes = sorted({c for c in columns if c and columns.count(c) > 1})
    if dupes:
        raise DataError(f"{file}: duplicate column names: {', '.join(map(_show, dupes))}")
    has_target = target is not None and target in columns
    if require_target and not has_target:
        spans = next((c for c in columns if "\n" in c or "\r" in c), None)
        if spans is not None:  # (a header whose quote closes only further down the file)
            raise DataError(f"{file}: target column {target!r} not found; the header's quoted "
                            f"name {spans!r} runs over several lines: a quote left open?")  # fmt: skip
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
    if _is_pattern(path):
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
    """A file as it is (``data[1].csv`` too); a folder or glob as its CSV and Parquet files, sorted."""
    if _is_pattern(path) or Path(path).is_dir():
        found = [f for src in DATA_SUFFIXES for f in _glob_source(path, src)]
        if not found:
            raise DataError(f"{path}: no .csv or .parquet files there")
        return sorted(found)
    return [path]


def _is_pattern(path: str) -> bool:
    """A glob to expand: it has ``*?[`` and names no existing file or folder (an existing
    path is taken literally first: ``data[1].csv`` is that file)."""
    return any(ch in path for ch in "*?[") and not Path(path).exists()


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
    if source == "parquet":
        check_arrow_types(file, parquet_schema(file), wanted)
    offset = 0
    for frame in _frames(file, source, columns, chunk_rows, text):
        if not len(frame):
            continue
        if text and source == "parquet":  # an Arrow batch: its own types out, numbers in
            import pandas as pd
            import pyarrow as pa

            numeric = pa.Table.from_batches([frame]).select(wanted).to_pandas()
            frame = frame.to_pandas(types_mapper=pd.ArrowDtype)
        elif text:
            numeric = frame[wanted].replace(NA_TEXT, np.nan)
        else:
            numeric = frame[wanted].copy()
        values, _ = numeric_values(numeric, wanted, file, source, "error", np.float64, offset,
                                   "fix them or remove those rows")  # fmt: skip
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
            raise DataError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from None
        return
    import pandas as pd

    # strict UTF-8 here: predict writes every column back out
    as_text: dict[str, Any] = dict(dtype=str, keep_default_na=False, na_filter=False)
    try:
        with _strict(file, columns):
            reader = pd.read_csv(
                file, chunksize=chunk_rows, encoding="utf-8-sig", skipinitialspace=True,
                engine="c", header=0, names=reader_names(columns),
                skiprows=header_lines(file) - 1, index_col=False,
                **(as_text if text else {}),
            )  # fmt: skip
        for frame in _strict_iter(reader, file, columns):
            frame.columns = columns
            _check_short_rows(frame.iloc[:, -1], file, columns)
            yield frame
    except pd.errors.ParserError as exc:
        raise malformed(file, columns, exc) from None
    except UnicodeDecodeError:
        check_utf8(file)


def check_file(path: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise DataError(f"data file not found: {file}")
    if file.is_dir():
        raise DataError(f"data path is a directory, not a file: {file}")
    if not file.is_file():  # a pipe or a device: read more than once, so never "empty"
        raise DataError(f"{file}: not a regular file (a pipe or a device); huberfit reads a "
                        "data file more than once: save it to a file first")  # fmt: skip
    if file.stat().st_size == 0:
        raise DataError(f"{file}: file is empty")
    return file


def read_header(file: Path, source: str) -> list[str]:
    """The column names: the Parquet schema's, or the CSV's first non-blank row (quotes,
    spaces after commas, a BOM and CRLF handled; blank lines before it skipped)."""
    if source == "parquet":
        return list(parquet_schema(file).names)
    return _csv_header(file)[0]


def header_lines(file: Path) -> int:
    """The lines up to and including the CSV header (blank lines before it count)."""
    return _csv_header(file)[1]


def _csv_header(file: Path) -> tuple[list[str], int]:
    for line, end, row in _csv_spans(file, arrow=False, header=True):
        bad = next((c for c in row if undecodable(c)), None)
        if bad is not None:
            raise DataError(not_utf8(file, line, bad))
        with file.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            text = "".join(itertools.islice(fh, line - 1, end))
        cells = _header_cells(text)
        if len(cells) != len(row):  # a header the two readings disagree on: the module's
            cells = [c.strip() for c in row]
        if end > line and any("\n" in c or "\r" in c for c in row) and csv_row(file, 0) is None:
            raise DataError(unclosed_quote(file, line))  # the whole file in its quote
        return cells, line
    raise DataError(f"{file}: file is empty (no header row)")


def _header_cells(text: str) -> list[str]:
    """The header row's names from its text: an unquoted one without the spaces around it,
    a quoted one as quoted (``" a x "`` is `` a x ``, its spaces kept; ``""`` is a quote)
    with what follows its closing quote up to the comma appended, as the csv module does
    (less the spaces before the comma)."""
    cells, i, n = [], 0, len(text.rstrip("\r\n"))
    while True:
        while i < n and text[i] == " ":  # skipinitialspace
            i += 1
        name, quoted = "", i < n and text[i] == '"'
        if quoted:
            i += 1
            while i < n and not (text[i] == '"' and text[i + 1 : i + 2] != '"'):
                name += text[i]
                i += 2 if text[i] == '"' else 1  # a doubled quote is one
            i += 1
        comma = text.find(",", i, n)
        rest = text[i : n if comma < 0 else comma]
        cells.append(name + rest.rstrip() if quoted else rest.strip())
        if comma < 0:
            return cells
        i = comma + 1


def header_line(columns: list[str]) -> str:
    """The CSV header ``read_header`` reads back as ``columns``: names with a comma, a
    quote, a line break or spaces at either end quoted (pandas' ``to_csv`` leaves the
    spaces bare, and they would be read back without them)."""
    special = (",", '"', "\n", "\r")
    quote = lambda c: c != c.strip() or any(ch in c for ch in special)  # noqa: E731
    return ",".join(f'"{c.replace(chr(34), 2 * chr(34))}"' if quote(c) else c for c in columns)


def _csv_rows(file: Path, arrow: bool, header: bool = False):
    """``(line, cells)`` per CSV row after the header (or of the header itself), ``line``
    being the 1-based line where the row starts (``_csv_spans``)."""
    for start, _, row in _csv_spans(file, arrow, header):
        yield start, row


def _csv_spans(file: Path, arrow: bool, header: bool = False):
    """``(first line, last line, cells)`` per CSV row after the header (or of the header
    itself), lines 1-based (a quoted cell may hold line breaks). Blank rows are skipped as
    the readers skip them: pandas skips empty and whitespace-only lines, pyarrow only empty
    ones once past the header. Bytes that are not UTF-8 come through as surrogates."""
    try:
        with file.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            end, rows = 0, 0
            for row in reader:
                start, end = end + 1, reader.line_num
                spaces = len(row) == 1 and not row[0].strip()
                if not row or (spaces and not (arrow and rows)):
                    continue
                rows += 1
                if header or rows > 1:
                    yield start, end, row
                    if header:
                        return
    except csv.Error as exc:  # a NUL byte, a field over the csv module's limit
        raise DataError(f"{file}: malformed CSV at line {end + 1} ({exc})") from None


def csv_row(file: Path, data_row: int, arrow: bool = False) -> tuple[int, list[str]] | None:
    """The line and cells of data row ``data_row`` (0-based, as the reader counted it:
    ``arrow`` for pyarrow's way of skipping blank lines, else pandas'); None if absent."""
    for k, (line, row) in enumerate(_csv_rows(file, arrow)):
        if k == data_row:
            return line, row
    return None


def check_ragged(file: Path, n_columns: int, arrow: bool = False) -> None:
    """A located error for the first row whose cell count is not the header's: a quote
    left open (the row runs on over the next lines) or a ragged row."""
    rows = _csv_spans(file, arrow)
    for line, end, row in rows:
        if len(row) == n_columns:
            continue
        if end > line and any("\n" in c or "\r" in c for c in row):
            raise DataError(unclosed_quote(file, line, end if next(rows, None) else None))
        raise DataError(
            f"{file}: line {line} has {len(row)} cells where the header has {n_columns}"
        )


def unclosed_quote(file: Path | str, line: int, until: int | None = None) -> str:
    """A quote opened on ``line`` that closes only on line ``until`` (None: never)."""
    if until is None:
        return f"{file}: line {line} opens a quoted cell that never closes"
    return (f"{file}: line {line} opens a quoted cell that does not close on that line (it "
            f"runs on to line {until})")  # fmt: skip


@contextlib.contextmanager
def _strict(file: Path, columns: list[str]):
    """pandas only warns when rows have more cells than the header (and drops them):
    a ragged row, located."""
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            yield
        except pd.errors.ParserWarning:
            check_ragged(file, len(columns))
            raise DataError(f"{file}: rows have more cells than the header") from None


def _strict_iter(chunks, file: Path, columns: list[str]):
    while True:
        with _strict(file, columns):
            frame = next(chunks, None)
        if frame is None:
            return
        yield frame


def malformed(file: Path, columns: list[str], exc: Exception) -> DataError:
    """pandas' tokenizer error, located: a ragged row, a quote never closed, or its words."""
    check_ragged(file, len(columns))
    if "EOF inside string" in str(exc):  # the quote runs to the end: the last row has it
        last = collections.deque(_csv_rows(file, arrow=False), maxlen=1)
        if last:
            return DataError(unclosed_quote(file, last[0][0]))
    words = _first_line(exc).removeprefix("Error tokenizing data. C error: ")
    return DataError(f"{file}: malformed CSV ({words})")


def check_utf8(file: Path) -> None:
    """A located error for the first line that is not UTF-8 text."""
    with file.open("rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = raw[exc.start : exc.start + 1].decode("latin-1")
                raise DataError(not_utf8(file, line, byte)) from None
    raise DataError(f"{file}: not UTF-8 text; save it as UTF-8")


def undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def not_utf8(file: Path, line: int | None, cell: str, column: str | None = None) -> str:
    """Where a byte that is not UTF-8 sits (``cell`` holds it as a surrogate or as itself)."""
    ch = next((c for c in cell if undecodable(c)), cell[:1])
    byte = ord(ch) - 0xDC00 if undecodable(ch) else ord(ch)
    where = f" in column {column!r}" if column is not None else ""
    return (
        f"{file}: {f'line {line}' if line else 'a line'} is not UTF-8 text (byte 0x{byte:02X}{where}); "
        "save the file as UTF-8"
    )


def reader_names(columns: list[str]) -> list[str]:
    """``columns`` with unnamed ones (a trailing comma in the header) given distinct
    placeholder names, as the readers need distinct names."""
    return [c if c else f"\x00unnamed {i + 1}" for i, c in enumerate(columns)]


# Parquet column types read as numbers: numbers, booleans (0/1), decimals, and strings
# that parse as numbers (as CSV cells do); dictionary-encoded columns by their values.
_ARROW_KINDS = ("is_integer", "is_floating", "is_boolean", "is_decimal", "is_string",
                "is_large_string", "is_null")  # fmt: skip


def parquet_schema(file: Path) -> Any:
    """The Parquet file's schema, or a located error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from None


def check_arrow_types(file: Path | str, schema: Any, columns: list[str]) -> None:
    """A located error for the first of ``columns`` whose type cannot hold numbers
    (lists, structs, dates, timestamps, binary ...), in memory and streamed alike."""
    import pyarrow.types as pat

    for name in columns:
        t = schema.field(name).type
        value = t.value_type if pat.is_dictionary(t) else t
        if not any(getattr(pat, kind)(value) for kind in _ARROW_KINDS):
            raise DataError(f"{file}: column {name!r} holds {t} values, not numbers")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _read_frame(file: Path, source: str, columns: list[str], wanted: list[str], dtype: type):
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        check_arrow_types(file, parquet_schema(file), wanted)
        try:
            return pq.read_table(file, columns=wanted).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from None
    import pandas as pd

    # The header as the csv module read it (quotes, spaces, BOM handled) replaces pandas'
    # own reading of it; data cells parse as numbers with or without spaces around them.
    # Bytes that are not UTF-8 pass as surrogates: only the columns used must be text.
    names = reader_names(columns)
    # index_col=False: rows with one cell more than the header are ragged, not an index
    options: dict[str, Any] = dict(
        encoding="utf-8-sig", encoding_errors="surrogateescape", engine="c", header=0,
        names=names, skiprows=header_lines(file) - 1, index_col=False,
    )  # fmt: skip
    if len(wanted) < len(columns):  # and the last column: a short row leaves it empty
        options["usecols"] = list(dict.fromkeys([*wanted, names[-1]]))
    try:  # fast path: parse straight to floats; a bad cell falls back to the slow diagnosis
        with np.errstate(over="ignore"), _strict(file, columns):  # float32: numeric_values
            frame = pd.read_csv(file, dtype=dtype, **options)
    except pd.errors.ParserError as exc:
        raise malformed(file, columns, exc) from None
    except ValueError:
        try:
            with _strict(file, columns):
                frame = pd.read_csv(file, dtype=object, skipinitialspace=True, **options)
        except pd.errors.ParserError as exc:
            raise malformed(file, columns, exc) from None
    _check_short_rows(frame[names[-1]], file, columns)
    return frame


def _check_short_rows(last, file: Path, columns: list[str]) -> None:
    """pandas fills a row with too few cells with missing ones, so a missing cell in the
    last column may be a short row (an unnamed column of trailing commas is empty
    throughout: that one is not)."""
    missing = last.isna()
    if missing.any() and not (columns[-1] == "" and missing.all()):
        check_ragged(file, len(columns))


class _Float32Overflow(Exception):
    """Cells parsed as float32 overflowed: read them again as float64."""


def numeric_values(
    frame: Any, wanted: list[str], file: Path, source: str, missing: str, dtype: type,
    offset: int = 0, advice: str = "fix them or set data.missing: drop",
) -> tuple[np.ndarray, int]:  # fmt: skip
    """The ``wanted`` columns of ``frame`` as a ``dtype`` array and the rows dropped.
    Cells that are not numbers are located errors (file, column, line or row counted from
    the top of the file: ``offset`` rows come before the frame); missing or non-finite
    cells are errors, dropped rows (``missing='drop'``) or left for the caller (``keep``)."""
    import pandas as pd

    def line(row: int) -> int | None:  # row: 0-based data row of this frame
        found = csv_row(file, row + offset) if source == "csv" else None
        return found[0] if found else None

    def where(row: int) -> str:
        if source != "csv":
            return f"row {row + offset + 1}"
        at = line(row)
        return f"line {at}" if at else f"data row {row + offset + 1}"

    for name in wanted:
        col = frame[name]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            as_num = pd.to_numeric(col, errors="coerce")
            for row in np.flatnonzero((as_num.isna() & col.notna()).to_numpy()):
                value = col.iloc[row]
                if isinstance(value, str) and not value.strip():
                    continue  # an empty cell: missing, not bad
                if isinstance(value, str) and undecodable(value):
                    raise DataError(not_utf8(file, line(int(row)), value, name))
                raise DataError(
                    f"{file}: non-numeric value {value!r} in column {name!r} at {where(int(row))}"
                )
            frame[name] = as_num
    with np.errstate(over="ignore", invalid="ignore"):
        values = frame[wanted].to_numpy(dtype=dtype)
    finite = np.isfinite(values)
    if finite.all() or missing == "keep":  # keep: the caller checks (streaming)
        return values, 0
    if dtype == np.float32 and np.isinf(values).any():
        # values beyond float32's range: statistics are float64 and the standardized
        # values fit, so read them as float64 (a CSV parsed to float32 is read again)
        if any(frame[c].dtype == np.float32 for c in wanted):
            raise _Float32Overflow
        return numeric_values(frame, wanted, file, source, missing, np.float64, offset, advice)
    if source == "csv":  # a short row reads as missing cells: say what it is
        check_ragged(file, len(read_header(file, source)))
    bad_rows = ~finite.all(axis=1)
    if missing == "drop":
        return values[~bad_rows], int(bad_rows.sum())
    row = int(np.flatnonzero(bad_rows)[0])
    col, bad = wanted[int(np.flatnonzero(~finite[row])[0])], int((~finite).sum())
    raise DataError(
        f"{file}: {bad} missing or non-finite cell{'s' * (bad != 1)}, the first in column "
        f"{col!r} at {where(row)}; {advice}"
    )


def _suggest(name: str | None, columns: list[str]) -> str:
    close = difflib.get_close_matches(name or "", columns, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; columns are: {', '.join(map(_show, columns[:20]))}"


def _show(name: str) -> str:
    """A column name as typed, or quoted when it holds line breaks or other controls."""
    return name if name.isprintable() else repr(name)
