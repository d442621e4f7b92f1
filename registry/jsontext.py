"""JSON text for JSONB parameters (`CAST(:x AS jsonb)`) and Redis messages."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
