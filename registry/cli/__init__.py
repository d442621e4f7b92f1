"""`molecule-registry`: the operator's command-line tool.

Each command group lives in its own module and registers itself on `main`; this
file only assembles them.
"""

from __future__ import annotations

# Each module registers its commands on `main` when imported.
from registry.cli import (  # noqa: F401
    access,
    admin,
    board,
    demo,
    events,
    liveness,
    status,
)
from registry.cli.base import main

__all__ = ["main"]
