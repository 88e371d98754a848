"""Hostile but fair data files: each ends in one located error (the same words in memory,
streamed, and in predict/eval where they read it too), or simply works."""

from __future__ import annotations

import datetime
import os
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from huberfit.cli import app
from huberfit.config import DataConfig, load_config
from huberfit.data.dataset import load_data
from huberfit.data.split import in_validation, row_hash
from huberfit.data.stream import scan
from huberfit.errors import ConfigError, DataError

PATHS = ["memory", "streamed"]


def _frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    X = np.random.default_rng(seed).normal(size=(n, 2))
    return pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": X @ [1.0, 2.0] + 0.5})


def _csv_lines(n: int = 40) -> list[str]:
    return _frame(n).to_csv(index=False, float_format="%.17g").splitlines()


def _load(path, how: str, dtype: str = "float64", **data):
    source = "parquet" if str(path).endswith(".parquet") else "csv"
    cfg = DataConfig(source=source, path=str(path), target="y",
                     streaming=how == "streamed", **data)  # fmt: skip
    return load_data(cfg, seed=0, dtype=dtype)


def _error(path, how: str, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy/pandas warnings reach the terminal
        with pytest.raises(DataError) as info:
            _load(path, how, **kw)
    message = str(info.value)
    assert "\n" not in message and "Arrow" not in message and "Row #" not in message
    return message


# ----------------------------------------------------------------- ragged rows


@pytest.mark.parametrize("how", PATHS)
@pytest.mark.parametrize("cells", [4, 2])
def test_ragged_row_names_file_line_and_counts(tmp_path, how, cells):
    lines = _csv_lines()
    cells_of_row = lines[5].split(",")
    lines[5] = ",".join(cells_of_row + ["7"] if cells == 4 else cells_of_row[:2])
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(lines) + "\n")
    message = _error(path, how)
    assert message == f"{path}: line 6 has {cells} cells where the header has 3"


@pytest.mark.parametrize("how", PATHS)
def test_one_cell_more_on_every_row_is_ragged_not_an_index(tmp_path, how):
    """pandas took the extra first cell of every row as the index: the columns shifted
    and training went on, silently, on the wrong columns."""
    path = tmp_path / "shifted.csv"
    path.write_text("a,y\n" + "".join(f"{i},{2 * i},{3 * i}\n" for i in range(10)))
    assert _error(path, how) == f"{path}: line 2 has 3 cells where the header has 2"


def test_ragged_row_is_one_line_in_train_predict_and_eval(tmp_path, runner):
    good = tmp_path / "good.csv"
    good.write_text("\n".join(_csv_lines()) + "\n")
    bad = tmp_path / "bad.csv"
    lines = _csv_lines()
    lines[3] += ",9"
    bad.write_text("\n".join(lines) + "\n")
    common = ["--runs-dir", str(tmp_path / "runs"), "-q", "data.source=csv", "data.target=y",
              "train.epochs=1", "output.tensorboard=false", "output.images=false"]  # fmt: skip
    r = runner.invoke(app, ["train", *common, f"data.path={bad}", "data.streaming=false"])
    assert (
        r.exit_code == 1
        and r.output == f"error: {bad}: line 4 has 4 cells where the header has 3\n"
    )
    r = runner.invoke(app, ["train", *common, f"data.path={good}"])
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    for command in (["predict", "-o", str(tmp_path / "p.csv")], ["eval"]):
        r = runner.invoke(app, [command[0], "--run", str(run), "--input", str(bad), *command[1:]])
        assert r.exit_code == 1 and "line 4 has 4 cells where the header has 3" in r.output
        assert r.output.count("\n") == 1
    assert not (tmp_path / "p.csv").exists()
    # eval of a target that is one of the model's features: one line, no traceback
    r = runner.invoke(app, ["eval", "--run", str(run), "--input", str(good), "--target", "a"])
    assert r.exit_code == 1 and r.output == (
        "error: --target 'a' is one of the model's features ('a', 'b'); name the column "
        "that holds the target\n"
    )


# ----------------------------------------------------------------- encodings


@pytest.mark.parametrize("how", PATHS)
def test_latin1_cell_in_a_used_column_is_located(tmp_path, how):
    lines = _csv_lines(3000)  # the bad byte far past the first read block
    lines[2500] = "caf\xe9," + lines[2500].split(",", 1)[1]
    path = tmp_path / "latin1.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    message = _error(path, how)
    assert message == (
        f"{path}: line 2501 is not UTF-8 text (byte 0xE9 in column 'a'); save the file as UTF-8"
    )


