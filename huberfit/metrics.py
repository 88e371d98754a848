"""Metrics: scores in original units, what ``metrics.json`` holds, the hparams TensorBoard
shows, and the verdict of a comparison.

Scores are computed from per-chunk sums and ``scaling.Moments`` (the one variance merge),
so that with several processes each scores its share of the rows and one all-reduce
combines them. Imports data, losses, model and sinks' ``coefficient_error``; must not
import train's loop, run, plots or experiment.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from huberfit import __version__, interrupts
from huberfit.config import Config
from huberfit.data.batches import BatchSource
from huberfit.data.dataset import Dataset
from huberfit.data.scaling import Moments
from huberfit.errors import ConfigError
from huberfit.losses import (
    optimum_is_zero,
    optimum_of,
    own_label,
    own_source,
    relative_gap,
    spec_of,
)
from huberfit.model import read_coefficients
from huberfit.reference import HUBER_T, NotCertified, design, robust_scale
from huberfit.sinks import coefficient_error

RESIDUAL_ROWS = 100_000  # residuals kept for histograms, per scoring
HPARAMS_FIRST = ["loss", "delta", "optimizer", "lr", "batch_size"]  # see hparams_of
# A run whose objective is more than this above its loss's certified optimum (relative)
# says it has not converged. float32 L-BFGS ends ~1e-7 above it, float64 ~1e-14; SGD
# with default settings 1e-4..1e-2.
GAP_WARNING = 1e-5
# From this many training cells (rows x features) on, the reference is solved in a child
# process that a signal ends at once (interrupts.apart); below, it takes milliseconds and
# forking (plus importing SciPy afresh in the child each run) would cost more than it does.
APART_CELLS = 100_000
LATER = "not computed: interrupted (huberfit train --resume solves it)"
NO_REFERENCE = {"optimum": None, "gap": None, "converged": None, "standard_errors": None,
                "intervals95": None}  # fmt: skip


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
            yd = y.double().reshape(-1)  # the chunk's moments where it lives: two numbers cross
            mean = yd.mean()
            target.merge(Moments(n, float(mean), float(((yd - mean) ** 2).sum())))
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
        """``loop.fit``'s ``evaluate``: the validation scores (None without validation
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


def resolve_delta(config: Config, data: Dataset) -> tuple[Config, float | None]:
    """``loss.delta: auto``: the config with delta = 1.345 x the robust scale of a
    least-squares fit's residuals on the training rows (streamed: on the sample of them
    kept in memory), and that scale; any other config as it is, and None."""
    if config.loss.delta != "auto":
        return config, None
    X, y = original_units(data, data.X_train, data.y_train)
    # a least-squares fit (minutes on a large problem): a signal does not wait for it
    fit = partial(robust_scale, X, y, config.model.bias)
    scale = interrupts.apart("delta", fit, fork=X.size >= APART_CELLS)
    if not scale > 0:
        raise ConfigError(
            "loss.delta: auto: the residuals' robust scale is 0 (over half the training rows "
            "lie exactly on a least-squares fit); give loss.delta a number"
        )
    loss = config.loss.model_copy(update={"delta": HUBER_T * scale})
    return config.model_copy(update={"loss": loss}), scale


