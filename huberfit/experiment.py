"""The experiment: the one room that knows every other and wires them together.

``train_run`` reads top to bottom like the recipe it is: device, data, model + loss,
optimizer, run folder, sinks, ``fit``, final metrics, checkpoint, pictures. Everything that
can fail on user input (config, device, data) fails before the run folder exists.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from huberfit import __version__
from huberfit.artifacts import (
    load_checkpoint,
    make_run_dir,
    save_checkpoint,
    write_json,
    write_text_atomic,
)
from huberfit.config import Config, dump_config, validate_config
from huberfit.data import Dataset, load_dataset
from huberfit.device import resolve_device
from huberfit.errors import ConfigError
from huberfit.losses import LOSSES, build_loss
from huberfit.model import build_model, read_coefficients
from huberfit.sinks import ConsoleSink, Sinks, TensorBoardSink, coefficient_error
from huberfit.train import (
    FitResult,
    FitSettings,
    InMemoryBatches,
    ShardedBatches,
    TrainState,
    fit,
)


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


def prepare(config: Config, dist: Any = None) -> Prepared:
    """Resolve the device and load the data (the steps that can fail on user input).
    Under torchrun every rank loads the same data and trains on its own device."""
    device = dist.device if dist is not None else resolve_device(config.device, config.dtype)
    d = config.data
    if d.source != "synthetic" and _streams(d):
        from huberfit.stream import load_streaming

        data = load_streaming(d, config.seed, config.dtype, bias=config.model.bias)
    else:
        data = load_dataset(d, config.seed, config.dtype, bias=config.model.bias)
    return Prepared(device, data)


def _streams(d: Any) -> bool:
    from huberfit.stream import should_stream

    return should_stream(d.streaming, d.path or "", d.source, d.memory_budget_mb)


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
    only rank 0 writes: the run folder, events, checkpoint and metrics. ``ticked``: the
    hparams TensorBoard shows by default; ``truth_run``: write the true coefficients beside
    the run (a comparison writes them once, beside all of its runs).
    """
    main = dist is None or dist.is_main
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    # 1. device and data: every user error surfaces here, before anything is written
    prepared = prepared or prepare(config, dist)
    device, data = prepared.device, prepared.data
    for note in data.notes:
        console.note(f"warning: {note}")
    # 2. model, loss (in standardized units), optimizer, scheduler
    tdtype = data.X_train.dtype
    model = build_model(len(data.feature_names), config.model.bias, config.seed, tdtype)
    model.to(device)
    spec = LOSSES[config.loss.name]
    loss_fn = build_loss(config.loss.name, config.loss.delta / data.scaling.y_scale)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer)
    initial = read_coefficients(model)  # before any restore: a function of the seed alone
    state = restore(resume, model, optimizer, scheduler) if resume else TrainState()
    # 3. the batch source: tensors moved to the device once (or streamed from the files)
    batches, train_rows, val_rows = build_sources(config, data, device, dist)
    steps_per_epoch = batches.steps_per_epoch(config.train.grad_accum_steps)
    log_every = min(config.train.log_every_steps, steps_per_epoch)
    if (
        log_every < config.train.log_every_steps  # said only when the user chose the value
        and config.train.log_every_steps
        != type(config.train).model_fields["log_every_steps"].default
    ):
        console.note(
            f"train.log_every_steps={config.train.log_every_steps} is more than the "
            f"{steps_per_epoch} steps per epoch; logging every {log_every} steps"
        )
    # 4. the run folder (named once, by rank 0) and its sinks
    if main:
        run_dir = run_dir or make_run_dir(runs_dir or config.output.runs_dir, config.name)
    if dist is not None:
        run_dir = Path(dist.broadcast_text(str(run_dir) if main else None))
    config_yaml = dump_config(config)
    if main:
        write_text_atomic(run_dir / "config.yaml", config_yaml)
    scorer = Scorer(loss_fn, data, spec.power, dist)
    figures = FigureMaker(config, data, model, scorer)
    tb = None
    if config.output.tensorboard and main:
        truth = true_params(data)
        images_every = config.output.images_every_epochs if config.output.images else None
        tb = TensorBoardSink(
            run_dir, config.output.flush_secs, truth, figures, images_every, truth_run
        )
        tb.text("config", f"```yaml\n{config_yaml}```")
    sinks = Sinks(console, tb)
    settings = FitSettings(
        epochs=config.train.epochs,
        grad_accum_steps=config.train.grad_accum_steps,
        log_every_steps=log_every,
        early_stopping_patience=config.train.early_stopping_patience,
        loss_scale=data.scaling.y_scale**spec.power,
        fused=config.train.fused,
    )

    def evaluate(m: nn.Module) -> tuple[dict[str, float] | None, dict[str, float], Any]:
        val, residuals = scorer.score(m, val_rows()) if val_rows is not None else (None, None)
        return val, scorer.params(m), residuals

    # 5. train; whatever happens, the folder gets what was logged and the writer is closed
    stop = threading.Event()
    try:
        console.start(state.epoch, steps_per_epoch)
        try:
            with stop_on_signals(stop):
                result = fit(
                    model, loss_fn, batches, optimizer, sinks, settings, evaluate,
                    scheduler=scheduler, state=state, stop=stop, reducer=dist,
                )  # fmt: skip
        finally:
            console.close()
        # 6. final metrics in original units, checkpoint, pictures
        metrics = final_metrics(config, data, device, model, result, scorer, train_rows, val_rows)
        metrics["run_dir"] = str(run_dir)
        metrics["started"] = started
        metrics["initial_weights"] = [*initial[0], initial[1]]
        metrics["batch_order_digest"] = order_digest(batches)
        metrics["world_size"] = 1 if dist is None else dist.world
        if not main:
            return Outcome(run_dir, metrics, result, model)
        payload = checkpoint_payload(config, data, model, optimizer, scheduler, result.state)
        payload["world_size"] = metrics["world_size"]
        save_checkpoint(run_dir / "checkpoint.pt", payload)
        write_json(run_dir / "metrics.json", metrics)
        if config.output.images and result.status != "diverged":
            pictures = figures()
            for name, png in pictures:
                (run_dir / f"{name}.png").write_bytes(png)
            if tb is not None:
                tb.images(pictures)
        if tb is not None:
            tb.finish(metrics, hparams_of(config, data), config_yaml, ticked)
    finally:
        if tb is not None:
            tb.close()
    return Outcome(run_dir, metrics, result, model)


