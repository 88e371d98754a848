"""The experiment: the recipe that wires every other room together.

``train_run`` reads top to bottom: device and data, model + loss, optimizer, batches,
the run folder and its sinks (``run.open_run``), ``fit`` (a checkpoint every
``train.checkpoint_every`` epochs), the final checkpoint, final metrics, pictures and,
last, ``metrics.json``. Everything that can fail on user input (config, device, data)
fails before the run folder exists. From the folder's creation to ``metrics.json`` a
signal saves the state reached (``huberfit.interrupts``). ``compare_losses`` trains one
run per loss on the same data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from huberfit import interrupts
from huberfit.artifacts import (
    check_same_data,
    check_same_loss,
    checkpoint_payload,
    restore,
)
from huberfit.config import Config
from huberfit.data.dataset import Dataset, load_data, make_batches
from huberfit.device import resolve_device
from huberfit.errors import ConfigError, RunError
from huberfit.loop import EpochReport, FitResult, FitSettings, TrainState, fit
from huberfit.losses import is_own, own_label, preflight, spec_of
from huberfit.metrics import (
    Scorer,
    final_metrics,
    hparams_of,
    original_units,
    resolve_delta,
    run_title,
    true_params,
)
from huberfit.model import build_model, read_coefficients
from huberfit.optim import build_optimizer, build_scheduler
from huberfit.run import Checkpoints, open_run
from huberfit.sinks import ConsoleSink, Sinks

STATUS_WITH_PICTURES = ("completed", "early_stopped")  # not diverged or interrupted


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
    interrupts.fault("data")  # test hook
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
    hparams: dict[str, Any] | None = None,
    watch: Callable[[EpochReport], str | None] | None = None,
) -> Outcome:
    """Train one config into a new run folder (or ``run_dir``), returning its metrics.

    With ``dist`` (under torchrun) every rank trains its share of each global batch and
    only rank 0 writes. ``ticked``: the hparams TensorBoard shows by default; ``truth_run``:
    write the true coefficients beside the run (a comparison writes them once);
    ``hparams``: more hparams (a sweep's swept keys); ``watch(report)``: called each epoch,
    returns why to stop (a sweep's pruner), and the run ends ``pruned`` with that message.
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
    loss_fn = build_scaled_loss(config, spec, data)
    if is_own(config.loss.name):  # the classic mistakes, caught before anything is written
        preflight(loss_fn, own_label(config.loss.name), device, data.scaling.y_scale,
                  dtypes=(data.X_train.dtype,))  # fmt: skip
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer)
    weights, bias = read_coefficients(model)  # before any restore: a function of the seed
    if resume:
        check_same_loss(resume, config.loss.name)
        check_same_data(resume, data, config.data.path)
    state = TrainState()
    if resume:  # a diverged run resumes with a smaller lr (artifacts.load_resume)
        state = restore(resume, model, optimizer, scheduler, lr=config.optimizer.lr)
        then = resume["config"]["optimizer"]["lr"]
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world)
    train, val = make_batches(config, data, device, rank, world)
    steps = train.steps_per_epoch(config.train.grad_accum_steps)
    settings = fit_settings(config, steps, data.scaling.y_scale**spec.power, console)
    scorer = Scorer(loss_fn, data, spec.power, dist)
    if resume and config.optimizer.lr != then:  # a diverged run's last finite checkpoint
        why = overflows(model, scorer, train, config.dtype) if dist is None else None
        if why:
            raise RunError(f"{run_dir}: {unusable(state.epoch, why, then)}")
        console.note(f"optimizer.lr: {config.optimizer.lr:g} from epoch {state.epoch + 1} "
                     f"on (the run diverged with {then:g})")  # fmt: skip
    figures = lambda: pictures(config, data, scorer.params(model))  # noqa: E731
    payload = lambda st: checkpoint_payload(saved, data, model, optimizer, scheduler, st,  # noqa: E731
                                            world, config.loss)  # fmt: skip
    # 3. the run folder and its sinks, closed on every path out. From here on a signal
    # saves the state reached (a second one: at once, keeping the last checkpoint)
    with interrupts.run_signals() as policy, ExitStack() as making:
        making.enter_context(policy.critical_section())  # a signal waits for the folder
        with open_run(saved, console, run_dir=run_dir, runs_dir=runs_dir, dist=dist,
                      truth=true_params(data), figures=figures, truth_run=truth_run) as run:  # fmt: skip
            checkpoints = Checkpoints(run, payload, config.train.checkpoint_every,
                                      saved=state if resume else None)  # fmt: skip
            result: FitResult | None = None
            try:
                # 4. train until done, stopped early, diverged or interrupted; a first
                # signal from here (or one while the folder was made) stops after a step,
                # on every rank at the same one
                with policy.in_fit() as stop:
                    making.close()
                    interrupts.fault("folder")  # test hook
                    if resume:
                        run.reopen()
                    console.start(state.epoch, steps)
                    sinks = interrupts.fault_sinks(run.sinks)
                    watcher = _Watch(watch, stop) if watch is not None else None
                    result = fit(model, loss_fn, train, optimizer,
                                 sinks if watcher is None else Sinks(sinks, watcher), settings,
                                 scorer.evaluator(val), scheduler=scheduler, state=state,
                                 stop=watcher or stop, reducer=dist,
                                 on_epoch=checkpoints.periodic)  # fmt: skip
                if watcher is not None and watcher.why and not stop.is_set():
                    if result.status == "interrupted":  # stopped by the watch, not a signal
                        result.status, result.message = "pruned", watcher.why
                usable = None  # diverged: can its last finite checkpoint be resumed at all?
                if result.status == "diverged" and checkpoints.saved_epoch is not None and dist is None:  # fmt: skip
                    usable = last_checkpoint_usable(run.dir, model, scorer, train, config, result)
                # 5. the state reached, saved first; final metrics in original units;
                # pictures; metrics.json last (a folder without it is resumable)
                if result.status != "diverged":  # its last finite checkpoint stays
                    checkpoints.save(result.state)
                interrupts.fault("scoring")  # test hook
                # (a diverged or huge model's scores overflow: inf/NaN, written as null); a
                # first signal while the reference is solved skips it: status interrupted
                with np.errstate(over="ignore", invalid="ignore"):
                    metrics = final_metrics(config, data, device, model, result, scorer,
                                            train, val, scale)  # fmt: skip
                metrics.update(run_dir=str(run.dir), started=started, checkpoint_usable=usable,
                               initial_weights=[*weights, bias],
                               batch_order_digest=train.order_digest(), world_size=world)  # fmt: skip
                unwritten = None  # a picture that cannot be written (a full disk) still
                if run.main and config.output.images and metrics["status"] in STATUS_WITH_PICTURES:
                    interrupts.fault("pictures")  # test hook
                    try:  # leaves the metrics to write; its error comes after them
                        run.pictures(figures())
                    except RunError as exc:
                        unwritten = exc
                run.finish(metrics, {**hparams_of(config, data), **(hparams or {})}, ticked)
                run.write_metrics(metrics)
                if unwritten is not None:
                    raise unwritten
            except interrupts.Interrupted as exc:
                # the state reached is consistent (not a second signal's) and not diverged
                if not exc.hard and (result is None or result.status != "diverged"):
                    checkpoints.save(state)
                exc.run_dir, exc.saved_epoch = str(run.dir), checkpoints.saved_epoch
                raise
    return Outcome(run.dir, metrics, result, model)


