"""``huberfit sweep``: many runs of one config over a search space, searched by Optuna.

The plan (the base config, the space, sampler, trial budget, metric) is validated before
any folder exists and saved as ``sweep.json`` in the parent folder
``<runs_dir>/sweep-<name>-<time>/``. Optuna keeps the study: by default in an embedded
journal file beside it (``study.log``), or in any database ``--storage`` names, which
several machines can share (``--study NAME``). A grid (and every trial to retry) is put in
the study's queue once, by whoever creates the study; each worker pops trials from it, so
no point is trained twice. Each trial is a full run folder named by what differs
(``lr0.01-bs256``), trained by ``experiment.train_run``; trials that share their data
config share one loaded dataset. ``compare-losses`` is a sweep over the loss
(``experiment.compare_losses``).

Optuna is imported only here, inside the command: ``huberfit --help`` stays without it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from huberfit.artifacts import (
    check_runs_dir,
    free_folder,
    make_run_dir,
    write_json,
    write_text_atomic,
)
from huberfit.config import (
    NAME_PATTERN,
    NAME_RULE,
    Config,
    SweepConfig,
    SweepRange,
    dump_config,
    field_at,
    parse_override_value,
    validate_config,
)
from huberfit.errors import ConfigError, HuberfitError, RunError

SWEEP_FILE = "sweep.json"
STUDY_FILE = "study.log"  # Optuna's journal: the embedded storage
NOT_SWEEPABLE = ("name", "sweep", "output.runs_dir")
# Short names in trial folder names; any other key goes by its last part.
SHORT = {
    "optimizer.lr": "lr",
    "train.batch_size": "bs",
    "train.grad_accum_steps": "accum",
    "train.epochs": "ep",
    "optimizer.weight_decay": "wd",
    "optimizer.momentum": "mom",
    "loss.delta": "d",
    "loss.quantile": "q",
    "loss.name": "",
    "optimizer.name": "",
    "data.outlier_fraction": "out",
}
PER_EPOCH = {"val.loss": "loss", "val.mse": "mse", "val.mae": "mae", "val.r2": "r2"}
METRICS = (*PER_EPOCH, "train.loss", "train.mse", "train.mae", "train.r2",
           "coefficient_error", "gap.relative", "seconds")  # fmt: skip


# ----------------------------------------------------------------------------- the plan


@dataclass
class Dim:
    """One swept key: a list of choices, or a range (``integer`` for int keys)."""

    key: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if self.integer:
            step = int(self.step or 1)
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=step,
                                     log=self.log)  # fmt: skip
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Plan:
    """What a sweep runs; ``sweep.json`` and the study's ``plan`` attribute hold it."""

    base: dict[str, Any]  # the config without its sweep section, as JSON
    dims: list[Dim]
    sampler: str
    trials: int
    metric: str
    direction: str
    prune: bool
    study: str
    storage: str | None = None  # None: the embedded journal in the parent folder
    points: list[dict[str, Any]] = field(default_factory=list)  # explicit trials (grid)
    labels: list[str] = field(default_factory=list)  # their folder names (compare-losses)
    best: bool = True  # write best.yaml (not for compare-losses: each loss has its own units)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dims": [asdict(d) for d in self.dims]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        return cls(**{**raw, "dims": [Dim(**d) for d in raw["dims"]]})

    def same_search(self, other: Plan) -> bool:
        """Two machines joining one study must search the same thing."""
        keys = ("dims", "sampler", "trials", "metric", "direction", "points")
        mine, theirs = self.to_json(), other.to_json()
        return all(mine[k] == theirs[k] for k in keys) and _experiment(self) == _experiment(other)


def _experiment(plan: Plan) -> dict[str, Any]:
    """The base config without what may differ between machines: where the data lies,
    where runs go, the device."""
    base = copy.deepcopy(plan.base)
    for key in ("name", "device", "output"):
        base.pop(key, None)
    (base.get("data") or {}).pop("path", None)
    return base


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Command-line words into (swept ``key=a,b`` / ``key=low..high[:log]``, plain overrides)."""

    def kind(item: str) -> tuple[str, bool]:
        key, sep, value = item.partition("=")
        return key.strip(), bool(sep and (_top_level_commas(value) or _RANGE(value)))

    last = dict(map(kind, args))  # key -> swept? (the last word for a key wins, as in train)
    swept = {kind(item)[0]: item for item in args if kind(item)[1] and last[kind(item)[0]]}
    plain = [item for item in args if not kind(item)[1] and not last[kind(item)[0]]]
    return list(swept.values()), plain


def _top_level_commas(text: str) -> list[str] | None:
    """``a,b,[c,d]`` -> ``['a', 'b', '[c,d]']``; None when there is no top-level comma."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    return [*parts, current] if parts else None