def build_sources(config: Config, data: Dataset, device: torch.device, dist: Any):
    """The training batch source, and callables giving the training and validation rows as
    ``(X, y)`` chunks (validation: None without a validation set)."""
    batch_size = None if config.optimizer.name == "lbfgs" else config.train.batch_size
    if data.stream is not None:
        from huberfit.stream import StreamBatches

        if batch_size is None and config.optimizer.name != "lbfgs":
            raise ConfigError(
                "train.batch_size: null (full batch) would hold every streamed row in memory; "
                "set a batch size, or use optimizer.name: lbfgs (it streams the full batch)"
            )
        rank, world = (0, 1) if dist is None else (dist.rank, dist.world)

        def source(split: str, size: int | None) -> StreamBatches:
            return StreamBatches(data.stream, split, size, device, config.dtype,
                                 config.data.shuffle_buffer, rank=rank, world=world)  # fmt: skip

        batches = source("train", batch_size)
        val = source("val", None) if data.stream.n_val else None
        return batches, batches.full_chunks, (val.full_chunks if val else None)
    X, y = data.X_train.to(device), data.y_train.to(device)
    if dist is None:
        batches = InMemoryBatches(X, y, batch_size, config.seed)
    else:
        batches = ShardedBatches(X, y, batch_size, config.seed, dist.rank, dist.world)
    if data.X_val is None:
        return batches, lambda: [(X, y)], None
    X_val, y_val = data.X_val.to(device), data.y_val.to(device)
    return batches, lambda: [(X, y)], lambda: [(X_val, y_val)]