def optimality(config: Config, data: Dataset, params: dict[str, float]) -> dict[str, Any]:
    """The certified optimum of the run's loss on its training rows, and the run's gap to
    it, as ``metrics.json`` holds them; and standard errors of the run's coefficients.
    Streamed data has no reference (it would need every row in memory). From
    ``APART_CELLS`` training cells on it is solved in a child process
    (``interrupts.apart``), so that a signal is answered at once: ``Interrupted``."""
    if data.stream is not None:
        return {"optimum": None, "gap": None, "converged": None,
                "optimum_note": "streamed data: no reference optimum (it needs every row in memory)"}  # fmt: skip
    from huberfit.inference import standard_errors

    c, spec = config.loss, spec_of(config.loss)
    if spec.reference is None:  # your own loss: nothing to certify against
        return {"optimum": None, "gap": None, "converged": None, "standard_errors": None,
                "intervals95": None, "optimum_note": "your own loss: no exact reference, "
                "so its gap to the optimum is unknown"}  # fmt: skip
    X, y = original_units(data, data.X_train, data.y_train)
    n_coef = len(data.feature_names) + int(config.model.bias)
    if n_coef > X.shape[0]:  # (solving it anyway cost minutes at 6000 x 40, for nothing)
        return {"optimum": None, "gap": None, "converged": None, "standard_errors": None,
                "intervals95": None, "optimum_note": f"{n_coef} coefficients and "
                f"{X.shape[0]} training rows: many fits reach the optimum, so there is no "
                "reference to measure against and no standard errors"}  # fmt: skip
    w, b = np.array([params[k] for k in data.feature_names]), params["intercept"]

    def solve() -> dict[str, Any]:
        out: dict[str, Any] = {"optimum": None, "gap": None, "converged": None}
        try:
            ref_w, ref_b, opt = optimum_of(c.name, X, y, c.delta, c.quantile, config.model.bias)
        except NotCertified as exc:
            out["optimum_note"] = f"no certified optimum: {exc}"
        else:
            f = spec.objective(y - X @ w - b, c.delta, c.quantile)
            rel = relative_gap(f, opt.objective)
            out["optimum"] = {"objective": opt.objective,
                              "coefficients": dict(zip(data.feature_names, map(float, ref_w), strict=True)),
                              "intercept": ref_b, "certificate": opt.certificate}  # fmt: skip
            out["gap"] = {"absolute": f - opt.objective, "relative": rel, "threshold": GAP_WARNING,
                          "optimum_is_zero": optimum_is_zero(f, opt.objective)}  # fmt: skip
            out["converged"] = bool(rel <= GAP_WARNING)
        beta = np.r_[w, b] if config.model.bias else w
        se = standard_errors(c.name, design(X, config.model.bias), y, beta, data.feature_names,
                             c.delta, c.quantile, config.model.bias)  # fmt: skip
        out.update(se or {"standard_errors": None, "intervals95": None})
        return out

    try:
        return interrupts.apart("reference", solve, fork=X.size >= APART_CELLS)
    except interrupts.Lost as exc:  # the child alone was killed (out of memory, say)
        return {**NO_REFERENCE, "optimum_note": f"not computed: {exc}"}


def gap_warning(metrics: dict[str, Any]) -> str | None:
    """The line (under 80 characters) a run that has not reached its loss's optimum ends
    with, saying what to change for the optimizer it used."""
    gap = metrics.get("gap")
    if not gap or metrics.get("converged") is not False or metrics["status"] == "diverged":
        return None
    if metrics["optimizer"] != "lbfgs":
        change = "more train.epochs, or optimizer.name=lbfgs dtype=float64"
    elif metrics["dtype"] != "float64":
        change = "try dtype=float64"
    else:
        change = "raise optimizer.max_iter or train.epochs"
    how_far = (f"gap {gap['absolute']:.2g} to a perfect fit" if gap.get("optimum_is_zero")
               else f"relative gap {gap['relative']:.2g}")  # fmt: skip
    return f"warning: not converged ({how_far}): {change}"