def _RANGE(text: str) -> tuple[str, str, str] | None:  # noqa: N802 - reads as a pattern
    body, _, option = text.strip().partition(":")
    low, sep, high = body.partition("..")
    if not sep or not low.strip() or not high.strip() or option not in ("", "log"):
        return None
    return low.strip(), high.strip(), option


def build_plan(
    config: Config,
    raw_base: dict[str, Any],
    swept_args: list[str],
    source: str,
    *,
    sampler: str | None = None,
    trials: int | None = None,
    metric: str | None = None,
    direction: str | None = None,
    prune: bool | None = None,
    study: str = "",
    storage: str | None = None,
    fixed: set[str] | None = None,
) -> Plan:
    """The search space from the config's ``sweep:`` section and the command line (which
    wins per key), every value checked against the schema; all problems in one error."""
    section = config.sweep or SweepConfig()
    problems: list[str] = []
    specs: dict[str, tuple[str, Any]] = {
        key: (f"{source}: sweep.params.{key}" if source else f"sweep.params.{key}", value)
        for key, value in section.params.items()
        if key not in (fixed or set())  # a value on the command line fixes the key
    }
    for item in swept_args:
        key, _, value = item.partition("=")
        specs[key.strip()] = (key.strip(), _CommandLine(value))
    base = {k: v for k, v in raw_base.items() if k != "sweep"}
    dims = []
    for key, (where, spec) in specs.items():
        dim = _dim(key, where, spec, base, problems)
        if dim is not None:
            dims.append(dim)
    points = _explicit_points(section.points, source, base, {d.key for d in dims}, problems)
    if points:
        keys = list(dict.fromkeys(k for p in points for k in p))
        dims += [Dim(k, choices=list(dict.fromkeys(p.get(k) for p in points))) for k in keys]
    if not dims and not problems:
        problems.append("nothing to sweep: give sweep.params in the config or key=a,b on the "
                        "command line (e.g. optimizer.lr=0.001,0.01,0.1)")  # fmt: skip
    sampler = sampler or section.sampler
    if sampler is None:
        sampler = "grid" if all(d.choices is not None for d in dims) else "tpe"
    if sampler not in ("grid", "random", "tpe"):
        problems.append(f"--sampler must be grid, random or tpe; got {sampler!r}")
    ranged = [d.key for d in dims if d.choices is None]
    if sampler == "grid" and ranged:
        problems.append(f"a grid needs choices, not ranges: {', '.join(ranged)}; use "
                        "--sampler random or tpe, or list the values")  # fmt: skip
    where_metric = "--metric" if metric else f"{source}: sweep.metric" if source else "sweep.metric"
    metric = metric or section.metric
    if metric not in METRICS:
        problems.append(f"{where_metric} must be one of {', '.join(METRICS)}; got {metric!r}")
    elif metric.startswith("val.") and any(
        d.key == "data.val_fraction" and 0 in (d.choices or [d.low]) for d in dims
    ):
        problems.append(f"metric {metric} needs validation rows: data.val_fraction 0 has none")
    elif metric.startswith("val.") and config.data.val_fraction == 0:
        problems.append(f"metric {metric} needs validation rows (data.val_fraction > 0); "
                        "or use --metric train.loss")  # fmt: skip
    if study and not re.match(NAME_PATTERN, study):
        problems.append(f"--study must be {NAME_RULE}; got {study!r}")
    objective_keys = sorted({d.key for d in dims} & {"loss.name", "loss.delta", "loss.quantile"})
    if objective_keys and metric in ("val.loss", "train.loss"):
        problems.append(f"sweeping {', '.join(objective_keys)} with metric {metric} compares "
                        "different objectives; use --metric val.mae or val.mse")  # fmt: skip
    chosen = "direction" in section.model_fields_set
    direction = direction or (section.direction if chosen or not metric.endswith("r2")
                              else "maximize")  # fmt: skip
    if direction not in ("minimize", "maximize"):
        problems.append(f"--direction must be minimize or maximize; got {direction!r}")
    if section.points and sampler != "grid":
        problems.append(f"sweep.points are explicit trials: they run as a grid, not {sampler}")
    if problems:
        raise ConfigError("; ".join(problems))
    if not points and sampler == "grid":
        points = grid_points(dims)
    budget = trials or section.trials or (len(points) if sampler == "grid" else 20)
    if points:
        points = points[:budget]
        budget = len(points)
    prune = section.prune if prune is None else prune
    return Plan(base, dims, sampler, budget, metric, direction, prune, study, storage, points)