@pytest.mark.parametrize("how", PATHS)
def test_latin1_in_an_unused_column_reads_alike(tmp_path, how):
    frame = _frame().assign(city="Orl\xe9ans")
    path = tmp_path / "latin1.csv"
    path.write_bytes(frame.to_csv(index=False, float_format="%.17g").encode("latin-1"))
    data = _load(path, how, features=["a", "b"])
    assert data.n_rows == 40 and data.feature_names == ["a", "b"]


# ----------------------------------------------------------------- Parquet column types

ODD_COLUMNS = {
    "list": (pa.array([[1.0]] * 40), "holds list<element: double> values, not numbers"),
    "struct": (pa.array([{"x": 1.0}] * 40), "holds struct<x: double> values, not numbers"),
    "date": (pa.array([datetime.date(2020, 1, 1)] * 40), "holds date32[day] values, not numbers"),
    "dictionary": (
        pa.array(["u", "v"] * 20).dictionary_encode(),
        "non-numeric value 'u' in column 'odd' at row 1",
    ),
}


@pytest.mark.parametrize("how", PATHS)
@pytest.mark.parametrize("kind", list(ODD_COLUMNS))
def test_parquet_columns_that_are_not_numbers(tmp_path, how, kind):
    column, expected = ODD_COLUMNS[kind]
    path = tmp_path / f"{kind}.parquet"
    pq.write_table(pa.Table.from_pandas(_frame()).append_column("odd", column), path)
    message = _error(path, how)
    assert message.startswith(f"{path}: ") and expected in message
    if kind != "dictionary":
        assert "column 'odd'" in message


@pytest.mark.parametrize("how", PATHS)
def test_dictionary_encoded_numbers_and_numeric_strings_just_work(tmp_path, how):
    frame = _frame()
    plain, coded = tmp_path / "plain.parquet", tmp_path / "coded.parquet"
    frame.to_parquet(plain)
    table = pa.table({"a": pa.array(frame.a).dictionary_encode(),
                      "b": pa.array([repr(v) for v in frame.b]), "y": frame.y})  # fmt: skip
    pq.write_table(table, coded)
    a, b = _load(plain, how), _load(coded, how)
    assert a.X_train.equal(b.X_train) and a.y_train.equal(b.y_train)


# ----------------------------------------------------------------- overflow


@pytest.mark.parametrize("how", PATHS)
def test_values_near_float64_max_name_the_column(tmp_path, how):
    frame = _frame()
    frame["a"] = np.clip(frame["a"], -1, 1) * 1.7e308  # finite, but the variance is not
    path = tmp_path / "huge.csv"
    frame.to_csv(path, index=False, float_format="%.17g")
    for dtype in ("float32", "float64"):
        message = _error(path, how, dtype=dtype)
        assert message == (
            f"{path}: column 'a' is too large to standardize: its variance overflows "
            "float64; rescale the column (divide it by a power of ten)"
        )


@pytest.mark.parametrize("how", PATHS)
def test_values_beyond_float32(tmp_path, how):
    frame = _frame()
    frame["a"] *= 1e39
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False, float_format="%.17g")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = _load(path, how, dtype="float32")  # standardized, they fit float32
    assert data.X_train.isfinite().all() and data.scaling.x_scale[0] > 1e38
    message = _error(path, how, dtype="float32", standardize=False)
    assert message.startswith(f"{path}: column 'a' reaches ")
    assert message.endswith(
        "beyond float32's range (3.4e+38); set data.standardize: true, dtype: float64, or "
        "rescale the column"
    )
    assert _load(path, how, dtype="float64", standardize=False).X_train.isfinite().all()


@pytest.mark.parametrize("how", PATHS)
def test_unscaled_values_whose_squares_overflow(tmp_path, how):
    """data.standardize: false on values near 1e300: the loss overflowed, and training
    hung in memory (over 10 minutes) or was called divergence with lr advice."""
    frame = _frame()
    frame["a"] *= 1e300
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False, float_format="%.17g")
    message = _error(path, how, standardize=False)
    assert message.startswith(f"{path}: column 'a' reaches ")
    assert message.endswith(
        "unscaled: its squares summed over 40 rows overflow float64; set data.standardize: "
        "true, or rescale the column"
    )


# ----------------------------------------------------------------- data.features


