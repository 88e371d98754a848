"""--resume against damaged checkpoints, moved data and runs with nothing left to train:
one line each, nothing of the run rewritten."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from huberfit.cli import app

QUICK = ["--quiet", "train.epochs=2", "data.n_samples=200", "output.images=false",
         "output.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    r = CliRunner().invoke(app, ["train", "--runs-dir", str(runs), *QUICK])
    assert r.exit_code == 0, r.output
    (folder,) = runs.iterdir()
    return folder


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    """A copy of one trained run (2 epochs), for each test to damage."""
    return Path(shutil.copytree(trained, tmp_path / trained.name))


def one_error_line(r) -> str:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_random_bytes_are_not_a_huberfit_checkpoint(run_dir, runner):
    (run_dir / "checkpoint.pt").write_bytes(os.urandom(4096))
    for args in (["train", "--resume", str(run_dir)],
                 ["predict", "--run", str(run_dir), "--input", "x.csv"]):  # fmt: skip
        line = one_error_line(runner.invoke(app, args))
        assert "not a huberfit checkpoint" in line and "weights_only" not in line


def _damage(ckpt: dict, how: str) -> None:
    if how == "no state":
        del ckpt["state"]
    elif how == "weight shape":
        ckpt["model"]["weight"] = torch.zeros(1, 5)
    elif how == "weight type":
        ckpt["model"]["weight"] = [[1.0, 2.0, 3.0]]
    elif how == "epoch type":
        ckpt["state"]["epoch"] = "two"
    elif how == "unknown state entry":
        ckpt["state"]["surprise"] = 1
    elif how == "scaling length":
        ckpt["scaling"]["x_mean"] = [0.0]
    elif how == "optimizer lr":
        ckpt["optimizer"]["param_groups"][0]["lr"] = "fast"
    elif how == "no rng":
        ckpt["rng"] = {}
    elif how == "nan weights":
        ckpt["model"]["weight"] = torch.full((1, 3), float("nan"))
    elif how == "features":
        ckpt["feature_names"] = []


DAMAGES = ["no state", "weight shape", "weight type", "epoch type", "unknown state entry",
           "scaling length", "optimizer lr", "no rng", "nan weights", "features"]  # fmt: skip


@pytest.mark.parametrize("how", DAMAGES)
def test_a_checkpoint_with_a_bad_entry_is_one_line(run_dir, runner, how):
    path = run_dir / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    _damage(ckpt, how)
    torch.save(ckpt, path)
    line = one_error_line(runner.invoke(app, ["train", "--resume", str(run_dir)]))
    assert f"{path}: not a usable huberfit checkpoint: " in line, line
    if how == "nan weights":
        assert "smaller optimizer.lr" in line


def test_resuming_a_finished_run_with_nothing_to_train_writes_nothing(run_dir, runner):
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*")
              if p.is_file()}  # fmt: skip
    r = runner.invoke(app, ["train", "--resume", str(run_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert "nothing to train" in r.stderr
    assert json.loads(r.stdout)["epochs"] == 2
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*")
             if p.is_file()}  # fmt: skip
    assert after == before


@pytest.mark.slow
def test_moved_data_resumes_from_any_folder_other_data_is_refused(tmp_path, runner, monkeypatch):
    frame = pd.DataFrame({"a": range(40), "b": [i % 7 for i in range(40)]})
    frame = frame.assign(y=2.0 * frame.a - frame.b + 1)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    frame.to_csv(tmp_path / "one" / "d.csv", index=False)
    monkeypatch.chdir(tmp_path / "one")
    data = ["data.source=csv", "data.path=d.csv", "data.target=y"]
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), *QUICK, *data])
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    (tmp_path / "one" / "d.csv").rename(tmp_path / "two" / "moved.csv")
    frame.iloc[:30].to_csv(tmp_path / "two" / "other.csv", index=False)
    monkeypatch.chdir(tmp_path / "two")  # a relative data.path: from the current folder
    r = runner.invoke(app, ["train", "--resume", str(run), "--quiet", "train.epochs=3",
                            "data.path=other.csv"])  # fmt: skip
    line = one_error_line(r)
    assert f"data.path: {tmp_path / 'two' / 'other.csv'} is not the data this run" in line
    r = runner.invoke(app, ["train", "--resume", str(run), "train.epochs=3", "data.path=moved.csv",
                            "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs"] == 3
    monkeypatch.chdir(tmp_path)  # and saved in full: resuming from elsewhere finds it
    r = runner.invoke(app, ["train", "--resume", str(run), "train.epochs=4", "--quiet"])
    assert r.exit_code == 0, r.output
    assert f"path: {tmp_path / 'two' / 'moved.csv'}" in (run / "config.yaml").read_text()


def test_by_default_the_first_epoch_is_saved_then_once_5_seconds_have_passed(monkeypatch):
    from huberfit import run as run_mod
    from huberfit.loop import TrainState

    written = []

    class Folder:
        main = True

        def checkpoint(self, payload):
            written.append(payload["epoch"])

    every = run_mod.Checkpoints(Folder(), lambda st: {"epoch": st.epoch}, every=None)
    every.periodic(TrainState(epoch=1, step=5))  # the first: a kill from now on loses little
    every.periodic(TrainState(epoch=2, step=10))  # cheap epochs: not slowed by checkpoints
    assert written == [1]
    monkeypatch.setattr(run_mod, "AUTO_CHECKPOINT_SECONDS", 0.0)  # as if 5 s had passed
    every.periodic(TrainState(epoch=3, step=15))
    every.save(TrainState(epoch=3, step=15))  # the same state again: not rewritten
    assert written == [1, 3]
    each = run_mod.Checkpoints(Folder(), lambda st: {"epoch": st.epoch}, every=2)
    for epoch in (3, 4, 5, 6):
        each.periodic(TrainState(epoch=epoch, step=epoch))
    assert written == [1, 3, 4, 6]


@pytest.mark.slow
def test_a_run_still_training_is_running_and_cannot_be_resumed_twice(tmp_path):
    """A folder held by its process: `runs` says running and `--resume` refuses it; once
    the process is gone (even by SIGKILL) it is an interrupted run to resume."""
    import signal
    import subprocess
    import sys
    import time

    from huberfit.runs import folder_state

    proc = subprocess.Popen([sys.executable, "-m", "huberfit", "train", "--runs-dir",
                             str(tmp_path), "data.n_samples=100000", "train.epochs=200",
                             "train.checkpoint_every=1", "output.images=false", "-q"])  # fmt: skip
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob("*/checkpoint.pt")) and time.time() < deadline:
            time.sleep(0.05)
        (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
        assert folder_state(folder).status == "running"
        r = CliRunner().invoke(app, ["train", "--resume", str(folder)])
        assert "a huberfit process is training in it now" in one_error_line(r)  # as runs
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = folder_state(folder)
    assert state.status == "interrupted" and state.resumable


def test_data_from_a_pipe_is_refused_in_one_line(tmp_path):
    r = CliRunner().invoke(app, ["train", "data.source=csv", "data.path=/dev/stdin",
                                 "data.target=y", "--runs-dir", str(tmp_path)])  # fmt: skip
    assert "not a regular file" in one_error_line(r)


@pytest.mark.parametrize(
    "damage",
    ["{not json", "[1]", '{"status": "completed", "loss": 5}', '{"status": "completed"}'],
)
def test_a_damaged_metrics_json_is_described_alike_by_runs_and_resume(run_dir, damage):
    """``huberfit runs`` and ``--resume`` judge the folder with one ``folder_state``: a
    metrics.json that is not one huberfit wrote, beside a checkpoint, is ``unreadable`` in
    both, with the words saying that ``--resume`` writes it anew (which it does)."""
    from huberfit.runs import folder_state, list_runs

    (run_dir / "metrics.json").write_text(damage)
    state = folder_state(run_dir)
    (row,) = list_runs(run_dir.parent)
    assert (row["status"], row["detail"]) == ("unreadable", state.detail) and state.resumable
    assert state.detail.endswith(f"huberfit train --resume {run_dir} writes metrics.json anew")
    r = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--quiet"])
    assert r.exit_code == 0, r.output
    assert folder_state(run_dir).status == "completed"
    assert list_runs(run_dir.parent)[0]["status"] == "completed"


def _words_of_runs(runner, folder: Path) -> str:
    r = runner.invoke(app, ["runs", "--runs-dir", str(folder.parent), "--json"])
    assert r.exit_code == 0, r.output
    (row,) = [x for x in json.loads(r.stdout) if Path(x["folder"]).name == folder.name]
    return row["detail"]


@pytest.mark.parametrize("damage", ["cut short", "metrics.json a folder", "nan weights",
                                    "no optimizer"])  # fmt: skip
def test_runs_and_resume_describe_a_damaged_folder_alike(run_dir, runner, damage):
    """A stopped run's checkpoint cut short (found without torch: a zip archive's end is
    missing), or holding a bad entry, and a metrics.json that is a folder: `runs` and
    `--resume` say the same, one line, no traceback, and `runs` no longer offers a resume
    that would fail."""
    ckpt = run_dir / "checkpoint.pt"
    if damage == "cut short":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage in ("nan weights", "no optimizer"):
        saved = torch.load(ckpt, weights_only=True)
        if damage == "nan weights":
            saved["model"]["weight"] = saved["model"]["weight"] * float("nan")
        else:
            del saved["optimizer"]
        torch.save(saved, ckpt)
        (run_dir / "metrics.json").unlink()  # as a run killed after this checkpoint
    else:
        (run_dir / "metrics.json").unlink()
        (run_dir / "metrics.json").mkdir()
    line = one_error_line(runner.invoke(app, ["train", "--resume", str(run_dir)]))
    note = _words_of_runs(runner, run_dir)
    assert line == f"error: {run_dir}: {note}"
    assert "continue it with" not in note
    assert "checkpoint.pt: not a" in note or "metrics.json is not a file" in note


def test_resuming_with_fewer_epochs_than_trained_says_nothing_is_trained(run_dir, runner):
    (run_dir / "metrics.json").unlink()  # as a run killed after its checkpoint leaves it
    r = runner.invoke(app, ["train", "--resume", str(run_dir), "train.epochs=1", "--json"])
    assert r.exit_code == 0, r.output
    assert "the run already has 2 epochs (train.epochs=1): nothing to train" in r.stderr
    assert json.loads(r.stdout)["epochs"] == 2
