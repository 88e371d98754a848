"""predict / eval / runs: predictions checked against metrics.json's coefficients, scores
recomputed independently, unsafe checkpoints refused, runs listed whatever their state."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from huberfit import predict as predict_mod
from huberfit.cli import app
from huberfit.runs import list_runs


@pytest.fixture
def trained(tmp_path, runner):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)) * [1.0, 10.0, 0.1] + [5.0, -2.0, 0.0]
    y = X @ [1.5, -0.2, 30.0] + 4.0 + rng.normal(scale=0.5, size=300)
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(target=y)
    frame.iloc[:200].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[200:].to_csv(tmp_path / "test.csv", index=False)
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), "--quiet",
                            "data.source=csv", f"data.path={tmp_path / 'train.csv'}",
                            "data.target=target", "train.epochs=20", "output.images=false"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir, frame.iloc[200:].reset_index(drop=True)


def _independent_predictions(run_dir, X):
    m = json.loads((run_dir / "metrics.json").read_text())
    w = np.array([m["coefficients"][k] for k in ("a", "b", "c")])
    return X @ w + m["intercept"]


def test_predict_matches_the_coefficients_in_metrics_json(trained, tmp_path, runner):
    run_dir, test = trained
    r = runner.invoke(
        app, ["predict", "--run", str(run_dir), "--input", str(tmp_path / "test.csv")]
    )
    assert r.exit_code == 0
    out = pd.read_csv(io.StringIO(r.stdout))
    assert list(out.columns) == ["a", "b", "c", "target", "prediction"]
    expected = _independent_predictions(run_dir, test[["a", "b", "c"]].to_numpy())
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-9, atol=1e-9)


def test_predict_parquet_out_without_target_and_reordered_columns(trained, tmp_path, runner):
    run_dir, test = trained
    test[["c", "a", "b"]].to_parquet(tmp_path / "x.parquet")
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input",
                            str(tmp_path / "x.parquet"), "--output", str(tmp_path / "p.parquet")])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = pd.read_parquet(tmp_path / "p.parquet")
    expected = _independent_predictions(run_dir, test[["a", "b", "c"]].to_numpy())
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-9, atol=1e-9)


def test_predict_in_chunks_names_the_line_of_a_bad_cell(trained, tmp_path, runner, monkeypatch):
    run_dir, test = trained
    monkeypatch.setattr(predict_mod, "CHUNK_ROWS", 7)
    bad = test.astype({"b": object})
    bad.loc[40, "b"] = "n/a?"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(tmp_path / "bad.csv"),
                            "--output", str(tmp_path / "out.csv")])  # fmt: skip
    assert r.exit_code == 1
    assert "non-numeric value 'n/a?' in column 'b' at line 42" in r.output
    assert not (tmp_path / "out.csv").exists()  # nothing half-written
    ok = runner.invoke(app, ["predict", "--run", str(run_dir), "--input",
                             str(tmp_path / "test.csv"), "--output", str(tmp_path / "out.csv")])  # fmt: skip
    assert ok.exit_code == 0
    assert len(pd.read_csv(tmp_path / "out.csv")) == 100


def test_predict_errors(trained, tmp_path, runner):
    run_dir, test = trained
    test.drop(columns=["b"]).to_csv(tmp_path / "nob.csv", index=False)
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(tmp_path / "nob.csv")])
    assert r.exit_code == 1 and "feature column 'b' not found" in r.output
    test.assign(a=np.nan).to_csv(tmp_path / "nan.csv", index=False)
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(tmp_path / "nan.csv")])
    assert r.exit_code == 1 and "missing or non-finite cells" in r.output and "line 2" in r.output
    assert r.output.rstrip().endswith("fix them or remove those rows")  # no data.missing here
    (tmp_path / "file.csv").write_text("a\n")
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "file.csv")])
    assert (
        r.exit_code == 1
        and r.output == f"error: {tmp_path / 'file.csv'} is a file, not a run folder\n"
    )
    r = runner.invoke(
        app, ["predict", "--run", str(tmp_path), "--input", str(tmp_path / "test.csv")]
    )
    assert r.exit_code == 1 and "not a huberfit run folder" in r.output


def test_eval_recomputed_independently(trained, tmp_path, runner):
    run_dir, test = trained
    r = runner.invoke(
        app, ["eval", "--run", str(run_dir), "--input", str(tmp_path / "test.csv"), "--json"]
    )
    assert r.exit_code == 0, r.output
    scores = json.loads(r.stdout)
    y = test["target"].to_numpy()
    resid = y - _independent_predictions(run_dir, test[["a", "b", "c"]].to_numpy())
    huber = np.where(np.abs(resid) <= 1.0, 0.5 * resid**2, np.abs(resid) - 0.5)
    assert scores["rows"] == 100
    assert scores["mse"] == pytest.approx(np.mean(resid**2), rel=1e-9)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(resid)), rel=1e-9)
    assert scores["r2"] == pytest.approx(
        1 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2), rel=1e-9
    )
    assert scores["objective"] == pytest.approx(np.mean(huber), rel=1e-9)
    r = runner.invoke(app, ["eval", "--run", str(run_dir), "--input", str(tmp_path / "test.csv")])
    assert r.exit_code == 0, r.output
    assert "R^2" in r.output and "objective: huber (delta 1)" in r.output
    test.drop(columns=["target"]).to_csv(tmp_path / "nolabel.csv", index=False)
    r = runner.invoke(
        app, ["eval", "--run", str(run_dir), "--input", str(tmp_path / "nolabel.csv")]
    )
    assert r.exit_code == 1 and "target column 'target' not found" in r.output


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_a_tampered_checkpoint_is_refused(trained, tmp_path, runner, monkeypatch, how):
    run_dir, _ = trained
    monkeypatch.chdir(tmp_path)
    ckpt = run_dir / "checkpoint.pt"
    if how == "torch.save":
        torch.save({"format": 1, "model": _Exploit()}, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps({"format": 1, "model": _Exploit()}))
    r = runner.invoke(
        app, ["predict", "--run", str(run_dir), "--input", str(tmp_path / "test.csv")]
    )
    assert r.exit_code == 1 and "refused to load" in r.output
    assert not (tmp_path / "pwned.txt").exists()


def test_incompatible_checkpoint_format(trained, tmp_path, runner):
    run_dir, _ = trained
    torch.save({"format": 99}, run_dir / "checkpoint.pt")
    r = runner.invoke(app, ["eval", "--run", str(run_dir), "--input", str(tmp_path / "test.csv")])
    assert r.exit_code == 1 and "format 99 is not supported" in r.output


@pytest.mark.slow
def test_runs_lists_every_kind_of_folder(tmp_path, runner):
    runs = tmp_path / "runs"
    base = ["--runs-dir", str(runs), "--quiet", "output.images=false", "data.n_samples=200"]
    assert runner.invoke(app, ["train", *base, "train.epochs=2", "--name", "good"]).exit_code == 0
    assert runner.invoke(app, ["train", *base, "--name", "boom", "loss.name=mse",
                               "optimizer.lr=1e6"]).exit_code == 1  # fmt: skip
    # an interrupted run: its metrics.json says so
    assert (
        runner.invoke(app, ["train", *base, "train.epochs=1", "--name", "stopped"]).exit_code == 0
    )
    (stopped,) = runs.glob("stopped-*")
    m = json.loads((stopped / "metrics.json").read_text())
    (stopped / "metrics.json").write_text(json.dumps({**m, "status": "interrupted"}))
    (runs / "junk").mkdir()
    (runs / "half").mkdir()
    (runs / "half" / "config.yaml").write_text("name: half\n")
    (runs / "garbled").mkdir()
    (runs / "garbled" / "metrics.json").write_text("{not json")
    (runs / "stray.txt").write_text("not a folder")
    assert runner.invoke(app, ["compare-losses", "--runs-dir", str(runs), "--quiet",
                               "--losses", "huber,l1", "train.epochs=2"]).exit_code == 0  # fmt: skip
    rows = list_runs(runs)
    status = {
        r["folder"].split("/")[-1].split("-2026")[0].split("-20")[0]: r["status"] for r in rows
    }
    assert status["junk"] == "not a run" and status["half"] == "incomplete"
    assert status["garbled"] == "unreadable"
    by_name = {r.get("name"): r for r in rows if r["kind"] == "run" and not r.get("parent")}
    assert by_name["good"]["status"] == "completed" and by_name["boom"]["status"] == "diverged"
    assert by_name["stopped"]["status"] == "interrupted"
    parents = [i for i, r in enumerate(rows) if r["kind"] == "comparison"]
    assert len(parents) == 1
    children = [r for r in rows if r.get("parent")]
    assert {c["folder"].split("/")[-1] for c in children} == {"huber", "l1"}
    assert rows[parents[0] + 1].get("parent")  # children follow their parent
    r = runner.invoke(app, ["runs", "--runs-dir", str(runs)])
    assert r.exit_code == 0 and "diverged" in r.output and "not a run" in r.output
    r = runner.invoke(app, ["runs", "--runs-dir", str(runs), "--json"])
    assert len(json.loads(r.stdout)) == len(rows)
    assert runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "none")]).exit_code == 0
