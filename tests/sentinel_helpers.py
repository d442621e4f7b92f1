"""The private clustered stores of the Sentinel and failover tests (bench/clusters.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.clusters import MASTER, PgPair, RabbitCluster, SentinelGroup  # noqa: E402

__all__ = ["MASTER", "PgPair", "RabbitCluster", "SentinelGroup"]