def _explicit_points(
    points: list[dict[str, Any]], source: str, base: dict, swept: set[str], problems: list[str]
) -> list[dict[str, Any]]:
    """``sweep.points``: each a whole trial; every key must be the same in all of them."""
    where = f"{source}: sweep.points" if source else "sweep.points"
    keys = [sorted(p) for p in points]
    if points and any(k != keys[0] for k in keys):
        problems.append(f"{where}: every point must set the same keys ({', '.join(keys[0])})")
        return []
    if points and swept:
        problems.append(f"{where} are whole trials: give them or sweep.params / key=a,b "
                        f"({', '.join(sorted(swept))}), not both")  # fmt: skip
        return []
    ok = True
    for i, point in enumerate(points):
        for key in point:
            if any(key == k or key.startswith(k + ".") for k in NOT_SWEEPABLE):
                problems.append(f"{where}[{i}]: {key} cannot be swept")
                ok = False
            elif field_at(key.split(".")) is None:
                from huberfit.config import _unknown_key

                problems.append(f"{where}[{i}]: {_unknown_key(key.split('.'))}")
                ok = False
        if ok:
            try:
                validate_config(with_values(base, point), "")
            except ConfigError as exc:
                problems.append(f"{where}[{i}]: {exc}")
                ok = False
    return [dict(p) for p in points] if ok else []


class _CommandLine(str):
    """A space's value as typed on the command line (``a,b`` or ``low..high[:log]``)."""


def _dim(key: str, where: str, spec: Any, base: dict, problems: list[str]) -> Dim | None:
    parts = key.split(".")
    if not all(parts):
        problems.append(f"{where or repr(key)}: a dotted key has no empty parts")
        return None
    if any(key == k or key.startswith(k + ".") for k in NOT_SWEEPABLE):
        problems.append(f"{where}: {key} cannot be swept (the sweep names its runs and folders)")
        return None
    leaf = field_at(parts)
    if leaf is None:
        from huberfit.config import _unknown_key

        problems.append(f"{where}: {_unknown_key(parts)}")
        return None
    if isinstance(spec, _CommandLine):
        rng = _RANGE(spec)
        if rng is not None:
            spec = {"low": rng[0], "high": rng[1], "log": rng[2] == "log"}
            try:
                spec = {**spec, "low": float(spec["low"]), "high": float(spec["high"])}
            except ValueError:
                problems.append(f"{where}: a range is low..high with numbers, e.g. 1e-4..1e-1:log")
                return None
        else:
            texts = _top_level_commas(spec) or [spec]
            if any(not t.strip() for t in texts):
                problems.append(f"{where}: empty choice in {spec!r}")
                return None
            spec = [parse_override_value(parts, t, f"{where}") for t in texts]
    if isinstance(spec, dict):
        try:
            spec = SweepRange.model_validate(spec)
        except ValidationError as exc:
            what = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'range'}: {e['msg']}"
                             for e in exc.errors())  # fmt: skip
            problems.append(f"{where}: a range is {{low, high, log, step}} ({what})")
            return None
    if not isinstance(spec, list | SweepRange):
        problems.append(f"{where}: give a list of choices ([{json.dumps(spec)}, ...]) or a "
                        "range ({low: ..., high: ...}); got one value")  # fmt: skip
        return None
    if isinstance(spec, SweepRange):
        return _range_dim(key, where, spec, leaf, base, problems)
    if not spec:
        problems.append(f"{where}: no choices")
        return None
    if any(isinstance(v, list | dict) for v in spec):
        problems.append(f"{where}: each choice must be one value (a number, a word, true/false)")
        return None
    if len({json.dumps(v) for v in spec}) != len(spec):
        problems.append(f"{where}: a choice appears twice in {spec}")
        return None
    ok = all(_check_value(key, where, v, base, problems) for v in spec)
    return Dim(key, choices=list(spec)) if ok else None


def _range_dim(key, where, spec: SweepRange, leaf, base, problems) -> Dim | None:
    kinds = _numeric_kinds(leaf.annotation)
    if not kinds:
        problems.append(f"{where}: a range needs a number key; {key} is not one (list choices)")
        return None
    integer = kinds == {int}
    if not spec.low < spec.high:
        problems.append(f"{where}: low ({spec.low:g}) must be below high ({spec.high:g})")
        return None
    if spec.log and spec.low <= 0:
        problems.append(f"{where}: a log range needs low > 0")
        return None
    if integer and (spec.low != int(spec.low) or spec.high != int(spec.high)):
        problems.append(f"{where}: {key} takes whole numbers")
        return None
    ends = [int(spec.low), int(spec.high)] if integer else [spec.low, spec.high]
    if not all(_check_value(key, where, v, base, problems) for v in ends):
        return None
    return Dim(key, low=spec.low, high=spec.high, log=spec.log, step=spec.step, integer=integer)


