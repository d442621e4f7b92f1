"""The heartbeat transition table (CONTRACT §4.2 step 7), row by row, as a pure function."""

from __future__ import annotations

from typing import Any

import pytest

from registry.liveness.transitions import HEARTBEAT_RULES, HeartbeatFacts, heartbeat_transition
from registry.statuses import ALL_STATUSES, EventType, Status


def facts(
    *,
    runtime_state: str = "",
    error_rate: float = 0.0,
    sample_error: str | None = "boom",
    native: bool = False,
    register_failing: bool = False,
) -> HeartbeatFacts:
    return HeartbeatFacts(
        runtime_state=runtime_state,
        error_rate=error_rate,
        sample_error=sample_error,
        native_status_mgmt=native,
        register_failing=register_failing,
    )


ONLINE = EventType.WORKSPACE_ONLINE
DEGRADED = EventType.WORKSPACE_DEGRADED

# (case, current status, facts, expected (new status, event, payload) or None)
TABLE: list[tuple[str, str, HeartbeatFacts, tuple[Status, EventType, dict[str, Any]] | None]] = [
    ("online wedged", "online", facts(runtime_state="wedged"),
     (Status.DEGRADED, DEGRADED, {"runtime_state": "wedged", "sample_error": "boom"})),
    ("online wedged with native status management", "online", facts(runtime_state="wedged", native=True),
     (Status.DEGRADED, DEGRADED, {"runtime_state": "wedged", "sample_error": "boom"})),
    ("online error rate at 0.5", "online", facts(error_rate=0.5),
     (Status.DEGRADED, DEGRADED, {"error_rate": 0.5, "sample_error": "boom"})),
    ("online error rate 1.0, no sample", "online", facts(error_rate=1.0, sample_error=None),
     (Status.DEGRADED, DEGRADED, {"error_rate": 1.0, "sample_error": None})),
    ("online error rate just below 0.5", "online", facts(error_rate=0.4999), None),
    ("online error rate high but native status management", "online", facts(error_rate=0.9, native=True), None),
    ("online other runtime_state", "online", facts(runtime_state="busy"), None),
    ("online healthy", "online", facts(), None),
    # Several conditions hold: the first row wins, one transition only.
    ("online wedged and erroring", "online", facts(runtime_state="wedged", error_rate=0.9),
     (Status.DEGRADED, DEGRADED, {"runtime_state": "wedged", "sample_error": "boom"})),
    ("degraded recovered", "degraded", facts(error_rate=0.09),
     (Status.ONLINE, ONLINE, {"recovered_from": "degraded"})),
    ("degraded error rate at 0.1", "degraded", facts(error_rate=0.1), None),
    ("degraded low error but wedged", "degraded", facts(runtime_state="wedged"), None),
    ("degraded low error but a runtime_state", "degraded", facts(runtime_state="busy"), None),
    ("degraded low error but native status management", "degraded", facts(native=True), None),
    ("offline", "offline", facts(), (Status.ONLINE, ONLINE, {"recovered_from": "offline"})),
    ("offline even if erroring and wedged", "offline", facts(runtime_state="wedged", error_rate=1),
     (Status.ONLINE, ONLINE, {"recovered_from": "offline"})),
    ("provisioning", "provisioning", facts(),
     (Status.ONLINE, ONLINE, {"recovered_from": "provisioning"})),
    ("awaiting_agent", "awaiting_agent", facts(),
     (Status.ONLINE, ONLINE, {"recovered_from": "awaiting_agent"})),
    ("failed", "failed", facts(), (Status.ONLINE, ONLINE, {"recovered_from": "failed"})),
    # CONTRACT §12: a registration refused after auth less than 5 minutes ago.
    ("online, recent register failure", "online", facts(register_failing=True),
     (Status.DEGRADED, DEGRADED, {"register_failure": True, "sample_error": "boom"})),
    ("online wedged and a register failure: wedged first", "online",
     facts(runtime_state="wedged", register_failing=True),
     (Status.DEGRADED, DEGRADED, {"runtime_state": "wedged", "sample_error": "boom"})),
    ("degraded healthy but a register failure blocks recovery", "degraded",
     facts(register_failing=True), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("current", "seen", "expected"), [c[1:] for c in TABLE], ids=[c[0] for c in TABLE]
)
def test_transition_table_row(current: str, seen: HeartbeatFacts, expected: Any) -> None:
    rule = heartbeat_transition(current, seen)
    if expected is None:
        assert rule is None
        return
    assert rule is not None
    assert (rule.to_status, rule.event, rule.payload(seen)) == expected


UNTOUCHED = ("paused", "hibernating", "hibernated", "removed")


@pytest.mark.parametrize("current", UNTOUCHED)
@pytest.mark.parametrize(
    "seen", [facts(), facts(runtime_state="wedged", error_rate=1.0), facts(native=True)]
)
def test_no_heartbeat_moves_a_workspace_out_of_these_statuses(
    current: str, seen: HeartbeatFacts
) -> None:
    assert heartbeat_transition(current, seen) is None


def test_the_table_covers_every_status_exactly_as_the_spec_lists() -> None:
    moved_from = {str(rule.from_status) for rule in HEARTBEAT_RULES}
    assert moved_from == {
        "online", "degraded", "offline", "provisioning", "awaiting_agent", "failed"
    }  # fmt: skip
    assert moved_from | set(UNTOUCHED) == set(ALL_STATUSES)
    # Only online has several rules (wedged, error rate, register failure): first wins.
    assert [str(r.from_status) for r in HEARTBEAT_RULES].count("online") == 3
