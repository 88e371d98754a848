"""Find runs again: one summary row per run folder under a runs folder, newest first.

Reads ``metrics.json`` (and ``comparison.json`` for compare-losses parents, whose runs are
listed under them). A folder that cannot be read is listed as such; nothing here raises on
a bad folder. Torch-free: reading JSON needs no model.

``folder_state`` is the one judge of what a run folder is (finished, resumable, stopped
before its first checkpoint, not a run): ``huberfit runs`` lists its words and
``--resume`` refuses with the same words.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIDE_RUNS = {"truth", "val"}  # TensorBoard-only folders beside runs (see sinks.py)


def list_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Summary rows of every run under ``runs_dir``, newest first; children follow parents."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    rows: list[dict[str, Any]] = []
    for folder in sorted(_folders(root), key=_started, reverse=True):
        if (folder / "comparison.json").is_file():
            rows.append(_parent_row(folder))
            children = sorted(
                (p for p in folder.iterdir() if p.is_dir() and p.name not in SIDE_RUNS),
                key=lambda p: p.name,
            )
            rows += [{**_run_row(child), "parent": folder.name} for child in children]
        else:
            rows.append(_run_row(folder))
    return rows


def _folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _started(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:
        return 0.0


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


FINISHED = ("completed", "early_stopped", "diverged")


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


def folder_state(folder: str | Path) -> FolderState:
    """Judge a run folder from the files in it (never raises; reads no checkpoint)."""
    folder = Path(folder)
    checkpoint = (folder / "checkpoint.pt").is_file()
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        try:
            m = json.loads(metrics_file.read_text(encoding="utf-8"))
            status = m["status"]
            if not isinstance(status, str):
                raise TypeError(f"status is {status!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return FolderState("unreadable", f"metrics.json: {exc}", checkpoint)
        if checkpoint:
            return FolderState(status, m.get("message") or "", True, m)
        return FolderState(status, f"{status} before its first checkpoint (no checkpoint.pt): "
                           "nothing to resume; train it again", False, m)  # fmt: skip
    if checkpoint:
        return FolderState("interrupted", "stopped before its end (no metrics.json); "
                           f"continue it with: huberfit train --resume {folder}", True)  # fmt: skip
    if (folder / "config.yaml").is_file():
        return FolderState("incomplete", "stopped before its first checkpoint (no "
                           "checkpoint.pt): nothing to resume; train it again with: huberfit "
                           f"train --config {folder / 'config.yaml'}", False)  # fmt: skip
    return FolderState("not a run", "not a huberfit run folder (no config.yaml, checkpoint.pt "
                       "or metrics.json)", False)  # fmt: skip


def _run_row(folder: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": folder.name, "folder": str(folder), "kind": "run"}
    state = folder_state(folder)
    if state.metrics is None:
        return {**row, "status": state.status, "detail": state.detail,
                "started": _stamp(_started(folder))}  # fmt: skip
    try:
        m = state.metrics
        val = m.get("val") or {}
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
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {**row, "status": "unreadable", "detail": f"metrics.json: {exc}"}


def _parent_row(folder: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": folder.name, "folder": str(folder), "kind": "comparison"}
    try:
        data = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
        return {**row, "status": "comparison", "verdict": data.get("verdict"),
                "started": _stamp(_started(folder))}  # fmt: skip
    except (OSError, ValueError) as exc:
        return {**row, "status": "unreadable", "detail": f"comparison.json: {exc}"}