def _numeric_kinds(annotation: Any) -> set[type]:
    from typing import Annotated, get_args, get_origin

    def bare(a: Any) -> Any:
        return get_args(a)[0] if get_origin(a) is Annotated else a

    args = get_args(annotation) if get_origin(annotation) is not Annotated else ()
    options = {bare(a) for a in (args or (annotation,))}
    return options & {int, float}  # loss.delta: a number (or "auto", not in a range)


def _check_value(key: str, where: str, value: Any, base: dict, problems: list[str]) -> bool:
    """Whether the base config with ``key: value`` is a valid config (else why, in
    ``problems``)."""
    raw = set_key(copy.deepcopy(base), key, value)
    try:
        validate_config(raw, "")
        return True
    except ConfigError as exc:
        problems.append(f"{where}={json.dumps(value)}: {exc}")
        return False


def with_values(base: dict[str, Any], values: dict[str, Any], name: str | None = None) -> dict:
    """A copy of the raw ``base`` config with dotted ``values`` set (and ``name``): a
    trial's config, before validation."""
    raw = copy.deepcopy(base)
    for key, value in values.items():
        set_key(raw, key, value)
    if name is not None:
        raw["name"] = name
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def grid_points(dims: list[Dim]) -> list[dict[str, Any]]:
    """Every combination, the first key varying slowest (as written)."""
    import itertools

    combos = itertools.product(*[d.choices for d in dims])
    return [dict(zip([d.key for d in dims], combo, strict=True)) for combo in combos]


def trial_name(params: dict[str, Any], dims: list[Dim]) -> str:
    """``lr0.01-bs256``: what differs, in a run-name-safe form."""
    import re

    from huberfit.losses import own_label

    words = []
    for key, value in params.items():
        if key == "loss.name" and isinstance(value, str):
            value = own_label(value)
        text = f"{value:.6g}" if isinstance(value, float) else str(value).lower()
        short = SHORT.get(key, key.rsplit(".", 1)[-1] + "_")
        words.append(f"{short}{text}")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(words)) or "trial"
    return name if re.match(NAME_PATTERN, name) else "trial"


# ----------------------------------------------------------------------------- the study


