"""Find runs again: one summary row per run folder under a runs folder, newest first.

Reads ``metrics.json`` (and ``comparison.json`` for compare-losses parents, whose runs are
listed under them). A folder that cannot be read is listed as such; nothing here raises on
a bad folder. Torch-free: reading JSON needs no model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from huberfit.config import user_path

SIDE_RUNS = {"truth", "val"}  # TensorBoard-only folders beside runs (see sinks.py)


def list_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Summary rows of every run under ``runs_dir``, newest first; children follow parents."""
    root = user_path(runs_dir)
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


def _run_row(folder: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": folder.name, "folder": str(folder), "kind": "run"}
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        if (folder / "config.yaml").is_file():
            status, detail = "incomplete", "no metrics.json: the process stopped before the end"
        else:
            status, detail = "not a run", "no metrics.json or config.yaml"
        return {**row, "status": status, "detail": detail, "started": _stamp(_started(folder))}
    try:
        m = json.loads(metrics_file.read_text(encoding="utf-8"))
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
