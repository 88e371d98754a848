"""``huberfit compare-losses``: a sweep over the loss.

One queued trial per loss (and per delta of the losses that use one), run by the sweep
engine (``sweep.execute``) in this process on one loaded dataset: the same data, split,
initial weights and batch order for every loss. Each run's optimality gap, the comparison
table's rows and the verdict come from ``metrics``; the picture from ``plots``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huberfit.artifacts import make_run_dir, write_bytes_atomic, write_json
from huberfit.config import Config, validate_config
from huberfit.data.dataset import Dataset
from huberfit.errors import ConfigError, HuberfitError
from huberfit.experiment import prepare
from huberfit.losses import LOSSES, is_own, load_own_loss, own_label, preflight
from huberfit.metrics import (
    comparison_row,
    comparison_verdict,
    delta_label,
    original_units,
    true_params,
)
from huberfit.runs import folder_state
from huberfit.sinks import ConsoleSink, TensorBoardSink
from huberfit.sweep import Dim, Plan, execute, with_values

COMPARE_DEFAULTS = [  # the built-in comparison: each loss trained to its certified optimum
    "name=compare",
    "dtype=float64",
    "optimizer.name=lbfgs",
    "data.n_samples=1000",
    "data.n_features=1",
    "data.true_weights=[2.0]",
    "data.outlier_fraction=0.15",
    "data.outlier_scale=15.0",
]


@dataclass
class Comparison:
    parent: Path
    rows: list[dict[str, Any]]
    verdict: str
    figure: Any = field(repr=False, default=None)
    interrupted: bool = False


def compare_losses(
    config: Config,
    losses: list[str],
    deltas: list[float],
    console: ConsoleSink,
    runs_dir: str | None = None,
) -> Comparison:
    """Train the same data, split, initial weights and batch order once per loss (and per
    delta of the losses that use one), each into ``<parent>/<label>``; report each one's
    optimality gap."""
    labels = comparison_labels(losses, deltas, config.loss.delta, config.loss.quantile)
    prepared = prepare(config, own_loss=any(is_own(n) for n in losses))  # one dataset for all
    data = prepared.data
    for _, name, _ in labels:  # your own losses: every mistake caught before any folder
        if is_own(name):
            own = load_own_loss(name, config.loss.kwargs if config.loss.name == name else {})
            preflight(own, own_label(name), prepared.device, data.scaling.y_scale,
                      dtypes=(data.X_train.dtype,))  # fmt: skip
    plan = _plan(config, labels)
    for label, point in zip(plan.labels, plan.points, strict=True):  # all before any folder
        validate_config(with_values(plan.base, point, label), f"compare-losses {label}")
    prefix = "" if config.name.startswith("compare") else "compare-"  # not compare-compare-
    parent = make_run_dir(config.output.runs_dir if runs_dir is None else runs_dir, config.name,
                          prefix=prefix)  # fmt: skip
    plan.study = parent.name
    write_json(parent / "sweep.json", plan.to_json())
    summary = execute(plan, parent, lambda line: None, console=console,
                      prepared_for=lambda _: prepared)  # fmt: skip
    return _finish(plan, parent, config, data, summary)


def resume_comparison(plan: Plan, parent: Path, console: ConsoleSink) -> Comparison:
    """``huberfit sweep --resume`` of a comparison: its remaining losses on the same data
    (loaded again from its config), then its table, verdict and picture over all of them."""
    config = validate_config(plan.base, f"{parent / 'sweep.json'}")
    own = any(is_own(p["loss.name"]) for p in plan.points)
    prepared = prepare(config, own_loss=own)
    summary = execute(plan, parent, lambda line: None, console=console, resume=True,
                      prepared_for=lambda _: prepared)  # fmt: skip
    return _finish(plan, parent, config, prepared.data, summary)


def _finish(plan: Plan, parent: Path, config: Config, data: Dataset, summary: Any) -> Comparison:
    """The table's rows from every loss's ``metrics.json`` (in the order asked), the
    truth beside them, the verdict, ``comparison.json`` and the picture."""
    failed = [r for r in summary.results if r.metrics is None]
    if failed:  # an error, not a run: the comparison cannot stand
        raise HuberfitError(f"compare-losses {failed[0].name}: {failed[0].message}")
    rows, last_step = [], 0
    for label in plan.labels:
        state = folder_state(parent / label)
        if state.metrics is None or state.metrics.get("status") == "interrupted":
            continue  # not trained yet (an interrupted comparison)
        rows.append(comparison_row(label, state.metrics))
        last_step = max(last_step, int(state.metrics.get("steps") or 0))
    truth = true_params(data)
    if truth is not None and config.output.tensorboard and not (parent / "truth").exists():
        from huberfit.sinks import write_truth_run

        write_truth_run(parent / "truth", truth, [0, last_step], config.output.flush_secs).close()
    done = len(rows) == len(plan.labels)
    verdict = comparison_verdict(rows, data.true_weights is not None) if done else (
        f"no verdict yet: {len(rows)} of {len(plan.labels)} losses trained"
    )  # fmt: skip
    write_json(parent / "comparison.json", {"runs": rows, "verdict": verdict,
                                            "config": config.model_dump(mode="json")})  # fmt: skip
    figure = (
        comparison_picture(parent, data, rows, config) if config.output.images and rows else None
    )
    return Comparison(parent, rows, verdict, figure, summary.interrupted)


def _plan(config: Config, labels: list[tuple[str, str, Any]]) -> Plan:
    """A grid of queued points, one per label; every point also sets ``loss.kwargs``
    (the config's own for its loss, none for the others)."""
    base = config.model_dump(mode="json")
    base.pop("sweep", None)
    names = list(dict.fromkeys(n for _, n, _ in labels))
    deltas = list(dict.fromkeys(d for _, _, d in labels))
    dims = [Dim("loss.name", choices=names)] + [Dim("loss.delta", choices=deltas)] * (
        len(deltas) > 1
    )
    points = [
        {"loss.name": n, "loss.delta": d,
         "loss.kwargs": dict(config.loss.kwargs) if n == config.loss.name else {}}
        for _, n, d in labels
    ]  # fmt: skip
    metric = "val.loss" if config.data.val_fraction > 0 else "train.loss"
    return Plan(base, dims, "grid", len(points), metric, "minimize", False, "", None, points,
                [label for label, _, _ in labels], best=False)  # fmt: skip


def comparison_labels(
    losses: list[str], deltas: list[float], default_delta: float | str, quantile: float = 0.5
) -> list[tuple[str, str, float]]:
    """``(label, loss, delta)`` per run: ``huber``, ``mse``, ``l1``, ``huber-d0.5``..."""
    if not losses:
        raise ConfigError("--losses: name at least one loss (huber, mse, l1, quantile)")
    if deltas and not any(LOSSES.get(n) and LOSSES[n].uses_delta for n in losses):
        raise ConfigError("--deltas: none of --losses uses a delta (huber does)")
    labels = []
    for name in losses:
        if is_own(name):  # your own loss: by its class name
            labels.append((own_label(name), name, default_delta))
            continue
        if name not in LOSSES:
            raise ConfigError(f"--losses: unknown loss {name!r}; valid: {', '.join(LOSSES)}, "
                              "or your own as file.py:Class")  # fmt: skip
        if LOSSES[name].reference is None:
            raise ConfigError(f"--losses: loss {name!r} has no exact reference solver to "
                              "measure its optimality gap against")  # fmt: skip
        if LOSSES[name].uses_delta and deltas:
            labels += [(delta_label(name, d), name, d) for d in deltas]
        elif LOSSES[name].uses_quantile:  # quantile-q0.9: which quantile, in every label
            labels.append((f"{name}-q{quantile:g}", name, default_delta))
        else:
            labels.append((name, name, default_delta))
    if len({lab for lab, _, _ in labels}) != len(labels):
        raise ConfigError("--losses/--deltas: each loss and delta may appear only once")
    return labels


def comparison_picture(parent: Path, data: Dataset, rows: list[dict], config: Config) -> Any:
    """``comparison.png`` and the same picture in the parent's TensorBoard run."""
    from huberfit import plots

    X, y = original_units(data, data.X_train, data.y_train)
    truth = None if data.true_weights is None else (data.true_weights, data.true_bias or 0.0)
    fig = plots.comparison_picture(X, y, data.outliers_train, rows, truth)
    if fig is None:
        return None
    png = plots.to_png(fig)
    write_bytes_atomic(parent / "comparison.png", png)
    if config.output.tensorboard:
        sink = TensorBoardSink(parent, config.output.flush_secs)
        try:
            sink.images([("comparison", png)])
        finally:
            sink.close()
    return fig
