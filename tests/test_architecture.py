"""The import graph ARCHITECTURE.md describes: one way, acyclic, each room importing only
what its row of the table allows (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "huberfit"

# ARCHITECTURE.md, "The rooms": the rooms a room may import (ONLY), or must not (FORBIDDEN)
ONLY = {
    "config": {"errors"},
    "errors": set(),
    "device": {"errors"},
    "reference": set(),
    "inference": set(),
    "finish": set(),
    "model": set(),
    "plots": set(),
}
FORBIDDEN = {
    "data": {"losses", "model", "loop", "sinks", "metrics", "run", "experiment", "plots"},
    "losses": {"data", "model", "loop", "sinks", "metrics", "run", "experiment"},
    "optim": {"data", "losses", "loop", "model", "sinks", "experiment"},
    "loop": {"losses", "model", "sinks", "metrics", "run", "experiment", "optim"},
    "sinks": {"data", "losses", "loop", "metrics", "run", "experiment"},
    "artifacts": {"sinks", "plots", "metrics", "run", "experiment"},
    "run": {"data", "loop", "metrics", "experiment", "losses"},
    "metrics": {"run", "plots", "experiment"},
    "predict": {"experiment", "run", "loop"},
    "runs": {"experiment", "loop"},
    "experiment": {"sweep", "compare", "api", "cli"},
    "sweep": {"compare", "api", "cli"},
    "compare": {"api", "cli"},
}


def room_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def imports_of(path: Path) -> set[str]:
    """The huberfit rooms a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("huberfit"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from huberfit import optim, plots
                found |= {a.name for a in node.names if a.name != "__version__"}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("huberfit.")}
    return found


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        room = room_of(path)
        g.setdefault(room, set()).update(imports_of(path) - {room})
    return g


def test_each_room_imports_only_what_it_may():
    g = graph()
    problems = [f"{room} imports {dep}" for room, only in ONLY.items()
                for dep in sorted(g.get(room, set()) - only)]  # fmt: skip
    problems += [f"{room} imports {dep}" for room, banned in FORBIDDEN.items()
                 for dep in sorted(g.get(room, set()) & banned)]  # fmt: skip
    assert not problems, problems
    assert set(ONLY) | set(FORBIDDEN) <= set(g)  # every room named above exists


def test_the_import_graph_is_acyclic():
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        assert state.get(node) != 1, f"import cycle: {' -> '.join([*path, node])}"
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in g.get(node, ()):
            visit(dep, [*path, node])
        state[node] = 2

    for node in list(g):
        visit(node, [])
