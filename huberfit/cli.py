"""The command line: Typer commands that parse flags, call the experiment and print results.

Must not import torch, numpy, pandas or the rooms that do at module level: ``huberfit
--help`` stays fast. Heavy rooms are imported inside command bodies. User-fixable errors
(``HuberfitError``) become one ``error: ...`` line on stderr and exit code 1; ``--debug`` or
``HUBERFIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from shlex import quote
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
# Nothing printed is read as markup or emoji codes: paths, names, statuses and column names
# are the user's text (``exp[a]``, ``o[/x]``, ``:x:``) and are shown as they are; styles
# come from ``rich.text.Text`` objects only.
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False,
              width=None if sys.stdout.isatty() else 120)  # fmt: skip
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
_debug = {"on": os.environ.get("HUBERFIT_DEBUG", "") not in ("", "0")}

F = TypeVar("F", bound=Callable[..., Any])

PATH = "<path>"  # path options are text (see path_option), shown as paths
CONFIG_OPT = typer.Option(
    None, "--config", "-c", metavar=PATH, help="YAML config file; default: the built-in quickstart."
)
OVERRIDES_ARG = typer.Argument(
    None, help="Overrides as dotted.key=value, e.g. optimizer.lr=0.1 train.epochs=5."
)


def user_errors(fn: F) -> F:
    """Print a HuberfitError as one ``error:`` line and exit 1 (unless debugging)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from huberfit.interrupts import Interrupted

        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:  # Typer would turn it into a silent exit 130
            _say_interrupted(exc)
            raise typer.Exit(130) from None
        except HuberfitError as exc:
            if _debug["on"]:
                raise
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
                err.print(f"error: {exc}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a folder made on a full disk: its writers say which file
            if _debug["on"] or exc.errno not in DISK_FULL:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            err.print(f"error: cannot write{where}: {exc.strerror}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def no_empty(**flags: str | None) -> None:
    """Text options given empty (``--device ''``) are refused: they would silently mean the
    default (or, for a folder, the current one). Keyword: the option without ``--``."""
    from huberfit.errors import ConfigError

    for key, value in flags.items():
        if value is not None and not value.strip():
            flag = "--" + key.replace("_", "-")
            hint = ("use auto, cpu, cuda, cuda:N or mps" if key == "device" else "give a value"
                    if key in ("input", "run", "resume") else f"give a value, or leave {flag} out for its default")  # fmt: skip
            raise ConfigError(f"{flag} is empty; {hint}")


def path_option(value: str | None, flag: str) -> Path | None:
    """A path option as given (``None`` when left out). Path options are taken as text:
    Typer's ``Path`` turns ``''`` into ``.``, the current folder, which ``no_empty``
    refuses instead."""
    if value is None:
        return None
    no_empty(**{flag: value})
    return Path(value)


def print_json(data: Any) -> None:
    """Every ``--json``: the same writer as ``metrics.json`` (non-finite numbers are
    ``null``), straight to stdout."""
    from huberfit.artifacts import json_text

    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


_said = {"interrupted": False}


def _say_interrupted(exc: BaseException | None = None) -> None:
    """The one line an interrupted command ends with (rank 0 alone under torchrun)."""
    if _said["interrupted"] or os.environ.get("RANK", "0") != "0":
        return
    _said["interrupted"] = True
    run_dir, epoch = getattr(exc, "run_dir", None), getattr(exc, "saved_epoch", None)
    at_once = "stopped at once" if getattr(exc, "hard", False) else "interrupted"
    if run_dir is None:
        line = at_once
    elif epoch is None:
        from huberfit.runs import folder_state

        line = f"{at_once}: {run_dir}: {folder_state(run_dir).detail}"
    else:
        what = (f"{run_dir} keeps its checkpoint from epoch {epoch}" if at_once != "interrupted"
                else f"saved {run_dir} (checkpoint at epoch {epoch})")  # fmt: skip
        line = f"{at_once}: {what}; continue with: huberfit train --resume {quote(str(run_dir))}"
    say_resumable(line)


def say_resumable(line: str) -> None:
    """A stopped command's last line, ``...; continue with: COMMAND``: one line in a file
    (scripts read it), and on a terminal too narrow for it the command on a line of its
    own, so that the terminal never wraps it mid-word."""
    head, sep, command = line.rpartition("continue with: ")
    if sep and err.is_terminal and len(line) > err.width:
        line = f"{head.rstrip('; ')}\n{sep}{command}"
    err.print(line, markup=False, highlight=False, soft_wrap=True)


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
def config_show(overrides: list[str] = OVERRIDES_ARG, config: str | None = CONFIG_OPT) -> None:
    """Print the resolved config (every default filled in) as YAML."""
    from huberfit.config import dump_config, load_config

    cfg = load_config(path_option(config, "config"), overrides)
    out.print(dump_config(cfg), end="", markup=False)


@config_app.command("validate")
@user_errors
def config_validate(overrides: list[str] = OVERRIDES_ARG, config: str | None = CONFIG_OPT) -> None:
    """Check a config: print 'ok', or every problem and exit 1."""
    from huberfit.config import load_config

    load_config(path_option(config, "config"), overrides)
    out.print("ok")


@config_app.command("init")
@user_errors
def config_init(
    path: str = typer.Argument("huberfit.yaml", help="Where to write the starter config."),
) -> None:
    """Write a commented starter config (never overwrites a file)."""
    from huberfit.artifacts import write_text_atomic
    from huberfit.config import starter_config
    from huberfit.errors import ConfigError

    if not path.strip():  # text, not Path: Typer's Path makes '' the current folder
        raise ConfigError("config init: the path is empty; give a file name, or none for "
                          "huberfit.yaml")  # fmt: skip
    file = Path(path)
    if file.exists() or file.is_symlink():
        raise ConfigError(f"{file} already exists; choose another path or remove it first")
    if not file.parent.is_dir():
        raise ConfigError(f"cannot write {file}: its folder {file.parent} does not exist")
    write_text_atomic(file, starter_config())  # whole or not at all (a full disk)
    out.print(f"wrote {file}; run it with: huberfit train --config {quote(str(file))}")


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON Schema (for editors; see the README)."""
    from huberfit.config import json_schema

    print_json(json_schema())


# ----------------------------------------------------------------------------- train


@app.command()
@user_errors
def train(
    overrides: list[str] = OVERRIDES_ARG,
    config: str | None = CONFIG_OPT,
    runs_dir: str | None = typer.Option(None, "--runs-dir", help="Parent folder of run folders."),
    name: str | None = typer.Option(None, "--name", help="Run name (overrides name:)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda[:N] | mps."),
    resume: str | None = typer.Option(
        None, "--resume", metavar=PATH, help="Continue this run folder to its configured epochs."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors and warnings."),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json to stdout only."),
) -> None:
    """Train one experiment into a new run folder (default: the built-in quickstart)."""
    from huberfit.config import load_config
    from huberfit.errors import ConfigError

    no_empty(runs_dir=runs_dir, name=name, device=device)
    config_path, resume_path = path_option(config, "config"), path_option(resume, "resume")
    overrides = list(overrides or [])
    flags = [f"name={name}"] * bool(name) + [f"device={device}"] * bool(device)
    if resume_path is not None:
        from huberfit.artifacts import load_resume

        if config_path is not None:
            raise ConfigError("--resume continues a run with its own config; drop --config")
        cfg, ckpt = load_resume(str(resume_path), overrides + flags)
    else:
        cfg, ckpt = load_config(config_path, overrides + flags), None
    _run_training(cfg, ckpt, resume_path, runs_dir, quiet, json_out)


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
    parts = [f"device: {prepared.device}{how}", f"data: {prepared.data.source}{ranks}"]
    line = "   ".join(parts)  # on two lines when a terminal is too narrow for one
    for note in parts if err.is_terminal and len(line) > err.width else [line]:
        console.note(note)
    done = ckpt["state"]["epoch"] if ckpt else 0
    if ckpt and done >= cfg.train.epochs:
        from huberfit.runs import FINISHED, folder_state

        ended = folder_state(resume)
        if ended.status in FINISHED:  # nothing to do: no writes (else: written anew)
            console.note(
                f"the run already has its {done} epochs; nothing to train "
                f"(continue it with: huberfit train --resume {quote(str(resume))} train.epochs={done + 10})"
            )
            return ended.metrics, resume
        console.note(
            f"the run already has {done} epochs (train.epochs={cfg.train.epochs}): nothing to "
            f"train; it is scored as it is and ends completed (for more: huberfit train "
            f"--resume {quote(str(resume))} train.epochs={done + 10})"
        )
    outcome = train_run(cfg, console, runs_dir, prepared, run_dir=resume, resume=ckpt, dist=dist)
    return outcome.metrics, outcome.run_dir


def _report(metrics, run_dir, quiet: bool, json_out: bool) -> None:
    from huberfit.sinks import render_summary

    if json_out:
        print_json(metrics)
    elif not quiet:
        render_summary(metrics, str(run_dir), out)


def _exit_for(metrics, run_dir, main: bool) -> None:
    from rich.text import Text

    from huberfit.errors import DivergedError
    from huberfit.metrics import gap_warning
    from huberfit.sinks import prose

    status = metrics["status"]
    warning = gap_warning(metrics) if status != "interrupted" else None  # one line: resume
    if warning and main:
        prose(err, Text(warning, style="yellow"))
    if status == "diverged":
        raise DivergedError(f"{metrics['message']} (run folder kept: {run_dir})")
    if status == "interrupted":
        if main:
            say_resumable(f"interrupted: saved {run_dir}; continue with: huberfit train --resume "
                          f"{quote(str(run_dir))}")  # fmt: skip
        _said["interrupted"] = True
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
    """Check your own loss module; exit 0 only if every check passes.

    Shape, finiteness, graph, gradcheck, dtype/device and (with --reference) value and
    gradient against a built-in."""
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
        print_json([{"check": n, "passed": p, "detail": d} for n, p, d in results])
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
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        metavar=PATH,
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors and warnings."),
    json_out: bool = typer.Option(False, "--json", help="Print comparison.json to stdout only."),
) -> None:
    """Train the same experiment with each loss (same data, split, init, batch order)."""
    no_empty(runs_dir=runs_dir, name=name)
    config_path = path_option(config, "config")
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
    if config_path is None:
        from huberfit.compare import COMPARE_DEFAULTS

        cfg = load_config(None, overrides, defaults=COMPARE_DEFAULTS)
    else:
        cfg = load_config(config_path, overrides)
    _run_comparison(cfg, names, delta_list, runs_dir, quiet, json_out)


def _own_file_absolute(name: str) -> str:
    """``my_loss.py:MyHuber`` as given on the command line: the file from the current folder."""
    from huberfit.config import user_path

    file, sep, cls = name.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{user_path(file).resolve()}:{cls}"
    return name


def _run_comparison(cfg, names, deltas, runs_dir, quiet: bool, json_out: bool) -> None:
    from huberfit.compare import compare_losses as compare
    from huberfit.sinks import ConsoleSink

    console = ConsoleSink(cfg.train.epochs, quiet=True, err=err)
    notes = ConsoleSink(cfg.train.epochs, quiet=quiet, err=err)
    console.note = notes.note  # per-run notes, no per-epoch lines
    _show_comparison(compare(cfg, names, deltas, console, runs_dir), quiet, json_out)


def _show_comparison(result: Any, quiet: bool, json_out: bool) -> None:
    from huberfit.sinks import render_comparison

    if json_out:
        payload = {"runs": result.rows, "verdict": result.verdict, "parent": str(result.parent)}
        print_json(payload)
    elif not quiet:
        render_comparison(result.rows, result.verdict, str(result.parent), out)
    if result.interrupted:
        _say_sweep_interrupted(result.parent)
        raise typer.Exit(130)


# ----------------------------------------------------------------------------- sweep


@app.command()
@user_errors
def sweep(
    overrides: list[str] = typer.Argument(
        None,
        help="key=a,b,c: choices; key=low..high or low..high:log: a range; key=value: fixed.",
    ),
    config: str | None = CONFIG_OPT,
    sampler: str | None = typer.Option(
        None, "--sampler", help="grid | random | tpe; default: grid for choices, else tpe."
    ),
    trials: int | None = typer.Option(
        None, "--trials", min=1, help="How many trials; default: the whole grid, or 20."
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="A metrics.json number to optimize; default: val.loss."
    ),
    direction: str | None = typer.Option(
        None, "--direction", help="minimize (default) | maximize."
    ),
    no_prune: bool = typer.Option(False, "--no-prune", help="Never stop a trial early."),
    workers: int = typer.Option(1, "--workers", min=1, help="Trial processes on this machine."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Threads per trial process; default 1 with --workers > 1."
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="An Optuna storage URL (postgresql://...); default: a file."
    ),
    study: str | None = typer.Option(
        None, "--study", help="Study name: every process and machine naming it joins it."
    ),
    resume: str | None = typer.Option(
        None, "--resume", metavar=PATH, help="A sweep folder: finish its remaining trials."
    ),
    runs_dir: str | None = typer.Option(None, "--runs-dir", help="Parent folder of run folders."),
    name: str | None = typer.Option(None, "--name", help="Sweep name: sweep-<name>-<time>."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors and warnings."),
    json_out: bool = typer.Option(False, "--json", help="Print the trials as JSON only."),
    worker: Path | None = typer.Option(None, "--worker", hidden=True),
    worker_index: int = typer.Option(0, "--worker-index", hidden=True),
) -> None:
    """Train one config over a search space: grid, random or TPE (Optuna).

    One run folder per trial under one parent, a trials table, trials.csv and best.yaml."""
    from huberfit.errors import ConfigError

    if worker is not None:  # one of --workers' processes
        from huberfit.sweep import run_worker

        raise typer.Exit(run_worker(worker, worker_index, threads))
    from huberfit import sweep as sw
    from huberfit.config import load_config

    no_empty(runs_dir=runs_dir, name=name, study=study)
    config_path, resume_path = path_option(config, "config"), path_option(resume, "resume")
    if resume_path is not None:
        given = {"--config": config, "key=value arguments": overrides, "--sampler": sampler,
                 "--trials": trials, "--metric": metric, "--direction": direction,
                 "--no-prune": no_prune, "--study": study, "--name": name,
                 "--runs-dir": runs_dir}  # fmt: skip
        if any(given.values()):
            drop = ", ".join(k for k, v in given.items() if v)
            raise ConfigError(f"--resume finishes a sweep as it was planned; drop {drop}")
        plan, parent = sw.load_parent(resume_path), resume_path
        plan.storage = sw.storage_for_resume(plan, storage)
    else:
        from huberfit.config import override_keys

        swept, plain = sw.split_args(list(overrides or []))
        cfg = load_config(config_path, plain + [f"name={name}"] * bool(name))
        raw = cfg.model_dump(mode="json")
        plan = sw.build_plan(cfg, raw, swept, str(config_path or ""), sampler=sampler,
                             trials=trials, metric=metric, direction=direction,
                             prune=False if no_prune else None, study=study or "",
                             storage=storage, fixed=override_keys(plain))  # fmt: skip
        if plan.storage:  # before any folder: the database must answer
            sw.connect(plan.storage)
        parent = sw.new_parent(plan, cfg, runs_dir)
    if plan.labels:  # a comparison (compare-losses) continues as one
        _resume_comparison(plan, parent, quiet, json_out)
        return
    talk = (
        (lambda text: None) if quiet or json_out else (lambda text: err.print(text, markup=False))
    )
    talk(f"sweep: {plan.trials} trial(s), {plan.sampler} sampler, {plan.metric} "
         f"({plan.direction}){', pruning' * plan.prune}; folder {parent}")  # fmt: skip
    from huberfit.interrupts import Interrupted

    try:
        summary = sw.execute(plan, parent, talk, workers=workers,
                             threads_each=threads or (1 if workers > 1 else None),
                             resume=resume is not None)  # fmt: skip
    except Interrupted as exc:  # a second Ctrl-C: at once; the trial keeps its checkpoint
        _say_sweep_interrupted(parent, "stopped at once" if exc.hard else "interrupted")
        raise typer.Exit(130) from None
    if json_out:
        payload = {"parent": str(parent), "best": str(summary.best) if summary.best else None,
                   "metric": plan.metric, "trials": summary.rows}  # fmt: skip
        print_json(payload)
    elif not quiet:
        from huberfit.sinks import render_trials

        render_trials(summary.rows, plan.metric, [d.key for d in plan.dims], str(parent),
                      str(summary.best) if summary.best else None, out)  # fmt: skip
    if summary.interrupted:
        _say_sweep_interrupted(parent)
        raise typer.Exit(130)
    if not any(r["state"] == "complete" for r in summary.rows):
        raise HuberfitError(f"no trial completed (their errors: {parent / 'trials.csv'})")


def _resume_comparison(plan, parent: Path, quiet: bool, json_out: bool) -> None:
    from huberfit.compare import resume_comparison
    from huberfit.sinks import ConsoleSink

    console = ConsoleSink(1, quiet=True, err=err)
    console.note = ConsoleSink(1, quiet=quiet or json_out, err=err).note
    _show_comparison(resume_comparison(plan, parent, console), quiet, json_out)


def _say_sweep_interrupted(parent: Path, how: str = "interrupted") -> None:
    """A sweep's (or comparison's) last line when stopped: how to finish it."""
    _said["interrupted"] = True
    say_resumable(f"{how}: continue with: huberfit sweep --resume {quote(str(parent))}")


# ----------------------------------------------------------------------------- use a run

RUN_OPT = typer.Option(..., "--run", metavar=PATH, help="A run folder (holds checkpoint.pt).")
INPUT_OPT = typer.Option(..., "--input", "-i", help="A .csv or .parquet file.")


@app.command()
@user_errors
def predict(
    run: str = RUN_OPT,
    input: str = INPUT_OPT,
    output: str | None = typer.Option(
        None, "--output", "-o", help=".csv or .parquet; default: CSV on stdout."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the --output file if it exists (never an input)."
    ),
) -> None:
    """Add a 'prediction' column to the rows of a file, using a trained run."""
    no_empty(input=input, output=output)  # '' would be the current folder's every file
    run_path = path_option(run, "run")
    from huberfit.predict import load_run, predict_file

    trained = load_run(run_path)
    rows = predict_file(trained, input, output, overwrite=overwrite)
    if output is not None:
        err.print(f"wrote {rows:,} rows with predictions to {output}")


@app.command("eval")
@user_errors
def evaluate(
    run: str = RUN_OPT,
    input: str = INPUT_OPT,
    target: str | None = typer.Option(None, "--target", help="Target column (default: the run's)."),
    loss: str | None = typer.Option(
        None, "--loss", help="A run of your own loss: FILE.py:Class to score its objective with."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score a trained run on a labelled file: MSE, MAE, R^2 and its training objective."""
    no_empty(input=input, target=target, loss=loss)
    run_path = path_option(run, "run")
    from huberfit.errors import ConfigError
    from huberfit.predict import evaluate_file, load_run
    from huberfit.sinks import render_scores

    trained = load_run(run_path)
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
        print_json(scores)
    else:
        render_scores(scores, out)


@app.command()
@user_errors
def runs(
    runs_dir: str = typer.Option(
        "runs", "--runs-dir", metavar=PATH, help="Folder holding run folders."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """List runs, newest first (comparisons and sweeps with their runs under them)."""
    from huberfit.artifacts import checkpoint_problem
    from huberfit.runs import list_runs
    from huberfit.sinks import render_runs

    no_empty(runs_dir=runs_dir)
    if Path(runs_dir).expanduser().exists() and not Path(runs_dir).expanduser().is_dir():
        raise HuberfitError(f"--runs-dir {runs_dir} is a file, not a runs folder")
    rows = list_runs(runs_dir, checkpoint_problem)  # a folder it offers to resume: checked
    if json_out:
        print_json(rows)
    elif not rows:
        out.print(f"no runs in {runs_dir} (train one with: huberfit train)")
    else:
        render_runs(rows, str(runs_dir), out)


BENCH_TABLE = {"rows": 1_000_000, "features": 16, "batch_size": "256,4096", "epochs": 3}
BENCH_BUDGET_MB = 512


@app.command()
@user_errors
def bench(
    rows: int = typer.Option(BENCH_TABLE["rows"], "--rows", min=1000, help="Synthetic rows."),
    features: int = typer.Option(BENCH_TABLE["features"], "--features", min=1, help="Features."),
    batch_size: str = typer.Option(
        BENCH_TABLE["batch_size"],
        "--batch-size",
        help="Mini-batch sizes, comma-separated: each is timed.",
    ),  # fmt: skip
    epochs: int = typer.Option(
        BENCH_TABLE["epochs"], "--epochs", min=1, help="Timed epochs (median)."
    ),  # fmt: skip
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] | mps."),
    csv: bool = typer.Option(
        False, "--csv", help="Only time CSV loading (--rows x 17) against pandas."
    ),
    stream_gb: float = typer.Option(
        0.0, "--stream-gb", help="Only measure streaming: generate this many GB of Parquet..."
    ),
    budget_mb: int = typer.Option(
        BENCH_BUDGET_MB,
        "--budget-mb",
        min=1,
        help="...and train on it, streamed, with this data.memory_budget_mb.",
    ),
    folder: str | None = typer.Option(
        None,
        "--folder",
        metavar=PATH,
        help="Where the Parquet files go (default: a temporary folder).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Time huberfit's engine against the tutorial DataLoader loop, side by side."""
    from rich.table import Table

    from huberfit.bench import (
        as_table_rows,
        busy_note,
        csv_load_pair,
        host_description,
        host_lines,
        run_bench,
        table_notes,
        to_json,
    )
    from huberfit.device import resolve_device

    folder_path = path_option(folder, "folder")
    _bench_flags_apart(csv, stream_gb, folder_path, rows, features, batch_size, epochs, device,
                       budget_mb)  # fmt: skip
    if stream_gb != 0.0:  # negative, NaN and inf included: refused there
        _bench_streaming(stream_gb, budget_mb, folder_path, json_out)
        return
    if csv:
        r = csv_load_pair(rows)
        if json_out:
            print_json({**r, "rows": rows, "host": host_description()})
        else:
            out.print(
                f"CSV {rows:,} x 17 ({r['bytes'] / 1e6:.0f} MB): huberfit {r['huberfit']:.3f} s, "
                f"pandas.read_csv + to_numpy(float32) {r['pandas']:.3f} s "
                f"(ratio {r['huberfit'] / r['pandas']:.2f})",
                soft_wrap=False,
            )
            out.print("\n".join(host_lines()), soft_wrap=False)
        return

    sizes = _batch_sizes(batch_size)
    dev = resolve_device(device)
    res = run_bench(rows, features, sizes, epochs, dev, _dim)
    if json_out:
        print_json({**to_json(res), "host": host_description(dev)})
        return
    table = Table(title=f"huberfit bench: {rows:,} x {features}, float32, Huber (delta 1), SGD, "
                        f"{dev}", title_justify="left")  # fmt: skip
    for col in ("what", "batch", "ms", "rows/s", "ratio"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for row in as_table_rows(res):
        table.add_row(*row)
    out.print(table)
    for line in (*table_notes(res), *host_lines(dev)):
        out.print(line, soft_wrap=False)  # at word breaks if the terminal is narrower
    busy = busy_note(res)
    if busy:
        out.print(busy, soft_wrap=False)
    plural = "s" * (epochs != 1)
    if epochs < 3:
        out.print(
            f"note: {epochs} timed epoch{plural} on a shared machine can be off by far; use "
            "--epochs 3 or more for figures to quote",
            soft_wrap=False,
        )


def _bench_flags_apart(csv: bool, stream_gb: float, folder: Path | None, rows: int,
                       features: int, batch_size: str, epochs: int, device: str,
                       budget_mb: int) -> None:  # fmt: skip
    """``--csv`` and ``--stream-gb`` are measurements of their own: a flag of another one
    given with them is refused rather than silently ignored."""
    from huberfit.errors import ConfigError

    if folder is not None and stream_gb == 0.0:
        raise ConfigError("--folder goes with --stream-gb (where its Parquet files are kept)")
    if budget_mb != BENCH_BUDGET_MB and stream_gb == 0.0:
        raise ConfigError("--budget-mb goes with --stream-gb (the streamed run's budget)")
    if csv and stream_gb != 0.0:
        raise ConfigError("--csv and --stream-gb are two measurements: run one at a time")
    if not (csv or stream_gb != 0.0):
        return
    what = "--csv" if csv else "--stream-gb"
    t = BENCH_TABLE
    table_only = {"--features": features != t["features"],
                  "--batch-size": batch_size != t["batch_size"], "--epochs": epochs != t["epochs"],
                  "--device": device not in ("auto", "cpu"),
                  "--rows": stream_gb != 0.0 and rows != t["rows"]}  # fmt: skip
    given = [flag for flag, differs in table_only.items() if differs]
    if given:
        raise ConfigError(f"{', '.join(given)} applies to the training table, not to {what}")


def _batch_sizes(text: str) -> list[int]:
    """``--batch-size 256,4096`` as ``[256, 4096]``; anything else is one error line."""
    from huberfit.errors import ConfigError

    words = [w.strip() for w in text.split(",")]
    if not all(w.isdigit() and 1 <= int(w) <= 10**9 for w in words) or len(words) > 16:
        raise ConfigError(
            f"--batch-size must be up to 16 whole numbers >= 1 (at most 1,000,000,000), "
            f"separated by commas (e.g. 256,4096); got {text!r}"
        )
    return list(dict.fromkeys(int(w) for w in words))


def _bench_streaming(gigabytes: float, budget_mb: int, folder: Path | None, json_out: bool) -> None:
    import math
    import shutil
    import tempfile

    from huberfit.bench import (
        busy_note,
        host_description,
        host_lines,
        stream_vs_scan,
        streaming_peak_rss,
        write_parquet_dataset,
    )
    from huberfit.errors import ConfigError, RunError

    if not (math.isfinite(gigabytes) and gigabytes > 0):
        raise ConfigError(f"--stream-gb must be a finite number of GB > 0; got {gigabytes:g}")
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ConfigError(f"--folder {folder}: not a folder")
    if folder is not None and folder.resolve() == Path.cwd().resolve():
        raise ConfigError("--folder: name a folder for the benchmark's Parquet files, not the "
                          "current folder")  # fmt: skip
    if folder is not None and list(folder.glob("*.parquet")):
        _check_bench_files(folder, gigabytes)
        _dim(f"reusing the Parquet files an earlier bench wrote into {folder} "
             f"({gigabytes:g} GB of float64 rows)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        where = folder or Path(tmp) / "data"
        if not list(where.glob("*.parquet")):
            there = next(p for p in (where, *where.parents) if p.exists())
            free = shutil.disk_usage(there).free
            if gigabytes * 1e9 * 1.05 > free:
                raise RunError(f"--stream-gb {gigabytes:g}: {there} has only {free / 1e9:.2f} GB "
                               "free")  # fmt: skip
            try:
                where.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunError(f"--folder {where}: cannot create it ({exc.strerror})") from None
            _dim(f"writing {gigabytes:g} GB of float64 rows as Parquet files into {where}")
            try:
                write_parquet_dataset(where, gigabytes)
            except OSError as exc:
                raise RunError(f"--folder {where}: cannot write Parquet there ({exc})") from None
        _dim("a streamed epoch against a bare pyarrow.dataset scan of the same files")
        s = stream_vs_scan(where)
        _dim(f"a streamed training run with data.memory_budget_mb={budget_mb}, for its memory")
        r = streaming_peak_rss(where, budget_mb)
    if json_out:
        print_json({**r, **s, "host": host_description()})
        return
    lines = [  # each fits 80 columns
        f"{r['rows']:,} rows x 17 columns, {r['bytes'] / 1e9:.2f} GB of Parquet on disk",
        f"a streamed epoch: {s['epoch_seconds']:.3f} s ({s['epoch_rows_per_second']:,.0f} rows "
        "read/s)",
        f"a bare pyarrow.dataset scan into NumPy: {s['scan_seconds']:.3f} s "
        f"({s['scan_rows_per_second']:,.0f} rows/s)",
        f"the epoch takes {s['epoch_vs_scan']:.2f}x the scan",
        f"a streamed training run of 1 epoch, data.memory_budget_mb={budget_mb}:",
        f"  peak RSS {r['peak_rss_mb']:.0f} MB; {r['wall_seconds']:.0f} s from start to end "
        "(scan, epoch, scoring)",
        f"  (a 1,000-row run: {r['baseline_rss_mb']:.0f} MB; the budget is when to stream, "
        "not a cap)",
        *host_lines(),
    ]
    busy = busy_note(s)
    for line in lines + ([busy] if busy else []):
        out.print(line, soft_wrap=False)  # at word breaks if the terminal is narrower


def _check_bench_files(folder: Path, gigabytes: float) -> None:
    """Parquet files already in ``--folder`` are reused only if bench wrote them (its
    columns x0..x15, y) and they hold the ``gigabytes`` asked for (within 5%); anything
    else is the user's data, which bench must not time as its own, or another size."""
    import pyarrow.parquet as pq

    from huberfit.bench import parquet_gigabytes
    from huberfit.errors import ConfigError

    expected = [f"x{i}" for i in range(16)] + ["y"]
    rows = 0
    for path in sorted(folder.glob("*.parquet")):
        try:
            meta = pq.read_metadata(path)
            names = meta.schema.to_arrow_schema().names
        except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
            raise ConfigError(f"--folder {folder}: {path.name} is not readable Parquet "
                              f"({type(exc).__name__})") from None  # fmt: skip
        if names != expected:
            raise ConfigError(
                f"--folder {folder}: {path.name} was not written by huberfit bench (its "
                f"columns are {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); give "
                "an empty or new folder"
            )
        rows += meta.num_rows
    held = parquet_gigabytes(rows)
    if abs(held - gigabytes) > 0.05 * gigabytes:
        raise ConfigError(
            f"--folder {folder}: holds {held:.2g} GB ({rows:,} rows) from an earlier bench, "
            f"not the {gigabytes:g} GB asked for; ask for --stream-gb {held:.2g}, or give an "
            "empty or new folder"
        )


def _dim(message: str) -> None:
    from rich.text import Text

    err.print(Text(message, style="dim"))


def main() -> None:
    """Console-script entry point. Ctrl-C/SIGTERM are answered from its first line (see
    ``huberfit.interrupts``): exit 130 with one line, never a half-imported traceback."""
    from huberfit import interrupts

    interrupts.install()
    try:
        app()
        code = 0
    except SystemExit as exc:  # Typer ends every command this way
        code = exc.code
    except KeyboardInterrupt as exc:  # outside a command (Typer's own start-up)
        _say_interrupted(exc)
        code = 130
    if code == 130:  # Typer turns a Ctrl-C outside a command into a silent exit 130
        _say_interrupted()
    _exit(code)


def _exit(code: object) -> None:
    """Exit normally (atexit handlers, profilers and coverage run), minus most of the
    teardown's cost once torch is loaded: ``gc.freeze()`` moves every live object out of
    the collector's sight, so the collections during interpreter shutdown do not walk
    torch's hundreds of thousands of objects. Measured on a small ``huberfit train``: the
    teardown cost ~0.5 s; frozen, most of it goes (figures in ARCHITECTURE.md)."""
    from huberfit.interrupts import ignore

    ignore()  # everything is written: a late Ctrl-C must not cut the exit short
    if "torch" in sys.modules:
        import gc

        if "pyarrow" in sys.modules:
            # collect first: garbage holding an Arrow reader must go while Arrow is alive
            # (frozen, it would be freed at teardown, where Arrow aborts the process)
            gc.collect()
        gc.freeze()
    sys.exit(code)
