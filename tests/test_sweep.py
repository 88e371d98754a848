"""huberfit sweep: the search space and its validation, trials in one parent folder, the
trials table and best.yaml, pruning, failing trials, Ctrl-C and --resume, several workers
on the embedded storage, and the lessons' claims (zero_grad, accumulation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from huberfit.cli import app
from huberfit.config import load_config
from huberfit.errors import ConfigError
from huberfit.experiment import train_run
from huberfit.sinks import ConsoleSink
from huberfit.sweep import build_plan, split_args

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["data.n_samples=300", "train.epochs=3", "output.images=false"]


def plan_of(args: list[str], config: Path | None = None, **options):
    swept, plain = split_args(args)
    cfg = load_config(config, plain)
    return build_plan(cfg, cfg.model_dump(mode="json"), swept, str(config or ""), **options)


def sweep(runner, tmp_path, *args: str):
    result = runner.invoke(app, ["sweep", "--runs-dir", str(tmp_path), *SMALL, *args])
    (parent,) = [p for p in tmp_path.iterdir() if p.name.startswith("sweep-")]
    return result, parent


def test_command_line_choices_ranges_and_fixed_values():
    plan = plan_of(["optimizer.lr=1e-3,1e-2,0.1", "train.batch_size=64,256", "seed=3"])
    assert [(d.key, d.choices) for d in plan.dims] == [
        ("optimizer.lr", [1e-3, 1e-2, 0.1]),
        ("train.batch_size", [64, 256]),
    ]
    assert plan.sampler == "grid" and plan.trials == 6 and len(plan.points) == 6
    assert plan.base["seed"] == 3 and plan.metric == "val.loss"
    plan = plan_of(["optimizer.lr=1e-4..1e-1:log", "train.batch_size=16..256"], trials=5)
    lr, bs = plan.dims
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-4, 1e-1, True, False)
    assert (bs.low, bs.high, bs.integer) == (16, 256, True)
    assert plan.sampler == "tpe" and plan.trials == 5 and not plan.points


def test_every_problem_of_a_space_at_once(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text("sweep:\n  params:\n    optimizer.lrr: [0.1]\n    train.epochs: []\n")
    with pytest.raises(ConfigError) as info:
        plan_of(["train.batch_size=64,abc", "loss.name=1..2", "optimizer.lr=0.1..0.01"], config)
    message = str(info.value)
    assert "\n" not in message
    assert f"{config}: sweep.params.optimizer.lrr: unknown key" in message
    assert "did you mean 'optimizer.lr'" in message
    assert f"{config}: sweep.params.train.epochs: no choices" in message
    assert 'train.batch_size="abc"' in message  # the value and what is wrong with it
    assert "loss.name: a range needs a number key" in message
    assert "low (0.1) must be below high (0.01)" in message
    with pytest.raises(ConfigError, match="a grid needs choices"):
        plan_of(["optimizer.lr=1e-3..1e-1"], sampler="grid")
    with pytest.raises(ConfigError, match="nothing to sweep"):
        plan_of([])
    with pytest.raises(ConfigError, match="name cannot be swept"):
        plan_of(["name=a,b"])
    with pytest.raises(ConfigError, match="compares different objectives"):
        plan_of(["loss.name=huber,mse"])


@pytest.mark.slow
def test_a_grid_sweep_table_best_yaml_and_tensorboard(runner, tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    result, parent = sweep(runner, tmp_path, "optimizer.lr=0.01,0.1", "train.batch_size=32,128")
    assert result.exit_code == 0, result.output
    names = {"lr0.01-bs32", "lr0.01-bs128", "lr0.1-bs32", "lr0.1-bs128"}
    assert names <= {p.name for p in parent.iterdir()}
    trials = pd.read_csv(parent / "trials.csv")
    assert set(trials["name"]) == names and list(trials["state"]) == ["complete"] * 4
    assert list(trials["val.loss"]) == sorted(trials["val.loss"])  # best first
    assert pd.read_parquet(parent / "trials.parquet")["name"].tolist() == trials["name"].tolist()
    best = trials.iloc[0]
    assert f"best: {best['name']}" in result.output and "tensorboard --logdir" in result.output
    # best.yaml trains again to the same metric
    retrain = train_run(load_config(parent / "best.yaml"), ConsoleSink(1, quiet=True),
                        runs_dir=str(tmp_path / "again"))  # fmt: skip
    assert retrain.metrics["val"]["loss"] == pytest.approx(best["val.loss"], rel=1e-12)
    # one parent that TensorBoard overlays, the swept keys ticked in HPARAMS
    mux = EventMultiplexer().AddRunsFromDirectory(str(parent))
    mux.Reload()
    assert names <= set(mux.Runs())
    for name in names:
        content = mux.GetAccumulator(name).PluginTagToContent("hparams")
        infos = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        ticked = {h.name for h in infos.experiment.hparam_infos if h.differs}
        assert {"lr", "batch_size"} <= ticked
    # huberfit runs: the sweep, its trials under it
    from huberfit.runs import list_runs

    rows = list_runs(tmp_path)
    (row,) = [r for r in rows if r["kind"] == "sweep"]
    assert row["name"] == parent.name and f"best {best['name']}: val.loss" in row["verdict"]
    assert {r["name"] for r in rows if r.get("parent") == parent.name} == names


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_sweep_goes_on(runner, tmp_path):
    result, parent = sweep(
        runner, tmp_path, "data.n_samples=2,300", "optimizer.lr=0.05,100", "loss.name=mse"
    )
    assert result.exit_code == 0, result.output
    trials = pd.read_csv(parent / "trials.csv", keep_default_na=False)
    by_name = dict(zip(trials["name"], zip(trials["state"], trials["note"], strict=True),
                       strict=True))  # fmt: skip
    assert by_name["n_samples_300-lr0.05"][0] == "complete"
    state, note = by_name["n_samples_2-lr0.05"]
    assert state == "failed" and "rows" in note and "\n" not in note
    assert by_name["n_samples_300-lr100"][0] == "failed"
    assert "diverged" in by_name["n_samples_300-lr100"][1]
    assert not (parent / "n_samples_2-lr0.05").exists()  # nothing was written: no folder
    assert trials.iloc[0]["name"] == "n_samples_300-lr0.05"  # complete trials first


@pytest.mark.slow
def test_hopeless_trials_are_pruned_unless_told_not_to(runner, tmp_path):
    lrs = "optimizer.lr=0.3,0.2,0.1,0.15,0.25,0.0001,0.00001"
    result, parent = sweep(runner, tmp_path / "a", lrs, "train.epochs=8")
    assert result.exit_code == 0, result.output
    trials = pd.read_csv(parent / "trials.csv").set_index("name")
    assert trials.loc["lr1e-05", "state"] == "pruned"
    assert trials.loc["lr1e-05", "epochs"] < 8
    metrics = json.loads((parent / "lr1e-05" / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and "median" in metrics["message"]
    result, parent = sweep(runner, tmp_path / "b", lrs, "train.epochs=8", "--no-prune")
    assert set(pd.read_csv(parent / "trials.csv")["state"]) == {"complete"}


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes_without_rerunning(tmp_path):
    args = [sys.executable, "-m", "huberfit", "sweep", "--runs-dir", str(tmp_path),
            "data.n_samples=20000", "train.epochs=40", "output.images=false",
            "optimizer.lr=0.01,0.02,0.03"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    first = None
    while time.time() < deadline and first is None:
        found = list(tmp_path.glob("sweep-*/lr0.01/metrics.json"))
        first = found[0] if found else None
        time.sleep(0.05)
    assert first is not None, proc.communicate()
    time.sleep(0.3)  # into the second trial
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "continue with: huberfit sweep --resume" in stderr and "Traceback" not in stderr
    parent = first.parent.parent
    stamp = first.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-m", "huberfit", "sweep", "--resume", str(parent)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    trials = pd.read_csv(parent / "trials.csv")
    assert sorted(trials["name"]) == ["lr0.01", "lr0.02", "lr0.03"]
    assert set(trials["state"]) == {"complete"}
    assert first.stat().st_mtime_ns == stamp  # the finished trial did not run again
    second = json.loads((parent / "lr0.02" / "metrics.json").read_text())
    assert second["epochs"] == 40 and second["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_two_workers_share_the_embedded_storage_and_run_each_trial_once(tmp_path, sampler):
    space = (["optimizer.lr=0.01,0.02,0.05,0.1", "train.batch_size=32,64"] if sampler == "grid"
             else ["optimizer.lr=0.001..0.3:log", "--trials", "8"])  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "huberfit", "sweep", "--runs-dir", str(tmp_path), "--workers",
         "2", "--json", "--no-prune", *SMALL, *space], capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (parent,) = tmp_path.glob("sweep-*")
    trials = json.loads(done.stdout)["trials"]
    assert len(trials) == 8 and {t["state"] for t in trials} == {"complete"}
    assert len({t["trial"] for t in trials}) == 8 and len({t["run_dir"] for t in trials}) == 8
    if sampler == "grid":  # every point once
        points = {(t["optimizer.lr"], t["train.batch_size"]) for t in trials}
        assert len(points) == 8
    folders = [p for p in parent.iterdir() if p.is_dir()]
    assert len(folders) == 8 and all((p / "metrics.json").is_file() for p in folders)


@pytest.mark.slow
def test_zero_grad_false_adds_up_gradients_like_pytorch_fused_or_not():
    """Without zero_grad, .grad is the sum of every step's gradient so far: the fused path
    equals autograd, and both equal a plain PyTorch loop that never calls zero_grad."""
    common = ["dtype=float64", "optimizer.name=sgd", "optimizer.lr=0.01", "train.epochs=2",
              "data.n_samples=200", "train.zero_grad=false", "data.val_fraction=0"]  # fmt: skip
    from huberfit.data.dataset import load_data, make_batches
    from huberfit.experiment import fit_in_memory

    weights = {}
    for flag in ("true", "false"):
        cfg = load_config(None, [*common, f"train.fused={flag}"])
        data = load_data(cfg.data, cfg.seed, cfg.dtype, cfg.model.bias)
        model, _ = fit_in_memory(cfg, data)
        weights[flag] = torch.cat([model.weight.view(-1), model.bias]).detach()
    torch.testing.assert_close(weights["true"], weights["false"], rtol=1e-12, atol=1e-14)
    # the same steps by hand: one nn.Linear, HuberLoss, SGD, no zero_grad() anywhere
    from huberfit.losses import HuberLoss
    from huberfit.model import build_model

    model = build_model(len(data.feature_names), True, cfg.seed, torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train, _ = make_batches(cfg, data, torch.device("cpu"))
    loss_fn = HuberLoss(cfg.loss.delta / data.scaling.y_scale)
    for epoch in range(2):
        for item, _ in train.epoch(epoch):
            xb, yb = train.take(item)
            loss_fn(model(xb), yb).backward()
            opt.step()
    by_hand = torch.cat([model.weight.view(-1), model.bias]).detach()
    torch.testing.assert_close(weights["false"], by_hand, rtol=1e-12, atol=1e-14)
    right = load_config(None, [*common, "train.zero_grad=true"])
    model, _ = fit_in_memory(right, data)
    assert not torch.allclose(torch.cat([model.weight.view(-1), model.bias]), by_hand)


def test_zero_grad_false_is_refused_for_lbfgs():
    with pytest.raises(ConfigError, match="train.zero_grad: false is a lesson"):
        load_config(None, ["train.zero_grad=false", "optimizer.name=lbfgs"])


def test_accumulation_equals_a_large_batch_step_for_step(tmp_path):
    """(batch 1024, accumulation 1) and (batch 256, accumulation 4): the same trajectory."""
    reports = {}
    for bs, k in ((1024, 1), (256, 4)):
        cfg = load_config(None, ["dtype=float64", "optimizer.name=sgd", "data.n_samples=5000",
                                 "train.epochs=4", f"train.batch_size={bs}",
                                 f"train.grad_accum_steps={k}", "output.tensorboard=false",
                                 "output.images=false"])  # fmt: skip
        out = train_run(cfg, ConsoleSink(1, quiet=True), runs_dir=str(tmp_path))
        reports[bs] = [(r.train_loss, *r.params.values()) for r in out.result.history]
    assert len(reports[1024]) == 4
    for a, b in zip(reports[1024], reports[256], strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_the_lessons_run_as_sweeps():
    lessons = {p.stem for p in (ROOT / "configs/lessons").glob("*.yaml")}
    assert {"zero_grad", "accumulation", "lr_and_loss"} <= lessons
    for stem in ("zero_grad", "accumulation", "lr_and_loss"):
        path = ROOT / "configs/lessons" / f"{stem}.yaml"
        assert path.read_text().startswith("# Lesson:")
        plan = plan_of([], path)
        assert plan.trials >= 2


@pytest.mark.slow
def test_lesson_lr_and_loss_mse_diverges_where_huber_and_l1_do_not(runner, tmp_path):
    result = runner.invoke(app, ["sweep", "--config", str(ROOT / "configs/lessons/lr_and_loss.yaml"),
                                 "--runs-dir", str(tmp_path), "--json", "output.images=false"])  # fmt: skip
    assert result.exit_code == 0, result.output
    trials = json.loads(result.stdout)["trials"]
    big = max(t["optimizer.lr"] for t in trials)
    state = {t["loss.name"]: t["state"] for t in trials if t["optimizer.lr"] == big}
    assert state == {"mse": "failed", "huber": "complete", "l1": "complete"}
    assert all("diverged" in t["note"] for t in trials if t["state"] == "failed")


def test_sweep_help_imports_no_optuna():
    code = "import sys; from huberfit.cli import app; print('optuna' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ}, check=True)  # fmt: skip
    assert done.stdout.strip() == "False"


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str | None:
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (Debian's package) on 127.0.0.1, stopped after."""
    import shutil
    import socket
    import tempfile

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg (a dev extra) is not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="huberfit-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as its own user
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True)  # noqa: E731
    made = run(initdb, "-D", str(data), "-A", "trust", "-U", "huberfit")
    if made.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed: {made.stderr.strip()[:200]}")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = run(pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {started.stderr.strip()[:200]}")
    try:
        yield f"postgresql://huberfit@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_join_one_postgresql_study_and_run_each_trial_once(tmp_path, postgres_url):
    """Two `huberfit sweep --storage URL --study NAME` processes, each with its own runs
    folder (as on two machines): the grid's six points are trained once in all."""
    import optuna

    def machine(i: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "huberfit", "sweep", "--storage", postgres_url, "--study",
             "shared", "--runs-dir", str(tmp_path / f"machine{i}"), "--no-prune", "--json",
             *SMALL, "optimizer.lr=0.01,0.03,0.1", "train.batch_size=32,64"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    procs = [machine(1), machine(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    points = [(t.params["optimizer.lr"], t.params["train.batch_size"]) for t in complete]
    assert len(points) == 6 and len(set(points)) == 6
    folders = [p for i in (1, 2) for p in (tmp_path / f"machine{i}" / "sweep-shared").iterdir()
               if p.is_dir()]  # fmt: skip
    assert sorted(f.name for f in folders) == sorted(t.user_attrs["name"] for t in complete)
    last = json.loads(outputs[1][0])["trials"] if procs[1].returncode == 0 else []
    assert {t["name"] for t in last} <= {f.name for f in folders}


def test_the_last_word_for_a_key_wins_and_a_fixed_value_leaves_the_space(tmp_path):
    swept, plain = split_args(["optimizer.lr=0.1,0.2", "optimizer.lr=0.3", "seed=1,2", "seed=3,4"])
    assert swept == ["seed=3,4"] and plain == ["optimizer.lr=0.3"]
    config = tmp_path / "base.yaml"
    config.write_text("sweep:\n  params:\n    train.batch_size: [64, 256]\n    seed: [0, 1]\n")
    swept, plain = split_args(["train.batch_size=32"])
    cfg = load_config(config, plain)
    plan = build_plan(
        cfg, cfg.model_dump(mode="json"), swept, str(config), fixed={"train.batch_size"}
    )
    assert [d.key for d in plan.dims] == ["seed"] and plan.base["train"]["batch_size"] == 32


def test_r2_is_maximised_unless_told_and_no_password_is_kept():
    from huberfit.sweep import Plan, masked, storage_for_resume

    assert plan_of(["seed=0,1"], metric="val.r2").direction == "maximize"
    assert plan_of(["seed=0,1"], metric="val.r2", direction="minimize").direction == "minimize"
    url = "postgresql://me:s3cret@db.example/optuna"
    assert "s3cret" not in masked(url) and "***" in masked(url)
    plan = Plan({}, [], "grid", 1, "val.loss", "minimize", False, "s", masked(url))
    with pytest.raises(ConfigError, match="password is not saved"):
        storage_for_resume(plan, None)
    assert storage_for_resume(plan, url) == url
    with pytest.raises(ConfigError, match="not this sweep's database"):
        storage_for_resume(plan, "postgresql://me:s3cret@other/optuna")


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_exits_1(runner, tmp_path):
    result, parent = sweep(runner, tmp_path, "data.n_samples=2", "data.val_fraction=0.5,0.6")
    assert result.exit_code == 1 and "no trial completed" in result.output
    assert (parent / "trials.csv").is_file() and not (parent / "best.yaml").exists()


@pytest.mark.slow
def test_an_interrupted_comparison_resumes_into_the_whole_comparison(tmp_path):
    env = {**os.environ, "HUBERFIT_FAULT": "folder:SIGINT:2"}  # Ctrl-C as mse starts
    args = [sys.executable, "-m", "huberfit", "compare-losses", "--runs-dir", str(tmp_path),
            "train.epochs=3", "output.images=false"]  # fmt: skip
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 130, first.stderr
    (parent,) = tmp_path.glob("compare-*")
    assert f"huberfit sweep --resume {parent}" in first.stderr
    partial = json.loads((parent / "comparison.json").read_text())
    assert [r["label"] for r in partial["runs"]] == ["huber"] and "no verdict yet" in partial[
        "verdict"
    ]
    done = subprocess.run([sys.executable, "-m", "huberfit", "sweep", "--resume", str(parent)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    whole = json.loads((parent / "comparison.json").read_text())
    assert [r["label"] for r in whole["runs"]] == ["huber", "mse", "l1"]
    assert not whole["verdict"].startswith("no verdict yet") and "verdict:" in done.stdout
