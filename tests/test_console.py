"""What people read in the terminal: the run summary and the comparison table, rendered
into a plain console and read back."""

from __future__ import annotations

import io
import math

from rich.console import Console

from huberfit.sinks import render_comparison, render_runs, render_summary


def plain_console(width: int = 100) -> Console:
    """A colourless console writing into a string buffer."""
    return Console(width=width, file=io.StringIO(), color_system=None)


METRICS = {
    "status": "completed", "loss": "huber", "delta": 1.0, "optimizer": "sgd", "epochs": 3,
    "steps": 75, "seconds": 0.5, "samples_per_second": 9600.0, "device": "cpu",
    "coefficients": {"x0": 0.81, "x1": -1.39}, "intercept": 1.02,
    "true_coefficients": {"x0": 0.8, "x1": -1.4}, "true_intercept": 1.0,
    "coefficient_error": 0.02, "train": {"loss": 2.0, "mse": 41.0, "mae": 2.3, "r2": 0.2},
    "val": {"loss": 2.4, "mse": 57.0, "mae": 2.7, "r2": math.nan},
}  # fmt: skip


def test_summary_shows_fitted_beside_true_and_where_to_look(tmp_path):
    run = tmp_path / "quickstart-1"
    (run / "tb").mkdir(parents=True)
    render_summary(METRICS, str(run), console := plain_console())
    assert "tensorboard --logdir" not in console.file.getvalue()  # nothing to show there yet
    (run / "tb" / "events.out.tfevents.1.host").write_bytes(b"")
    console = plain_console()
    render_summary(METRICS, str(run), console)
    text = console.file.getvalue()
    assert "x0" in text and "0.81" in text and "0.8 " in text and "-1.4" in text
    assert "intercept" in text and "1.02" in text
    assert "status: completed" in text and "9,600 samples/s overall" in text
    assert "coefficient error vs truth (L2): 0.02" in text
    assert f"tensorboard --logdir {run}" in text
    assert "nan" in text  # an undefined R^2 is shown as such, not hidden


def _row(label, gap, mae, err):
    return {"label": label, "delta": 1.0, "train_objective": 1.0, "relative_gap": gap,
            "val_mse": 2.0, "val_mae": mae, "coefficient_error": err,
            "coefficients": {"x0": 2.0}, "intercept": 1.0, "epochs": 5, "seconds": 0.1}  # fmt: skip


def test_comparison_marks_the_best_of_each_column():
    console = plain_console(width=140)
    rows = [
        _row("huber", 1e-6, 2.5, 0.04),
        _row("mse", -2e-7, 2.4, 0.37),
        _row("l1", 3e-3, 2.6, 0.08),
    ]
    render_comparison(rows, "huber recovered the true coefficients best", "runs/compare-x", console)
    lines = console.file.getvalue().splitlines()
    huber = next(line for line in lines if line.strip().startswith("huber"))
    mse = next(line for line in lines if line.strip().startswith("mse"))
    assert "0.04*" in huber and "-2e-07*" in mse  # smallest error; smallest relative gap
    assert "2.4*" in mse
    assert any(line.startswith("verdict: huber") for line in lines)
    assert any("epochs run: 5 each;" in line for line in lines)


def test_comparison_marks_ties_on_the_screen_and_says_each_runs_epochs():
    """2.3341 and 2.3342 both show as 2.334: one star of the two looked arbitrary."""
    console = plain_console(width=300)
    rows = [_row("huber", 1e-6, 2.3342, 0.04), _row("l1", 3e-3, 2.3341, 0.08)]
    rows[1]["epochs"] = 10
    render_comparison(rows, "huber recovered the true coefficients best", "runs/compare-x", console)
    lines = console.file.getvalue().splitlines()
    for label in ("huber", "l1"):
        assert "2.334*" in next(line for line in lines if line.strip().startswith(label))
    assert any("epochs run: huber 5, l1 10;" in line for line in lines)


def test_runs_table_lists_comparisons_with_their_runs():
    console = plain_console(width=160)
    rows = [
        {"name": "c", "folder": "runs/compare-c-1", "kind": "comparison", "status": "comparison",
         "started": "2026-11-27 10:00:00", "verdict": "l1 won"},
        {"name": "mse", "folder": "runs/compare-c-1/mse", "kind": "run", "status": "completed",
         "parent": "compare-c-1", "started": "2026-11-27 10:00:00", "loss": "mse"},
        {"name": "l1", "folder": "runs/compare-c-1/l1", "kind": "run", "status": "completed",
         "parent": "compare-c-1", "started": "2026-11-27 10:00:00", "loss": "l1"},
        {"name": "junk", "folder": "runs/junk", "kind": "run", "status": "not a run",
         "detail": "no metrics.json or config.yaml"},
    ]  # fmt: skip
    render_runs(rows, "runs", console)
    text = console.file.getvalue()
    assert (
        "├ mse" in text
        and "└ l1" in text
        and "compare-c-1: l1 won" in text
        and "junk: no metrics.json" in text
    )


def test_commands_to_paste_quote_a_path_with_spaces(tmp_path):
    """``tensorboard --logdir runs x/...`` and ``--resume runs x/...`` broke when pasted
    into a shell (found by a fresh-eyes check)."""
    import shlex

    from huberfit.runs import folder_state

    run = tmp_path / "runs x" / "my (v2)-1"
    run.mkdir(parents=True)
    (run / "events.out.tfevents.1.host").write_bytes(b"")
    render_summary(METRICS, str(run), console := plain_console(width=300))
    line = next(t for t in console.file.getvalue().splitlines() if t.startswith("look at it"))
    assert shlex.split(line.split(": ", 1)[1]) == ["tensorboard", "--logdir", str(run)]
    import huberfit

    trained = huberfit.train(runs_dir=str(tmp_path / "runs x"), quiet=True,
                             overrides=["train.epochs=1", "output.tensorboard=false"])  # fmt: skip
    (trained.run_dir / "metrics.json").unlink()  # stopped before its end: resumable
    detail = folder_state(trained.run_dir).detail
    assert shlex.split(detail.split("continue it with: ")[1])[-1] == str(trained.run_dir)


def test_a_stopped_commands_resume_line_never_wraps_mid_command(monkeypatch):
    """On a terminal too narrow for it, the command goes on a line of its own (the
    terminal wrapped it mid-word); in a file it stays one line, as scripts read it."""
    from huberfit import cli

    line = ("interrupted: saved runs x/q-20261128-204423 (checkpoint at epoch 3); continue "
            "with: huberfit train --resume 'runs x/q-20261128-204423'")  # fmt: skip
    for terminal, expected in ((True, line.replace("; continue", "\ncontinue")), (False, line)):
        console = Console(file=io.StringIO(), width=80, force_terminal=terminal, color_system=None)
        monkeypatch.setattr(cli, "err", console)
        cli.say_resumable(line)
        assert console.file.getvalue() == expected + "\n"


def test_the_progress_bar_of_a_run_that_stopped_early_says_so():
    """L-BFGS done at epoch 3 of 100: the bar stayed at 'epoch 3/100', as if cut off."""
    from types import SimpleNamespace

    from huberfit.sinks import ConsoleSink

    for last, stopped in ((3, True), (100, False)):
        terminal = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
        sink = ConsoleSink(100, err=terminal)
        sink.start(0, 10)
        sink.epoch(SimpleNamespace(epoch=last, val=None, train_loss=0.5, samples_per_second=1e6))
        sink.close()
        final = terminal.file.getvalue().rsplit("\r", 1)[-1]
        assert f"epoch {last}/100" in final and ("stopped early" in final) is stopped
