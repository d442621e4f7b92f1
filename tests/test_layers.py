"""The layers import downwards only (docs/ARCHITECTURE.md, the map).

`registry/` is the domain: it imports neither Celery's wiring (`workers`, `tasks`,
`celeryconfig`) nor the application surfaces (`cli`, `gateway`). `tasks/` and
`workers/` never import the operator CLI or the gateway. Read from the source with
`ast`, lazy imports inside functions included, so a new leak fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "registry": {"workers", "tasks", "celeryconfig", "cli", "gateway"},
    "tasks": {"cli", "gateway"},
    "workers": {"cli", "gateway"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # String wiring ("workers.app:app", "tasks.sweeps") counts as an import too.
            head = node.value.split(":")[0]
            if head.replace(".", "").replace("_", "").isalnum() and "." in head:
                found.add(head.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_no_layer_above_it(package: str) -> None:
    leaks = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in leaks.items() if names} == {}


# ---------------------------------------------------------------------------
# No import loop, string wiring included

PACKAGES = ("registry", "tasks", "workers", "cli", "gateway")


def _module_files() -> dict[str, Path]:
    files = {"celeryconfig": ROOT / "celeryconfig.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` (or its nearest enclosing one) refers to, if any."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _module_scope_edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """What importing `name` imports: its module-level imports and the modules its
    strings wire in ("celeryconfig", "workers.heartbeat_intake:heartbeat_strategy")."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:  # module scope: what runs at import time
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    for node in ast.walk(tree):
        # Celery's string wiring: "module:attribute" (strategies, request and consumer
        # classes) and the config module's name. (A logger named like a module is not.)
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(text, str) and (text == "celeryconfig" or re.fullmatch(r"[\w.]+:\w+", text)):
            found.add(text.split(":")[0])
    edges = {_target(item, modules) for item in found}
    return {edge for edge in edges if edge is not None and edge != name}


def test_no_import_loop_string_wiring_included() -> None:
    modules = _module_files()
    graph = {name: _module_scope_edges(name, path, modules) for name, path in modules.items()}
    loops: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ importing its own submodules is how packages are built.
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                loops.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert loops == [], "\n".join(" -> ".join(loop) for loop in loops)