def open_study(plan: Plan, parent: Path, worker: int = 0) -> Any:
    """Create the study (and queue its grid) or join it; the sampler and pruner are this
    process's own (seeded by the config's seed and the worker's number)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(plan, parent)
    seed = int(plan.base.get("seed", 0)) + 1000 * worker + _host_salt(plan)
    sampler: Any = (
        optuna.samplers.TPESampler(seed=seed)
        if plan.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)  # grid points come from the queue
    )
    pruner: Any = optuna.pruners.MedianPruner() if plan.prune else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner,
                                    study_name=plan.study, direction=plan.direction)  # fmt: skip
        for i, point in enumerate(plan.points):
            study.enqueue_trial({d.key: point[d.key] for d in plan.dims}, user_attrs={"point": i})
        study.set_user_attr("plan", plan.to_json())  # last: joiners wait for it
        return study
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=plan.study, storage=storage, sampler=sampler,
                              pruner=pruner)  # fmt: skip
    for _ in range(300):  # the creator is still queueing its grid
        theirs = study.user_attrs.get("plan")
        if theirs is not None:
            if not plan.same_search(Plan.from_json(theirs)):
                raise ConfigError(f"study {plan.study!r} already exists with another search "
                                  "space, sampler, budget, metric or base config; use another "
                                  "--study")  # fmt: skip
            return study
        time.sleep(0.1)
    raise RunError(f"study {plan.study!r} exists but its plan never appeared; is it a sweep?")


def _storage(plan: Plan, parent: Path) -> Any:
    if plan.storage:
        return connect(plan.storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(parent / STUDY_FILE)))


def connect(url: str) -> Any:
    """Optuna's storage for a database URL, or one clear error (a bad URL, a missing
    driver, a server that does not answer)."""
    import optuna

    for attempt in range(5):
        try:
            return optuna.storages.get_storage(url)
        except ImportError:
            break
        except Exception as exc:  # noqa: BLE001 - sorted out below
            # Machines starting at once on a new database race to create Optuna's tables
            # (PostgreSQL: "duplicate key ... pg_type_typname_nsp_index"); once they
            # exist, connecting again succeeds.
            if "duplicate key" not in str(exc) and "already exists" not in str(exc):
                break
            time.sleep(0.2 * (attempt + 1))
    try:
        return optuna.storages.get_storage(url)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError):
            first = ("no database driver for this URL is installed (PostgreSQL: pip install "
                     "'psycopg[binary]'; MySQL: pip install pymysql with mysql+pymysql://)")  # fmt: skip
        raise ConfigError(
            f"--storage {masked(url)}: cannot open it: {first.replace(url, masked(url) or '')}"
        ) from None


def masked(url: str | None) -> str | None:
    """A database URL without its password (for messages and ``sweep.json``)."""
    if not url or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: its error says so elsewhere
        return url


def storage_for_resume(plan: Plan, given: str | None) -> str | None:
    """The storage a resumed sweep opens: ``--storage`` when given (it must be the same
    database), else the saved one, whose password was not saved."""
    if given:
        if masked(given) != plan.storage:
            raise ConfigError(f"--storage {masked(given)} is not this sweep's database "
                              f"({plan.storage})")  # fmt: skip
        return given
    if plan.storage and "***" in plan.storage:
        raise ConfigError(f"this sweep's database password is not saved: give its URL again, "
                          f"--storage {plan.storage} with the password")  # fmt: skip
    return plan.storage


def _host_salt(plan: Plan) -> int:
    """Machines sharing a study must not draw the same random points."""
    return 0 if not plan.storage else sum(socket.gethostname().encode()) * 7919 + os.getpid()


# ----------------------------------------------------------------------------- workers


@dataclass
class TrialResult:
    number: int
    name: str
    state: str  # complete | pruned | failed | interrupted
    value: float | None
    message: str
    metrics: dict[str, Any] | None = None


def work(
    plan: Plan,
    parent: Path,
    study: Any,
    console: Any,
    stop: threading.Event,
    on_trial: Callable[[TrialResult], None] = lambda r: None,
    prepared_for: Callable[[Config], Any] | None = None,
) -> list[TrialResult]:
    """Run trials until the budget is spent, the queue is empty (a grid) or ``stop``."""
    from optuna.trial import TrialState

    cache: dict[str, Any] = {}
    results = []
    while not stop.is_set():
        if not plan.points and _used(study) >= plan.trials:
            break
        if plan.points and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            break
        trial = study.ask()
        if _surplus(plan, study, trial):
            study.tell(trial, state=TrialState.FAIL)
            break
        result = run_trial(plan, parent, trial, console, cache, prepared_for)
        results.append(result)
        on_trial(result)
        if result.state == "interrupted":
            break
    return results


def _used(study: Any) -> int:
    """Trials that count against the budget: all but retried interruptions and surplus."""
    return sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))


def _counts(t: Any) -> bool:
    return not (t.user_attrs.get("surplus") or t.user_attrs.get("state") == "interrupted")


def _surplus(plan: Plan, study: Any, trial: Any) -> bool:
    """A trial beyond the budget (two workers asked at once); it is marked, never run."""
    if plan.points:  # a grid: only queued points run
        extra = "point" not in trial.user_attrs
    else:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        extra = "resume_dir" not in trial.user_attrs and sum(map(_counts, earlier)) >= plan.trials
    if extra:
        trial.set_user_attr("surplus", True)
    return extra


def run_trial(
    plan: Plan,
    parent: Path,
    trial: Any,
    console: Any,
    cache: dict[str, Any],
    prepared_for: Callable[[Config], Any] | None = None,
) -> TrialResult:
    """Train one trial into its own run folder and tell the study how it went."""
    from optuna.trial import TrialState

    from huberfit.experiment import prepare, train_run
    from huberfit.losses import is_own

    point = trial.user_attrs.get("point")
    params = {d.key: d.suggest(trial) for d in plan.dims}
    if point is not None:  # a queued point: all its values (compare-losses sets more keys)
        params = {**params, **plan.points[point]}
    label = plan.labels[point] if plan.labels and point is not None else None
    name = label or trial_name(params, plan.dims)
    resume_dir = trial.user_attrs.get("resume_dir")
    raw = with_values(plan.base, params, name)
    swept = [d.key for d in plan.dims if d.choices is None or len(d.choices) > 1]
    hparams = {k: params[k] for k in swept if _hparam(k) == k}  # the rest: hparams_of's
    ticked = list(dict.fromkeys(map(_hparam, swept)))
    folder = None
    try:
        if resume_dir:
            from huberfit.artifacts import load_resume

            config, ckpt = load_resume(resume_dir, [])
            folder = Path(resume_dir)
        else:
            config, ckpt = validate_config(raw, f"trial {trial.number} ({name})"), None
        key = json.dumps([config.data.model_dump(mode="json"), config.seed, config.dtype,
                          config.model.bias, is_own(config.loss.name)])  # fmt: skip
        if key not in cache:
            cache[key] = prepared_for(config) if prepared_for else prepare(config)
        folder = folder or free_folder(parent, name)  # name-2: a point drawn twice
        trial.set_user_attr("run_dir", str(folder))
        trial.set_user_attr("name", folder.name)
        if plan.labels:  # compare-losses: which loss is training (its table comes after)
            console.note(f"{folder.name}: training")
        watch = _pruning(trial, plan) if plan.prune and plan.metric in PER_EPOCH else None
        outcome = train_run(config, console, prepared=cache[key], run_dir=folder, resume=ckpt,
                            ticked=ticked, truth_run=False, hparams=hparams,
                            watch=watch)  # fmt: skip
    except HuberfitError as exc:
        return _tell_failed(trial, name, folder, str(exc).splitlines()[0])
    except Exception as exc:  # a trial's bug must not end the sweep; its line says what
        if os.environ.get("HUBERFIT_DEBUG", "") not in ("", "0"):
            raise
        return _tell_failed(trial, name, folder, f"{type(exc).__name__}: {exc}".splitlines()[0])
    m = outcome.metrics
    status, message = m["status"], m.get("message") or ""
    value = metric_value(m, plan.metric)
    for attr, v in (("status", status), ("message", message), ("value", value),
                    ("converged", m.get("converged")), ("epochs", m.get("epochs")),
                    ("seconds", m.get("seconds"))):  # fmt: skip
        trial.set_user_attr(attr, v)
    if status == "interrupted":
        trial.set_user_attr("state", "interrupted")
        study_tell(trial, TrialState.FAIL)
        return TrialResult(trial.number, folder.name, "interrupted", value, "interrupted", m)
    if status == "pruned":
        study_tell(trial, TrialState.PRUNED)
        return TrialResult(trial.number, folder.name, "pruned", value, message, m)
    if status == "diverged" or value is None:
        why = message if status == "diverged" else f"no {plan.metric} in its metrics"
        trial.set_user_attr("error", why)
        study_tell(trial, TrialState.FAIL)
        return TrialResult(trial.number, folder.name, "failed", value, why, m)
    study_tell(trial, TrialState.COMPLETE, value)
    return TrialResult(trial.number, folder.name, "complete", value, message, m)


def study_tell(trial: Any, state: Any, value: float | None = None) -> None:
    trial.study.tell(trial, value, state=state)


def _tell_failed(trial: Any, name: str, folder: Path | None, line: str) -> TrialResult:
    from optuna.trial import TrialState

    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # nothing was written: leave no empty folder
        folder = None
    trial.set_user_attr("error", line)
    trial.set_user_attr("name", folder.name if folder else name)
    if folder is not None:
        trial.set_user_attr("run_dir", str(folder))
    study_tell(trial, TrialState.FAIL)
    return TrialResult(trial.number, folder.name if folder else name, "failed", None, line)


# Swept keys that ``metrics.hparams_of`` already reports, by its names for them.
HPARAM_NAMES = {"train.batch_size": "batch_size", "optimizer.lr": "lr", "loss.delta": "delta",
                "loss.name": "loss", "optimizer.name": "optimizer", "loss.quantile": "quantile",
                "train.grad_accum_steps": "grad_accum_steps", "train.epochs": "epochs",
                "seed": "seed", "dtype": "dtype", "data.outlier_fraction": "outlier_fraction",
                "data.n_samples": "n_samples"}  # fmt: skip


def _hparam(key: str) -> str:
    return HPARAM_NAMES.get(key, key)


def _pruning(trial: Any, plan: Plan) -> Callable[[Any], str | None]:
    which = PER_EPOCH[plan.metric]

    def watch(report: Any) -> str | None:
        value = (report.val or {}).get(which)
        if value is None or not math.isfinite(value):
            return None
        trial.report(value, report.epoch)
        if trial.should_prune():
            return (f"pruned at epoch {report.epoch}: {plan.metric} {value:.6g} is worse "
                    "than the median of earlier trials at this epoch")  # fmt: skip
        return None

    return watch


def metric_value(metrics: dict[str, Any], metric: str) -> float | None:
    node: Any = metrics
    for part in metric.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) and math.isfinite(node) else None


# ----------------------------------------------------------------------------- results


def trial_rows(study: Any, plan: Plan) -> list[dict[str, Any]]:
    """One row per trial that ran (latest attempt per folder), best first; pruned, failed
    and interrupted trials after the complete ones."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    retried = {t.user_attrs.get("resume_dir") for t in trials} - {None}
    rows = []
    for t in trials:
        a = t.user_attrs
        if t.state.name == "WAITING":
            continue
        if a.get("state") == "interrupted" and a.get("run_dir") in retried:
            continue  # a later trial continued its folder
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running"}.get(
            t.state.name, a.get("state") or "failed"
        )
        value = t.value if t.value is not None else a.get("value")
        rows.append({
            "trial": t.number,
            "name": a.get("name"),
            "state": state,
            plan.metric: value if state in ("complete", "pruned") else None,
            **{d.key: t.params.get(d.key) for d in plan.dims},
            "epochs": a.get("epochs"),
            "seconds": a.get("seconds"),
            "converged": a.get("converged"),
            "note": "interrupted: --resume continues it" if state == "interrupted"
            else a.get("error") or a.get("message")
            or ("not converged" if a.get("converged") is False else ""),
            "run_dir": a.get("run_dir"),
        })  # fmt: skip
    order = {"complete": 0, "pruned": 1, "running": 2, "interrupted": 3, "failed": 4}
    sign = 1 if plan.direction == "minimize" else -1

    def key(row: dict[str, Any]) -> tuple:
        v = row[plan.metric]
        return (order.get(row["state"], 5), sign * v if v is not None else math.inf, row["trial"])

    return sorted(rows, key=key)