def final_metrics(
    config: Config, data: Dataset, device: torch.device, model: nn.Linear, result: Any,
    scorer: Scorer, train: BatchSource, val: BatchSource | None, scale: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``metrics.json``: the contract other tools read (see the README). The scores first
    (under torchrun they sum over processes: a signal waits for them), then the reference
    (``optimality``): a first signal while it is solved skips it and the run ends
    ``interrupted`` (``--resume`` solves it); an interrupted run gets none."""
    params = scorer.params(model)
    with interrupts.critical() if scorer.dist is not None else nullcontext():
        train_scores, _ = scorer.score(model, train, "train")
        val_scores = scorer.score(model, val)[0] if val is not None else None
    status, message = result.status, result.message or None
    if status == "interrupted" and data.stream is None:
        optimal = {**NO_REFERENCE, "optimum_note": LATER}
    elif status == "interrupted":  # streamed: it has no reference to solve later either
        optimal = optimality(config, data, params)
    else:
        try:
            optimal = optimality(config, data, params)
        except interrupts.Interrupted as exc:
            if exc.hard:
                raise
            optimal = {**NO_REFERENCE, "optimum_note": LATER}
            status = "interrupted"
            message = (
                "training finished; interrupted while solving the reference optimum: "
                "no optimum, gap or standard errors yet"
            )
    intercept = params.pop("intercept")
    truth = true_params(data)
    metrics: dict[str, Any] = {
        "name": config.name,
        "status": status,
        "message": message,
        "loss": own_label(config.loss.name),  # your own loss by its class; loss_source: where
        "delta": config.loss.delta if spec_of(config.loss).uses_delta else None,
        "scale": scale,
        "quantile": config.loss.quantile if spec_of(config.loss).uses_quantile else None,
        "loss_source": own_source(config.loss.name),
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
        **optimal,
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
    d, t, loss = config.data, config.train, config.loss
    delta = loss.kwargs.get("delta", loss.delta) if loss.kwargs else loss.delta  # yours: its own
    return {
        "loss": own_label(loss.name),
        "delta": float(delta) if isinstance(delta, int | float) else loss.delta,
        "optimizer": config.optimizer.name,
        "lr": config.optimizer.lr,
        "batch_size": t.batch_size if t.batch_size is not None else _train_rows(data),
        "quantile": config.loss.quantile,
        "grad_accum_steps": t.grad_accum_steps,
        "epochs": t.epochs,
        "seed": config.seed,
        "dtype": config.dtype,
        "data_source": d.source,
        "n_samples": data.n_rows,
        "outlier_fraction": d.outlier_fraction if d.source == "synthetic" else 0.0,
        "loss_kwargs": str(dict(loss.kwargs)) if loss.kwargs else "",
    }


def _train_rows(data: Dataset) -> int:
    """All the training rows (streamed, ``X_train`` holds only a sample of them)."""
    return data.stream.n_train if data.stream is not None else data.X_train.shape[0]


def delta_label(loss: str, delta: float) -> str:
    """A run's label in a comparison over deltas: ``huber-d0.5``, ``huber-d1e300`` (a valid
    run name: no ``+``)."""
    return f"{loss}-d{delta:g}".replace("+", "")


def run_title(config: Config) -> str:
    """A picture's title: the loss (with its delta), after the run's name unless the name is
    the loss's own label (as in a comparison: ``huber``, ``huber-d0.5``)."""
    name, delta, tau = config.loss.name, config.loss.delta, config.loss.quantile
    spec = spec_of(config.loss)
    loss = f"{name} (delta {delta:.4g})" if spec.uses_delta else own_label(name)
    loss = f"{name} (tau {tau:g})" if spec.uses_quantile else loss
    own = {name, f"{name}-q{tau:g}"} | ({delta_label(name, delta)} if spec.uses_delta else set())
    if config.name in own:
        return loss
    return f"{config.name}: {loss}"


# ----------------------------------------------------------------------------- comparison