def overflows(model: nn.Linear, scorer: Scorer, train: Any, dtype: str) -> str | None:
    """Why no learning rate can train on from ``model`` (a diverged run's last finite
    checkpoint): its loss on the training rows overflows the training dtype, so the first
    step of a resumed run, before any lr acts, is not finite. None when it is finite."""
    loss = scorer.score(model, train, "train")[0]["loss"]
    if np.isfinite(loss):
        return None
    biggest = max(float(p.detach().abs().max()) for p in model.parameters())
    return f"its loss overflows {dtype} (weights up to {biggest:.2g}) at any learning rate"


def unusable(epoch: int, why: str, lr: float) -> str:
    return (f"its last finite checkpoint (epoch {epoch}) is itself unusable: {why}; train a "
            f"new run with a smaller optimizer.lr, e.g. optimizer.lr={lr / 10:g}")  # fmt: skip


def last_checkpoint_usable(
    run_dir: Path, model: nn.Linear, scorer: Scorer, train: Any, config: Config, result: FitResult
) -> bool | None:
    """A diverged run: whether its last finite checkpoint can be resumed (with a smaller
    lr); if not, its message says so instead of suggesting a resume."""
    import copy

    from huberfit.artifacts import load_checkpoint

    try:
        ckpt, saved = load_checkpoint(run_dir), copy.deepcopy(model)
        saved.load_state_dict(ckpt["model"])
    except (RunError, RuntimeError):  # gone or damaged since it was written: not judged
        return None
    why = overflows(saved, scorer, train, config.dtype)
    if why:  # (instead of the loop's advice: a smaller lr, as if resuming could work)
        said = result.message.removesuffix("; try a smaller optimizer.lr")
        result.message = f"{said}; {unusable(ckpt['state']['epoch'], why, config.optimizer.lr)}"
    return why is None


class _Watch:
    """A sink that asks ``watch`` after each epoch whether to stop, and ``fit``'s stop flag:
    set by the watch, or by a signal (``signals``, the run's own flag)."""

    def __init__(self, watch: Callable[[EpochReport], str | None], signals: Any) -> None:
        self.watch, self.signals, self.why = watch, signals, ""

    def epoch(self, report: EpochReport) -> None:
        if not self.why:
            self.why = self.watch(report) or ""

    def is_set(self) -> bool:
        return bool(self.why) or self.signals.is_set()


def fit_in_memory(config: Config, data: Dataset) -> tuple[nn.Linear, FitResult]:
    """``train_run`` without a run folder, sinks or pictures (the scikit-learn estimator):
    the same model, loss, optimizer, batches and loop, on the CPU or ``config.device``."""

    device = resolve_device(config.device, config.dtype)
    config, _ = resolve_delta(config, data)
    spec = spec_of(config.loss)
    model = build_model(len(data.feature_names), config.model.bias, config.seed,
                        data.X_train.dtype, zero=data.constant).to(device)  # fmt: skip
    loss_fn = build_scaled_loss(config, spec, data)
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


def build_scaled_loss(config: Config, spec: Any, data: Dataset) -> nn.Module:
    """The loss in standardized units, where its delta is ``delta / y_scale``. Below the
    dtype's smallest normal number that is 0, and the loss and its gradient with it
    (``data.noise_std=1e100`` in float32 trained a loss of exactly 0): refused."""
    y_scale, dtype = data.scaling.y_scale, data.X_train.dtype
    scaled, tiny = config.loss.delta / y_scale, torch.finfo(dtype).tiny
    if spec.uses_delta and scaled < tiny:
        name = str(dtype).removeprefix("torch.")
        raise ConfigError(
            f"loss.delta={config.loss.delta:g} is {scaled:.3g} of the target's scale "
            f"({y_scale:.3g}), below what {name} holds ({tiny:.3g}): use dtype=float64 or a "
            "larger loss.delta"
        )
    return spec.build(scaled, config.loss.quantile)


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
        zero_grad=t.zero_grad,
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
