"""``HuberfitRegressor``: huberfit's engine as a scikit-learn estimator (the role skorch
plays for PyTorch models), for pipelines, cross-validation and grid searches.

``fit(X, y)`` trains in memory (no run folder) with the same model, loss, optimizer and
loop as ``huberfit train``; ``coef_`` and ``intercept_`` are in the data's own units.
Needs scikit-learn (imported here, on first use of the estimator).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class HuberfitRegressor(RegressorMixin, BaseEstimator):
    """A linear model trained by huberfit.

    Args:
        loss: ``huber``, ``mse``, ``l1``, ``quantile``, or your own ``file.py:Class``.
        delta: Huber's threshold in target units, or ``"auto"``.
        quantile: tau for the quantile loss.
        optimizer: ``lbfgs`` (default: exact, see the README), ``sgd``, ``adam``, ``adamw``.
        lr: learning rate; None for the optimizer's default.
        epochs, batch_size: as ``train.epochs``, ``train.batch_size``.
        dtype: ``float64`` (default) or ``float32``; device: ``cpu``, ``cuda``, ``auto``...
        seed: initial weights and batch order.
        fit_intercept: fit an intercept (``model.bias``).
        runs_dir: None (default) trains in memory only; a folder: each ``fit`` also writes a
            full run folder there (``run_dir_``: TensorBoard events, metrics.json,
            checkpoint), as ``huberfit train`` does.
    """

    def __init__(self, loss: str = "huber", delta: float | str = 1.0, quantile: float = 0.5,
                 optimizer: str = "lbfgs", lr: float | None = None, epochs: int = 50,
                 batch_size: int | None = 64, dtype: str = "float64", device: str = "cpu",
                 seed: int = 0, fit_intercept: bool = True, runs_dir: str | None = None) -> None:  # fmt: skip
        self.loss, self.delta, self.quantile = loss, delta, quantile
        self.runs_dir = runs_dir
        self.optimizer, self.lr, self.epochs, self.batch_size = optimizer, lr, epochs, batch_size
        self.dtype, self.device, self.seed, self.fit_intercept = dtype, device, seed, fit_intercept

    def _config(self) -> Any:
        from huberfit.config import validate_config

        raw = {
            "seed": self.seed, "device": self.device, "dtype": self.dtype,
            "model": {"bias": bool(self.fit_intercept)},
            "loss": {"name": self.loss, "delta": self.delta, "quantile": self.quantile},
            "optimizer": {"name": self.optimizer, "lr": self.lr},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size},
            "data": {"val_fraction": 0.0},
            "output": {"tensorboard": self.runs_dir is not None, "images": False},
        }  # fmt: skip
        return validate_config(raw, "HuberfitRegressor")

    def fit(self, X: Any, y: Any) -> HuberfitRegressor:
        """Train on ``X (n, f)``, ``y (n,)``; returns self."""
        from huberfit.data.dataset import dataset_from_arrays
        from huberfit.experiment import fit_in_memory
        from huberfit.model import read_coefficients

        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64, ensure_min_samples=2)
        config = self._config()
        names = [str(n) for n in getattr(self, "feature_names_in_", [])] or None
        data = dataset_from_arrays(X, y, config.dtype, bias=bool(self.fit_intercept), names=names)
        if self.runs_dir is None:
            model, result = fit_in_memory(config, data)
        else:  # asked for: a run folder like huberfit train's
            model, result = self._fit_into_folder(config, data)
        w, b = data.scaling.to_original(*read_coefficients(model))
        self.coef_, self.intercept_ = np.asarray(w, dtype=np.float64), float(b)
        self.status_, self.n_iter_ = result.status, result.state.epoch
        return self

    def _fit_into_folder(self, config: Any, data: Any) -> tuple[Any, Any]:
        from huberfit.device import resolve_device
        from huberfit.experiment import Prepared, train_run
        from huberfit.sinks import ConsoleSink

        prepared = Prepared(resolve_device(config.device, config.dtype), data)
        config = config.model_copy(update={"name": "HuberfitRegressor"})
        outcome = train_run(config, ConsoleSink(1, quiet=True), str(self.runs_dir), prepared)
        self.run_dir_ = outcome.run_dir
        return outcome.model, outcome.result

    def predict(self, X: Any) -> np.ndarray:
        """Predictions for ``X (n, f)``, in the target's units."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_ + self.intercept_
