"""Data: synthetic reproducibility and outlier counts, CSV/Parquet reading (real-world CSV
quirks), every bad file's one-line error, the split and standardization."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from huberfit.cli import app
from huberfit.config import DataConfig
from huberfit.data.dataset import load_data as load_dataset
from huberfit.data.scaling import fit_scaling
from huberfit.data.synthetic import make_synthetic
from huberfit.data.tables import read_table
from huberfit.errors import DataError


def test_synthetic_is_bit_identical_and_has_exact_outlier_count():
    cfg = DataConfig(n_samples=1001, n_features=4, outlier_fraction=0.137)
    X1, y1, w1, b1, m1 = make_synthetic(cfg, seed=7)
    X2, y2, w2, b2, m2 = make_synthetic(cfg, seed=7)
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2) and w1 == w2 and b1 == b2
    assert m1.sum() == round(0.137 * 1001)
    X3, *_ = make_synthetic(cfg, seed=8)
    assert not np.array_equal(X1, X3)


def test_synthetic_follows_the_model_off_the_outliers():
    cfg = DataConfig(n_samples=5000, n_features=2, true_weights=[2.0, -1.0], true_bias=0.5,
                     noise_std=0.1, outlier_fraction=0.1, outlier_scale=20.0)  # fmt: skip
    X, y, w, b, mask = make_synthetic(cfg, seed=0)
    resid = y - (X @ np.array(w) + b)
    assert w == [2.0, -1.0] and b == 0.5
    assert abs(resid[~mask].std() - 0.1) < 0.01
    assert np.all(np.abs(resid[mask]) > 5)
    assert 0.3 < (resid[mask] > 0).mean() < 0.7  # random sign


def test_dataset_tensors_contiguous_dtype_cpu():
    ds = load_dataset(DataConfig(), seed=0, dtype="float64")
    for t in (ds.X_train, ds.y_train, ds.X_val, ds.y_val):
        assert t.is_contiguous() and t.dtype == torch.float64 and t.device.type == "cpu"
    assert ds.X_train.shape[0] + ds.X_val.shape[0] == 2000
    assert 340 < ds.X_val.shape[0] < 460  # about 20%: each row by a seeded hash
    assert ds.y_train.shape == (ds.X_train.shape[0], 1)


def test_split_is_seeded_and_zero_val_allowed():
    a = load_dataset(DataConfig(), seed=1)
    b = load_dataset(DataConfig(), seed=1)
    assert torch.equal(a.X_val, b.X_val)
    c = load_dataset(DataConfig(val_fraction=0.0), seed=1)
    assert c.X_val is None and c.X_train.shape[0] == 2000


def test_standardization_statistics_from_train_split_only():
    ds = load_dataset(DataConfig(), seed=0, dtype="float64")
    assert torch.allclose(ds.X_train.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ds.X_train.std(0, unbiased=False), torch.ones(3, dtype=torch.float64))
    assert abs(float(ds.X_val.mean())) > 1e-6  # the validation rows were not used


def test_zero_variance_feature_is_left_unscaled_with_a_warning(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b,y\n" + "".join(f"{i},5,{2 * i}\n" for i in range(20)))
    ds = load_dataset(DataConfig(source="csv", path=str(f), target="y"), seed=0)
    assert ds.scaling.x_scale[1] == 1.0
    assert any("'b' has zero variance" in n for n in ds.notes)
    assert torch.isfinite(ds.X_train).all()


def test_scaling_maps_coefficients_back():
    rng = np.random.default_rng(0)
    X = rng.normal(3, 2, size=(100, 2))
    y = X @ [1.5, -2.0] + 4.0
    s, _ = fit_scaling(X, y, True)
    Xs, ys = s.apply_x(X), (y - s.y_mean) / s.y_scale
    ws, *_ = np.linalg.lstsq(np.c_[Xs, np.ones(100)], ys, rcond=None)
    w, b = s.to_original(list(ws[:2]), ws[2])
    assert np.allclose(w, [1.5, -2.0]) and np.isclose(b, 4.0)


def _csv(tmp_path, text, name="d.csv", mode="w"):
    f = tmp_path / name
    if mode == "wb":
        f.write_bytes(text)
    else:
        f.write_text(text)
    return str(f)


def test_real_world_csv_quirks(tmp_path):
    text = '\ufeff"x 1", "x2",y\r\n1, 2, 3\r\n4, 5, 6.5\r\n7,8,9\r\n'.encode()
    X, y, names, _ = read_table(_csv(tmp_path, text, mode="wb"), "csv", "y", None)
    assert names == ["x 1", "x2"]
    assert X.tolist() == [[1, 2], [4, 5], [7, 8]] and y.tolist() == [3, 6.5, 9]


def test_parquet_and_csv_agree(tmp_path):
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.5, 0.25, 0.125], "t": [1.0, 0.0, 1.0]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    a = read_table(str(tmp_path / "d.csv"), "csv", "t", ["b", "a"])
    b = read_table(str(tmp_path / "d.parquet"), "parquet", "t", ["b", "a"])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == ["b", "a"]


BAD_FILES = [
    ("missing", None, "data file not found"),
    ("dir", None, "is a directory"),
    ("empty", "", "file is empty"),
    ("header only", "x,y\n", "has a header but no data rows"),
    ("no target", "x,yy\n1,2\n", r"target column 'y' not found \(did you mean 'yy'\?\)"),
    ("dupes", "x,x,y\n1,2,3\n", "duplicate column names: x"),
    ("non-numeric", "x,y\n1,2\n3,4\nabc,5\n", r"non-numeric value 'abc' in column 'x' at line 4"),
    (
        "nan",
        "x,y\n1,2\n3,\n5,nan\n",
        r"2 missing or non-finite cells, the first in column 'y' at line 3",
    ),
    (
        "inf",
        "x,y\n1,2\ninf,4\n",
        r"1 missing or non-finite cell, the first in column 'x' at line 3",
    ),
]


@pytest.mark.parametrize("case, text, expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_csv_files(tmp_path, case, text, expected):
    path = str(tmp_path / "nope.csv") if case == "missing" else _csv(tmp_path, text or "")
    if case == "dir":
        path = str(tmp_path)
    with pytest.raises(DataError, match=expected) as info:
        read_table(path, "csv", "y", None)
    assert "\n" not in str(info.value)


def test_listed_feature_absent(tmp_path):
    path = _csv(tmp_path, "alpha,beta,y\n1,2,3\n")
    with pytest.raises(DataError, match=r"feature column 'alpa' not found \(did you mean 'alpha'"):
        read_table(path, "csv", "y", ["alpa"])


def test_missing_drop(tmp_path):
    path = _csv(tmp_path, "x,y\n1,2\n3,\n5,6\n")
    X, y, _, dropped = read_table(path, "csv", "y", None, missing="drop")
    assert dropped == 1 and X.tolist() == [[1], [5]]


def test_not_parquet(tmp_path):
    path = _csv(tmp_path, "x,y\n1,2\n", name="d.parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_table(path, "parquet", "y", None)


def test_parquet_non_numeric_names_row(tmp_path):
    pd.DataFrame({"x": ["1", "2", "oops"], "y": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"non-numeric value 'oops' in column 'x' at row 3"):
        read_table(str(tmp_path / "d.parquet"), "parquet", "y", None)


def test_too_few_rows_for_split(tmp_path):
    path = _csv(tmp_path, "x,y\n1,2\n3,4\n")
    with pytest.raises(DataError, match="of 2 rows, data.val_fraction=0.5 puts 1 in validation"):
        load_dataset(DataConfig(source="csv", path=path, target="y", val_fraction=0.5), seed=0)


def test_cli_bad_file_is_one_line_and_no_run_folder(runner, tmp_path):
    path = _csv(tmp_path, "x,y\n1,2\nabc,3\n")
    runs = tmp_path / "runs"
    r = runner.invoke(
        app,
        ["train", "--runs-dir", str(runs), "data.source=csv", f"data.path={path}", "data.target=y"],
    )
    assert r.exit_code == 1
    assert r.output.strip().startswith("error: ") and "line 3" in r.output
    assert "Traceback" not in r.output
    assert not runs.exists() or not any(runs.iterdir())


def test_csv_round_trip_trains_like_memory(tmp_path):
    from huberfit.config import load_config
    from huberfit.experiment import train_run
    from huberfit.sinks import ConsoleSink

    common = ["dtype=float64", "train.epochs=3", "output.tensorboard=false", "output.images=false"]
    cfg = load_config(None, common)
    X, y, *_ = make_synthetic(cfg.data, cfg.seed)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]).assign(y=y)
    frame.to_csv(tmp_path / "synthetic.csv", index=False, float_format="%.17g")
    a = train_run(cfg, ConsoleSink(1, quiet=True), runs_dir=str(tmp_path)).metrics
    cfg_csv = load_config(None, common + ["data.source=csv", f"data.path={tmp_path / 'synthetic.csv'}",
                                          "data.target=y"])  # fmt: skip
    b = train_run(cfg_csv, ConsoleSink(1, quiet=True), runs_dir=str(tmp_path)).metrics
    assert a["coefficients"] == b["coefficients"] and a["intercept"] == b["intercept"]
    assert a["val"] == b["val"]
