"""compare-losses: same data/init/order for every loss, robustness, exact references,
layout read back by TensorBoard's own multiplexer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

from huberfit.cli import app
from huberfit.compare import COMPARE_DEFAULTS, compare_losses
from huberfit.config import load_config
from huberfit.losses import LOSSES
from huberfit.reference import design
from huberfit.sinks import ConsoleSink


def solve(name, X, y, delta=1.0, bias=True):
    """The loss's declared reference solver, as ``(weights, intercept)``."""
    beta = LOSSES[name].reference(design(X, bias), y, delta).beta
    return (beta[:-1], float(beta[-1])) if bias else (beta, 0.0)


def objective(name, r, delta=1.0):
    return LOSSES[name].objective(r, delta)


def compare(tmp_path, *overrides, losses=("huber", "mse", "l1"), deltas=()):
    cfg = load_config(None, COMPARE_DEFAULTS + ["train.epochs=15", *overrides])
    return compare_losses(
        cfg, list(losses), list(deltas), ConsoleSink(1, quiet=True), str(tmp_path)
    )


@pytest.mark.slow
def test_same_start_same_order_and_robust_losses_win(tmp_path):
    result = compare(tmp_path)
    rows = {r["label"]: r for r in result.rows}
    assert set(rows) == {"huber", "mse", "l1"}
    inits = {tuple(r["initial_weights"]) for r in result.rows}
    orders = {r["batch_order_digest"] for r in result.rows}
    assert len(inits) == 1 and len(orders) == 1
    assert rows["huber"]["coefficient_error"] < rows["mse"]["coefficient_error"]
    assert rows["l1"]["coefficient_error"] < rows["mse"]["coefficient_error"]
    assert "recovered the true coefficients best" in result.verdict


@pytest.mark.slow
def test_layout_and_tensorboard_sees_one_run_per_loss(tmp_path):
    result = compare(tmp_path, deltas=(0.5, 2))
    parent = result.parent
    assert parent.name.startswith("compare-2")  # not compare-compare-
    children = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name != "truth")
    assert children == ["huber-d0.5", "huber-d2", "l1", "mse"]
    for child in children:
        for name in ("config.yaml", "metrics.json", "checkpoint.pt"):
            assert (parent / child / name).is_file()
    data = json.loads((parent / "comparison.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["huber-d0.5", "huber-d2", "mse", "l1"]
    assert (parent / "comparison.png").stat().st_size > 1000
    from tensorboard.plugins.hparams import plugin_data_pb2

    mux = EventMultiplexer().AddRunsFromDirectory(str(parent))
    mux.Reload()
    runs = set(mux.Runs())
    assert set(children) <= runs
    assert "truth" in runs  # the true coefficients once, beside every loss's run
    for child in children:
        assert "val/loss" in mux.GetAccumulator(child).Tags()["tensors"]
        assert f"{child}/truth" not in runs
        # TensorBoard ticks the hparams that differ first: loss, delta
        exp = mux.GetAccumulator(child).PluginTagToContent("hparams")["_hparams_/experiment"]
        infos = plugin_data_pb2.HParamsPluginData.FromString(exp).experiment.hparam_infos
        assert {"loss", "delta"} <= {h.name for h in infos if h.differs}


@pytest.mark.slow
def test_trained_to_convergence_the_gap_is_zero(tmp_path):
    result = compare(
        tmp_path, "optimizer.name=lbfgs", "optimizer.lr=1", "dtype=float64", "train.epochs=100"
    )
    for r in result.rows:
        # the reference is never beaten, and a converged L-BFGS reaches it
        assert r["optimality_gap"] >= -1e-12 * r["optimum"], r
        tol = 1e-6 if r["loss"] == "l1" else 1e-10
        assert r["relative_gap"] < tol, r


def test_reference_solvers_against_independent_checks():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 2))
    y = X @ [1.0, -3.0] + 2.0 + rng.standard_cauchy(300)
    w, b = solve("mse", X, y)
    ls = np.linalg.lstsq(np.c_[X, np.ones(300)], y, rcond=None)[0]
    np.testing.assert_allclose([*w, b], ls, rtol=1e-12)
    for name in ("huber", "l1"):
        w, b = solve(name, X, y, 1.3)
        f = objective(name, y - X @ w - b, 1.3)
        for d in rng.normal(scale=1e-5, size=(300, 3)):
            assert objective(name, y - X @ (w + d[:2]) - (b + d[2]), 1.3) >= f - 1e-15
    # L1 in 1-D without intercept is a weighted median of y/x with weights |x|
    x1 = X[:, 0]
    ratios, weights = y / x1, np.abs(x1)
    order = np.argsort(ratios)
    cum = np.cumsum(weights[order])
    median = ratios[order][np.searchsorted(cum, cum[-1] / 2)]
    (w1,), _ = solve("l1", x1[:, None], y, bias=False)
    assert w1 == pytest.approx(median, rel=1e-10)


def test_cli_compare_and_bad_flags(runner, tmp_path):
    r = runner.invoke(app, ["compare-losses", "--runs-dir", str(tmp_path), "--losses", "huber,mse",
                            "train.epochs=3", "data.n_samples=200"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "verdict:" in r.output and "gap" in r.output
    r = runner.invoke(app, ["compare-losses", "--losses", "huber,hinge"])
    assert r.exit_code == 1 and "unknown loss 'hinge'" in r.output
    r = runner.invoke(app, ["compare-losses", "--deltas", "1,x"])
    assert r.exit_code == 1 and "--deltas" in r.output


def test_compare_yaml_is_the_built_in_comparison():
    """configs/compare.yaml spells out COMPARE_DEFAULTS: the same config either way."""
    from pathlib import Path

    shipped = load_config(Path(__file__).resolve().parents[1] / "configs" / "compare.yaml")
    built_in = load_config(None, COMPARE_DEFAULTS)
    assert shipped.model_dump() == built_in.model_dump()
