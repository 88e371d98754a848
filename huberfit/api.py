"""The Python API: what the command line does, for notebooks and scripts.

    import huberfit
    result = huberfit.train({"loss": {"name": "huber"}}, overrides=["train.epochs=20"])
    result.coefficients, result.intercept, result.status, result.run_dir
    run = huberfit.load_run(result.run_dir); run.predict(X)
    comparison = huberfit.compare_losses(losses=["huber", "mse", "l1"])

Each call writes the same run folder, TensorBoard events and ``metrics.json`` as the CLI.
Errors raise ``huberfit.HuberfitError`` (or a subclass) whose message is the CLI's one
line. ``import huberfit`` stays torch-free: this room is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huberfit.errors import DivergedError

ConfigLike = str | Path | dict[str, Any] | Any | None


@dataclass
class TrainResult:
    """A finished run: its folder, status and coefficients in original units, and the
    whole ``metrics.json``."""

    run_dir: Path
    status: str
    coefficients: dict[str, float]
    intercept: float
    metrics: dict[str, Any] = field(repr=False)

    def predict(self, X: Any) -> Any:
        """Predictions in original units for ``X (n, n_features)`` in original units (a
        NumPy array, or a DataFrame with the training features as columns)."""
        return load_run(self.run_dir).predict_frame(X)


def _config(config: ConfigLike, overrides: list[str], defaults: list[str] | None = None) -> Any:
    from huberfit.config import Config, apply_overrides, load_config, override_keys, validate_config

    if config is None or isinstance(config, str | Path):
        return load_config(config, overrides, defaults=defaults)
    raw = config.model_dump(mode="json") if isinstance(config, Config) else dict(config)
    raw = apply_overrides(apply_overrides(raw, defaults or []), overrides)
    return validate_config(raw, "config", overridden=override_keys(overrides))


def train(
    config: ConfigLike = None, *, overrides: list[str] | tuple[str, ...] = (),
    runs_dir: str | None = None, quiet: bool = False,
) -> TrainResult:  # fmt: skip
    """Train one experiment, as ``huberfit train`` does.

    Args:
        config: a YAML file's path, a mapping of the config's keys, a ``Config``, or None
            for the built-in quickstart.
        overrides: ``dotted.key=value`` strings, as on the command line.
        runs_dir: the parent of the run folder (default: ``output.runs_dir``).
        quiet: no progress bar or notes (the bar is Rich's, live in a notebook too).

    Raises:
        HuberfitError: the CLI's one-line message; ``DivergedError`` if training diverged
            (the run folder is kept).
    """
    from huberfit.experiment import train_run
    from huberfit.sinks import ConsoleSink

    cfg = _config(config, list(overrides))
    outcome = train_run(cfg, ConsoleSink(cfg.train.epochs, quiet=quiet), runs_dir)
    m = outcome.metrics
    if m["status"] == "diverged":
        raise DivergedError(f"{m['message']} (run folder kept: {outcome.run_dir})")
    return TrainResult(outcome.run_dir, m["status"], dict(m["coefficients"]), m["intercept"], m)


def compare_losses(
    config: ConfigLike = None, *, losses: list[str] | tuple[str, ...] = ("huber", "mse", "l1"),
    deltas: list[float] | tuple[float, ...] = (), overrides: list[str] | tuple[str, ...] = (),
    runs_dir: str | None = None, quiet: bool = False,
) -> Any:  # fmt: skip
    """Train the same experiment once per loss, as ``huberfit compare-losses`` does; the
    built-in comparison when ``config`` is None. Returns ``experiment.Comparison``
    (``parent``, ``rows``, ``verdict``)."""
    from huberfit.compare import COMPARE_DEFAULTS
    from huberfit.compare import compare_losses as compare
    from huberfit.sinks import ConsoleSink

    cfg = _config(config, list(overrides), COMPARE_DEFAULTS if config is None else None)
    console = ConsoleSink(cfg.train.epochs, quiet=quiet)
    return compare(cfg, list(losses), [float(d) for d in deltas], console, runs_dir)


def load_run(path: str | Path) -> Any:
    """A trained run folder, to predict from: ``predict.TrainedRun`` (``predict(X)`` for a
    NumPy array, ``predict_frame`` for a DataFrame or array, ``features``, ``target``)."""
    from huberfit.predict import load_run as load

    return load(path)
