"""The fault injector: SIGINT, SIGTERM and SIGKILL at every named stage of a run
(``HUBERFIT_FAULT=stage:SIGNAL[:n]``, see huberfit/interrupts.py), then what is left is
judged: a folder that resumes to the uninterrupted run's coefficients, bit for bit, or
(killed before its first checkpoint) one that ``--resume`` and ``huberfit runs`` describe
in the same words; never a temporary file once it is resumed. Also: the second copy of a
job-wide Ctrl-C under torchrun, Ctrl-C inside an import, damaged checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from huberfit import interrupts
from huberfit.artifacts import load_resume
from huberfit.cli import app
from huberfit.config import load_config
from huberfit.experiment import train_run
from huberfit.runs import folder_state, list_runs
from huberfit.sinks import ConsoleSink

pytestmark = pytest.mark.slow

# float64 SGD with momentum and a schedule on the CPU: resume is bit-exact, so "the same
# final coefficients" is equality. 13 steps an epoch, each logged: "step" is mid-epoch.
BASE = ["dtype=float64", "data.n_samples=200", "train.batch_size=12", "train.epochs=3",
        "train.log_every_steps=1", "optimizer.momentum=0.9", "scheduler.name=cosine",
        "output.tensorboard=false", "output.images=false", "train.checkpoint_every=1"]  # fmt: skip
STAGES = ["folder", "step", "checkpoint", "scoring", "reference", "pictures"]


def quiet() -> ConsoleSink:
    return ConsoleSink(1, quiet=True)


def coefficients(metrics: dict) -> list[float]:
    return [*metrics["coefficients"].values(), metrics["intercept"]]


def extra(stage: str) -> list[str]:
    return ["output.images=true"] if stage == "pictures" else []


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[float]:
    cfg = load_config(None, BASE)
    out = train_run(cfg, quiet(), runs_dir=str(tmp_path_factory.mktemp("straight")))
    assert out.metrics["status"] == "completed"
    return coefficients(out.metrics)


def temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if p.name.endswith(".tmp")]


def resume_to_the_end(run_dir: Path) -> dict:
    cfg, ckpt = load_resume(str(run_dir), [])
    out = train_run(cfg, quiet(), run_dir=run_dir, resume=ckpt)
    assert out.metrics["status"] == "completed"
    assert folder_state(run_dir).status == "completed"
    assert temporary_files(run_dir) == []
    return out.metrics


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_signal_at_any_stage_leaves_a_run_that_resumes_exactly(
    tmp_path, monkeypatch, straight, stage, sig
):
    monkeypatch.setenv("HUBERFIT_FAULT", f"{stage}:{sig}")
    monkeypatch.setattr(interrupts, "_fault_seen", {})
    cfg = load_config(None, BASE + extra(stage))
    try:
        out = train_run(cfg, quiet(), runs_dir=str(tmp_path))
        assert out.metrics["status"] == "interrupted"  # in fit: after its step; or the reference
        assert out.metrics["optimum"] is None and "interrupted" in out.metrics["optimum_note"]
    except interrupts.Interrupted as exc:  # stopped elsewhere: the state reached is saved
        assert not exc.hard and exc.saved_epoch is not None
    (run_dir,) = tmp_path.iterdir()
    assert temporary_files(run_dir) == []
    assert folder_state(run_dir).status == "interrupted"
    monkeypatch.delenv("HUBERFIT_FAULT")
    assert coefficients(resume_to_the_end(run_dir)) == straight


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, straight
):
    monkeypatch.setattr(interrupts, "SAME_REQUEST_SECONDS", 0.0)  # no window: a new request
    console = quiet()

    def step(step, loss):
        if step == 20:  # mid-epoch 2: stop, then stop at once
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)

    console.step = step
    with pytest.raises(interrupts.Interrupted) as caught:
        train_run(load_config(None, BASE), console, runs_dir=str(tmp_path))
    assert caught.value.hard and caught.value.saved_epoch == 1  # nothing new was written
    (run_dir,) = tmp_path.iterdir()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    assert folder_state(run_dir).status == "interrupted" and temporary_files(run_dir) == []
    assert coefficients(resume_to_the_end(run_dir)) == straight


# checkpoint:2: killed while writing the second checkpoint (the first one stays)
KILLS = [("folder", None), ("step", "resumes"), ("checkpoint:2", "resumes"),
         ("scoring", "resumes"), ("reference", "resumes"), ("pictures", "resumes")]  # fmt: skip


@pytest.mark.parametrize(("stage", "then"), KILLS)
def test_a_kill_at_any_stage_leaves_a_resumable_or_a_described_folder(
    tmp_path, runner, straight, stage, then
):
    name, _, nth = stage.partition(":")
    fault = f"{name}:SIGKILL" + (f":{nth}" if nth else "")
    cmd = [sys.executable, "-m", "huberfit", "train", "--runs-dir", str(tmp_path), *BASE,
           *extra(name)]  # fmt: skip
    env = {**os.environ, "HUBERFIT_FAULT": fault, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    state = folder_state(run_dir)
    if then == "resumes":
        assert state.resumable and state.status == "interrupted"
        if name == "checkpoint":  # the half-written file is ignored, and goes at the next write
            assert [n.startswith(".checkpoint.pt.") for n in temporary_files(run_dir)] == [True]
        assert coefficients(resume_to_the_end(run_dir)) == straight
        return
    # killed before its first checkpoint: both commands say so, in the same words
    assert not state.resumable and state.status == "incomplete"
    (row,) = list_runs(tmp_path)
    assert (row["status"], row["detail"]) == (state.status, state.detail)
    r = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert r.exit_code == 1 and r.stderr == f"error: {run_dir}: {state.detail}\n", r.output
    assert "Traceback" not in r.output


def processes_naming(text: str) -> list[int]:
    """The processes whose command line holds ``text`` (a forked child has its parent's)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            pass
    return found


def gone(text: str) -> bool:
    deadline = time.time() + 10  # a killed process leaves within milliseconds
    while processes_naming(text) and time.time() < deadline:
        time.sleep(0.05)
    return not processes_naming(text)


# 2000 x 60 training cells: the reference is solved in a child process (metrics.APART_CELLS)
LARGE = ["data.n_features=60", "data.n_samples=2500", "train.epochs=2", "output.images=false",
         "output.tensorboard=false"]  # fmt: skip


@pytest.mark.skipif(sys.platform != "linux", reason="the reference's own process: Linux")
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_a_signal_while_the_reference_is_solved_is_answered_at_once(tmp_path, sig):
    """A long native call (LAPACK, HiGHS: minutes on a large problem) holds off Python's
    signal handlers: the reference is solved in a child process, so Ctrl-C stops waiting
    for it at once and keeps the run (status interrupted, every score but the reference;
    ``--resume`` solves it), the process exits normally (130, no crash at exit), and no
    child is left behind, even when the parent is killed."""
    cmd = [sys.executable, "-m", "huberfit", "train", "--runs-dir", str(tmp_path), *LARGE]
    env = {**os.environ, "HUBERFIT_FAULT": f"reference:{sig}", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert gone(str(tmp_path))
    (run_dir,) = tmp_path.iterdir()
    if sig == "SIGKILL":
        assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
        assert folder_state(run_dir).status == "interrupted"
    else:
        assert p.returncode == 130 and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert p.stderr.splitlines()[-1] == (
            f"interrupted: saved {run_dir}; continue with: huberfit train --resume {run_dir}"
        )
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert (metrics["status"], metrics["epochs"], metrics["optimum"]) == (
            "interrupted",
            2,
            None,
        )
        assert metrics["train"]["loss"] > 0 and metrics["val"]["loss"] > 0
        assert "--resume" in metrics["optimum_note"] and "optimum: not computed" in p.stdout
    cfg, ckpt = load_resume(str(run_dir), [])
    out = train_run(cfg, quiet(), run_dir=run_dir, resume=ckpt)
    assert out.metrics["status"] == "completed" and out.metrics["optimum"]["objective"] > 0
    assert out.metrics["standard_errors"] is not None and out.metrics["epochs"] == 2


@pytest.mark.skipif(sys.platform != "linux", reason="the reference's own process: Linux")
def test_a_comparison_stops_waiting_for_a_reference_at_the_first_ctrl_c(
    tmp_path, runner, monkeypatch
):
    """In a sweep (here compare-losses) a first request only asks the trial to stop after
    its step: the wait for the reference is not a step, so it ends there too, and the
    trial is interrupted (``sweep --resume`` continues it), not completed minutes later."""
    from huberfit import cli

    monkeypatch.setitem(cli._said, "interrupted", False)  # said once a process: reset after
    monkeypatch.setenv("HUBERFIT_FAULT", "reference:SIGINT")
    monkeypatch.setattr(interrupts, "_fault_seen", {})
    args = ["compare-losses", "--losses", "huber", "--runs-dir", str(tmp_path), "-q", *LARGE,
            "data.true_weights=null"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 130, r.output
    (parent,) = tmp_path.iterdir()
    assert folder_state(parent / "huber").metrics["optimum"] is None
    monkeypatch.delenv("HUBERFIT_FAULT")
    r = runner.invoke(app, ["sweep", "--resume", str(parent), "-q"])
    assert r.exit_code == 0, r.output
    assert folder_state(parent / "huber").metrics["optimum"]["objective"] > 0


def test_a_signal_while_auto_delta_is_fitted_is_answered_before_any_folder(tmp_path):
    """``loss.delta: auto`` fits least squares before the run folder exists (minutes on a
    large problem): a signal then ends the command at once, with nothing written."""
    cmd = [sys.executable, "-m", "huberfit", "train", "--runs-dir", str(tmp_path / "r"),
           *LARGE, "loss.delta=auto"]  # fmt: skip
    env = {**os.environ, "HUBERFIT_FAULT": "delta:SIGTERM", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 130 and p.stderr.splitlines()[-1] == "interrupted", p.stderr[-2000:]
    assert not (tmp_path / "r").exists() and gone(str(tmp_path))


def no_fork() -> int:
    raise OSError(12, "Cannot allocate memory")


@pytest.mark.skipif(sys.platform != "linux", reason="the reference's own process: Linux")
def test_apart_answers_a_signal_at_once_and_ends_its_child(tmp_path):
    """The wait for ``apart``'s child is where the signal lands: the child (here busy for
    a minute) is killed and never finishes; its answers and errors come back otherwise."""
    marker = tmp_path / "finished"

    def busy() -> None:
        time.sleep(60)
        marker.write_text("the child was not stopped")

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    with interrupts.run_signals():
        assert interrupts.apart("test", lambda: {"x": [1.5]}) == {"x": [1.5]}
        with pytest.raises(ZeroDivisionError):
            interrupts.apart("test", lambda: 1 / 0)
        with pytest.raises(interrupts.Lost, match="killed by signal 9"):
            interrupts.apart("test", lambda: os.kill(os.getpid(), signal.SIGKILL))
        with pytest.MonkeyPatch.context() as m:  # no memory for a process: computed here
            m.setattr(os, "fork", no_fork)
            assert interrupts.apart("test", lambda: os.getpid()) == os.getpid()
        timer.start()
        with pytest.raises(interrupts.Interrupted):
            interrupts.apart("test", busy)
    assert not marker.exists()  # killed, and reaped: it never will


def test_the_command_exits_130_with_one_line_saying_how_to_resume(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("HUBERFIT_FAULT", "scoring:SIGTERM")
    monkeypatch.setattr(interrupts, "_fault_seen", {})
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), *BASE])
    (run_dir,) = tmp_path.iterdir()
    assert r.exit_code == 130, r.output
    assert r.stderr.strip().splitlines()[-1] == (
        f"interrupted: saved {run_dir} (checkpoint at epoch 3); continue with: "
        f"huberfit train --resume {run_dir}"
    )
    assert "Traceback" not in r.output and r.stdout == ""


def test_a_repeat_within_the_window_is_the_same_request_a_later_one_stops_at_once(
    monkeypatch,
):
    """A job-wide Ctrl-C reaches a torchrun worker twice, from the process group and
    from torchrun's agent: the second copy must not mean "stop at once"."""
    policy = interrupts.Policy()
    with policy.in_fit():
        policy.handle(signal.SIGINT, None)
        assert policy.stop.is_set() and not policy.hard
        policy.handle(signal.SIGINT, None)  # the forwarded copy: ignored
        assert not policy.hard
        now = time.monotonic() + interrupts.SAME_REQUEST_SECONDS + 1
        monkeypatch.setattr(interrupts.time, "monotonic", lambda: now)
        with pytest.raises(interrupts.Interrupted) as caught:
            policy.handle(signal.SIGTERM, None)  # a genuine second request
        assert caught.value.hard


START = """\
import signal, sys
import huberfit
before = sorted(m for m in sys.modules if m.startswith("huberfit"))
import huberfit.__main__
print(before, signal.getsignal(signal.SIGINT).__name__, signal.getsignal(signal.SIGTERM).__name__)
"""


def test_the_command_notes_ctrl_c_from_its_first_import():
    """The ``huberfit`` script imports ``huberfit`` and then ``huberfit.__main__`` before
    ``main()``: a Ctrl-C in between gives Python's traceback. The package imports nothing,
    and ``huberfit.__main__`` notes signals from its first statements, on import."""
    p = subprocess.run([sys.executable, "-c", START], capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["['huberfit']", "_note", "_note"], p.stderr[-2000:]


def test_ctrl_c_inside_an_import_waits_for_the_import_to_finish(tmp_path, monkeypatch):
    """Interrupting an import half-way leaves a module without its names (numpy without
    ``multiply``): the interrupt is raised once the import has finished."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\n"
        "first = 1\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)\n"
        "last = 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with interrupts.run_signals(), pytest.raises(interrupts.Interrupted):
        try:
            import slow_module  # noqa: F401
        except interrupts.Interrupted:
            pytest.fail("interrupted inside the import")
        time.sleep(5)  # the interrupt arrives here, right after the import
    assert sys.modules["slow_module"].last == 2
    del sys.modules["slow_module"]


# MSE's SGD at this lr doubles the residuals each step: float64 overflows in epoch 31; the
# last finite checkpoint (epoch 20) is still far enough from overflow to recover
DIVERGES = ["loss.name=mse", "optimizer.lr=1.5", "dtype=float64", "train.epochs=60",
            "train.batch_size=25", "data.n_samples=500", "train.checkpoint_every=20",
            "output.images=false", "output.tensorboard=false"]  # fmt: skip


def test_a_diverged_run_keeps_its_last_finite_checkpoint_and_resumes_with_a_smaller_lr(
    tmp_path, runner, monkeypatch
):
    monkeypatch.setenv("HUBERFIT_FAULT", "scoring:SIGINT")  # interrupted after diverging
    monkeypatch.setattr(interrupts, "_fault_seen", {})
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "stopped"), *DIVERGES])
    assert r.exit_code == 130, r.output
    (run_dir,) = (tmp_path / "stopped").iterdir()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 20
    monkeypatch.delenv("HUBERFIT_FAULT")
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), *DIVERGES])
    assert r.exit_code == 1 and "diverged" in r.stderr, r.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert ckpt["state"]["epoch"] == 20
    r = runner.invoke(app, ["train", "--resume", str(run_dir)])  # as it was: diverges again
    assert r.exit_code == 1 and "with a smaller optimizer.lr" in r.stderr, r.output
    r = runner.invoke(app, ["train", "--resume", str(run_dir), "optimizer.lr=0.1", "--json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert metrics["status"] == "completed" and metrics["lr"] == 0.1
    assert metrics["epochs"] == 60


# float32 MSE at lr=3 on 40 training rows: the weights grow ~10x a step; the last finite
# checkpoint (epoch 6) holds weights ~1e19, whose squared residuals overflow float32
OVERFLOWS = ["loss.name=mse", "optimizer.lr=3", "data.n_samples=50", "train.batch_size=10",
             "train.checkpoint_every=1", "train.epochs=30", "output.images=false",
             "output.tensorboard=false"]  # fmt: skip


def test_a_last_finite_checkpoint_that_overflows_is_called_unusable_not_resumable(tmp_path, runner):
    """No learning rate resumes a checkpoint whose loss already overflows the dtype (the
    first step's loss comes before any lr acts): the diverged run, and --resume with any
    lr, say so and name a smaller lr for a new run, rather than suggest resuming."""
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), *OVERFLOWS])
    (run_dir,) = tmp_path.iterdir()
    assert r.exit_code == 1 and "try a smaller optimizer.lr" not in r.stderr, r.output
    unusable = ("its last finite checkpoint (epoch 6) is itself unusable: its loss overflows "
                "float32 (weights up to 1.3e+19) at any learning rate; train a new run with a "
                "smaller optimizer.lr, e.g. optimizer.lr=0.3")  # fmt: skip
    assert unusable in r.stderr, r.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["checkpoint_usable"] is False
    for lr in ([], ["optimizer.lr=1e-9"]):
        r = runner.invoke(app, ["train", "--resume", str(run_dir), *lr])
        assert r.exit_code == 1 and unusable in r.stderr and len(r.stderr.splitlines()) == 1
    del metrics["checkpoint_usable"]  # a folder that does not say: found out on resuming
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    r = runner.invoke(app, ["train", "--resume", str(run_dir), "optimizer.lr=1e-9"])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines()[-1] == f"error: {run_dir}: {unusable}", r.output
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics  # nothing rewritten


RANK_SCRIPT = """\
import os, sys
from huberfit.__main__ import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
finally:
    with open(f"exit.{os.environ['RANK']}", "w") as fh:
        fh.write(str(code))
sys.exit(code)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX")
def test_a_job_wide_ctrl_c_under_torchrun_saves_a_run_that_resumes(tmp_path):
    """``kill -INT`` of torchrun's process group (a terminal's Ctrl-C, a scheduler's
    cancel): each worker gets SIGINT twice, from the group and from torchrun's agent. Every
    worker must end 130 (not "stop at once" on the second copy) with a checkpoint saved.
    (torchrun itself exits 1: its agent re-raises the signal it got.)"""
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "rank.py", "train", "--runs-dir", "k", "train.epochs=100000", "data.n_samples=400",
           "output.images=false", "output.tensorboard=false", "train.checkpoint_every=1"]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HUBERFIT_DIST_TIMEOUT": "20",
        "TMPDIR": str(tmp_path),
    }  # torchrun leaves a torchelastic_* folder there
    try:
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    except OSError as exc:
        pytest.skip(f"torchrun cannot start here: {exc}")
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list((tmp_path / "k").glob("*/checkpoint.pt")):
            if p.poll() is not None:
                pytest.skip(f"torchrun cannot start here: {p.communicate()[1][-500:]}")
            time.sleep(0.1)
        os.killpg(p.pid, signal.SIGINT)  # the whole job, launcher included
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    codes = [(tmp_path / f"exit.{rank}").read_text() for rank in (0, 1)]
    assert codes == ["130", "130"], stderr[-3000:]
    assert stderr.count("interrupted: saved") == 1  # rank 0 alone says so
    (run_dir,) = (tmp_path / "k").iterdir()
    state = folder_state(run_dir)
    assert state.status == "interrupted" and state.metrics["world_size"] == 2
    done = state.metrics["epochs"]
    cfg, ckpt = load_resume(str(run_dir), [f"train.epochs={done + 2}"])
    out = train_run(cfg, quiet(), run_dir=run_dir, resume=ckpt)  # one process, from its state
    assert out.metrics["status"] == "completed" and out.metrics["epochs"] == done + 2
