"""Metrics: scores in original units, what ``metrics.json`` holds, the hparams TensorBoard
shows, and the verdict of a comparison.

Scores are computed from per-chunk sums and ``scaling.Moments`` (the one variance merge),
so that with several processes each scores its share of the rows and one all-reduce
combines them. Imports data, losses, model and sinks' ``coefficient_error``; must not
import train's loop, run, plots or experiment.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from huberfit import __version__
from huberfit.config import Config
from huberfit.data.batches import BatchSource
from huberfit.data.dataset import Dataset
from huberfit.data.scaling import Moments
from huberfit.losses import LOSSES
from huberfit.model import read_coefficients
from huberfit.sinks import coefficient_error

RESIDUAL_ROWS = 100_000  # residuals kept for histograms, per scoring
HPARAMS_FIRST = ["loss", "delta", "optimizer", "lr", "batch_size"]  # see hparams_of


class Scorer:
    """Metrics in original units: the training objective, MSE, MAE and R^2."""

    def __init__(self, loss_fn: nn.Module, data: Dataset, power: int, dist: Any = None) -> None:
        self.loss_fn, self.data, self.dist = loss_fn, data, dist
        self.loss_scale = data.scaling.y_scale**power
        self.last_rows = {"train": 0.0, "val": 0.0}

    @torch.no_grad()
    def score(
        self, model: nn.Module, source: BatchSource, split: str = "val"
    ) -> tuple[dict[str, float], np.ndarray]:
        """Metrics of ``model`` on the rows of ``source`` (this process's share of them),
        and (some of) this process's residuals, original units."""
        sums = torch.zeros(4, dtype=torch.float64)  # rows, loss, squared and absolute residuals
        target = Moments()
        residuals: list[np.ndarray] = []
        kept = 0
        for X, y in source.full_chunks():
            n = X.shape[0]
            if n == 0:
                continue
            pred = model(X)
            r = (y - pred).double().reshape(-1)
            sums += torch.tensor([n, float(self.loss_fn(pred, y)) * n, float(r @ r),
                                  float(r.abs().sum())], dtype=torch.float64)  # fmt: skip
            target.add(y.double().reshape(-1).cpu().numpy())
            if kept < RESIDUAL_ROWS:
                residuals.append(r[: RESIDUAL_ROWS - kept].cpu().numpy())
                kept += len(residuals[-1])
        if self.dist is not None:
            sums, target = self._over_processes(sums, target)
        n, loss_sum, sq, ab = sums.tolist()
        self.last_rows[split] = n
        s = self.data.scaling.y_scale
        sst = float(target.m2) if target.n else 0.0
        metrics = {
            "loss": loss_sum / n * self.loss_scale,
            "mse": sq / n * s * s,
            "mae": ab / n * s,
            "r2": 1.0 - sq / sst if sst > 0 else math.nan,
        }
        r_all = np.concatenate(residuals) if residuals else np.empty(0)
        return metrics, r_all * s

    def _over_processes(self, sums: torch.Tensor, target: Moments) -> tuple[Any, Moments]:
        """Sums added over processes; each process's target moments gathered (one row per
        rank of a zero table, summed) and merged."""
        table = torch.zeros(self.dist.world, 3, dtype=torch.float64)
        table[self.dist.rank] = torch.tensor([target.n, float(target.mean), float(target.m2)])
        packed = torch.cat([sums, table.reshape(-1)]).to(self.dist.device)
        self.dist.sum_(packed)
        packed = packed.cpu()
        merged = Moments()
        for n, mean, m2 in packed[4:].reshape(-1, 3).tolist():
            merged.merge(Moments(int(n), mean, m2))
        return packed[:4], merged

    def evaluator(self, val: BatchSource | None) -> Any:
        """``train.fit``'s ``evaluate``: the validation scores (None without validation
        rows), the coefficients and the validation residuals, original units."""

        def evaluate(model: nn.Module) -> tuple[dict[str, float] | None, dict[str, float], Any]:
            scores, residuals = self.score(model, val) if val is not None else (None, None)
            return scores, self.params(model), residuals

        return evaluate

    def params(self, model: nn.Linear) -> dict[str, float]:
        """The coefficients by feature name and the intercept, original units."""
        w, b = self.data.scaling.to_original(*read_coefficients(model))
        out = dict(zip(self.data.feature_names, w, strict=True))
        out["intercept"] = b
        return out


def true_params(data: Dataset) -> dict[str, float] | None:
    if data.true_weights is None:
        return None
    truth = dict(zip(data.feature_names, data.true_weights, strict=True))
    truth["intercept"] = float(data.true_bias or 0.0)
    return truth


def original_units(
    data: Dataset, X: torch.Tensor, y: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Standardized ``X (n, f)``, ``y (n, 1)`` back in original units, as float64 numpy."""
    s = data.scaling
    Xo = X.double().numpy() * np.array(s.x_scale) + np.array(s.x_mean)
    yo = y.double().numpy().reshape(-1) * s.y_scale + s.y_mean
    return Xo, yo


def final_metrics(
    config: Config, data: Dataset, device: torch.device, model: nn.Linear, result: Any,
    scorer: Scorer, train: BatchSource, val: BatchSource | None,
) -> dict[str, Any]:  # fmt: skip
    """``metrics.json``: the contract other tools read (see the README)."""
    params = scorer.params(model)
    intercept = params.pop("intercept")
    train_scores, _ = scorer.score(model, train, "train")
    val_scores = scorer.score(model, val)[0] if val is not None else None
    truth = true_params(data)
    metrics: dict[str, Any] = {
        "name": config.name,
        "status": result.status,
        "message": result.message or None,
        "loss": config.loss.name,
        "delta": config.loss.delta if LOSSES[config.loss.name].uses_delta else None,
        "optimizer": config.optimizer.name,
        "lr": config.optimizer.lr,
        "device": str(device),
        "dtype": config.dtype,
        "seed": config.seed,
        "epochs": result.state.epoch,
        "epochs_configured": config.train.epochs,
        "steps": result.state.step,
        "seconds": result.seconds,
        "samples_per_second": result.samples / result.seconds if result.seconds > 0 else None,
        "data": data.source,
        "n_train": int(scorer.last_rows["train"]),
        "n_val": int(scorer.last_rows["val"]) if val_scores is not None else 0,
        "streamed": data.stream is not None,
        "coefficients": params,
        "intercept": intercept,
        "true_coefficients": None,
        "true_intercept": None,
        "coefficient_error": None,
        "best_epoch": result.state.best_epoch if result.state.best_epoch > 0 else None,
        "train": train_scores,
        "val": val_scores,
        "huberfit_version": __version__,
    }
    if truth is not None:
        true_b = truth.pop("intercept")
        metrics["true_coefficients"] = truth
        metrics["true_intercept"] = true_b
        metrics["coefficient_error"] = coefficient_error(
            {**params, "intercept": intercept}, {**truth, "intercept": true_b}
        )
    return metrics


def hparams_of(config: Config, data: Dataset) -> dict[str, Any]:
    """The same hyperparameter keys for every run, whatever its loss; the five that
    TensorBoard ticks by default first."""
    d, t = config.data, config.train
    return {
        "loss": config.loss.name,
        "delta": config.loss.delta,
        "optimizer": config.optimizer.name,
        "lr": config.optimizer.lr,
        "batch_size": t.batch_size if t.batch_size is not None else data.X_train.shape[0],
        "grad_accum_steps": t.grad_accum_steps,
        "epochs": t.epochs,
        "seed": config.seed,
        "dtype": config.dtype,
        "data_source": d.source,
        "n_samples": data.n_rows,
        "outlier_fraction": d.outlier_fraction if d.source == "synthetic" else 0.0,
    }


def delta_label(loss: str, delta: float) -> str:
    """A run's label in a comparison over deltas: ``huber-d0.5``."""
    return f"{loss}-d{delta:g}"


def run_title(config: Config) -> str:
    """A picture's title: the loss (with its delta), after the run's name unless the name is
    the loss's own label (as in a comparison: ``huber``, ``huber-d0.5``)."""
    name, delta = config.loss.name, config.loss.delta
    uses_delta = LOSSES[name].uses_delta
    loss = f"{name} (delta {delta:g})" if uses_delta else name
    if config.name in (name, delta_label(name, delta) if uses_delta else name):
        return loss
    return f"{config.name}: {loss}"


# ----------------------------------------------------------------------------- comparison


def comparison_row(label: str, m: dict[str, Any], gap: dict[str, Any]) -> dict[str, Any]:
    """One run's line in ``comparison.json`` and the comparison table."""
    val = m.get("val") or {}
    return {
        "label": label,
        "loss": m["loss"],
        "delta": m["delta"],
        "status": m["status"],
        "train_objective": gap["objective"],
        "optimum": gap["optimum"],
        "optimality_gap": gap["gap"],
        "relative_gap": gap["relative_gap"],
        "val_mse": val.get("mse"),
        "val_mae": val.get("mae"),
        "coefficient_error": m.get("coefficient_error"),
        "coefficients": m["coefficients"],
        "intercept": m["intercept"],
        "epochs": m["epochs"],
        "seconds": m["seconds"],
        "initial_weights": m["initial_weights"],
        "batch_order_digest": m["batch_order_digest"],
        "run_dir": m["run_dir"],
    }


def comparison_verdict(rows: list[dict[str, Any]], synthetic: bool) -> str:
    if synthetic:
        best = min(rows, key=lambda r: r["coefficient_error"])
        return (
            f"{best['label']} recovered the true coefficients best "
            f"(coefficient error {best['coefficient_error']:.4g})"
        )
    if all(r["val_mae"] is not None for r in rows):
        best = min(rows, key=lambda r: r["val_mae"])
        return f"{best['label']} had the lowest validation MAE ({best['val_mae']:.4g})"
    return (
        "no validation set (data.val_fraction: 0): no winner by validation error; compare "
        "each loss's objective and optimality gap (comparison table, comparison.json)"
    )
