"""`molecule-registry`: the operator's command-line tool.

Each command group lives in its own module and registers itself on `main`; this
file only assembles them. Other distributions add commands through the
`molecule_registry.cli` entry-point group (the demo tooling adds `demo`), so the
production package ships none of them.
"""

from __future__ import annotations

from importlib.metadata import entry_points

# Each module registers its commands on `main` when imported.
from cli import (  # noqa: F401
    access,
    admin,
    board,
    doctor,
    events,
    gateway,
    history,
    liveness,
    report,
    status,
)
from cli.base import main

for _plugin in entry_points(group="molecule_registry.cli"):
    _plugin.load()

__all__ = ["main"]
