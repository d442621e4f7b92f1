"""The layers import downwards only (docs/ARCHITECTURE.md, the map).

`registry/` is the domain: it imports neither Celery's wiring (`workers`, `tasks`,
`celeryconfig`) nor the application surfaces (`cli`, `gateway`). `tasks/` and
`workers/` never import the operator CLI or the gateway. Read from the source with
`ast`, lazy imports inside functions included, so a new leak fails here.
"""

from __future__ import annotations

import ast
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