@pytest.mark.parametrize(
    "features, expected",
    [("[]", "data.features is empty"), ("[a,b,a]", "data.features lists 'a' more than once"),
     ("[a,y]", "data.features includes the target 'y'")],
)  # fmt: skip
def test_feature_lists_that_cannot_be_meant(features, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(None, ["data.source=csv", "data.path=x.csv", "data.target=y",
                           f"data.features={features}"])  # fmt: skip
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------- wrongly reported


@pytest.mark.parametrize("how", PATHS)
def test_blank_lines_before_the_header_and_between_rows(tmp_path, how):
    lines = _csv_lines()
    path = tmp_path / "blank.csv"
    path.write_text("\n\n" + "\n".join(lines[:10] + [""] + lines[10:]) + "\n")
    assert _load(path, how).n_rows == 40
    lines[20] = "1.0,oops,2.0"  # file line 2 + 1 + 20 + 1 (blank) = 24
    path.write_text("\n\n" + "\n".join(lines[:10] + [""] + lines[10:]) + "\n")
    assert _error(path, how) == f"{path}: non-numeric value 'oops' in column 'b' at line 24"


@pytest.mark.parametrize("how", PATHS)
def test_an_existing_path_with_glob_characters_is_taken_literally(tmp_path, how):
    folder = tmp_path / "exp[1]"
    folder.mkdir()
    _frame().to_csv(folder / "d[2].csv", index=False)
    assert _load(folder / "d[2].csv", how).n_rows == 40
    assert _load(folder, how).n_rows == 40


def _rows_with_validation(n: int, val_fraction: float) -> int:
    val = in_validation(np.arange(n), 0, val_fraction)
    if not val.any():
        val[np.argmin(row_hash(np.arange(n), 0))] = True
    return int(val.sum())


@pytest.mark.parametrize("how", PATHS)
def test_too_few_rows_says_how_many_go_where(tmp_path, how):
    path = tmp_path / "three.csv"
    path.write_text("a,y\n1,2\n2,3\n3,5\n")
    n_val = _rows_with_validation(3, 0.9)
    assert n_val >= 2  # so that fewer than 2 are left to train on
    assert _error(path, how, val_fraction=0.9) == (
        f"{path}: of 3 rows, data.val_fraction=0.9 puts {n_val} in validation and leaves "
        f"{3 - n_val} to train on; training needs at least 2: add rows or lower data.val_fraction"
    )


# ----------------------------------------------------------------- siblings


@pytest.mark.parametrize("how", PATHS)
@pytest.mark.parametrize(
    "name, expected",
    [("empty.csv", "file is empty"), ("header.csv", "has a header but no data rows"),
     ("none.parquet", "has a header but no data rows"),
     ("unnamed.csv", "column 4 of the header has no name (a trailing comma?); name it, or list "
                     "the columns to use in data.features")],
)  # fmt: skip
def test_files_without_rows_or_names(tmp_path, how, name, expected):
    path = tmp_path / name
    if name == "none.parquet":
        pq.write_table(pa.Table.from_pandas(_frame()).schema.empty_table(), path)
    else:
        text = {"empty.csv": "", "header.csv": "a,b,y\n"}.get(name)
        path.write_text(text if text is not None else "a,b,y,\n1,2,3,\n4,5,7,\n6,8,9,\n")
    assert _error(path, how) == f"{path}: {expected}"


def test_unnamed_columns_are_fine_when_unused(tmp_path):
    path = tmp_path / "unnamed.csv"
    path.write_text("a,b,y,\n" + "".join(f"{i},{i * i % 7},{2 * i},\n" for i in range(20)))
    for how in PATHS:
        assert _load(path, how, features=["a", "b"]).n_rows == 20


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_a_file_gone_or_changed_after_the_scan(tmp_path, source):
    path = tmp_path / f"d.{source}"
    write = {"csv": lambda f: f.to_csv(path, index=False), "parquet": lambda f: f.to_parquet(path)}
    write[source](_frame())
    info = scan(str(path), source, "y", None, 0, 0.2, True, True)
    write[source](_frame(seed=1))
    os.utime(path, ns=(1, 1))  # the same size: the stamp tells
    with pytest.raises(DataError, match=r"d\.\w+: the file has changed since the scan"):
        list(info.rows(info.pieces, "train"))
    path.unlink()
    with pytest.raises(DataError, match=r"d\.\w+: the file is gone since the scan"):
        list(info.rows(info.pieces, "train"))


@pytest.mark.parametrize("how", PATHS)
def test_a_constant_column_has_zero_variance_whatever_its_value(tmp_path, how):
    """0.1 repeated: numpy's row-by-row mean is off by ~n ulps, which used to pass for a
    spread of 4e-16, blow the column up to exactly -1 and its coefficient to ~1e17."""
    path = tmp_path / "constant.csv"
    path.write_text("a,c,y\n" + "".join(f"{i},0.1,{2 * i}\n" for i in range(1000)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = _load(path, how)
    assert data.scaling.x_mean[1] == 0.1 and data.scaling.x_scale[1] == 1.0
    assert (data.X_train[:, 1] == 0).all()
    assert data.notes == [
        "feature 'c' has zero variance in the training rows; left unscaled, coefficient 0"
    ]
    assert data.constant == [1]


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_a_constant_feature_gets_coefficient_zero_and_no_garbled_errors(tmp_path, optimizer):
    """Standardized, a constant column is 0 and its weight gets no gradient: it kept its
    random initial value (reported as 33.5 here, the intercept making up for it) and the
    standard errors took the square root of a negative rounding."""
    from huberfit.experiment import train_run
    from huberfit.sinks import ConsoleSink

    path = tmp_path / "constant.csv"
    path.write_text("a,c,y\n" + "".join(f"{i},0.1,{2 * i + 1}\n" for i in range(200)))
    cfg = load_config(None, ["data.source=csv", f"data.path={path}", "data.target=y",
                             f"optimizer.name={optimizer}", "train.epochs=3", "dtype=float64",
                             "output.tensorboard=false", "output.images=false"])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        metrics = train_run(cfg, ConsoleSink(1, quiet=True), runs_dir=str(tmp_path)).metrics
    assert metrics["coefficients"]["c"] == 0.0
    assert metrics["standard_errors"] is None
    assert metrics["standard_error_note"].startswith("not defined: the design is singular")


@pytest.mark.parametrize("how", PATHS)
def test_a_quote_that_never_closes(tmp_path, how):
    path = tmp_path / "quote.csv"
    path.write_text('a,b,y\n1,2,3\n4,5,6\n7,8,"9\n')
    assert _error(path, how) == f"{path}: line 4 opens a quoted cell that never closes"


@pytest.mark.parametrize("how", PATHS)
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ('1,2,3\n"4,5,6\n7,8,9\n10,11,12\n', "line 3 opens a quoted cell that never closes"),
        ('1,2,3\n"4,5,6\n7,8,9\n10,"11",12\n13,14,15\n',
         "line 3 opens a quoted cell that does not close on that line (it runs on to line 5)"),
    ],
)  # fmt: skip
def test_a_quote_left_open_mid_file_is_named_where_it_opens(tmp_path, how, rows, expected):
    """It was called a ragged row: the open quote swallows the next lines into one cell."""
    path = tmp_path / "quote.csv"
    path.write_text("a,b,y\n" + rows)
    assert _error(path, how) == f"{path}: {expected}"
    path.write_text('"a,b,y\n' + rows)  # in the header: the file (or lines of it) in a name
    assert _error(path, how).endswith("runs over several lines: a quote left open?")
    path.write_text('"a,b,y\n1,2,3\n')  # and no quote after it: no data rows either
    assert _error(path, how) == f"{path}: line 1 opens a quoted cell that never closes"


def test_quoted_names_keep_their_spaces_in_training_predict_and_eval(tmp_path, runner):
    """``" a x "`` is the name `` a x `` (quoted: the spaces are part of it), in memory and
    streamed; predict writes it back quoted, so its output reads back with the same names;
    a quote left open in predict's and eval's input is named as in training."""
    from huberfit.data.tables import read_header

    data = tmp_path / "spaced.csv"
    data.write_text('" a x ", b ,"c,d",y\n' + "".join(f"{i},{i % 3},{i % 5},{i % 7}\n"
                                                   for i in range(30)))  # fmt: skip
    names = [" a x ", "b", "c,d"]
    assert _load(data, "memory").feature_names == _load(data, "streamed").feature_names == names
    common = ["--runs-dir", str(tmp_path / "runs"), "-q", "data.source=csv", "data.target=y",
              f"data.path={data}", "train.epochs=1", "output.tensorboard=false",
              "output.images=false"]  # fmt: skip
    assert runner.invoke(app, ["train", *common]).exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    out = tmp_path / "out.csv"
    r = runner.invoke(app, ["predict", "--run", str(run), "--input", str(data), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert read_header(out, "csv") == [*names, "y", "prediction"]
    assert out.read_text().splitlines()[0] == '" a x ",b,"c,d",y,prediction'
    bad = tmp_path / "open.csv"
    bad.write_text('" a x ", b ,"c,d",y\n1,2,3,4\n"5,6,7,8\n9,1,2,3\n')
    for command in (["predict", "-o", str(tmp_path / "p.csv")], ["eval"]):
        r = runner.invoke(app, [command[0], "--run", str(run), "--input", str(bad), *command[1:]])
        assert r.exit_code == 1, r.output
        assert r.output == f"error: {bad}: line 3 opens a quoted cell that never closes\n"
