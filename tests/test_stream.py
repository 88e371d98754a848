"""Streaming: same answers as in-memory training, bad cells located deep in files,
statistics against numpy, every training row once per epoch, automatic choice."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_same_optimum, train_rows

from huberfit.cli import app
from huberfit.config import load_config
from huberfit.data.batches import StreamBatches
from huberfit.data.scaling import Moments
from huberfit.data.split import in_validation
from huberfit.data.stream import scan
from huberfit.errors import DataError
from huberfit.experiment import train_run
from huberfit.sinks import ConsoleSink


@pytest.fixture
def parts(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "pq"
    folder.mkdir()
    frames = []
    for i in range(3):
        X = rng.normal(size=(1500, 3)) * [1.0, 5.0, 0.2] + [0.0, 3.0, -1.0]
        y = X @ [1.0, -0.5, 4.0] + 2.0 + rng.normal(scale=0.3, size=1500)
        y[rng.random(1500) < 0.1] += 15.0
        frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(t=y)
        frame.to_parquet(folder / f"part{i}.parquet", row_group_size=400)
        frame.to_csv(tmp_path / f"part{i}.csv", index=False, float_format="%.17g")
        frames.append(frame)
    return tmp_path, pd.concat(frames, ignore_index=True)


def _train(tmp_path, *overrides):
    cfg = load_config(None, ["output.tensorboard=false", "output.images=false", *overrides])
    return train_run(cfg, ConsoleSink(1, quiet=True), runs_dir=str(tmp_path / "runs")).metrics


def _coef(m):
    return np.array([*m["coefficients"].values(), m["intercept"]])


@pytest.mark.slow
@pytest.mark.parametrize("source", ["parquet", "csv"])
def test_streamed_and_in_memory_lbfgs_agree(parts, source):
    tmp_path, _ = parts
    path = tmp_path / "pq" if source == "parquet" else tmp_path / "part*.csv"
    common = [f"data.source={source}", f"data.path={path}", "data.target=t", "dtype=float64",
              "optimizer.name=lbfgs", "optimizer.lr=1", "train.epochs=50"]  # fmt: skip
    streamed = _train(tmp_path, *common, "data.streaming=true")
    memory = _train(tmp_path, *common, "data.streaming=false")
    assert streamed["streamed"] and not memory["streamed"]
    assert streamed["n_train"] == memory["n_train"] and streamed["n_val"] == memory["n_val"]
    # Both minimise the same Huber objective on the same rows and stop when it stops
    # falling: they agree as closely as that stopping rule guarantees (see conftest).
    A, y = train_rows([*common, "data.streaming=false"])
    assert_same_optimum(_coef(streamed), _coef(memory), A, y, "huber")
    tau = len(y) * np.finfo(np.float64).eps * memory["train"]["loss"]
    assert abs(streamed["train"]["loss"] - memory["train"]["loss"]) <= 2 * tau


def test_moments_merge_matches_numpy():
    rng = np.random.default_rng(1)
    batches = [rng.normal(1e6, 3.0, size=(n, 2)) for n in (1, 7, 500, 3, 1000)]
    m = Moments()
    for b in batches:
        m.add(b)
    whole = np.concatenate(batches)
    np.testing.assert_allclose(m.mean, whole.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(m.m2 / m.n, whole.var(axis=0), rtol=1e-9)


def test_each_training_row_once_per_epoch_in_a_seeded_order(parts):
    tmp_path, frame = parts
    info = scan(str(tmp_path / "pq"), "parquet", "t", None, 0, 0.2, standardize=False, center=True)
    source = StreamBatches(
        info, "train", 64, torch.device("cpu"), torch.float64, shuffle_buffer=500
    )

    def rows(epoch):
        return torch.cat([torch.cat(item, 1) for item, _ in source.epoch(epoch)]).numpy()

    e0, e0_again, e1 = rows(0), rows(0), rows(1)
    assert len(e0) == info.n_train
    assert np.array_equal(e0, e0_again)  # the seed decides the order
    assert not np.array_equal(e0, e1)  # and it changes per epoch
    key = lambda a: np.sort(a[:, 0])  # noqa: E731
    assert np.array_equal(key(e0), key(e1))  # the same rows each epoch
    val = in_validation(np.arange(len(frame)), 0, 0.2)
    assert np.array_equal(key(e0), np.sort(frame.to_numpy()[~val][:, 0]))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_rows_are_the_standardized_rows_bit_for_bit(tmp_path, dtype):
    """Each split's streamed rows, in file order, are ``(value - mean) / scale`` of the
    files' own rows in float64, rounded once to the training dtype, for float64, float32
    and integer columns alike (the fast paths take each kept value straight into place)."""
    rng = np.random.default_rng(5)
    n = 70_000  # more than one record batch per row group
    table = pa.table({"a": rng.normal(3.0, 2.0, n), "b": rng.normal(size=n).astype(np.float32),
                      "c": rng.integers(-50, 50, n), "t": rng.normal(size=n)})  # fmt: skip
    pq.write_table(table, tmp_path / "mixed.parquet", row_group_size=66_000)
    info = scan(str(tmp_path / "mixed.parquet"), "parquet", "t", None, 0, 0.2, True, True)
    whole = np.column_stack([table[c].to_numpy().astype(np.float64) for c in "abct"])
    val = in_validation(np.arange(n), 0, 0.2)
    shift, scale = info.scaling.shift_scale()
    for split, rows in (("train", whole[~val]), ("val", whole[val])):
        streamed = np.concatenate(list(info.rows(info.pieces, split, dtype)))
        assert streamed.dtype == dtype
        assert np.array_equal(streamed, ((rows - shift) / scale).astype(dtype))


def test_bad_cells_deep_in_files_are_located(tmp_path):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(200_000, 2)), columns=["x", "y"])
    text = frame.to_csv(index=False).splitlines()
    text[150_001] = "1.0,broken"
    (tmp_path / "big.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(
        DataError, match=r"big.csv: non-numeric value 'broken' in column 'y' at line 150002"
    ):
        scan(str(tmp_path / "big.csv"), "csv", "y", None, 0, 0.2, True, True)
    frame.loc[123_456, "x"] = np.nan
    frame.to_parquet(tmp_path / "big.parquet", row_group_size=50_000)
    with pytest.raises(
        DataError, match=r"big.parquet: missing or non-finite cell in column 'x' at row 123457"
    ):
        scan(str(tmp_path / "big.parquet"), "parquet", "y", None, 0, 0.2, True, True)


def test_auto_streams_over_the_budget_only(parts):
    tmp_path, _ = parts
    common = [
        "data.source=csv",
        f"data.path={tmp_path / 'part*.csv'}",
        "data.target=t",
        "train.epochs=1",
    ]
    assert not _train(tmp_path, *common)["streamed"]  # a quarter of this machine's RAM
    # in memory these files need about four times their size: the budget's edge is there
    need_mb = 4 * sum(f.stat().st_size for f in tmp_path.glob("part*.csv")) / 2**20
    above, below = math.ceil(need_mb), math.floor(need_mb)
    assert below >= 1 and below < need_mb < above
    assert not _train(tmp_path, *common, f"data.memory_budget_mb={above}")["streamed"]
    assert _train(tmp_path, *common, f"data.memory_budget_mb={below}")["streamed"]


def test_empty_glob_and_folder_errors(tmp_path, runner):
    r = runner.invoke(app, ["train", "data.source=csv", f"data.path={tmp_path}/nothing*.csv",
                            "data.target=y"])  # fmt: skip
    assert r.exit_code == 1 and "the pattern matches no files" in r.output
    r = runner.invoke(
        app, ["train", "data.source=parquet", f"data.path={tmp_path}", "data.target=y"]
    )
    assert r.exit_code == 1 and "holds no parquet files" in r.output


def test_cli_streaming_run_and_predict_on_a_folder(parts, runner):
    tmp_path, frame = parts
    r = runner.invoke(app, ["train", "--json", "--quiet", "--runs-dir", str(tmp_path / "runs"),
                            "data.source=parquet", f"data.path={tmp_path / 'pq'}", "data.target=t",
                            "data.streaming=true", "train.epochs=2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["streamed"] and m["n_train"] + m["n_val"] == len(frame)
    run_dir = m["run_dir"]
    assert json.loads(open(f"{run_dir}/metrics.json").read()) == m
    assert m["status"] == "completed" and m["epochs"] == 2
    r = runner.invoke(app, ["predict", "--run", run_dir, "--input", str(tmp_path / "pq"),
                            "--output", str(tmp_path / "p.parquet")])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = pd.read_parquet(tmp_path / "p.parquet")  # every file of the folder, in order
    assert list(out.columns) == ["a", "b", "c", "t", "prediction"] and len(out) == len(frame)
    np.testing.assert_array_equal(out[["a", "b", "c", "t"]].to_numpy(), frame.to_numpy())
    w = np.array([m["coefficients"][k] for k in ("a", "b", "c")])
    expected = frame[["a", "b", "c"]].to_numpy() @ w + m["intercept"]
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-9, atol=1e-9)


def test_predict_and_eval_read_folders_and_globs(parts, runner):
    tmp_path, frame = parts
    frame.to_csv(tmp_path / "all.csv", index=False, float_format="%.17g")
    r = runner.invoke(app, ["train", "--quiet", "--runs-dir", str(tmp_path / "runs"), "data.source=csv",
                            f"data.path={tmp_path / 'all.csv'}", "data.target=t", "train.epochs=2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    scores = []
    for source in (tmp_path / "all.csv", tmp_path / "part*.csv", tmp_path / "pq"):
        r = runner.invoke(app, ["eval", "--run", str(run_dir), "--input", str(source), "--json"])
        assert r.exit_code == 0, r.output
        scores.append(json.loads(r.stdout))
    for s in scores[1:]:
        assert s["rows"] == len(frame)
        for key in ("mse", "mae", "r2", "objective"):
            assert s[key] == pytest.approx(scores[0][key], rel=1e-12)
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(tmp_path / "pq"),
                            "--output", str(tmp_path / "p.parquet")])  # fmt: skip
    assert r.exit_code == 0 and len(pd.read_parquet(tmp_path / "p.parquet")) == len(frame)


def test_quirky_csv_headers_read_alike_on_every_path(tmp_path, runner):
    """One header reader for all paths: a BOM, CRLF line ends, quoted names with spaces in
    and after them, spaces after commas in cells. In memory and streamed, training sees the
    same columns and rows; predict and eval read the same file back."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 2))
    y = X @ [1.5, -2.0] + 0.5 + rng.normal(scale=0.1, size=300)
    lines = ['\ufeff"x 1", "x2",y'] + [
        f"{a:.17g}, {b:.17g},{c:.17g}" for (a, b), c in zip(X, y, strict=True)
    ]
    path = tmp_path / "quirks.csv"
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    common = ["data.source=csv", f"data.path={path}", "data.target=y", "dtype=float64",
              "optimizer.name=lbfgs", "optimizer.lr=1", "train.epochs=30"]  # fmt: skip
    memory = _train(tmp_path, *common, "data.streaming=false")
    streamed = _train(tmp_path, *common, "data.streaming=true")
    assert list(memory["coefficients"]) == list(streamed["coefficients"]) == ["x 1", "x2"]
    assert streamed["n_train"] == memory["n_train"] and streamed["n_val"] == memory["n_val"]
    A, yy = train_rows([*common, "data.streaming=false"])
    assert_same_optimum(_coef(streamed), _coef(memory), A, yy, "huber")
    run_dir = memory["run_dir"]
    r = runner.invoke(app, ["predict", "--run", run_dir, "--input", str(path),
                            "--output", str(tmp_path / "p.csv")])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns) == ["x 1", "x2", "y", "prediction"]
    w, b = _coef(memory)[:2], _coef(memory)[2]
    np.testing.assert_allclose(out["prediction"], X @ w + b, rtol=1e-12, atol=1e-12)
    r = runner.invoke(app, ["eval", "--run", run_dir, "--input", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == 300


def test_rows_passed_over_again_are_kept_when_they_fit(parts, tmp_path):
    """A split's second full pass (validation every epoch, L-BFGS's objective) serves the
    first pass's rows from memory when they fit ``keep_bytes``, and reads the files again
    when they do not: the files are renamed away between the passes to tell them apart."""
    folder, _ = parts
    info = scan(str(folder / "pq"), "parquet", "t", None, 0, 0.2, True, True)
    need = info.n_val * len(info.columns) * 4  # float32

    def val(keep_bytes):
        return StreamBatches(info, "val", None, torch.device("cpu"), torch.float32, 500,
                             keep_bytes=keep_bytes)  # fmt: skip

    def rows(source):
        return [torch.cat(chunk, 1) for chunk in source.full_chunks()]

    def same(a, b):
        return len(a) == len(b) and all(x.equal(y) for x, y in zip(a, b, strict=True))

    kept, read = val(need), val(need - 1)
    first = rows(kept)
    assert sum(len(a) for a in first) == info.n_val and same(rows(read), first)
    (folder / "pq").rename(tmp_path / "moved")
    assert same(rows(kept), first)  # the same numbers, chunk by chunk
    with pytest.raises(DataError, match="the file is gone"):
        rows(read)
