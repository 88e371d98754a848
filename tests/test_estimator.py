"""HuberfitRegressor (issue 21, part 2): scikit-learn's own conformance suite, pipelines,
cross-validation and grid search, the same coefficients as `huberfit train`, and scikit-
learn's own estimators side by side on data that ships with it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, QuantileRegressor
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import huberfit
from huberfit.cli import app

HuberfitRegressor = huberfit.HuberfitRegressor


@pytest.mark.slow
def test_passes_scikit_learns_estimator_checks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(HuberfitRegressor(epochs=20), on_fail=None)
    failed = [
        (r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"
    ]
    assert len(results) > 40 and not failed, failed


def test_equals_linear_regression_and_quantile_regressor_on_diabetes():
    data = load_diabetes(as_frame=True)
    X, y = data.data, data.target
    ours = HuberfitRegressor(loss="mse").fit(X, y)
    ref = LinearRegression().fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-8)
    assert ours.intercept_ == pytest.approx(ref.intercept_, rel=1e-8)
    assert list(ours.feature_names_in_) == list(X.columns) and ours.n_features_in_ == 10
    assert ours.score(X, y) == pytest.approx(ref.score(X, y), rel=1e-10)
    q = HuberfitRegressor(loss="quantile", quantile=0.25).fit(X, y)
    sk = QuantileRegressor(quantile=0.25, alpha=0, solver="highs").fit(X, y)
    np.testing.assert_allclose(q.coef_, sk.coef_, rtol=1e-6)
    assert q.intercept_ == pytest.approx(sk.intercept_, rel=1e-6)


def test_same_coefficients_as_huberfit_train(tmp_path, runner):
    data = load_diabetes(as_frame=True)
    frame = data.frame
    frame.to_csv(tmp_path / "d.csv", index=False, float_format="%.17g")
    r = runner.invoke(app, ["train", "--json", "--quiet", "--runs-dir", str(tmp_path / "runs"),
                            "data.source=csv", f"data.path={tmp_path / 'd.csv'}", "data.target=target",
                            "data.val_fraction=0", "dtype=float64", "optimizer.name=lbfgs",
                            "output.images=false"])  # fmt: skip
    m = json.loads(r.stdout)
    est = HuberfitRegressor().fit(frame.drop(columns="target"), frame["target"])
    np.testing.assert_allclose(est.coef_, list(m["coefficients"].values()), rtol=1e-10)
    assert est.intercept_ == pytest.approx(m["intercept"], rel=1e-10)


@pytest.mark.slow
def test_pipeline_cross_validation_and_grid_search_in_parallel():
    X, y = load_diabetes(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), HuberfitRegressor(loss="huber", delta="auto"))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.3)
    grid = GridSearchCV(HuberfitRegressor(), {"loss": ["huber", "mse"], "epochs": [10, 30]},
                        cv=3, n_jobs=2)  # fmt: skip
    grid.fit(pd.DataFrame(X), y)
    assert grid.best_params_["loss"] in ("huber", "mse") and grid.best_score_ > 0.3


def test_a_run_folder_only_when_asked(tmp_path):
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    HuberfitRegressor(epochs=3).fit(X, y)
    assert not list(tmp_path.iterdir())
    est = HuberfitRegressor(runs_dir=str(tmp_path)).fit(X, y)
    m = json.loads((est.run_dir_ / "metrics.json").read_text())
    assert m["data"].startswith("arrays (442 rows") and list(m["coefficients"]) == list(X.columns)
    np.testing.assert_allclose(est.coef_, list(m["coefficients"].values()), rtol=1e-12)
    assert any(p.name.startswith("events.out.tfevents") for p in est.run_dir_.iterdir())
