"""What a person sees: every command in its default human mode (no --json, no --quiet), on
every shipped config, at 80 and 120 columns, read back as a person would read the screen;
and one real pseudo-terminal run with its live progress bar."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from huberfit import cli
from huberfit.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# the quick suite reads every screen at 80 columns, the narrower; the full one at 120 too
WIDTHS = [80, pytest.param(120, marks=pytest.mark.slow)]


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}cols")
def width(request, monkeypatch):
    """The command's console as a terminal of this many columns."""
    # terminals: prose wraps at words there (in a file or a pipe it stays one line)
    for name, stderr in (("out", False), ("err", True)):
        terminal = Console(stderr=stderr, highlight=False, soft_wrap=True, width=request.param,
                           force_terminal=True, color_system=None)  # fmt: skip
        monkeypatch.setattr(cli, name, terminal)
    return request.param


def readable(result, width: int) -> str:
    """The screen: exit 0, no traceback, no line wider than the terminal."""
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Traceback" not in text and "Error" not in text, text
    # a path is never cut (a person copies it); every other line fits the terminal
    too_wide = [line for line in text.splitlines() if len(line) > width and "/" not in line]
    assert not too_wide, "\n".join(too_wide)
    return text


def test_every_shipped_config_is_here():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_train_every_config_prints_a_summary(config, width, runner, tmp_path):
    r = runner.invoke(app, ["train", "--config", str(config), "--runs-dir", str(tmp_path),
                            "train.epochs=2"])  # fmt: skip
    text = readable(r, width)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "coefficients (original units)" in text
    for name in [*metrics["coefficients"], "intercept"]:
        assert re.search(rf"^[│ ]+{re.escape(name)}\s", text, re.M), name
    if metrics["true_coefficients"]:
        assert "true" in text and "fitted - true" in text
    assert f"run folder: {run_dir}" in text
    assert f"look at it: tensorboard --logdir {run_dir}" in text
    assert "val nan" not in text and "built-in quickstart" not in text
    if not metrics["val"]:
        assert "no validation rows" in text


@pytest.mark.slow
@pytest.mark.parametrize("args", [[], ["--config", str(ROOT / "configs/anscombe.yaml")]],
                         ids=["built-in", "anscombe"])  # fmt: skip
