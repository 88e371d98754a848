"""The experiment: the recipe that wires every other room together.

``train_run`` reads top to bottom: device and data, model + loss, optimizer, batches,
the run folder and its sinks (``run.open_run``), ``fit``, final metrics, checkpoint,
pictures. Everything that can fail on user input (config, device, data) fails before the
run folder exists. ``compare_losses`` trains one run per loss on the same data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from huberfit.artifacts import (
    check_same_loss,
    checkpoint_payload,
    make_run_dir,
    restore,
    write_json,
)
from huberfit.config import Config, validate_config
from huberfit.data.dataset import Dataset, load_data, make_batches
from huberfit.device import resolve_device
from huberfit.errors import ConfigError
from huberfit.loop import FitResult, FitSettings, TrainState, fit
from huberfit.losses import LOSSES, is_own, load_own_loss, own_label, preflight, spec_of
from huberfit.metrics import (
    HPARAMS_FIRST,
    Scorer,
    comparison_row,
    comparison_verdict,
    delta_label,
    final_metrics,
    hparams_of,
    original_units,
    resolve_delta,
    run_title,
    true_params,
)
from huberfit.model import build_model, read_coefficients
from huberfit.optim import build_optimizer, build_scheduler
from huberfit.run import open_run, stop_on_signals
from huberfit.sinks import ConsoleSink, TensorBoardSink


@dataclass
class Prepared:
    """What every run of one config shares: the device and the data."""

    device: torch.device
    data: Dataset


@dataclass
class Outcome:
    run_dir: Path
    metrics: dict[str, Any]
    result: FitResult
    model: nn.Linear = field(repr=False)


def prepare(config: Config, dist: Any = None, own_loss: bool | None = None) -> Prepared:
    """Resolve the device and load the data (the steps that can fail on user input).
    Under torchrun every rank loads the same data and trains on its own device. With your
    own loss module (``own_loss``; default: the config's) the target keeps its units."""
    device = dist.device if dist is not None else resolve_device(config.device, config.dtype)
    own = is_own(config.loss.name) if own_loss is None else own_loss
    data = load_data(
        config.data, config.seed, config.dtype, config.model.bias, scale_target=not own
    )
    return Prepared(device, data)


def train_run(
    config: Config,
    console: ConsoleSink,
    runs_dir: str | None = None,
    prepared: Prepared | None = None,
    run_dir: Path | None = None,
    resume: dict[str, Any] | None = None,
    dist: Any = None,
    ticked: list[str] | None = None,
    truth_run: bool = True,
) -> Outcome:
    """Train one config into a new run folder (or ``run_dir``), returning its metrics.

    With ``dist`` (under torchrun) every rank trains its share of each global batch and
    only rank 0 writes. ``ticked``: the hparams TensorBoard shows by default; ``truth_run``:
    write the true coefficients beside the run (a comparison writes them once).
    """
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    # 1. device and data: every user error surfaces here, before anything is written
    prepared = prepared or prepare(config, dist)
    device, data = prepared.device, prepared.data
    for note in data.notes:
        console.note(f"warning: {note}")
    if is_own(config.loss.name) and "name" not in config.model_fields_set:
        config = config.model_copy(update={"name": own_label(config.loss.name)})  # by its class
    saved = config  # as given: config.yaml and the checkpoint keep loss.delta: auto
    config, scale = resolve_delta(config, data)
    # 2. model and loss (in standardized units), optimizer, scheduler, batches
    spec = spec_of(config.loss)
    model = build_model(len(data.feature_names), config.model.bias, config.seed,
                        data.X_train.dtype, zero=data.constant).to(device)  # fmt: skip
    loss_fn = spec.build(config.loss.delta / data.scaling.y_scale, config.loss.quantile)
    if is_own(config.loss.name):  # the classic mistakes, caught before anything is written
        preflight(loss_fn, own_label(config.loss.name), device, data.scaling.y_scale,
                  dtypes=(data.X_train.dtype,))  # fmt: skip
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer)
    weights, bias = read_coefficients(model)  # before any restore: a function of the seed
    if resume:
        check_same_loss(resume, config.loss.name)
    state = restore(resume, model, optimizer, scheduler) if resume else TrainState()
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world)
    train, val = make_batches(config, data, device, rank, world)
    steps = train.steps_per_epoch(config.train.grad_accum_steps)
    settings = fit_settings(config, steps, data.scaling.y_scale**spec.power, console)
    scorer = Scorer(loss_fn, data, spec.power, dist)
    figures = lambda: pictures(config, data, scorer.params(model))  # noqa: E731
    # 3. the run folder and its sinks, closed on every path out
    with open_run(saved, console, run_dir=run_dir, runs_dir=runs_dir, dist=dist,
                  truth=true_params(data), figures=figures, truth_run=truth_run) as run:  # fmt: skip
        # 4. train until done, stopped early, diverged or interrupted
        console.start(state.epoch, steps)
        with stop_on_signals() as stop:
            result = fit(model, loss_fn, train, optimizer, run.sinks, settings,
                         scorer.evaluator(val), scheduler=scheduler, state=state, stop=stop,
                         reducer=dist)  # fmt: skip
        # 5. final metrics in original units, checkpoint, pictures
        metrics = final_metrics(config, data, device, model, result, scorer, train, val, scale)
        metrics.update(run_dir=str(run.dir), started=started, initial_weights=[*weights, bias],
                       batch_order_digest=train.order_digest(), world_size=world)  # fmt: skip
        run.save(checkpoint_payload(saved, data, model, optimizer, scheduler, result.state,
                                    world, config.loss), metrics)  # fmt: skip
        if run.main and config.output.images and result.status != "diverged":
            run.pictures(figures())
        run.finish(metrics, hparams_of(config, data), ticked)
    return Outcome(run.dir, metrics, result, model)


