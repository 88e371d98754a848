"""Pictures: the data with the fitted and true lines, predicted vs actual, residuals, and the
loss comparison. matplotlib ``Figure`` objects without pyplot (no GUI backend, no global
state); saved as PNG and logged to TensorBoard by their callers. Imports matplotlib and numpy
only.

Outliers set the range of a plain plot and hide what matters: lines a few tenths apart look
like one line when the y-axis spans +-20. So every axis here is sized to the inliers (the
rows not marked as outliers, or a robust range when none are marked); points beyond it are
drawn as arrows at the edge, with their count, and legends sit outside the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

COLORS = {"huber": "tab:blue", "mse": "tab:red", "l1": "tab:green", "quantile": "tab:brown"}
VARIANTS = ["tab:purple", "tab:cyan", "tab:olive", "tab:brown", "tab:pink", "tab:gray"]
ROBUST_SPAN = 8.0  # a robust range: median +- this many robust standard deviations (MAD)


def robust_range(values: np.ndarray, outliers: np.ndarray | None = None) -> tuple[float, float]:
    """The range that shows the bulk of ``values``: the inliers' range when outliers are
    marked, else median +- 8 robust standard deviations (1.4826 * MAD), never wider than
    the data; padded by 6% on each side."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if outliers is not None and outliers.any() and (~outliers).any():
        core = np.asarray(values, dtype=float)[~outliers]
        lo, hi = float(core.min()), float(core.max())
    elif len(v):
        med = float(np.median(v))
        sigma = 1.4826 * float(np.median(np.abs(v - med)))
        lo = max(float(v.min()), med - ROBUST_SPAN * sigma)
        hi = min(float(v.max()), med + ROBUST_SPAN * sigma)
    else:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def fit_figure(
    x: np.ndarray,
    y: np.ndarray,
    outliers: np.ndarray | None,
    fitted: tuple[float, float],
    truth: tuple[float, float] | None,
    title: str,
) -> Figure:
    """1-feature data (outliers marked), the fitted line and, when known, the true line."""
    fig = Figure(figsize=(7.2, 4.4), dpi=100)
    ax = fig.add_subplot()
    _scatter(ax, x, y, outliers)
    grid = np.linspace(float(x.min()), float(x.max()), 50)
    ax.plot(grid, fitted[0] * grid + fitted[1], color="tab:blue", lw=2, label="fitted")
    if truth is not None:
        ax.plot(grid, truth[0] * grid + truth[1], "k--", lw=1.5, label="true")
    ax.set(xlabel="x", ylabel="y", title=title)
    _legend_below(fig, ax, left=0.1)
    return fig


def _legend_below(fig: Figure, ax, left: float, top: float = 0.9, ncol: int = 3) -> None:
    """The legend under the axes, outside the data, and room made for it."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    rows = -(-len(labels) // ncol)
    fig.subplots_adjust(left=left, right=0.98, top=top, bottom=0.14 + 0.045 * rows, wspace=0.25)


def _scatter(ax, x: np.ndarray, y: np.ndarray, outliers: np.ndarray | None) -> None:
    """Inliers as dots and outliers as crosses, the y-axis sized to the inliers; outliers
    beyond it become arrows at the top or bottom edge, with their count."""
    lo, hi = robust_range(y, outliers)
    ax.set_ylim(lo, hi)
    inl = np.ones(len(x), bool) if outliers is None else ~outliers
    size = 8 if len(x) > 200 else 24  # a handful of rows must still be seen
    ax.scatter(
        x[inl], y[inl], s=size, alpha=0.5 if len(x) > 200 else 0.8, color="0.4", label="data"
    )
    out = ~inl
    if out.any():
        shown = out & (y >= lo) & (y <= hi)
        if shown.any():
            ax.scatter(x[shown], y[shown], s=14, marker="x", color="tab:orange", label="outliers")
    _edge_arrows(ax, x, y, lo, hi, "y")


def _edge_arrows(ax, x: np.ndarray, y: np.ndarray, lo: float, hi: float, axis: str) -> None:
    """Points beyond [lo, hi] on ``axis`` as arrows at that edge; the legend says how many
    and how far they reach."""
    above, below = y > hi, y < lo
    if not (above.any() or below.any()):
        return
    span = hi - lo
    up, down = ("^", "v") if axis == "y" else (">", "<")
    high, low = ("above", "below") if axis == "y" else ("right", "left")
    parts = []
    for beyond, at, marker, word, ext in ((above, hi - 0.015 * span, up, high, np.max),
                                          (below, lo + 0.015 * span, down, low, np.min)):  # fmt: skip
        if beyond.any():
            pos = np.full(int(beyond.sum()), at)
            pts = (x[beyond], pos) if axis == "y" else (pos, x[beyond])
            ax.scatter(*pts, s=22, marker=marker, color="tab:orange", clip_on=False, zorder=3)
            parts.append(f"{int(beyond.sum())} {word}, to {float(ext(y[beyond])):.3g}")
    # one legend entry for the arrows (a proxy artist drawn nowhere)
    ax.scatter([], [], s=22, marker=up, color="tab:orange",
               label=f"beyond the frame: {'; '.join(parts)}")  # fmt: skip


def predicted_figure(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Predicted against actual (validation rows), the identity line, the actual axis sized
    to the bulk of the rows (targets far out are arrows at the edge)."""
    fig = Figure(figsize=(5.6, 4.6), dpi=100)
    ax = fig.add_subplot()
    # the predictions' span, widened by 4 robust standard deviations of the residuals
    r = y_true - y_pred
    spread = 4 * 1.4826 * float(np.median(np.abs(r - np.median(r)))) if len(r) else 0.0
    lo, hi = float(y_pred.min()) - spread, float(y_pred.max()) + spread
    lo, hi = max(lo, float(y_true.min())), min(hi, float(y_true.max()))
    lo, hi = min(lo, float(y_pred.min())), max(hi, float(y_pred.max()))
    pad = 0.06 * (hi - lo) if hi > lo else 0.5
    lo, hi = lo - pad, hi + pad
    inside = (y_true >= lo) & (y_true <= hi)
    ax.scatter(y_true[inside], y_pred[inside], s=8, alpha=0.5)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = actual")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _edge_arrows(ax, y_pred, y_true, lo, hi, "x")
    ax.set(xlabel="actual", ylabel="predicted", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.92, bottom=0.12)
    return fig