def write_results(parent: Path, plan: Plan, rows: list[dict[str, Any]]) -> Path | None:
    """``trials.csv``, ``trials.parquet`` and ``best.yaml`` (the best complete trial's
    full config, ready for ``huberfit train --config``); returns best.yaml's path."""
    import pandas as pd

    from huberfit.artifacts import atomic_path

    frame = pd.DataFrame(rows)
    with atomic_path(parent / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)
    texts = {c: "string" for c in frame.columns if frame[c].dtype == object}
    with atomic_path(parent / "trials.parquet") as tmp:
        frame.astype(texts).to_parquet(tmp, index=False)
    best = next((r for r in rows if r["state"] == "complete"), None) if plan.best else None
    if best is None:
        return None
    # the trial's own config, from the plan (it may have run on another machine)
    raw = with_values(plan.base, {d.key: best[d.key] for d in plan.dims}, best["name"] or None)
    header = (f"# best trial of {parent.name}: {best['name']} ({plan.metric} "
              f"{best[plan.metric]:.6g}); train it again with:\n"
              f"#   huberfit train --config {parent / 'best.yaml'}\n")  # fmt: skip
    text = header + dump_config(validate_config(raw, "best.yaml"))
    write_text_atomic(parent / "best.yaml", text)
    return parent / "best.yaml"