def test_compare_losses_table_verdict_and_where_to_look(args, width, runner, tmp_path):
    r = runner.invoke(app, ["compare-losses", *args, "--runs-dir", str(tmp_path), "--name",
                            "mine", "train.epochs=3"])  # fmt: skip
    text = readable(r, width)
    (parent,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert parent.name.startswith("compare-mine-")
    for label in ("huber", "mse", "l1"):
        assert re.search(rf"^\s*{label}\s", text, re.M), label
    assert "verdict:" in text
    assert f"look at it: tensorboard --logdir {parent}" in text
    notes = [line for line in text.splitlines() if line.endswith(": training")]
    assert notes == ["huber: training", "mse: training", "l1: training"]  # none repeated


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CSV run to predict and score with (Anscombe's set III)."""
    from typer.testing import CliRunner

    where = tmp_path_factory.mktemp("runs")
    r = CliRunner().invoke(app, ["train", "--config", str(ROOT / "configs/anscombe.yaml"),
                                 "--runs-dir", str(where), "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return next(p for p in where.iterdir() if p.is_dir())


def test_predict_eval_runs_in_human_mode(trained, width, runner, tmp_path):
    data = str(ROOT / "configs/data/anscombe3.csv")
    pred = runner.invoke(app, ["predict", "--run", str(trained), "--input", data])
    text = readable(pred, width)
    assert text.splitlines()[0] == "x,y,prediction" and len(text.splitlines()) == 12
    scores = readable(runner.invoke(app, ["eval", "--run", str(trained), "--input", data]), width)
    assert "objective: huber (delta 0.5)" in scores and "R^2" in scores
    listing = readable(runner.invoke(app, ["runs", "--runs-dir", str(trained.parent)]), width)
    assert trained.name in listing and "completed" in listing
    empty = readable(runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)]), width)
    assert "no runs in" in empty


def test_config_commands_in_human_mode(width, runner, tmp_path):
    show = readable(runner.invoke(app, ["config", "show", "optimizer.name=lbfgs"]), width)
    assert "lr: 1.0" in show  # each optimizer's own default when lr is not given
    ok = readable(runner.invoke(app, ["config", "validate", "--config", str(CONFIGS[0])]), width)
    assert ok.strip() == "ok"
    init = readable(runner.invoke(app, ["config", "init", str(tmp_path / "x.yaml")]), width)
    assert "huberfit train --config" in init
    schema = runner.invoke(app, ["config", "schema"])
    assert schema.exit_code == 0 and json.loads(schema.stdout)["title"] == "huberfit config"


@pytest.mark.slow
def test_bench_in_human_mode(width, runner):
    r = runner.invoke(app, ["bench", "--rows", "20000", "--features", "4", "--epochs", "1"])
    readable(r, width)
    # the table and its footer on stdout (the progress lines on stderr say "tutorial loop")
    assert re.search(r"^│ \(a\) tutorial loop +│ +256 │", r.stdout, re.M), r.stdout
    assert re.search(r"^│ \(a\) tutorial loop +│ +4,096 │", r.stdout, re.M), r.stdout
    assert re.search(r"^machine: .*, \d+ CPUs, \d+ threads$", r.stdout, re.M), r.stdout
    assert re.search(r"^software: torch .* \(CPU capability \w+\)", r.stdout, re.M), r.stdout
    assert re.search(r"^medians: \(a\) and \(b'\) of 1 epoch, ", r.stdout, re.M), r.stdout


def test_override_errors_name_the_override_not_the_built_in(runner):
    r = runner.invoke(app, ["train", "optimizer.lr=-1"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: optimizer.lr must be > 0; got -1"
    r = runner.invoke(app, ["config", "show", "--config", str(CONFIGS[0]), "seed=x"])
    assert r.stderr.strip() == "error: override: seed must be an integer; got 'x'"


@pytest.mark.slow
def test_a_real_terminal_shows_live_progress_and_the_summary(tmp_path):
    """``huberfit train`` in a pseudo-terminal: the bar moves within epochs (several frames
    per run), stays on screen at the end, and the summary follows."""
    env = {**os.environ, "COLUMNS": "100", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("HUBERFIT_DEBUG", None)
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "huberfit", "train", "--runs-dir", str(tmp_path),
         "data.n_samples=20000", "train.epochs=20", "train.batch_size=16"],
        stdin=child, stdout=child, stderr=child, env=env, cwd=tmp_path, close_fds=True,
    )  # fmt: skip
    os.close(child)
    screen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace"))
    frames = re.findall(r"epoch (\d+)/20", text)
    assert len(set(frames)) >= 3, frames  # redrawn as it goes, not once at the end
    assert "epoch 20/20" in text  # the finished bar stays
    assert "Traceback" not in text
    assert "coefficients (original units)" in text and "fitted - true" in text
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert f"tensorboard --logdir {run_dir.name}" in text or str(run_dir) in text


@pytest.mark.slow
def test_sweep_prints_its_trials_the_best_and_where_to_look(width, runner, tmp_path):
    r = runner.invoke(app, ["sweep", "--runs-dir", str(tmp_path), "optimizer.lr=0.01,0.1",
                            "train.batch_size=32,64", "train.epochs=2", "data.n_samples=300"])  # fmt: skip
    text = readable(r, width)
    (parent,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for name in ("lr0.01-bs32", "lr0.01-bs64", "lr0.1-bs32", "lr0.1-bs64"):
        assert re.search(rf"^\s*\d+\s+{name}\s+complete", text, re.M), name
        assert "trial " in text and name in text
    assert re.search(r"^best: lr0\.\S+\s+val\.loss", text, re.M)
    assert str(parent / "best.yaml") in text.replace("\n", "")
    assert f"look at it: tensorboard --logdir {parent}" in text


def test_no_tensorboard_hint_without_event_files(runner, tmp_path):
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "train.epochs=2",
                            "output.tensorboard=false"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not list(run_dir.rglob("events.out.tfevents.*"))
    assert f"run folder: {run_dir}" in r.stdout and "tensorboard --logdir" not in r.stdout


@pytest.mark.slow  # a real process: its stderr is a pipe, not a terminal
def test_a_log_file_keeps_each_warning_and_note_on_one_line(tmp_path):
    """Written to a file (not a terminal), a warning or note is one line, as an ``error:``
    line is: it was cut at 80 columns with a trailing space (found by a fresh-eyes check)."""
    proc = subprocess.run(
        [sys.executable, "-m", "huberfit", "train", "--runs-dir", str(tmp_path / "a b"),
         "train.epochs=2", "output.tensorboard=false"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "40"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("device: ") and lines[0].endswith(
        "   data: synthetic (2,000 rows, 3 features)"
    )
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert warning.endswith("optimizer.name=lbfgs dtype=float64"), lines
    assert not [line for line in lines if line != line.rstrip()]
