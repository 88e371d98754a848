"""The training engine against independent oracles: lstsq for MSE, the weighted median for
L1, an exact Huber solve; gradient accumulation, resume, divergence, interrupts, devices."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_optimum, train_rows

from huberfit.cli import app
from huberfit.config import load_config
from huberfit.data.batches import InMemoryBatches
from huberfit.errors import DeviceError
from huberfit.experiment import train_run
from huberfit.loop import FitSettings, fit
from huberfit.losses import build_loss
from huberfit.model import build_model
from huberfit.optim import SGD
from huberfit.sinks import ConsoleSink


class NullSink:
    def step(self, step, loss): ...
    def epoch(self, report): ...


def quiet() -> ConsoleSink:
    return ConsoleSink(1, quiet=True)


def run(tmp_path, *overrides, **kw):
    base = ["output.tensorboard=false", "output.images=false"]
    cfg = load_config(None, base + list(overrides))
    return train_run(cfg, quiet(), runs_dir=str(tmp_path), **kw)


def coef(metrics) -> np.ndarray:
    return np.array([*metrics["coefficients"].values(), metrics["intercept"]])


def lbfgs(*more):
    return ("optimizer.name=lbfgs", "optimizer.lr=1", "dtype=float64", "train.epochs=100", *more)


# ----------------------------------------------------------------------------- oracles


@pytest.mark.slow
def test_mse_reaches_lstsq(tmp_path):
    out = run(tmp_path, *lbfgs("loss.name=mse", "data.outlier_fraction=0", "data.val_fraction=0"))
    from huberfit.data.synthetic import make_synthetic

    X, y, *_ = make_synthetic(load_config(None, ["data.outlier_fraction=0"]).data, 0)
    A = torch.tensor(np.c_[X, np.ones(len(X))])
    ref = torch.linalg.lstsq(A, torch.tensor(y).reshape(-1, 1)).solution.reshape(-1).numpy()
    assert_same_optimum(coef(out.metrics), ref, A.numpy(), y, "mse", exact_b=True)


def test_huber_beats_mse_on_contaminated_data(tmp_path):
    common = ("data.outlier_fraction=0.2", "data.outlier_scale=30", "data.noise_std=0.3")
    h = run(tmp_path, *lbfgs("loss.name=huber", *common)).metrics["coefficient_error"]
    m = run(tmp_path, *lbfgs("loss.name=mse", *common)).metrics["coefficient_error"]
    assert h < m / 4, (h, m)


def test_huge_delta_huber_reaches_the_mse_solution(tmp_path):
    h = run(tmp_path, *lbfgs("loss.name=huber", "loss.delta=1e6")).metrics
    m = run(tmp_path, *lbfgs("loss.name=mse")).metrics
    A, y = train_rows(list(lbfgs("loss.name=mse")))
    assert_same_optimum(coef(h), coef(m), A, y, "mse")  # Huber(1e6) = MSE / 2 here


def test_l1_reaches_the_weighted_median(tmp_path):
    # min_w sum |y_i - w x_i| = sum |x_i| |y_i / x_i - w|: a weighted median of y_i / x_i
    rng = np.random.default_rng(3)
    x = rng.normal(size=41)
    y = 2.0 * x + rng.standard_cauchy(41)
    ratios, weights = y / x, np.abs(x)
    order = np.argsort(ratios)
    cum = np.cumsum(weights[order])
    expected = ratios[order][np.searchsorted(cum, cum[-1] / 2)]
    path = tmp_path / "d.csv"
    path.write_text(
        "x,y\n" + "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(x, y, strict=True))
    )
    out = run(
        tmp_path, *lbfgs("loss.name=l1", "model.bias=false", "data.source=csv",
                         f"data.path={path}", "data.target=y", "data.val_fraction=0",
                         "train.epochs=300"),
    )  # fmt: skip
    assert abs(out.metrics["coefficients"]["x"] - expected) < 1e-6 * abs(expected)


def test_standardized_and_raw_training_agree(tmp_path):
    a = run(tmp_path, *lbfgs("data.standardize=true")).metrics
    b = run(tmp_path, *lbfgs("data.standardize=false")).metrics
    A, y = train_rows(list(lbfgs("data.standardize=false")))
    assert_same_optimum(coef(a), coef(b), A, y, "huber")
    tau = len(y) * np.finfo(np.float64).eps * b["train"]["loss"]  # both stopped within it
    assert abs(a["train"]["loss"] - b["train"]["loss"]) <= 2 * tau


LONGLEY = """employed,gnp_deflator,gnp,unemployed,armed_forces,population,year
60323,83.0,234289,2356,1590,107608,1947
61122,88.5,259426,2325,1456,108632,1948
60171,88.2,258054,3682,1616,109773,1949
61187,89.5,284599,3351,1650,110929,1950
63221,96.2,328975,2099,3099,112075,1951
63639,98.1,346999,1932,3594,113270,1952
64989,99.0,365385,1870,3547,115094,1953
63761,100.0,363112,3578,3350,116219,1954
66019,101.2,397469,2904,3048,117388,1955
67857,104.6,419180,2822,2857,118734,1956
68169,108.4,442769,2936,2798,120445,1957
66513,110.8,444546,4681,2637,121950,1958
68655,112.6,482704,3813,2552,123366,1959
69564,114.2,502601,3931,2514,125368,1960
69331,115.7,518173,4806,2572,127852,1961
70551,116.9,554894,4007,2827,130081,1962
"""
# NIST StRD certified values for Longley (1967), an ill-conditioned least-squares problem
LONGLEY_CERTIFIED = [15.0618722713733, -0.358191792925910e-01, -2.02022980381683,
                     -1.03322686717359, -0.511041056535807e-01, 1829.15146461355,
                     -3482258.63459582]  # fmt: skip


def test_longley_matches_nist_certified_values(tmp_path):
    path = tmp_path / "longley.csv"
    path.write_text(LONGLEY)
    out = run(tmp_path, *lbfgs("loss.name=mse", "data.source=csv", f"data.path={path}",
                               "data.target=employed", "data.val_fraction=0"))  # fmt: skip
    np.testing.assert_allclose(coef(out.metrics), LONGLEY_CERTIFIED, rtol=1e-6)


# ----------------------------------------------------------------------------- the loop


def _fit_once(X, y, batch, accum, loss_name="huber", fused=True, epochs=1):
    model = build_model(X.shape[1], True, 0, torch.float64)
    opt = SGD(list(model.parameters()), lr=0.1, momentum=0.5)
    settings = FitSettings(epochs=epochs, grad_accum_steps=accum, fused=fused)
    fit(model, build_loss(loss_name, 0.5), InMemoryBatches(X, y, batch, 0), opt, NullSink(),
        settings, lambda m: (None, {}, None))  # fmt: skip
    return torch.cat([model.weight.reshape(-1), model.bias]).detach()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n, micro, accum", [(60, 10, 3), (61, 7, 4), (50, 8, 3)])
def test_accumulated_micro_batches_equal_one_big_batch(n, micro, accum, fused):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64) * 3
    # same sample order: micro-batches of `micro` rows grouped by `accum` == batches of
    # micro*accum rows, including the last, partial window
    a = _fit_once(X, y, micro, accum, fused=fused, epochs=2)
    b = _fit_once(X, y, micro * accum, 1, fused=fused, epochs=2)
    big = InMemoryBatches(X, y, micro * accum, 0).indices(0)
    small = InMemoryBatches(X, y, micro, 0).indices(0)
    assert torch.equal(torch.cat([i for i, _ in big]), torch.cat([i for i, _ in small]))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss_name", ["huber", "mse", "l1"])
def test_fused_path_equals_autograd_path(loss_name):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(200, 4, generator=g, dtype=torch.float64)
    y = torch.randn(200, 1, generator=g, dtype=torch.float64) * 2
    a = _fit_once(X, y, 16, 2, loss_name, fused=True, epochs=3)
    b = _fit_once(X, y, 16, 2, loss_name, fused=False, epochs=3)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_users_own_loss_goes_through_autograd():
    class Cauchy(torch.nn.Module):
        def forward(self, pred, true):
            return torch.log1p((pred - true) ** 2).mean()

    X = torch.randn(100, 2, dtype=torch.float64)
    y = X @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    model = build_model(2, True, 0, torch.float64)
    opt = SGD(list(model.parameters()), lr=0.5)
    fit(model, Cauchy(), InMemoryBatches(X, y, 20, 0), opt, NullSink(),
        FitSettings(epochs=200), lambda m: (None, {}, None))  # fmt: skip
    torch.testing.assert_close(
        model.weight.detach(), torch.tensor([[1.0, -2.0]], dtype=torch.float64), atol=1e-3, rtol=0
    )


def test_fit_accepts_torch_optim():
    X = torch.randn(64, 2)
    y = X.sum(1, keepdim=True)
    model = build_model(2, True, 0, torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = fit(model, build_loss("mse"), InMemoryBatches(X, y, 16, 0), opt, NullSink(),
            FitSettings(epochs=30), lambda m: (None, {}, None))  # fmt: skip
    assert r.status == "completed" and r.last.train_loss < 1e-3


def test_identical_configs_identical_metrics(tmp_path):
    a = run(tmp_path, "train.epochs=3").metrics
    b = run(tmp_path, "train.epochs=3").metrics
    for m in (a, b):
        for key in ("seconds", "samples_per_second", "run_dir", "started"):  # clock
            m.pop(key)
    assert a == b


def test_resume_is_bit_identical(tmp_path):
    straight = run(tmp_path, "train.epochs=6", "optimizer.momentum=0.9", "scheduler.name=cosine")
    cfg = load_config(None, ["train.epochs=6", "optimizer.momentum=0.9", "scheduler.name=cosine",
                             "output.tensorboard=false", "output.images=false"])  # fmt: skip
    console = quiet()
    original_epoch = console.epoch

    def epoch_then_stop(report):
        original_epoch(report)
        if report.epoch == 2:
            import os

            os.kill(os.getpid(), signal.SIGINT)

    console.epoch = epoch_then_stop
    first = train_run(cfg, console, runs_dir=str(tmp_path / "b"))
    assert first.metrics["status"] == "interrupted" and first.metrics["epochs"] == 2
    from huberfit.artifacts import load_resume

    cfg2, ckpt = load_resume(str(first.run_dir), [])
    resumed = train_run(cfg2, quiet(), run_dir=first.run_dir, resume=ckpt)
    assert resumed.metrics["status"] == "completed" and resumed.metrics["epochs"] == 6
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_early_stopping_keeps_the_best_weights(tmp_path):
    out = run(tmp_path, "train.epochs=200", "train.early_stopping_patience=2", "optimizer.lr=0.3")
    m = out.metrics
    assert m["status"] == "early_stopped" and m["epochs"] < 200
    history = out.result.history
    best = min(history, key=lambda r: r.val["loss"])
    assert m["best_epoch"] == best.epoch
    assert m["val"]["loss"] == pytest.approx(best.val["loss"], rel=1e-6)


def test_divergence_stops_with_one_line_and_keeps_the_run(runner, tmp_path):
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "loss.name=mse",
                            "optimizer.lr=1e6", "output.images=false"])  # fmt: skip
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: training diverged at epoch 1, step")
    assert "optimizer.lr=1e+06" in line and "smaller optimizer.lr" in line
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_huber_and_l1_do_not_diverge_where_mse_does(tmp_path):
    for loss in ("huber", "l1"):
        m = run(tmp_path, f"loss.name={loss}", "optimizer.lr=1e6", "train.epochs=2").metrics
        assert m["status"] == "completed"


@pytest.mark.slow
def test_sigint_saves_and_exits_130(tmp_path):
    cmd = [sys.executable, "-m", "huberfit", "train", "--runs-dir", str(tmp_path),
           "train.epochs=100000", "data.n_samples=200", "output.images=false"]  # fmt: skip
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    for line in p.stderr:
        if line.startswith("epoch 3/") or time.time() > deadline:
            break
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs"] >= 3
    assert (run_dir / "checkpoint.pt").exists()
    assert f"huberfit train --resume {run_dir}" in stderr


@pytest.mark.slow
def test_the_cli_exits_normally_so_atexit_handlers_run(tmp_path):
    """Profilers and coverage write their data from atexit handlers: a training command
    must end with the interpreter's normal exit, not ``os._exit``."""
    marker = tmp_path / "atexit-ran"
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
        f"sys.argv = ['huberfit', 'train', '--quiet', '--runs-dir', {str(tmp_path)!r},\n"
        "            'train.epochs=1', 'data.n_samples=100', 'output.images=false']\n"
        "from huberfit.cli import main\n"
        "main()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert marker.read_text() == "yes"