def order_digest(batches: InMemoryBatches) -> str:
    """A short fingerprint of the first epoch's sample order (same order, same digest)."""
    import hashlib

    if not hasattr(batches, "order"):  # streamed: the first epoch's order of file pieces
        order = np.random.default_rng([batches.info.seed, 0, 17]).permutation(
            len(batches.info.pieces)
        )
        return hashlib.sha1(order.tobytes()).hexdigest()[:16]
    order = batches.order(0) if batches.batch_size < batches.n else torch.arange(batches.n)
    return hashlib.sha1(order.numpy().tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- builders


def build_optimizer(config: Config, model: nn.Module) -> Any:
    """The configured optimizer over the model's parameters (see ``huberfit.optim``)."""
    from huberfit import optim

    o = config.optimizer
    params = list(model.parameters())
    if o.name == "sgd":
        return optim.SGD(params, o.lr, o.momentum, o.nesterov, o.weight_decay)
    if o.name in ("adam", "adamw"):
        return optim.Adam(params, o.lr, o.weight_decay, decoupled=o.name == "adamw")
    # torch's defaults (tolerance_grad=1e-7, tolerance_change=1e-9) stop well short of the
    # optimum; with them off, each step runs max_iter iterations or until the line search
    # makes no progress, and fit() repeats the step until the objective stops falling.
    return torch.optim.LBFGS(
        params,
        lr=o.lr,
        max_iter=o.max_iter,
        history_size=o.history_size,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )


def build_scheduler(config: Config, optimizer: Any) -> Any:
    from huberfit import optim

    s = config.scheduler
    if s.name == "cosine":
        return optim.CosineLR(optimizer, config.train.epochs, s.min_lr)
    if s.name == "step":
        return optim.StepLR(optimizer, s.step_size, s.gamma)
    return None


# ----------------------------------------------------------------------------- scoring


RESIDUAL_ROWS = 100_000  # residuals kept for histograms, per scoring


class Scorer:
    """Metrics in original units: the training objective, MSE, MAE and R^2.

    Computed from sums (rows, loss, squared and absolute residuals, target and its square,
    in standardized units where the target's mean is ~0, so nothing cancels), so that with
    several processes each scores its share of the rows and one all-reduce combines them.
    """

    def __init__(self, loss_fn: nn.Module, data: Dataset, power: int, dist: Any = None) -> None:
        self.loss_fn, self.data, self.dist = loss_fn, data, dist
        self.loss_scale = data.scaling.y_scale**power
        self.last_rows = {"train": 0.0, "val": 0.0}

    @torch.no_grad()
    def score(
        self, model: nn.Module, rows: Any, split: str = "val"
    ) -> tuple[dict[str, float], np.ndarray]:
        """Metrics of ``model`` on ``rows``, an iterable of ``(X (n, f), y (n, 1))`` chunks;
        and (some of) this process's residuals, original units."""
        sums = torch.zeros(6, dtype=torch.float64)
        residuals: list[np.ndarray] = []
        kept = 0
        for X, y in rows:
            if self.dist is not None and self.data.stream is None:  # in memory: all rows here
                X, y = X[self.dist.rank :: self.dist.world], y[self.dist.rank :: self.dist.world]
            n = X.shape[0]
            if n == 0:
                continue
            pred = model(X)
            ys, r = y.double().reshape(-1), (y - pred).double().reshape(-1)
            sums += torch.tensor([n, float(self.loss_fn(pred, y)) * n, float(r @ r),
                                  float(r.abs().sum()), float(ys.sum()), float(ys @ ys)],
                                 dtype=torch.float64)  # fmt: skip
            if kept < RESIDUAL_ROWS:
                residuals.append(r[: RESIDUAL_ROWS - kept].cpu().numpy())
                kept += len(residuals[-1])
        if self.dist is not None:
            sums = sums.to(self.dist.device)
            self.dist.sum_(sums)
        n, loss_sum, sq, ab, y1, y2 = sums.tolist()
        self.last_rows[split] = n
        s = self.data.scaling.y_scale
        sst = y2 - y1 * y1 / n
        metrics = {
            "loss": loss_sum / n * self.loss_scale,
            "mse": sq / n * s * s,
            "mae": ab / n * s,
            "r2": 1.0 - sq / sst if sst > 0 else math.nan,
        }
        r_all = np.concatenate(residuals) if residuals else np.empty(0)
        return metrics, r_all * s

    def params(self, model: nn.Linear) -> dict[str, float]:
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


def final_metrics(config, data, device, model, result, scorer, train_rows, val_rows) -> dict:
    """``metrics.json``: the contract other tools read (see the README)."""
    params = scorer.params(model)
    intercept = params.pop("intercept")
    train, _ = scorer.score(model, train_rows(), "train")
    val = scorer.score(model, val_rows())[0] if val_rows is not None else None
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
        "n_val": int(scorer.last_rows["val"]) if val is not None else 0,
        "streamed": data.stream is not None,
        "coefficients": params,
        "intercept": intercept,
        "true_coefficients": None,
        "true_intercept": None,
        "coefficient_error": None,
        "best_epoch": result.state.best_epoch if result.state.best_epoch > 0 else None,
        "train": train,
        "val": val,
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


class FigureMaker:
    """Draws the run's pictures from the current model (end of run, or every N epochs),
    as ``[(name, PNG bytes)]``."""

    def __init__(self, config: Config, data: Dataset, model: nn.Linear, scorer: Scorer):
        self.config, self.data, self.model, self.scorer = config, data, model, scorer

    def __call__(self) -> list[tuple[str, Any]]:
        from huberfit import plots

        data, cfg = self.data, self.config
        params = self.scorer.params(self.model)
        intercept = params.pop("intercept")
        X, y = original_units(data, data.X_train, data.y_train)
        figs = []
        title = run_title(cfg)
        if X.shape[1] == 1:
            truth = None
            if data.true_weights is not None:
                truth = (data.true_weights[0], float(data.true_bias or 0.0))
            fitted = (next(iter(params.values())), intercept)
            figs.append(
                ("fit", plots.fit_figure(X[:, 0], y, data.outliers_train, fitted, truth, title))
            )
        Xe, ye = (
            (data.X_val, data.y_val) if data.X_val is not None else (data.X_train, data.y_train)
        )
        Xo, yo = original_units(data, Xe, ye)
        pred = Xo @ np.array(list(params.values())) + intercept
        delta = cfg.loss.delta if LOSSES[cfg.loss.name].uses_delta else None
        if X.shape[1] != 1:
            figs.append(("fit", plots.predicted_figure(yo, pred, f"{title}: predicted vs actual")))
        figs.append(("residuals", plots.residual_figure(yo - pred, delta, f"{title}: residuals")))
        return [(name, plots.to_png(fig)) for name, fig in figs]


def run_title(config: Config) -> str:
    """A picture's title: the loss (with its delta), after the run's name unless the name is
    the loss's own label (as in a comparison: ``huber``, ``huber-d0.5``)."""
    name, delta = config.loss.name, config.loss.delta
    uses_delta = LOSSES[name].uses_delta
    loss = f"{name} (delta {delta:g})" if uses_delta else name
    if config.name in (name, delta_label(delta) if uses_delta else name):
        return loss
    return f"{config.name}: {loss}"


def delta_label(delta: float) -> str:
    """A Huber run's label in a comparison over deltas: ``huber-d0.5``."""
    return f"huber-d{delta:g}"


def original_units(
    data: Dataset, X: torch.Tensor, y: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    s = data.scaling
    Xo = X.double().numpy() * np.array(s.x_scale) + np.array(s.x_mean)
    yo = y.double().numpy().reshape(-1) * s.y_scale + s.y_mean
    return Xo, yo


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_payload(config, data, model, optimizer, scheduler, state: TrainState) -> dict:
    return {
        "huberfit_version": __version__,
        "config": config.model_dump(mode="json"),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "state": state.to_dict(),
        "feature_names": list(data.feature_names),
        "scaling": data.scaling.as_dict(),
        "target": config.data.target,
        "loss": {"name": config.loss.name, "delta": config.loss.delta},
        "rng": {"torch": torch.get_rng_state()},
    }


def restore(ckpt: dict[str, Any], model, optimizer, scheduler) -> TrainState:
    """Put a checkpoint's model, optimizer, scheduler and RNG states back."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    return TrainState.from_dict(ckpt["state"])


def load_resume(run_dir: str, overrides: list[str]) -> tuple[Config, dict[str, Any]]:
    """The config and checkpoint of a run to continue (overrides may extend ``epochs``)."""
    from huberfit.config import apply_overrides, override_keys

    ckpt = load_checkpoint(run_dir)
    raw = apply_overrides(dict(ckpt["config"]), overrides)
    source = f"{run_dir}/checkpoint.pt config"
    return validate_config(raw, source, overridden=override_keys(overrides)), ckpt


# ----------------------------------------------------------------------------- signals


@contextmanager
def stop_on_signals(stop: threading.Event):
    """Ctrl-C / SIGTERM set ``stop`` (training finishes its step and saves); a second Ctrl-C
    interrupts at once. A SIGTERM after a Ctrl-C does not: torchrun sends one to its
    workers when the terminal's Ctrl-C reaches it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- comparison

COMPARE_DEFAULTS = [
    "name=compare",
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
    Huber delta), each into ``<parent>/<label>``; report each one's optimality gap."""
    from huberfit.reference import optimality_gap

    labels = comparison_labels(losses, deltas, config.loss.delta)
    prepared = prepare(config)  # one dataset for every run
    prefix = "" if config.name.startswith("compare") else "compare-"  # not compare-compare-
    parent = make_run_dir(runs_dir or config.output.runs_dir, config.name, prefix=prefix)
    X, y = original_units(prepared.data, prepared.data.X_train, prepared.data.y_train)
    rows = []
    differ = ["loss"] + ["delta"] * (len({d for _, n, d in labels if n == "huber"}) > 1)
    ticked = differ + [k for k in HPARAMS_FIRST if k not in differ][: 5 - len(differ)]
    truth = true_params(prepared.data)
    last_step = 0
    for label, name, delta in labels:
        console.note(f"{label}: training")
        raw = config.model_dump(mode="json")
        raw["loss"] = {"name": name, "delta": delta}
        raw["name"] = label
        child = validate_config(raw, f"compare-losses {label}")
        (parent / label).mkdir()
        outcome = train_run(child, console, prepared=prepared, run_dir=parent / label,
                            ticked=ticked, truth_run=False)  # fmt: skip
        last_step = max(last_step, outcome.result.state.step)
        m = outcome.metrics
        gap = optimality_gap(name, X, y, list(m["coefficients"].values()), m["intercept"],
                             delta, config.model.bias)  # fmt: skip
        rows.append({"label": label, **_comparison_row(m, gap)})
        write_json(parent / label / "metrics.json", {**m, "optimality": gap})
    if truth is not None and config.output.tensorboard:  # one truth beside every run
        from huberfit.sinks import write_truth_run

        write_truth_run(parent / "truth", truth, [0, last_step], config.output.flush_secs).close()
    verdict = comparison_verdict(rows, prepared.data.true_weights is not None)
    result = Comparison(parent, rows, verdict)
    write_json(parent / "comparison.json", {"runs": rows, "verdict": verdict,
                                            "config": config.model_dump(mode="json")})  # fmt: skip
    if config.output.images:
        result.figure = _comparison_picture(parent, prepared.data, rows, config)
    return result


HPARAMS_FIRST = ["loss", "delta", "optimizer", "lr", "batch_size"]  # see hparams_of


def comparison_labels(
    losses: list[str], deltas: list[float], default_delta: float
) -> list[tuple[str, str, float]]:
    """``(label, loss, delta)`` per run: ``huber``, ``mse``, ``l1``, ``huber-d0.5``..."""
    labels = []
    for name in losses:
        if name not in LOSSES:
            raise ConfigError(f"--losses: unknown loss {name!r}; valid: {', '.join(LOSSES)}")
        if name == "huber" and deltas:
            labels += [(delta_label(d), "huber", d) for d in deltas]
        else:
            labels.append((name, name, default_delta))
    if len({lab for lab, _, _ in labels}) != len(labels):
        raise ConfigError("--losses/--deltas: each loss and delta may appear only once")
    return labels


def _comparison_row(m: dict[str, Any], gap: dict[str, Any]) -> dict[str, Any]:
    val = m.get("val") or {}
    return {
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


def _comparison_picture(parent: Path, data: Dataset, rows, config: Config) -> Any:
    from huberfit import plots

    X, y = original_units(data, data.X_train, data.y_train)
    truth = None
    if data.true_weights is not None:
        truth = (data.true_weights[0], float(data.true_bias or 0.0))
    if X.shape[1] == 1:
        lines = [(r["label"], next(iter(r["coefficients"].values())), r["intercept"]) for r in rows]
        fig = plots.comparison_figure(X[:, 0], y, data.outliers_train, lines, truth, None)
    elif truth is not None or data.true_weights is not None:
        bars = (
            "coefficient error (L2 to truth)",
            [(r["label"], r["coefficient_error"]) for r in rows],
        )
        fig = plots.comparison_figure(None, None, None, [], None, bars)
    elif all(r["val_mae"] is not None for r in rows):
        bars = ("validation MAE", [(r["label"], r["val_mae"]) for r in rows])
        fig = plots.comparison_figure(None, None, None, [], None, bars)
    else:
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
