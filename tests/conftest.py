"""Shared fixtures: small configs and a CLI runner; every test writes into tmp_path."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HUBERFIT_DEBUG", "0")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def train_rows(overrides: list[str]):
    """The training rows of a run of ``overrides``, in original units: ``A = [X, 1]``, y."""
    import numpy as np

    from huberfit.config import load_config
    from huberfit.experiment import prepare
    from huberfit.metrics import original_units

    data = prepare(load_config(None, overrides)).data
    X, y = original_units(data, data.X_train, data.y_train)
    return np.column_stack([X, np.ones(len(X))]), y


def assert_same_optimum(theta_a, theta_b, A, y, loss: str, exact_b: bool = False, delta=1.0):
    """Two solutions of one convex objective F (mean loss over the rows of A, y; original
    units) agree as closely as huberfit's L-BFGS stopping rule guarantees, and no closer.

    The rule stops when F stops falling, i.e. within its rounding, tau = n * eps * F* (the
    worst-case error of an n-term float64 sum). F is quadratic near its optimum with Hessian
    H (MSE: 2 A'A/n; Huber: A_in'A_in/n over the rows inside +-delta), so
    F(t) - F* >= (t - t*)' H (t - t*) / 2, and each stopped solution lies within
    ||t - t*||_H <= sqrt(2 tau); two of them within twice that (once if ``theta_b`` is
    exact). Rounding differs between CPUs (AVX2/AVX-512, threads): this is the margin.
    """
    import numpy as np

    theta_a, theta_b = np.asarray(theta_a), np.asarray(theta_b)
    r = y - A @ theta_b
    if loss == "mse":
        H, f_star = 2 * A.T @ A / len(y), float(np.mean(r * r))
    else:
        inside = np.abs(r) < delta
        H = A[inside].T @ A[inside] / len(y)
        f_star = float(np.mean(np.where(inside, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))))
    tau = len(y) * np.finfo(np.float64).eps * f_star
    bound = (1 if exact_b else 2) * np.sqrt(2 * tau)
    d = theta_a - theta_b
    assert np.sqrt(d @ H @ d) <= bound, (d, np.sqrt(d @ H @ d), bound)


def pytest_collection_finish(session):
    """Collecting imported torch, pandas and TensorBoard: hundreds of thousands of objects
    that live as long as the session. ``gc.freeze()`` moves them out of the collector's
    sight, so that the collections during the tests (and the imports they make) do not walk
    them each time (about a second of the quick suite). Objects made later are collected
    as usual; the product does the same at exit (``huberfit.cli._exit``)."""
    import gc

    gc.freeze()