# ----------------------------------------------------------------------------- the command


def new_parent(plan: Plan, config: Config, runs_dir: str | None) -> Path:
    """``sweep-<name>-<time>``, or ``sweep-<study>`` when a study is named (joined by every
    worker and machine that names it)."""
    root = Path(
        check_runs_dir(config.output.runs_dir if runs_dir is None else runs_dir)
    ).expanduser()
    if plan.study:
        parent = root / f"sweep-{plan.study}"
        parent.mkdir(parents=True, exist_ok=True)
    else:
        parent = make_run_dir(root, config.name, prefix="sweep-")
        plan.study = parent.name
    sweep_file = parent / SWEEP_FILE
    if not sweep_file.exists():  # never a database password in a file
        write_json(sweep_file, {**plan.to_json(), "storage": masked(plan.storage)})
    return parent


def load_parent(parent: Path) -> Plan:
    sweep_file = parent / SWEEP_FILE
    if not parent.exists():
        raise RunError(f"{parent} does not exist")
    if not sweep_file.is_file():
        raise RunError(f"{parent} is not a sweep folder (no {SWEEP_FILE})")
    try:
        return Plan.from_json(json.loads(sweep_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise RunError(f"{sweep_file}: unreadable ({exc})") from None


def requeue_interrupted(study: Any, plan: Plan) -> int:
    """On ``--resume``: trials left running by a stopped sweep are failed, and every
    interrupted trial with a checkpoint is queued to continue its own folder."""
    from optuna.trial import TrialState

    if not plan.storage:  # the embedded journal has no other workers once the sweep stopped
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "state", "interrupted")
            study.tell(t.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get("resume_dir") for t in trials}
    queued = 0
    for t in trials:
        a = t.user_attrs
        run_dir = a.get("run_dir")
        if a.get("state") != "interrupted" or not run_dir or run_dir in continued:
            continue
        attrs = {"resume_dir": run_dir, **({"point": a["point"]} if "point" in a else {})}
        if not (Path(run_dir) / "checkpoint.pt").is_file():
            attrs.pop("resume_dir")  # nothing saved: train the point again, in a new folder
        study.enqueue_trial(t.params, user_attrs=attrs)
        queued += 1
    return queued


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def spawn_workers(parent: Path, count: int, threads_each: int) -> list[subprocess.Popen]:
    """``count`` worker processes, each ``huberfit sweep --worker PARENT``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_each), "MKL_NUM_THREADS": str(threads_each)}
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huberfit",
                "sweep",
                "--worker",
                str(parent),
                "--worker-index",
                str(i + 1),
                "--threads",
                str(threads_each),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(count)
    ]


@dataclass
class Summary:
    parent: Path
    plan: Plan
    rows: list[dict[str, Any]]
    best: Path | None
    interrupted: bool
    results: list[TrialResult] = field(default_factory=list)  # this process's own trials


def execute(
    plan: Plan,
    parent: Path,
    note: Callable[[str], None],
    *,
    workers: int = 1,
    threads_each: int | None = None,
    resume: bool = False,
    console: Any = None,
    prepared_for: Callable[[Config], Any] | None = None,
) -> Summary:
    """Run the sweep's trials here (``workers`` 1) or in ``workers`` processes, one line
    per finished trial through ``note``; then the table, ``trials.csv`` and ``best.yaml``."""
    from huberfit import interrupts
    from huberfit.sinks import ConsoleSink

    study = open_study(plan, parent)
    if resume:
        queued = requeue_interrupted(study, plan)
        if queued:
            note(f"{queued} interrupted trial(s) queued to continue")
    console = console or ConsoleSink(1, quiet=True)
    finished = [t for t in study.get_trials(deepcopy=False) if _counts(t)
                and t.state.name not in ("RUNNING", "WAITING")]  # fmt: skip
    line = _progress(plan, note, len(finished))
    results: list[TrialResult] = []
    # a first Ctrl-C/SIGTERM stops the trial after its step (it saves) and then the sweep;
    # a second one stops at once (interrupts.Interrupted), the trial keeping its checkpoint
    try:
        with interrupts.run_signals() as policy, policy.in_fit() as stop:
            if workers <= 1:
                with threads(threads_each):
                    results = work(plan, parent, study, console, stop, line, prepared_for)
            else:
                _supervise(plan, parent, study, workers, threads_each or 1, stop, line)
    except interrupts.Interrupted:  # a second request: the table of what finished, then out
        with interrupts.critical():
            rows = trial_rows(study, plan)
            if rows:
                write_results(parent, plan, rows)
        raise
    rows = trial_rows(study, plan)
    best = write_results(parent, plan, rows) if rows else None
    interrupted = stop.is_set() or any(r.state == "interrupted" for r in results)
    return Summary(parent, plan, rows, best, interrupted, results)


def _progress(plan: Plan, note: Callable[[str], None], done: int) -> Callable[[TrialResult], None]:
    """``trial 3/8  lr0.01-bs64  val.loss 0.51  complete``: the count of finished trials."""
    count = [done]

    def line(r: TrialResult) -> None:
        if r.state == "interrupted" or r.number < 0:  # not a finished trial: no count
            note(f"{r.name}  {r.state}" + f"  {r.message}" * (r.number < 0))
            return
        count[0] += 1
        shown = r.value is not None and r.state in ("complete", "pruned")
        value = f"{plan.metric} {r.value:.6g}  " if shown else ""
        why = f"  {r.message}" if r.state in ("failed", "pruned") and r.message else ""
        note(f"trial {count[0]}/{plan.trials}  {r.name}  {value}{r.state}{why}")

    return line


def _supervise(plan, parent, study, workers, threads_each, stop, line) -> None:
    """Start the worker processes, report each finished trial, and on Ctrl-C / SIGTERM
    ask them to stop (SIGTERM: finish the step, save, exit)."""
    import signal

    seen = {t.number for t in study.get_trials(deepcopy=False)
            if t.state.name not in ("RUNNING", "WAITING")}  # fmt: skip
    procs = spawn_workers(parent, workers, threads_each)
    asked = False
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            for t in study.get_trials(deepcopy=False):
                if t.number in seen or t.state.name in ("RUNNING", "WAITING"):
                    continue
                seen.add(t.number)
                if t.user_attrs.get("surplus"):
                    continue
                a = t.user_attrs
                state = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(
                    t.state.name, a.get("state") or "failed"
                )
                line(TrialResult(t.number, a.get("name", "?"), state, a.get("value"),
                                 a.get("error") or a.get("message") or ""))  # fmt: skip
            if not alive:
                break
            if stop.is_set() and not asked:
                for p in alive:
                    p.send_signal(signal.SIGTERM)
                asked = True
            time.sleep(0.3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            _, errors = p.communicate()
            for text in (errors or "").strip().splitlines()[-1:]:
                if p.returncode not in (0, 130):
                    line(TrialResult(-1, "worker", "failed", None, text))


def run_worker(parent: Path, index: int, threads_each: int | None) -> int:
    """``huberfit sweep --worker PARENT``: one worker process of a sweep (exit 130 when
    stopped by a signal)."""
    from huberfit import interrupts
    from huberfit.sinks import ConsoleSink

    plan = load_parent(parent)
    study = open_study(plan, parent, worker=index)
    with interrupts.run_signals() as policy, policy.in_fit() as stop, threads(threads_each):
        results = work(plan, parent, study, ConsoleSink(1, quiet=True), stop)
    stopped = stop.is_set() or any(r.state == "interrupted" for r in results)
    return 130 if stopped else 0