def fit_in_memory(config: Config, data: Dataset) -> tuple[nn.Linear, FitResult]:
    """``train_run`` without a run folder, sinks or pictures (the scikit-learn estimator):
    the same model, loss, optimizer, batches and loop, on the CPU or ``config.device``."""
    from huberfit.sinks import Sinks

    device = resolve_device(config.device, config.dtype)
    config, _ = resolve_delta(config, data)
    spec = spec_of(config.loss)
    model = build_model(len(data.feature_names), config.model.bias, config.seed,
                        data.X_train.dtype, zero=data.constant).to(device)  # fmt: skip
    loss_fn = spec.build(config.loss.delta / data.scaling.y_scale, config.loss.quantile)
    optimizer = build_optimizer(config, model)
    train, val = make_batches(config, data, device)
    steps = train.steps_per_epoch(config.train.grad_accum_steps)
    settings = fit_settings(
        config, steps, data.scaling.y_scale**spec.power, ConsoleSink(1, quiet=True)
    )
    scorer = Scorer(loss_fn, data, spec.power)
    result = fit(model, loss_fn, train, optimizer, Sinks(), settings, scorer.evaluator(val),
                 scheduler=build_scheduler(config, optimizer))  # fmt: skip
    return model, result


def fit_settings(
    config: Config, steps_per_epoch: int, loss_scale: float, console: ConsoleSink
) -> FitSettings:
    """The loop's settings; a logging interval longer than an epoch is shortened to one
    (said only when the user chose the value)."""
    t = config.train
    log_every = min(t.log_every_steps, steps_per_epoch)
    chosen = t.log_every_steps != type(t).model_fields["log_every_steps"].default
    if log_every < t.log_every_steps and chosen:
        console.note(
            f"train.log_every_steps={t.log_every_steps} is more than the "
            f"{steps_per_epoch} steps per epoch; logging every {log_every} steps"
        )
    return FitSettings(
        epochs=t.epochs,
        grad_accum_steps=t.grad_accum_steps,
        log_every_steps=log_every,
        early_stopping_patience=t.early_stopping_patience,
        loss_scale=loss_scale,
        fused=t.fused,
    )


def pictures(config: Config, data: Dataset, params: dict[str, float]) -> list[tuple[str, bytes]]:
    """The run's pictures (``plots.run_pictures``) from the current coefficients."""
    from huberfit import plots

    intercept = params.pop("intercept")
    X, y = original_units(data, data.X_train, data.y_train)
    held_out = data.X_val is not None
    evaluated = original_units(data, data.X_val, data.y_val) if held_out else (X, y)
    truth = None if data.true_weights is None else (data.true_weights, data.true_bias or 0.0)
    spec = spec_of(config.loss)
    delta = config.loss.delta if spec.uses_delta else None
    tau = config.loss.quantile if spec.uses_quantile else None
    return plots.run_pictures(X, y, data.outliers_train, evaluated, (list(params.values()),
                              intercept), truth, delta, run_title(config), tau)  # fmt: skip


# ----------------------------------------------------------------------------- comparison

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
    prefix = "" if config.name.startswith("compare") else "compare-"  # not compare-compare-
    parent = make_run_dir(runs_dir or config.output.runs_dir, config.name, prefix=prefix)
    several_deltas = len({d for _, n, d in labels if n in LOSSES and LOSSES[n].uses_delta}) > 1
    differ = ["loss"] + ["delta"] * several_deltas
    ticked = differ + [k for k in HPARAMS_FIRST if k not in differ][: 5 - len(differ)]
    rows, last_step = [], 0
    for label, name, delta in labels:
        console.note(f"{label}: training")
        raw = config.model_dump(mode="json")
        kwargs = raw["loss"]["kwargs"] if name == config.loss.name else {}  # yours: its own
        raw["loss"] = {**raw["loss"], "name": name, "delta": delta, "kwargs": kwargs}
        raw["name"] = label
        child = validate_config(raw, f"compare-losses {label}")
        (parent / label).mkdir()
        outcome = train_run(child, console, prepared=prepared, run_dir=parent / label,
                            ticked=ticked, truth_run=False)  # fmt: skip
        last_step = max(last_step, outcome.result.state.step)
        rows.append(comparison_row(label, outcome.metrics))
    truth = true_params(data)
    if truth is not None and config.output.tensorboard:  # one truth beside every run
        from huberfit.sinks import write_truth_run

        write_truth_run(parent / "truth", truth, [0, last_step], config.output.flush_secs).close()
    verdict = comparison_verdict(rows, data.true_weights is not None)
    write_json(parent / "comparison.json", {"runs": rows, "verdict": verdict,
                                            "config": config.model_dump(mode="json")})  # fmt: skip
    figure = comparison_picture(parent, data, rows, config) if config.output.images else None
    return Comparison(parent, rows, verdict, figure)


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
    (parent / "comparison.png").write_bytes(png)
    if config.output.tensorboard:
        sink = TensorBoardSink(parent, config.output.flush_secs)
        try:
            sink.images([("comparison", png)])
        finally:
            sink.close()
    return fig
