"""Find runs again: one summary row per run folder under a runs folder, newest first.

Reads ``metrics.json`` (and ``comparison.json`` for compare-losses parents, whose runs are
listed under them). A folder whose files cannot be read, or hold JSON of another shape, is
listed as ``unreadable`` with what is wrong; nothing here raises on a bad run folder (only
on a runs folder that cannot be listed). Torch-free: reading JSON needs no model.

``folder_state`` is the one judge of what a run folder is (finished, resumable, stopped
before its first checkpoint, not a run): ``huberfit runs`` lists its words and
``--resume`` refuses with the same words.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

from huberfit.config import user_path
from huberfit.errors import RunError

SIDE_RUNS = {"truth", "val"}  # TensorBoard-only folders beside runs (see sinks.py)


def list_runs(runs_dir: str | Path, check: Check | None = None) -> list[dict[str, Any]]:
    """Summary rows of every run under ``runs_dir``, newest first; children follow parents.
    ``check``: see ``folder_state``."""
    root = user_path(runs_dir)
    if not root.is_dir():
        return []
    rows: list[dict[str, Any]] = []
    for folder in sorted(_folders(root), key=_started, reverse=True):
        is_sweep = (folder / "sweep.json").is_file()
        if (folder / "comparison.json").is_file() or is_sweep:
            rows.append(_parent_row(folder))
            children = [{**_run_row(child, check), "parent": folder.name}
                        for child in _folders(folder) if child.name not in SIDE_RUNS]  # fmt: skip
            # in the order they were trained (a comparison's table order): started (to the
            # second), then when each wrote its metrics.json, its last file
            rows += sorted(children, key=lambda r: (r["started"],
                                                    _started(Path(r["folder"]) / "metrics.json")))  # fmt: skip
        else:
            rows.append(_run_row(folder, check))
    return rows


def _folders(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as exc:
        raise RunError(f"cannot list {root}: {exc.strerror}") from None


def _started(path: Path) -> float:
    """``path``'s modification time (0 when it cannot be read)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


class _Unexpected(ValueError):
    """A JSON file that parses but does not hold what huberfit writes there."""


NUMBER = (int, float)
# what a row takes from metrics.json: key -> the JSON types it may have (null always may)
RUN_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,), "started": (str,), "status": (str,), "loss": (str,), "delta": NUMBER,
    "quantile": NUMBER, "optimizer": (str,), "epochs": (int,), "coefficient_error": NUMBER,
    "val": (dict,),
}  # fmt: skip


def _checked(data: Any, keys: dict[str, tuple[type, ...]], file: str) -> dict[str, Any]:
    """``data`` if it is an object whose ``keys`` have the expected types (or null)."""
    if not isinstance(data, dict):
        raise _Unexpected(f"{file}: expected a JSON object, found {_json_type(data)}")
    for key, types in keys.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            expected = " or ".join(dict.fromkeys(_json_type(t()) for t in types))
            raise _Unexpected(f"{file}: {key!r} is {_json_type(value)}, expected {expected}")
    return data


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


LOCK_FILE = ".huberfit.lock"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Held while a process writes into a run folder (an advisory ``flock``, let go when
    the process ends, however it ends): a second process, such as ``--resume`` of a run
    still training, is refused, and ``huberfit runs`` calls the folder ``running``."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(folder / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunError(f"{folder} is in use by another huberfit process (still training "
                           "there); wait for it to end or stop it first") from None  # fmt: skip
        try:
            yield
        finally:  # removed while still held: no one can lock the old file after this
            Path(fh.name).unlink(missing_ok=True)


