"""The command line: Typer commands that parse flags, call the experiment and print results.

Must not import torch, numpy, pandas or the rooms that do at module level: ``huberfit
--help`` stays fast. Heavy rooms are imported inside command bodies. User-fixable errors
(``HuberfitError``) become one ``error: ...`` line on stderr and exit code 1; ``--debug`` or
``HUBERFIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from huberfit import __version__
from huberfit.errors import HuberfitError

app = typer.Typer(
    name="huberfit",
    help="Linear-regression training experiments in PyTorch: Huber, MSE, L1 and quantile losses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(
    help="Show, check, create and describe config files.", no_args_is_help=True
)
app.add_typer(config_app, name="config")

# Piped output is not squeezed into 80 columns: tables stay readable in files and logs.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_debug = {"on": os.environ.get("HUBERFIT_DEBUG", "") not in ("", "0")}

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_OPT = typer.Option(
    None, "--config", "-c", help="YAML config file; default: the built-in quickstart."
)
OVERRIDES_ARG = typer.Argument(
    None, help="Overrides as dotted.key=value, e.g. optimizer.lr=0.1 train.epochs=5."
)


def user_errors(fn: F) -> F:
    """Print a HuberfitError as one ``error:`` line and exit 1 (unless debugging)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HuberfitError as exc:
            if _debug["on"]:
                raise
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
                err.print(f"error: {exc}", markup=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out.print(f"huberfit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Train nn.Linear with a custom Huber loss, MSE or L1; watch it in TensorBoard."""
    if debug:
        _debug["on"] = True


# ----------------------------------------------------------------------------- config


@config_app.command("show")
@user_errors
def config_show(overrides: list[str] = OVERRIDES_ARG, config: Path | None = CONFIG_OPT) -> None:
    """Print the resolved config (every default filled in) as YAML."""
    from huberfit.config import dump_config, load_config

    out.print(dump_config(load_config(config, overrides)), end="", markup=False)


@config_app.command("validate")
@user_errors
def config_validate(overrides: list[str] = OVERRIDES_ARG, config: Path | None = CONFIG_OPT) -> None:
    """Check a config: print 'ok', or every problem and exit 1."""
    from huberfit.config import load_config

    load_config(config, overrides)
    out.print("ok")


@config_app.command("init")
@user_errors
def config_init(
    path: Path = typer.Argument(Path("huberfit.yaml"), help="Where to write the starter config."),
) -> None:
    """Write a commented starter config (never overwrites a file)."""
    from huberfit.config import starter_config
    from huberfit.errors import ConfigError

    if path.exists():
        raise ConfigError(f"{path} already exists; choose another path or remove it first")
    try:
        with path.open("x", encoding="utf-8") as fh:
            fh.write(starter_config())
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    out.print(f"wrote {path}; run it with: huberfit train --config {path}")


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON Schema (for editors; see the README)."""
    from huberfit.config import json_schema

    out.print(json.dumps(json_schema(), indent=2), markup=False)


# ----------------------------------------------------------------------------- train


@app.command()
@user_errors
def train(
    overrides: list[str] = OVERRIDES_ARG,
    config: Path | None = CONFIG_OPT,
    runs_dir: str | None = typer.Option(None, "--runs-dir", help="Parent folder of run folders."),
    name: str | None = typer.Option(None, "--name", help="Run name (overrides name:)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda[:N] | mps."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue this run folder to its configured epochs."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json to stdout only."),
) -> None:
    """Train one experiment into a new run folder (default: the built-in quickstart)."""
    from huberfit.config import load_config
    from huberfit.errors import ConfigError

    overrides = list(overrides or [])
    flags = [f"name={name}"] * bool(name) + [f"device={device}"] * bool(device)
    if resume is not None:
        from huberfit.artifacts import load_resume

        if config is not None:
            raise ConfigError("--resume continues a run with its own config; drop --config")
        cfg, ckpt = load_resume(str(resume), overrides + flags)
    else:
        cfg, ckpt = load_config(config, overrides + flags), None
    _run_training(cfg, ckpt, resume, runs_dir, quiet, json_out)


def _run_training(cfg, ckpt, resume, runs_dir, quiet: bool, json_out: bool) -> None:
    from huberfit import distributed

    with distributed.session(cfg.device) as dist:
        main = dist is None or dist.is_main
        try:
            metrics, run_dir = _train(cfg, ckpt, resume, runs_dir, quiet or not main, dist)
        except distributed.PeerError as exc:
            if dist is None or _debug["on"]:
                raise
            # under torchrun: another rank died, failed or timed out
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HuberfitError(f"training stopped: another process failed ({first})") from None
    if main:
        _report(metrics, run_dir, quiet, json_out)
    _exit_for(metrics, run_dir, main)


def _train(cfg, ckpt, resume, runs_dir, quiet: bool, dist):
    from huberfit.experiment import prepare, train_run
    from huberfit.sinks import ConsoleSink

    console = ConsoleSink(cfg.train.epochs, quiet=quiet, err=err)
    prepared = prepare(cfg, dist)
    how = " (auto)" if cfg.device == "auto" and dist is None else ""
    ranks = f"   processes: {dist.world} ({dist.device.type})" if dist is not None else ""
    console.note(f"device: {prepared.device}{how}   data: {prepared.data.source}{ranks}")
    done = ckpt["state"]["epoch"] if ckpt else 0
    if ckpt and done >= cfg.train.epochs:
        console.note(
            f"the run already has its {done} epochs; nothing to train "
            f"(continue it with: huberfit train --resume {resume} train.epochs={done + 10})"
        )
    outcome = train_run(cfg, console, runs_dir, prepared, run_dir=resume, resume=ckpt, dist=dist)
    return outcome.metrics, outcome.run_dir


def _report(metrics, run_dir, quiet: bool, json_out: bool) -> None:
    from huberfit.sinks import render_summary

    if json_out:
        out.print(json.dumps(metrics, indent=2, default=str), markup=False)
    elif not quiet:
        render_summary(metrics, str(run_dir), out)


def _exit_for(metrics, run_dir, main: bool) -> None:
    from rich.text import Text

    from huberfit.errors import DivergedError
    from huberfit.metrics import gap_warning

    status = metrics["status"]
    warning = gap_warning(metrics)
    if warning and main:
        err.print(Text(warning, style="yellow"), soft_wrap=False)
    if status == "diverged":
        raise DivergedError(f"{metrics['message']} (run folder kept: {run_dir})")
    if status == "interrupted":
        if main:
            err.print(
                f"interrupted: saved {run_dir}; continue with: huberfit train --resume {run_dir}"
            )
        raise typer.Exit(130)


@app.command("check-loss")
@user_errors
def check_loss(
    target: str = typer.Argument(
        ..., help="Your loss: path/to/file.py:Class or package.module:Class."
    ),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="huber | mse | l1 | quantile: compare value and gradient row by row.",
    ),
    delta: float = typer.Option(1.0, "--delta", help="The reference's delta (huber)."),
    quantile: float = typer.Option(0.5, "--quantile", help="The reference's tau (quantile)."),
    kwargs: str = typer.Option(
        "", "--kwargs", help="Your class's arguments, a YAML mapping: '{delta: 1}'."
    ),
    device: str = typer.Option("cpu", "--device", help="auto | cpu | cuda[:N] | mps."),
    rows: int = typer.Option(1_000_000, "--rows", min=1000, help="Rows for the timing."),
    json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Check your own loss module: shape, finiteness, graph, gradcheck, dtype/device, and
    (with --reference) value and gradient against a built-in; exit 0 only if all pass."""
    from huberfit.config import BUILTIN_LOSSES, parse_yaml
    from huberfit.errors import ConfigError

    if ":" not in target:
        raise ConfigError(
            f"check-loss: give your loss as file.py:Class or package.module:Class; got {target!r}"
        )
    if not 0 < delta < float("inf"):
        raise ConfigError(f"--delta must be a finite number > 0; got {delta}")
    if not 0 < quantile < 1:
        raise ConfigError(f"--quantile must be in (0, 1); got {quantile}")
    if reference is not None and reference not in BUILTIN_LOSSES:
        raise ConfigError(
            f"--reference must be one of {', '.join(BUILTIN_LOSSES)}; got {reference!r}"
        )
    args = parse_yaml(kwargs, "--kwargs") if kwargs.strip() else {}
    if not isinstance(args, dict):
        raise ConfigError(f"--kwargs must be a YAML mapping like '{{delta: 1}}'; got {kwargs!r}")
    from huberfit.checkloss import check_loss as run_checks
    from huberfit.device import resolve_device
    from huberfit.losses import load_own_loss, own_label
    from huberfit.sinks import render_checks

    target = _own_file_absolute(target)
    loss = load_own_loss(target, args, keys=("check-loss", "--kwargs"))
    results = run_checks(loss, own_label(target), reference, delta, quantile,
                         resolve_device(device, "float32"), rows)  # fmt: skip
    if json_out:
        out.print(json.dumps([{"check": n, "passed": p, "detail": d} for n, p, d in results],
                             indent=2), markup=False)  # fmt: skip
    else:
        render_checks(own_label(target), results, out)
    failed = [n for n, p, _ in results if not p]
    if failed:
        err.print(f"error: {len(failed)} of {len(results)} checks failed (FAIL above)",
                  markup=False, highlight=False)  # fmt: skip
        raise typer.Exit(1)


@app.command("compare-losses")
@user_errors
def compare_losses(
    overrides: list[str] = OVERRIDES_ARG,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML config file; default: the built-in comparison (1 feature, 15% outliers).",
    ),
    losses: str = typer.Option(
        "huber,mse,l1", "--losses", help="Comma-separated: huber, mse, l1, quantile."
    ),
    deltas: str = typer.Option("", "--deltas", help="Huber deltas, e.g. 0.5,1,2: one run each."),
    runs_dir: str | None = typer.Option(None, "--runs-dir", help="Parent folder of run folders."),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Comparison name (overrides name:); the folder is compare-<name>-<time>.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    json_out: bool = typer.Option(False, "--json", help="Print comparison.json to stdout only."),
) -> None:
    """Train the same experiment with each loss (same data, split, init, batch order)."""
    from huberfit.config import load_config
    from huberfit.distributed import launched_by_torchrun
    from huberfit.errors import ConfigError

    if launched_by_torchrun():
        raise ConfigError("compare-losses runs in one process; under torchrun use huberfit train")
    names = [_own_file_absolute(x.strip()) for x in losses.split(",") if x.strip()]
    try:
        delta_list = [float(x) for x in deltas.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--deltas must be comma-separated numbers; got {deltas!r}") from None
    if any(not d > 0 or d == float("inf") for d in delta_list):
        raise ConfigError(f"--deltas must all be finite and > 0; got {deltas!r}")
    overrides = list(overrides or []) + [f"name={name}"] * bool(name)
    if config is None:
        from huberfit.experiment import COMPARE_DEFAULTS

        cfg = load_config(None, overrides, defaults=COMPARE_DEFAULTS)
    else:
        cfg = load_config(config, overrides)
    _run_comparison(cfg, names, delta_list, runs_dir, quiet, json_out)


def _own_file_absolute(name: str) -> str:
    """``my_loss.py:MyHuber`` as given on the command line: the file from the current folder."""
    from huberfit.config import user_path

    file, sep, cls = name.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{user_path(file).resolve()}:{cls}"
    return name


def _run_comparison(cfg, names, deltas, runs_dir, quiet: bool, json_out: bool) -> None:
    from huberfit.experiment import compare_losses as compare
    from huberfit.sinks import ConsoleSink, render_comparison

    console = ConsoleSink(cfg.train.epochs, quiet=True, err=err)
    notes = ConsoleSink(cfg.train.epochs, quiet=quiet, err=err)
    console.note = notes.note  # per-run notes, no per-epoch lines
    result = compare(cfg, names, deltas, console, runs_dir)
    if json_out:
        payload = {"runs": result.rows, "verdict": result.verdict, "parent": str(result.parent)}
        out.print(json.dumps(payload, indent=2, default=str), markup=False)
    elif not quiet:
        render_comparison(result.rows, result.verdict, str(result.parent), out)


# ----------------------------------------------------------------------------- use a run

RUN_OPT = typer.Option(..., "--run", help="A run folder (holds checkpoint.pt).")
INPUT_OPT = typer.Option(..., "--input", "-i", help="A .csv or .parquet file.")


@app.command()
@user_errors
def predict(
    run: Path = RUN_OPT,
    input: str = INPUT_OPT,
    output: str | None = typer.Option(
        None, "--output", "-o", help=".csv or .parquet; default: CSV on stdout."
    ),
) -> None:
    """Add a 'prediction' column to the rows of a file, using a trained run."""
    from huberfit.predict import load_run, predict_file

    trained = load_run(run)
    rows = predict_file(trained, input, output)
    if output is not None:
        err.print(f"wrote {rows} rows with predictions to {output}")


@app.command("eval")
@user_errors
def evaluate(
    run: Path = RUN_OPT,
    input: str = INPUT_OPT,
    target: str | None = typer.Option(None, "--target", help="Target column (default: the run's)."),
    loss: str | None = typer.Option(
        None, "--loss", help="A run of your own loss: FILE.py:Class to score its objective with."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score a trained run on a labelled file: MSE, MAE, R^2 and its training objective."""
    from huberfit.errors import ConfigError
    from huberfit.predict import evaluate_file, load_run
    from huberfit.sinks import render_scores

    trained = load_run(run)
    own = None
    if loss is not None:
        from huberfit.losses import is_own, load_own_loss, own_label

        if not is_own(trained.loss):
            raise ConfigError(f"--loss: this run trained the built-in {trained.loss}; drop --loss")
        file, _, cls = loss.rpartition(":")
        if own_label(trained.loss) != cls:
            raise ConfigError(f"--loss: this run trained {own_label(trained.loss)}, not {cls}")
        if file.endswith(".py"):
            from huberfit.config import user_path

            loss = f"{user_path(file).resolve()}:{cls}"
        own = load_own_loss(loss, trained.loss_kwargs)
    scores = evaluate_file(trained, input, target, own)
    if json_out:
        out.print(json.dumps(scores, indent=2), markup=False)
    else:
        render_scores(scores, out)


@app.command()
@user_errors
def runs(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder holding run folders."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """List runs, newest first (comparisons with their runs under them)."""
    from huberfit.runs import list_runs
    from huberfit.sinks import render_runs

    rows = list_runs(runs_dir)
    if json_out:
        out.print(json.dumps(rows, indent=2), markup=False)
    elif not rows:
        out.print(f"no runs in {runs_dir} (train one with: huberfit train)")
    else:
        render_runs(rows, str(runs_dir), out)


@app.command()
@user_errors
def bench(
    rows: int = typer.Option(1_000_000, "--rows", min=1000, help="Synthetic rows."),
    features: int = typer.Option(16, "--features", min=1, help="Features."),
    batch_size: int = typer.Option(4096, "--batch-size", min=1, help="Mini-batch size."),
    epochs: int = typer.Option(3, "--epochs", min=1, help="Timed epochs (median)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] | mps."),
    csv: bool = typer.Option(
        False, "--csv", help="Only time CSV loading (--rows x 17) against pandas."
    ),
    stream_gb: float = typer.Option(
        0.0, "--stream-gb", help="Only measure streaming: generate this many GB of Parquet..."
    ),
    budget_mb: int = typer.Option(512, "--budget-mb", help="...and train on it with this budget."),
    folder: Path | None = typer.Option(
        None, "--folder", help="Where the Parquet files go (default: a temporary folder)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Time huberfit's engine against the tutorial DataLoader loop, side by side."""
    from rich.table import Table

    from huberfit.bench import as_table_rows, csv_load_pair, host_description, run_bench, to_json
    from huberfit.device import resolve_device

    if stream_gb > 0:
        _bench_streaming(stream_gb, budget_mb, folder, json_out)
        return
    if csv:
        r = csv_load_pair(rows)
        if json_out:
            out.print(json.dumps({**r, "host": host_description()}, indent=2), markup=False)
        else:
            out.print(
                f"CSV {rows:,} x 17 ({r['bytes'] / 1e6:.0f} MB): huberfit {r['huberfit']:.3f} s, "
                f"pandas.read_csv + to_numpy(float32) {r['pandas']:.3f} s "
                f"(ratio {r['huberfit'] / r['pandas']:.2f}); {host_description()}",
                soft_wrap=False,
            )
        return

    dev = resolve_device(device)
    res = run_bench(rows, features, batch_size, epochs, dev, lambda s: err.print(f"[dim]{s}[/dim]"))
    if json_out:
        out.print(json.dumps({**to_json(res), "host": host_description()}, indent=2), markup=False)
        return
    table = Table(title=f"huberfit bench: {rows:,} x {features}, batch {batch_size}, float32, "
                        f"Huber (delta 1), SGD, {dev}", title_justify="left")  # fmt: skip
    for col in ("what", "seconds", "samples/s", "ratio"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for row in as_table_rows(res):
        table.add_row(*row)
    out.print(table)
    plural = "s" * (epochs != 1)
    out.print(
        f"{host_description()}; {res.threads} threads; median of {epochs} epoch{plural}",
        soft_wrap=False,
    )
    if epochs < 3:
        out.print(
            f"note: {epochs} timed epoch{plural} on a shared machine can be off by far; use "
            "--epochs 3 or more for figures to quote",
            soft_wrap=False,
        )


def _bench_streaming(gigabytes: float, budget_mb: int, folder: Path | None, json_out: bool) -> None:
    import tempfile

    from huberfit.bench import host_description, streaming_peak_rss, write_parquet_dataset

    with tempfile.TemporaryDirectory() as tmp:
        where = folder or Path(tmp) / "data"
        if not list(where.glob("*.parquet")):
            err.print(f"[dim]writing {gigabytes:g} GB of Parquet into {where}[/dim]")
            write_parquet_dataset(where, gigabytes)
        err.print(f"[dim]training on it with data.memory_budget_mb={budget_mb}[/dim]")
        r = streaming_peak_rss(where, budget_mb)
    if json_out:
        out.print(json.dumps({**r, "host": host_description()}, indent=2), markup=False)
        return
    out.print(
        f"{r['bytes'] / 1e9:.2f} GB, {r['rows']:,} rows, streamed: {r['streamed']}; "
        f"peak RSS {r['peak_rss_mb']:.0f} MB (budget {budget_mb} MB; a 1,000-row run: "
        f"{r['baseline_rss_mb']:.0f} MB); training {r['train_rows_per_second']:,.0f} rows/s, "
        f"{r['wall_seconds']:.0f} s end to end; {host_description()}",
        soft_wrap=False,
    )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
        code = 0
    except SystemExit as exc:  # Typer ends every command this way
        code = exc.code
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        err.print("error: interrupted")
        code = 130
    _exit(code)


def _exit(code: object) -> None:
    """Exit normally (atexit handlers, profilers and coverage run), minus most of the
    teardown's cost once torch is loaded: ``gc.freeze()`` moves every live object out of
    the collector's sight, so the collections during interpreter shutdown do not walk
    torch's hundreds of thousands of objects. Measured on a small ``huberfit train``: the
    teardown cost ~0.5 s; frozen, most of it goes (figures in ARCHITECTURE.md)."""
    if "torch" in sys.modules:
        import gc

        if "pyarrow" in sys.modules:
            # collect first: garbage holding an Arrow reader must go while Arrow is alive
            # (frozen, it would be freed at teardown, where Arrow aborts the process)
            gc.collect()
        gc.freeze()
    sys.exit(code)
