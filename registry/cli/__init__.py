"""`molecule-registry`: the operator's command-line tool.

Each command group lives in its own module and registers itself on `main`; this
file only assembles them.
"""

from __future__ import annotations

from registry.cli import admin  # noqa: F401  (registers migrate, workspace, …)
from registry.cli.base import main

__all__ = ["main"]