def folder_in_use(folder: Path) -> bool:
    """Whether another process holds ``folder_lock`` on ``folder`` now."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(folder / LOCK_FILE) as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False


FINISHED = ("completed", "early_stopped", "diverged")


Check = Callable[[Path], "str | None"]  # why a run folder's checkpoint cannot resume, or None


@dataclass
class FolderState:
    """What a run folder is. ``status``: a metrics.json status, ``interrupted`` (a
    checkpoint and no metrics.json: stopped by a signal, a kill or a crash), ``incomplete``
    (stopped before its first checkpoint), ``not a run`` or ``unreadable``. ``resumable``:
    ``--resume`` can continue it. ``detail``: the words both ``runs`` and ``--resume`` use."""

    status: str
    detail: str
    resumable: bool
    metrics: dict[str, Any] | None = None


def folder_state(folder: str | Path, check: Check | None = None) -> FolderState:
    """Judge a run folder from the files in it (never raises). Without ``check`` it reads
    no checkpoint (it only finds one cut short); with it (``artifacts.checkpoint_problem``,
    which loads it and checks every entry), a stopped run it would offer to resume is
    judged by what ``--resume`` will find in its checkpoint."""
    state = _state(Path(folder))
    if check is None or not state.resumable or state.status in FINISHED:
        return state  # a finished run's checkpoint is loaded only to train it further
    problem = check(Path(folder))
    if problem is None:
        return state
    if "train a new run" not in problem:  # load_checkpoint's own advice, or this one
        problem += ": nothing to resume from it; train it again"
    return FolderState("unreadable", problem, False, state.metrics)


def _state(folder: Path) -> FolderState:
    if folder_in_use(folder):
        return FolderState("running", "a huberfit process is training in it now", False)
    checkpoint = (folder / "checkpoint.pt").is_file()
    damaged = _damaged_checkpoint(folder / "checkpoint.pt") if checkpoint else None
    if damaged:
        return FolderState("unreadable", f"checkpoint.pt: {damaged}: nothing to resume from it; "
                           "train it again", False)  # fmt: skip
    metrics_file = folder / "metrics.json"
    if metrics_file.exists() and not metrics_file.is_file():
        return FolderState("unreadable", "metrics.json is not a file (a folder?): move it out of "
                           "the run folder first", False)  # fmt: skip
    if metrics_file.is_file():
        try:
            m = _whole_metrics(_read_json(metrics_file))
        except (OSError, ValueError, RecursionError) as exc:
            why = _why(exc, "metrics.json")
            if checkpoint:  # --resume continues from the checkpoint and writes it anew
                return FolderState("unreadable", f"{why}; its checkpoint remains: huberfit "
                                   f"train --resume {quote(str(folder))} writes metrics.json anew", True)  # fmt: skip
            return FolderState("unreadable", why, False)
        status = m["status"]
        if checkpoint:
            return FolderState(status, m.get("message") or "", True, m)
        return FolderState(status, f"{status} before its first checkpoint (no checkpoint.pt): "
                           "nothing to resume; train it again", False, m)  # fmt: skip
    if checkpoint:
        return FolderState("interrupted", "stopped before its end (no metrics.json); "
                           f"continue it with: huberfit train --resume {quote(str(folder))}", True)  # fmt: skip
    if (folder / "config.yaml").is_file():
        return FolderState("incomplete", "stopped before its first checkpoint (no "
                           "checkpoint.pt): nothing to resume; train it again with: huberfit "
                           f"train --config {folder / 'config.yaml'}", False)  # fmt: skip
    return FolderState("not a run", "not a huberfit run folder (no config.yaml, checkpoint.pt "
                       "or metrics.json)", False)  # fmt: skip


def _damaged_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a whole file as ``torch.save`` writes it (a zip archive whose
    entries pass their checksums), or None: a truncated or overwritten checkpoint, found
    without importing torch. (What the entries hold is checked when --resume loads it.)"""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return "not a huberfit checkpoint (not a whole file written by torch.save: cut short or overwritten)"
    return f"its entry {bad} fails its checksum (damaged)" if bad else None