def test_explicit_unavailable_device_names_the_available_ones(runner, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "--device", "cuda"])
    assert r.exit_code == 1 and "device 'cuda' is not available here; available: cpu" in r.output
    assert not any(tmp_path.iterdir())
    with pytest.raises(DeviceError):
        from huberfit.device import resolve_device

        resolve_device("cuda:7")


def test_mps_with_float64_is_refused(runner):
    r = runner.invoke(app, ["config", "validate", "device=mps", "dtype=float64"])
    assert r.exit_code == 1 and "float64 is not supported on mps" in r.output


def test_auto_device_is_said(runner, tmp_path):
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "train.epochs=1",
                            "output.images=false"])  # fmt: skip
    assert r.exit_code == 0, r.output
    from huberfit.device import resolve_device

    assert f"device: {resolve_device('auto')} (auto)" in r.output


@pytest.mark.slow
def test_json_prints_only_metrics(tmp_path):
    p = subprocess.run([sys.executable, "-m", "huberfit", "train", "--json", "--runs-dir",
                        str(tmp_path), "train.epochs=2", "output.images=false"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0
    metrics = json.loads(p.stdout)
    on_disk = json.loads((tmp_path / next(tmp_path.iterdir()).name / "metrics.json").read_text())
    assert metrics == on_disk
    for key in (
        "status",
        "loss",
        "delta",
        "optimizer",
        "device",
        "dtype",
        "epochs",
        "steps",
        "seconds",
        "samples_per_second",
        "coefficients",
        "intercept",
        "true_coefficients",
        "true_intercept",
        "coefficient_error",
        "train",
        "val",
    ):
        assert key in metrics
    assert set(metrics["val"]) == {"loss", "mse", "mae", "r2"}


def test_checkpoint_loads_with_weights_only(tmp_path):
    out = run(tmp_path, "train.epochs=1")
    ckpt = torch.load(out.run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["feature_names"] == ["x0", "x1", "x2"]
    assert set(ckpt) >= {"model", "optimizer", "state", "scaling", "config", "rng"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_cpu(tmp_path):
    a = run(tmp_path, *lbfgs("device=cpu")).metrics
    b = run(tmp_path, *lbfgs("device=cuda")).metrics
    np.testing.assert_allclose(coef(a), coef(b), rtol=1e-6)
    assert math.isfinite(b["val"]["loss"])


def test_shipped_data_configs_train(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(root / "longley.yaml", ["output.tensorboard=false", "output.images=false"])
    out = train_run(cfg, quiet(), runs_dir=str(tmp_path))
    np.testing.assert_allclose(coef(out.metrics), LONGLEY_CERTIFIED, rtol=1e-6)
    cfg = load_config(root / "anscombe.yaml", ["output.tensorboard=false", "output.images=false",
                                                "loss.name=l1"])  # fmt: skip
    out = train_run(cfg, quiet(), runs_dir=str(tmp_path))
    # L1 ignores the outlier: the line through the other ten points
    assert out.metrics["coefficients"]["x"] == pytest.approx(0.3454, abs=1e-3)


def test_resume_refuses_overrides_the_checkpoint_cannot_honour(tmp_path, runner):
    """Changing the data, model, loss or optimizer of a saved run would crash on its state or
    be silently dropped: each is one line naming the keys, and nothing is written."""
    r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "--json", "train.epochs=1",
                            "output.images=false"])  # fmt: skip
    run = json.loads(r.stdout)["run_dir"]
    before = sorted(p.name for p in Path(run).iterdir())
    for args, keys in ((["data.n_features=2"], "data.n_features"),
                       (["optimizer.lr=0.5", "model.bias=false"], "model.bias, optimizer.lr")):  # fmt: skip
        r = runner.invoke(app, ["train", "--resume", run, *args])
        assert r.exit_code == 1 and f"--resume: {keys} cannot change" in r.stderr, r.output
        assert "Traceback" not in r.output
    assert sorted(p.name for p in Path(run).iterdir()) == before
    r = runner.invoke(app, ["train", "--resume", run, "train.epochs=2", "output.images=false"])
    assert r.exit_code == 0, r.output


def test_more_coefficients_than_rows_has_no_reference_and_says_why(tmp_path):
    """Many fits reach the optimum: no reference (solving it took minutes at 6000 x 40)."""
    m = run(tmp_path, "train.epochs=1", "data.n_features=60", "data.n_samples=50").metrics
    assert m["optimum"] is None and m["gap"] is None and m["standard_errors"] is None
    assert "61 coefficients and" in m["optimum_note"] and "no reference" in m["optimum_note"]
