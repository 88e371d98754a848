"""Pictures: the data with the fitted and true lines, predicted vs actual, residuals, and the
loss comparison. matplotlib ``Figure`` objects without pyplot (no GUI backend, no global
state); saved as PNG and logged to TensorBoard by their callers. Imports matplotlib and numpy
only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

COLORS = {"huber": "tab:blue", "mse": "tab:red", "l1": "tab:green"}


def fit_figure(
    x: np.ndarray,
    y: np.ndarray,
    outliers: np.ndarray | None,
    fitted: tuple[float, float],
    truth: tuple[float, float] | None,
    title: str,
) -> Figure:
    """1-feature data (outliers marked), the fitted line and, when known, the true line."""
    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    ax = fig.add_subplot()
    _scatter(ax, x, y, outliers)
    grid = np.linspace(float(x.min()), float(x.max()), 50)
    ax.plot(grid, fitted[0] * grid + fitted[1], color="tab:blue", lw=2, label="fitted")
    if truth is not None:
        ax.plot(grid, truth[0] * grid + truth[1], "k--", lw=1.5, label="true")
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.legend(loc="best", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    return fig


def _scatter(ax, x: np.ndarray, y: np.ndarray, outliers: np.ndarray | None) -> None:
    inl = np.ones(len(x), bool) if outliers is None else ~outliers
    ax.scatter(x[inl], y[inl], s=8, alpha=0.5, color="0.4", label="data")
    if outliers is not None and outliers.any():
        ax.scatter(x[~inl], y[~inl], s=14, marker="x", color="tab:orange", label="outliers")


def predicted_figure(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Predicted against actual on the validation rows, with the identity line."""
    fig = Figure(figsize=(5.2, 4.6), dpi=100)
    ax = fig.add_subplot()
    ax.scatter(y_true, y_pred, s=8, alpha=0.5)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="actual", ylabel="predicted", title=title)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    return fig


def residual_figure(residuals: np.ndarray, delta: float | None, title: str) -> Figure:
    """Histogram of residuals (actual - predicted), with +-delta marked for Huber."""
    fig = Figure(figsize=(5.6, 4.0), dpi=100)
    ax = fig.add_subplot()
    ax.hist(residuals, bins=60, color="tab:blue", alpha=0.8)
    if delta is not None:
        for d in (-delta, delta):
            ax.axvline(d, color="tab:orange", ls="--", lw=1)
    ax.set(xlabel="residual (actual - predicted)", ylabel="rows", title=title)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    return fig


def comparison_figure(
    x: np.ndarray | None,
    y: np.ndarray | None,
    outliers: np.ndarray | None,
    lines: Sequence[tuple[str, float, float]],
    truth: tuple[float, float] | None,
    bars: tuple[str, Sequence[tuple[str, float]]] | None,
) -> Figure:
    """1 feature: data, outliers, the true line and each loss's line. Otherwise ``bars``:
    ``(what, [(label, value)])``, e.g. the coefficient error per loss."""
    fig = Figure(figsize=(7.0, 4.6), dpi=100)
    ax = fig.add_subplot()
    if x is not None and y is not None:
        _scatter(ax, x, y, outliers)
        grid = np.linspace(float(x.min()), float(x.max()), 50)
        variants = iter(["tab:blue", "tab:purple", "tab:cyan", "tab:olive", "tab:brown"])
        for label, w, b in lines:
            color = COLORS.get(label) or next(variants, None)
            ax.plot(grid, w * grid + b, lw=2, color=color, label=label)
        if truth is not None:
            ax.plot(grid, truth[0] * grid + truth[1], "k--", lw=1.5, label="true")
        ax.set(xlabel="x", ylabel="y", title="losses compared on the same data")
        ax.legend(loc="best", fontsize=8)
    elif bars:
        what, values = bars
        labels = [label for label, _ in values]
        ax.bar(labels, [v for _, v in values], color=[COLORS.get(n.split("-")[0]) for n in labels])
        ax.set(ylabel=what, title=f"{what} per loss")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    return fig


def to_png(fig: Figure) -> bytes:
    """Render once to PNG bytes: the same bytes go to the file and to TensorBoard."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