def _whole_metrics(data: Any) -> dict[str, Any]:
    """``data`` if it is a ``metrics.json`` as huberfit writes it (a status, coefficients,
    and what a row of ``runs`` shows, of the expected types); else ``_Unexpected``."""
    m = _checked(data, RUN_KEYS, "metrics.json")
    _checked(m.get("val") or {}, {"loss": NUMBER, "mae": NUMBER}, "metrics.json val")
    for key, kind in (("status", str), ("coefficients", dict)):
        if not isinstance(m.get(key), kind):
            found = "missing" if key not in m else f"{_json_type(m[key])}"
            raise _Unexpected(f"metrics.json: {key!r} is {found}, expected {_json_type(kind())}")
    return m


def _run_row(folder: Path, check: Check | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"name": folder.name, "folder": str(folder), "kind": "run"}
    state = folder_state(folder, check)
    if state.metrics is None:
        return {**row, "status": state.status, "detail": state.detail,
                "started": _stamp(_started(folder))}  # fmt: skip
    m, val = state.metrics, state.metrics.get("val") or {}
    return {
        **row,
        "name": m.get("name") or folder.name,
        "started": m.get("started") or _stamp(_started(folder)),
        "status": m["status"],
        "loss": m.get("loss"),
        "delta": m.get("delta"),
        "quantile": m.get("quantile"),
        "optimizer": m.get("optimizer"),
        "epochs": m.get("epochs"),
        "val_loss": val.get("loss"),
        "val_mae": val.get("mae"),
        "coefficient_error": m.get("coefficient_error"),
        **({} if state.resumable else {"detail": state.detail}),
    }


def _parent_row(folder: Path) -> dict[str, Any]:
    if not (folder / "comparison.json").is_file():
        return _sweep_row(folder)
    row: dict[str, Any] = {"name": folder.name, "folder": str(folder), "kind": "comparison",
                           "started": _stamp(_started(folder))}  # fmt: skip
    try:
        data = _checked(_read_json(folder / "comparison.json"), {"verdict": (str,)},
                        "comparison.json")  # fmt: skip
    except (OSError, ValueError, RecursionError) as exc:
        return {**row, "status": "unreadable", "detail": _why(exc, "comparison.json")}
    return {**row, "status": "comparison", "verdict": data.get("verdict")}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _why(exc: Exception, file: str) -> str:
    """One line: what is wrong with the file."""
    if isinstance(exc, _Unexpected):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{file}: {exc.strerror or exc}"
    return f"{file}: {type(exc).__name__}: {exc}".splitlines()[0]


def _sweep_row(folder: Path) -> dict[str, Any]:
    """A sweep's parent: its metric and best trial (``trials.csv``), or that it has none
    yet (running, stopped: ``huberfit sweep --resume`` finishes it)."""
    import csv

    row: dict[str, Any] = {"name": folder.name, "folder": str(folder), "kind": "sweep",
                           "started": _stamp(_started(folder))}  # fmt: skip
    try:
        plan = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
        metric = str(plan["metric"])
        if not (folder / "trials.csv").is_file():
            return {**row, "status": "sweep", "detail": "no trials.csv yet: running or "
                    f"stopped (finish it: huberfit sweep --resume {quote(str(folder))})"}  # fmt: skip
        with (folder / "trials.csv").open(encoding="utf-8", newline="") as fh:
            trials = list(csv.DictReader(fh))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        return {**row, "status": "unreadable", "detail": _why(exc, "sweep.json/trials.csv")}
    done = [t for t in trials if t.get("state") == "complete"]
    best = "none complete"
    if done:
        try:
            value = f"{float(done[0].get(metric) or 'nan'):.4g}"
        except ValueError:
            value = str(done[0].get(metric))
        best = f"best {done[0].get('name')}: {metric} {value}"
    states = {s: sum(t.get("state") == s for t in trials) for s in ("pruned", "failed")}
    more = "".join(f", {n} {s}" for s, n in states.items() if n)
    return {**row, "status": "sweep", "verdict": f"{len(trials)} trials{more}; {best}"}
