"""JSON text for JSONB parameters (`CAST(:x AS jsonb)`) and Redis messages."""

from __future__ import annotations

import json
from typing import Any

# One encoder for the process: json.dumps with arguments builds a new one per call,
# which is a fifth of the cost of publishing a heartbeat's event.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)