def comparison_row(label: str, m: dict[str, Any]) -> dict[str, Any]:
    """One run's line in ``comparison.json`` and the comparison table."""
    val, gap, opt = m.get("val") or {}, m.get("gap") or {}, m.get("optimum") or {}
    return {
        "label": label,
        "loss": m["loss"],
        "delta": m["delta"],
        "quantile": m.get("quantile"),
        "status": m["status"],
        "train_objective": m["train"]["loss"],
        "optimum": opt.get("objective"),
        "optimality_gap": gap.get("absolute"),
        "relative_gap": gap.get("relative"),
        "converged": m.get("converged"),
        "val_mse": val.get("mse"),
        "val_mae": val.get("mae"),
        "coefficient_error": m.get("coefficient_error"),
        "coefficients": m["coefficients"],
        "intercept": m["intercept"],
        "standard_errors": m.get("standard_errors"),
        "epochs": m["epochs"],
        "seconds": m["seconds"],
        "initial_weights": m["initial_weights"],
        "batch_order_digest": m["batch_order_digest"],
        "run_dir": m["run_dir"],
    }


def comparison_verdict(rows: list[dict[str, Any]], synthetic: bool) -> str:
    """A winner only when every run reached its own loss's optimum: otherwise the table
    compares how far each optimizer got, not the losses."""
    diverged = [r["label"] for r in rows if r["status"] == "diverged"]
    if diverged:
        return (
            f"no verdict: {' and '.join(diverged)} diverged (its loss ran to a non-finite "
            "value; see its run folder's metrics.json)"
        )
    unknown = [r["label"] for r in rows if r["relative_gap"] is None]
    short = [r for r in rows if r["relative_gap"] is not None and not r["converged"]]
    if unknown and not short:
        many = len(unknown) > 1
        return (
            f"no verdict: {' and '.join(unknown)} {'have' if many else 'has'} no exact reference, "
            f"so whether {'they' if many else 'it'} reached the optimum is unknown; compare the "
            "coefficients and validation errors in the table"
        )
    if short:
        gaps = ", ".join(f"{r['label']} ({_gap_text(r)})" for r in short)
        return (
            f"no verdict: {gaps} did not reach the optimum of {'its' if len(short) == 1 else 'their'} "
            f"loss (threshold {GAP_WARNING:g}), so the table compares optimizers as much as "
            "losses; rerun with optimizer.name=lbfgs dtype=float64 (or more epochs)"
        )
    if len(rows) == 1:
        return f"one loss only ({rows[0]['label']}): nothing to compare it with"
    if synthetic:
        best = min(rows, key=lambda r: r["coefficient_error"])
        verdict = (
            f"{best['label']} recovered the true coefficients best "
            f"(coefficient error {best['coefficient_error']:.4g})"
        )
    elif all(r["val_mae"] is not None for r in rows):
        best = min(rows, key=lambda r: r["val_mae"])
        verdict = f"{best['label']} had the lowest validation MAE ({best['val_mae']:.4g})"
    else:
        return (
            "every run reached its optimum; no validation set (data.val_fraction: 0), so no "
            "winner by validation error: compare the coefficients (comparison.json)"
        )
    alike = [r["label"] for r in rows if r is not best and _within_uncertainty(best, r)]
    if alike:
        verdict += (
            f"; {' and '.join(alike)} came within 1.96 standard errors of it on every "
            "coefficient, so these data do not tell them apart"
        )
    return verdict


def _gap_text(row: dict[str, Any]) -> str:
    if row["relative_gap"] is None:
        return "no certified optimum"
    return f"relative gap {row['relative_gap']:.2g}"


def _within_uncertainty(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether every coefficient of ``b`` lies within 1.96 standard errors of ``a``'s, using
    the smaller of the two fits' standard errors (two fits of the same rows are not
    independent, and an outlier-inflated standard error must not make a worse fit look
    alike)."""
    sa, sb = a.get("standard_errors"), b.get("standard_errors")
    if not sa or not sb:
        return False
    ca = {**a["coefficients"], "intercept": a["intercept"]}
    cb = {**b["coefficients"], "intercept": b["intercept"]}
    return all(
        abs(ca[k] - cb[k]) < 1.959963984540054 * min(sa[k], sb[k])
        for k in sa
        if k in cb and k in sb
    )
