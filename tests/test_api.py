"""The Python API (issue 21, part 1): huberfit.train / compare_losses / load_run do what
the CLI does, raise HuberfitError with its one line, and ``import huberfit`` stays
torch-free."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import huberfit


def test_import_huberfit_does_not_import_torch():
    code = "import sys, huberfit; huberfit.HuberfitError; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_from_a_mapping_writes_the_cli_run_folder(tmp_path):
    result = huberfit.train({"train": {"epochs": 3}, "output": {"images": False}},
                            overrides=["seed=1"], runs_dir=str(tmp_path), quiet=True)  # fmt: skip
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.json", "checkpoint.pt"} <= files
    assert any(name.startswith("events.out.tfevents") for name in files)
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["coefficients"] == result.coefficients and result.status == "completed"
    X = np.array([[1.0, 0.0, -2.0], [0.5, 3.0, 1.0]])
    w = np.array([result.coefficients[k] for k in ("x0", "x1", "x2")])
    np.testing.assert_allclose(result.predict(X), X @ w + result.intercept, rtol=1e-12)
    frame = pd.DataFrame(X[:, ::-1], columns=["x2", "x1", "x0"])  # columns by name
    np.testing.assert_allclose(huberfit.load_run(result.run_dir).predict_frame(frame),
                               X @ w + result.intercept, rtol=1e-12)  # fmt: skip


def test_errors_are_huberfit_errors_with_the_cli_line(tmp_path):
    with pytest.raises(huberfit.HuberfitError, match=r"optimizer.lr must be > 0; got -1"):
        huberfit.train({"optimizer": {"lr": -1}}, runs_dir=str(tmp_path))
    with pytest.raises(ValueError, match="loss.delta"):  # config errors are ValueErrors too
        huberfit.train({"loss": {"delta": -1}}, runs_dir=str(tmp_path))
    assert issubclass(huberfit.ConfigError, huberfit.HuberfitError) and "train" in dir(huberfit)
    with pytest.raises(huberfit.HuberfitError, match="run folder not found"):
        huberfit.load_run(tmp_path / "nope")
    assert not list(tmp_path.iterdir())


def test_compare_losses_from_python(tmp_path):
    result = huberfit.compare_losses(losses=["mse", "huber", "l1"], overrides=["train.epochs=2"],
                                     runs_dir=str(tmp_path), quiet=True)  # fmt: skip
    assert [r["label"] for r in result.rows] == ["mse", "huber", "l1"]
    assert (result.parent / "comparison.json").is_file() and result.verdict
    from huberfit.runs import list_runs  # its runs listed in the table's order, not by name

    assert [r["name"] for r in list_runs(tmp_path) if r.get("parent")] == ["mse", "huber", "l1"]