def residual_figure(
    residuals: np.ndarray, delta: float | None, title: str, quantile: float | None = None
) -> Figure:
    """Histogram of residuals (actual - predicted) over their robust range, so the bins
    resolve the core; rows beyond it are counted at the edges. +-delta marked for Huber;
    for a quantile fit, 0 and the share of rows below the fit beside its target tau."""
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot()
    r = np.asarray(residuals, dtype=float)
    lo, hi = robust_range(r)
    if delta is not None:  # keep +-delta in view
        lo, hi = min(lo, -1.15 * delta), max(hi, 1.15 * delta)
    ax.hist(r[(r >= lo) & (r <= hi)], bins=60, range=(lo, hi), color="tab:blue", alpha=0.8)
    ax.set_xlim(lo, hi)
    if delta is not None:
        for d in (-delta, delta):
            ax.axvline(d, color="tab:orange", ls="--", lw=1)
        ax.annotate(f"+-delta = {delta:g}", xy=(delta, 0.9), xycoords=("data", "axes fraction"),
                    xytext=(4, 0), textcoords="offset points", fontsize=8, color="tab:orange")  # fmt: skip
    for beyond, where, x in ((r < lo, "below", 0.01), (r > hi, "above", 0.99)):
        if beyond.any():
            extreme = float(r[beyond].min() if where == "below" else r[beyond].max())
            count = int(beyond.sum())
            ax.annotate(f"{'<-' if where == 'below' else ''} {count} row{'s' * (count != 1)} "
                        f"(to {extreme:.3g}) {'->' if where == 'above' else ''}".strip(),
                        xy=(x, 0.96), xycoords="axes fraction", fontsize=8,
                        ha="left" if where == "below" else "right", color="0.3")  # fmt: skip
    if quantile is not None:
        ax.axvline(0.0, color="tab:orange", ls="--", lw=1)
        below = float(np.mean(r < 0)) if len(r) else float("nan")
        left = (0.0 - lo) / (hi - lo) > 0.5  # the label on the side with room
        ax.annotate(f"{below:.1%} of these rows below the fit (tau {quantile:g})", xy=(0.0, 0.9),
                    xycoords=("data", "axes fraction"), xytext=(-4 if left else 4, 0),
                    textcoords="offset points", ha="right" if left else "left",
                    fontsize=8, color="tab:orange")  # fmt: skip
    ax.set(xlabel="residual (actual - predicted)", ylabel="rows", title=title)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.13)
    return fig


