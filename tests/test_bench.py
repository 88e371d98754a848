"""huberfit bench runs end to end on a small problem and reports every figure (timings are
never asserted: these machines are shared)."""

from __future__ import annotations

import json

from huberfit.cli import app


def test_bench_reports_every_measurement(runner):
    r = runner.invoke(app, ["bench", "--rows", "20000", "--features", "4", "--batch-size", "512",
                            "--epochs", "1", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data["timings"]) >= {"tutorial", "engine", "engine_tb", "engine_no_tb",
                                    "huber_loss_custom", "huber_loss_torch", "lbfgs"}  # fmt: skip
    assert set(data["ratios"]) == {"engine_speedup_vs_tutorial", "custom_loss_vs_F_huber_loss",
                                   "tensorboard_overhead", "tensorboard_time_in_sink"}  # fmt: skip
    assert data["timings"]["lbfgs"]["relative_gap"] < 1e-6
    assert len(data["table"]) == 8
    table = runner.invoke(app, ["bench", "--rows", "20000", "--features", "4", "--epochs", "1"])
    assert table.exit_code == 0 and "tutorial loop" in table.output


def test_bench_csv(runner):
    r = runner.invoke(app, ["bench", "--csv", "--rows", "5000", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["huberfit"] > 0 and data["pandas"] > 0


def test_bench_streaming_measures_a_child_run(runner, tmp_path):
    r = runner.invoke(app, ["bench", "--stream-gb", "0.005", "--budget-mb", "1", "--folder",
                            str(tmp_path / "data"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["streamed"] and data["rows"] > 30_000
    assert data["peak_rss_mb"] > 0 and data["baseline_rss_mb"] > 0
    assert list((tmp_path / "data").glob("*.parquet"))  # kept with --folder
