"""huberfit bench runs end to end on a small problem and reports every figure consistently:
what was generated is what is reported, each ratio is the quotient of the timings it names,
the table shows the timings, and the readers it times read the same numbers. Timings
themselves are never asserted: these machines are shared."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest

from huberfit.cli import app


@pytest.mark.slow
def test_bench_reports_every_measurement(runner):
    r = runner.invoke(app, ["bench", "--rows", "20000", "--features", "4", "--batch-size",
                            "512,2048", "--epochs", "1", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    # what was asked for is what was measured, on the machine it names
    assert (data["rows"], data["features"], data["batch_sizes"], data["epochs"]) == (
        20000, 4, [512, 2048], 1,
    )  # fmt: skip
    import torch

    from huberfit.device import resolve_device

    assert data["device"] == str(resolve_device("auto"))
    m = data["machine"]
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["threads"] == torch.get_num_threads() and m["cpus"] == os.cpu_count()
    assert m["cpu"] and m["cpu"] in data["host"] and m["cpu_capability"] in data["host"]
    assert set(data["per_batch"]) == {"512", "2048"}
    share = data["others_cpu_share"]  # other work's share of the CPUs meanwhile
    assert share is None or 0.0 <= share <= 1.0
    rows = []
    for size, t in data["per_batch"].items():
        assert set(t) == {"tutorial", "engine", "bare", "engine_tb", "engine_no_tb", "ratios"}
        for key in ("tutorial", "engine", "bare", "engine_tb", "engine_no_tb"):
            assert t[key]["min"] <= t[key]["median"] <= t[key]["max"], t[key]
        # each ratio is the quotient of the timings it is named after
        ratios = t["ratios"]
        assert ratios["engine_speedup_vs_tutorial"] == pytest.approx(
            t["tutorial"]["median"] / t["engine"]["median"])  # fmt: skip
        assert ratios["bare_speedup_vs_tutorial"] == pytest.approx(
            t["tutorial"]["median"] / t["bare"]["median"])  # fmt: skip
        assert ratios["tensorboard_time_in_sink"] == pytest.approx(
            t["engine_tb"]["in_sink"] / t["engine_tb"]["median"])  # fmt: skip
        assert t["engine_tb"]["pairs"] >= 12
        # the overhead is a median of paired ratios: within the pairs' extremes
        low = t["engine_tb"]["min"] / t["engine_no_tb"]["max"] - 1
        high = t["engine_tb"]["max"] / t["engine_no_tb"]["min"] - 1
        assert low <= ratios["tensorboard_overhead"] <= high
        rows += [("(a) tutorial loop", size, "tutorial"),
                 ("(b) huberfit engine", size, "engine"),
                 ("(b') bare update", size, "bare"),
                 ("(d) engine+val, TB off", size, "engine_no_tb"),
                 ("(d) engine+val, TB on", size, "engine_tb")]  # fmt: skip
    t = data["timings"]
    assert data["ratios"] == {"custom_loss_vs_F_huber_loss": pytest.approx(
        t["huber_loss_custom"]["median"] / t["huber_loss_torch"]["median"])}  # fmt: skip
    # L-BFGS stopped because it reached the gap, not at its 200-iteration cap
    assert t["lbfgs"]["relative_gap"] < 1e-6
    assert 1 <= t["lbfgs"]["iterations"] < 200 and t["lbfgs"]["iterations"] == int(
        t["lbfgs"]["iterations"]
    )
    # the table shows those figures: seconds, rows / seconds, the ratios
    table = {(row["what"], row["batch"]): row for row in data["table"]}
    assert len(table) == len(data["table"]) == 2 * 6 + 3
    for what, size, key in rows:
        row = table[what, f"{int(size):,}"]
        seconds = data["per_batch"][size][key]["median"]
        assert row["ms"] == f"{seconds * 1e3:,.{2 if seconds < 0.01 else 1}f}"
        assert row["rows_per_second"] == f"{20000 / seconds:,.0f}"
    speedup = data["per_batch"]["512"]["ratios"]["engine_speedup_vs_tutorial"]
    assert table["(b) huberfit engine", "512"]["ratio"] == f"{speedup:.1f}x faster"
    lbfgs_row = table["(e) L-BFGS to 1e-6 gap", "full"]
    assert lbfgs_row["ratio"] == f"{int(t['lbfgs']['iterations'])} iterations"
    human = runner.invoke(app, ["bench", "--rows", "20000", "--features", "4", "--epochs", "1",
                                "--batch-size", "4096"])  # fmt: skip
    assert human.exit_code == 0, human.output
    # the table on stdout (the progress lines on stderr name "tutorial loop" too)
    shown = human.stdout
    assert shown.startswith("huberfit bench: 20,000 x 4, float32")
    for what, _ in table:
        assert re.search(rf"^│ {re.escape(what)} +│", shown, re.M), what
    assert re.search(r"^│ \(b\) huberfit engine +│ +4,096 │", shown, re.M)
    lines = shown.splitlines()
    assert any(re.fullmatch(r"medians: \(a\) and \(b'\) of 1 epoch, \(b\) of 5 \(5 a round\), "
                            r"\(d\) of \d+ pairs", ln) for ln in lines)  # fmt: skip
    hardware, software = data["host"].split("; ")
    assert f"machine: {hardware}" in lines and f"software: {software}" in lines
    assert "note: 1 timed epoch on a shared machine" in shown
    # a person's terminal: 80 columns hold the table and what it says about its figures
    ours = [ln for ln in lines if not ln.startswith(("machine:", "software:", "note:"))]
    assert max(len(ln) for ln in ours) <= 80


@pytest.mark.parametrize("value", ["0", "256,", "x", "256;4096", "-5", "1.5", "",
                                   "99999999999999999999"])  # fmt: skip
def test_bench_refuses_batch_sizes_that_are_not_whole_numbers(runner, value):
    r = runner.invoke(app, ["bench", "--batch-size", value])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.startswith("error: --batch-size must be up to 16 whole numbers >= 1")
    assert r.stderr.count("\n") == 1


def test_bench_streaming_never_takes_the_users_files_or_folder(runner, tmp_path, monkeypatch):
    """Parquet files bench did not write are refused (not timed as its own data), and so is
    the current folder: bench writes gigabytes there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    mine = tmp_path / "mine"
    mine.mkdir()
    pq.write_table(pa.table({"a": [1.0, 2.0], "target": [3.0, 4.0]}), mine / "data.parquet")
    r = runner.invoke(app, ["bench", "--stream-gb", "0.001", "--folder", str(mine)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr == (f"error: --folder {mine}: data.parquet was not written by huberfit bench "
                        "(its columns are a, target); give an empty or new folder\n")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for folder, said in (("", "--folder is empty"), (".", "--folder: name a folder")):
        r = runner.invoke(app, ["bench", "--stream-gb", "0.001", "--folder", folder])
        assert r.exit_code == 1 and r.stderr.startswith(f"error: {said}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_bench_streaming_reuses_its_files_only_for_the_size_asked(runner, tmp_path):
    """Files an earlier bench wrote into --folder are timed again only when they hold the
    gigabytes asked for; another size is one line saying what the folder holds."""
    from huberfit.bench import write_parquet_dataset

    rows = write_parquet_dataset(tmp_path, 0.002)
    r = runner.invoke(app, ["bench", "--stream-gb", "0.5", "--folder", str(tmp_path)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr == (f"error: --folder {tmp_path}: holds 0.002 GB ({rows:,} rows) from an "
                        "earlier bench, not the 0.5 GB asked for; ask for --stream-gb 0.002, "
                        "or give an empty or new folder\n")  # fmt: skip


def test_bench_csv_times_two_readers_of_the_same_numbers(runner, monkeypatch):
    """Both readers it times read the file it wrote, and read the same numbers: huberfit's
    reader (features, target) equals pandas' frame; the bytes reported are that file's."""
    import pandas as pd

    from huberfit.data import tables

    read = {"huberfit": [], "pandas": []}
    real_read_table, real_read_csv = tables.read_table, pd.read_csv
    inside = []  # huberfit's reader calls pandas itself: those calls are not the bench's

    def read_table(path, *args, **kwargs):
        inside.append(path)
        try:
            X, y, names, dropped = real_read_table(path, *args, **kwargs)
        finally:
            inside.pop()
        read["huberfit"].append((path, X, y, names, dropped))
        return X, y, names, dropped

    def read_csv(path, *args, **kwargs):
        frame = real_read_csv(path, *args, **kwargs)
        if not inside:
            read["pandas"].append((str(path), frame, os.path.getsize(path)))
        return frame

    monkeypatch.setattr(tables, "read_table", read_table)
    monkeypatch.setattr(pd, "read_csv", read_csv)
    r = runner.invoke(app, ["bench", "--csv", "--rows", "5000", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(read["huberfit"]) == len(read["pandas"]) == 3  # alternating, 3 repeats each
    assert len({p for p, *_ in read["huberfit"] + read["pandas"]}) == 1  # the same file
    path, frame, size = read["pandas"][0]
    assert data["bytes"] == size
    assert frame.shape == (5000, 17) and list(frame.columns) == [f"x{i}" for i in range(16)] + ["y"]
    for _, X, y, names, dropped in read["huberfit"]:
        assert names == [f"x{i}" for i in range(16)] and dropped == 0
        assert X.dtype == np.float32 and X.shape == (5000, 16)
        np.testing.assert_array_equal(X, frame[names].to_numpy(np.float32))
        np.testing.assert_array_equal(np.asarray(y).reshape(-1), frame["y"].to_numpy(np.float32))
    assert math.isfinite(data["huberfit"]) and math.isfinite(data["pandas"])
    assert data["host"]


@pytest.mark.slow
def test_bench_streaming_measures_a_child_run(runner, tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    r = runner.invoke(app, ["bench", "--stream-gb", "0.005", "--budget-mb", "1", "--folder",
                            str(folder), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    files = sorted(folder.glob("*.parquet"))  # kept with --folder
    assert files
    # the rows and bytes reported are those generated: 0.005 GB of 17 float64 columns
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    assert written == int(0.005e9 / (8 * 17))
    assert data["rows"] == written  # the child trained on every row (train + validation)
    assert data["bytes"] == sum(f.stat().st_size for f in files)
    assert data["streamed"] and data["budget_mb"] == 1  # a 1 MB budget forces streaming
    assert data["peak_rss_mb"] > 0 and data["baseline_rss_mb"] > 0
    # the streamed epoch and the bare scan read the same rows; the ratio is their quotient
    assert data["train_rows"] < data["rows"] == written
    assert data["epoch_vs_scan"] == pytest.approx(data["epoch_seconds"] / data["scan_seconds"])
    share = data["others_cpu_share"]  # other work's share of the CPUs meanwhile
    assert share is None or 0.0 <= share <= 1.0
    # as a person reads it: the same files again (the size asked is the size held), every
    # line within 80 columns, the ratio and the machine said
    r = runner.invoke(app, ["bench", "--stream-gb", "0.005", "--budget-mb", "1", "--folder",
                            str(folder)])  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert any(re.fullmatch(r"the epoch takes \d+\.\d\dx the scan", ln) for ln in lines)
    assert any(ln.startswith("machine: ") for ln in lines)


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--csv", "--device", "cuda"], "--device applies to the training table, not to --csv"),
        (["--csv", "--batch-size", "64", "--epochs", "5"],
         "--batch-size, --epochs applies to the training table, not to --csv"),
        (["--stream-gb", "0.1", "--rows", "5000"], "--rows applies to the training table"),
        (["--budget-mb", "64"], "--budget-mb goes with --stream-gb"),
        (["--csv", "--stream-gb", "0.1"], "--csv and --stream-gb are two measurements"),
    ],
)  # fmt: skip
def test_bench_refuses_flags_of_another_measurement(runner, flags, said):
    r = runner.invoke(app, ["bench", *flags])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.startswith(f"error: {said}") and r.stderr.count("\n") == 1


def test_bench_on_a_gpu_that_is_not_here_is_one_line(runner):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/test_gpu.py runs bench on it")
    r = runner.invoke(app, ["bench", "--device", "cuda", "--rows", "1000"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.startswith("error: device 'cuda' is not available here")


def test_bench_says_when_other_work_took_the_cpus():
    """The share of the CPUs other work took is measured (Linux's /proc/stat less this
    process's own time), and above BUSY_SHARE the figures come with a warning."""
    import subprocess
    import sys
    import time

    from huberfit.bench import BUSY_SHARE, BenchResult, _OthersClock, busy_note

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here: the share is unknown (None)")
    clock = _OthersClock()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\n"
                             "while time.time() - t < 1.5: pass"])  # fmt: skip
    spin.wait(timeout=30)
    time.sleep(0.05)
    # one busy CPU of the machine's for most of the time measured
    assert clock.share() >= 0.5 / (os.cpu_count() or 1)
    res = BenchResult(1000, 4, [256], 1, "cpu", {})
    assert busy_note(res) is None  # unknown
    res.others_cpu_share = BUSY_SHARE / 2
    assert busy_note(res) is None
    res.others_cpu_share = 0.37
    note = busy_note(res)
    assert note.startswith("note: other work took 37% of the CPUs meanwhile")
    res.others_cpu_share = 1.0
    assert all(len(line) <= 80 for line in busy_note(res).splitlines())


def test_bench_calls_a_batch_of_every_row_full():
    """A batch size at or above the rows trains on one batch of all of them: the table
    says "full", not the size asked for."""
    from huberfit.bench import BenchResult, as_table_rows

    res = BenchResult(1000, 4, [256, 1000, 4096], 1, "cpu", {})
    timing = {"median": 0.01, "in_sink": 0.001}
    for size in res.batch_sizes:
        res.per_batch[size] = {key: timing for key in ("tutorial", "engine", "bare",
                                                       "engine_tb", "engine_no_tb")}  # fmt: skip
        res.per_batch[size]["ratios"] = {"tensorboard_overhead": 0.0,
                                         "tensorboard_time_in_sink": 0.1}  # fmt: skip
    res.timings = {"huber_loss_custom": timing, "huber_loss_torch": timing,
                   "lbfgs": {"seconds": 0.1, "iterations": 3}}  # fmt: skip
    res.ratios = {"custom_loss_vs_F_huber_loss": 1.0}
    shown = [batch for what, batch, *_ in as_table_rows(res) if what == "(b) huberfit engine"]
    assert shown == ["256", "full", "full"]