def comparison_figure(
    x: np.ndarray | None,
    y: np.ndarray | None,
    outliers: np.ndarray | None,
    lines: Sequence[tuple[str, float, float]],
    truth: tuple[float, float] | None,
    bars: tuple[str, Sequence[tuple[str, float]]] | None,
) -> Figure:
    """1 feature: the data (sized to the inliers) with each loss's line and the true line,
    and, when the truth is known, a second panel with each line minus the true line, where
    differences too small to see against the data are plain. Otherwise ``bars``:
    ``(what, [(label, value)])``, e.g. the coefficient error per loss."""
    if x is None or y is None:
        return _bar_figure(bars)
    two = truth is not None
    fig = Figure(figsize=(11.0 if two else 7.6, 4.8), dpi=100)
    ax = fig.add_subplot(1, 2, 1) if two else fig.add_subplot()
    _scatter(ax, x, y, outliers)
    grid = np.linspace(float(x.min()), float(x.max()), 50)
    colors = line_colors([label for label, _, _ in lines])
    for (label, w, b), color in zip(lines, colors, strict=True):
        ax.plot(grid, w * grid + b, lw=2, color=color, label=f"{label}: {w:.4g} x {b:+.4g}")
    if truth is not None:
        ax.plot(grid, truth[0] * grid + truth[1], "k--", lw=1.5,
                label=f"true: {truth[0]:.4g} x {truth[1]:+.4g}")  # fmt: skip
    ax.set(xlabel="x", ylabel="y", title="the data and each loss's line")
    if two:
        ax2 = fig.add_subplot(1, 2, 2)
        for (_label, w, b), color in zip(lines, colors, strict=True):
            ax2.plot(grid, (w - truth[0]) * grid + (b - truth[1]), lw=2, color=color)
        ax2.axhline(0.0, color="k", ls="--", lw=1.5)
        ax2.set(xlabel="x", ylabel="fitted line - true line",
                title="distance of each line from the truth")  # fmt: skip
    fig.suptitle("losses compared on the same data", fontsize=11)
    _legend_below(fig, ax, left=0.07 if two else 0.1, top=0.88)
    return fig


def _bar_figure(bars: tuple[str, Sequence[tuple[str, float]]] | None) -> Figure:
    fig = Figure(figsize=(7.0, 4.6), dpi=100)
    ax = fig.add_subplot()
    if bars:
        what, values = bars
        labels = [label for label, _ in values]
        ax.bar(labels, [v for _, v in values], color=line_colors(labels))
        for i, (_, v) in enumerate(values):
            ax.annotate(f"{v:.4g}", xy=(i, v), ha="center", va="bottom", fontsize=8)
        ax.set(ylabel=what, title=f"{what} per loss")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    return fig


def line_colors(labels: Sequence[str]) -> list[str]:
    """One distinct colour per run: the loss's own for the first of each loss, then others
    (``huber-d0.5``, ``huber-d2`` ... each get their own)."""
    used: set[str] = set()
    spare = iter(VARIANTS)
    colors = []
    for label in labels:
        color = COLORS.get(label.split("-")[0])
        if color is None or color in used:
            color = next(spare, "black")
        used.add(color)
        colors.append(color)
    return colors


def to_png(fig: Figure) -> bytes:
    """Render once to PNG bytes: the same bytes go to the file and to TensorBoard."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------- a run's pictures


def run_pictures(
    X: np.ndarray,
    y: np.ndarray,
    outliers: np.ndarray | None,
    evaluated: tuple[np.ndarray, np.ndarray],
    fitted: tuple[Sequence[float], float],
    truth: tuple[Sequence[float], float] | None,
    delta: float | None,
    title: str,
    quantile: float | None = None,
) -> list[tuple[str, bytes]]:
    """A run's pictures as ``[(name, PNG bytes)]``, everything in original units.

    ``X (n, f)``, ``y (n,)``: the training rows (``outliers``: their mask, if known);
    ``evaluated``: the rows residuals are shown for (validation rows, or the training rows
    without any); ``fitted`` and ``truth``: ``(weights, intercept)``. One feature: the data
    with the fitted and true lines; more: predicted vs actual. Then the residuals.
    """
    w, b = np.asarray(fitted[0], dtype=float), float(fitted[1])
    Xe, ye = evaluated
    pred = Xe @ w + b
    if X.shape[1] == 1:
        line = None if truth is None else (float(truth[0][0]), float(truth[1]))
        fit = fit_figure(X[:, 0], y, outliers, (float(w[0]), b), line, title)
    else:
        fit = predicted_figure(ye, pred, f"{title}: predicted vs actual")
    residuals = residual_figure(ye - pred, delta, f"{title}: residuals", quantile)
    return [("fit", to_png(fit)), ("residuals", to_png(residuals))]


def comparison_picture(
    X: np.ndarray,
    y: np.ndarray,
    outliers: np.ndarray | None,
    rows: Sequence[dict],
    truth: tuple[Sequence[float], float] | None,
) -> Figure | None:
    """The comparison's picture from its rows (``label``, ``coefficients``, ``intercept``,
    ``coefficient_error``, ``val_mae``): each loss's line on one feature; otherwise the
    coefficient error per loss (truth known) or the validation MAE; None without either."""
    line = None if truth is None else (float(truth[0][0]), float(truth[1]))
    if X.shape[1] == 1:
        lines = [(r["label"], next(iter(r["coefficients"].values())), r["intercept"]) for r in rows]
        return comparison_figure(X[:, 0], y, outliers, lines, line, None)
    if truth is not None:
        errors = [(r["label"], r["coefficient_error"]) for r in rows]
        return comparison_figure(
            None, None, None, [], None, ("coefficient error (L2 to truth)", errors)
        )
    if all(r["val_mae"] is not None for r in rows):
        maes = [(r["label"], r["val_mae"]) for r in rows]
        return comparison_figure(None, None, None, [], None, ("validation MAE", maes))
    return None
