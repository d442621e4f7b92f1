"""Prometheus series of the registry (served by the worker; see docs/OPERATIONS.md)."""

from __future__ import annotations

from prometheus_client import Counter

HEARTBEATS = Counter("registry_heartbeats_total", "Heartbeats handled, by outcome", ["outcome"])
HEARTBEATS_REJECTED = Counter(
    "registry_heartbeats_rejected_total",
    "Heartbeats refused before they could apply, by reason",
    ["reason"],
)
TRANSITIONS = Counter(
    "registry_transitions_total", "Status transitions applied, by from and to", ["from", "to"]
)
