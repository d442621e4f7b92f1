"""The shortened failover proof of the suite: bench/failover.py on a small fleet.

TTL 20 s (not 180): long enough that a worker restarting on a loaded CI machine does
not let a live agent's key expire, short enough that dead agents are marked within
seconds of each failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.failover import FailoverRun, Options, Outcome  # noqa: E402


def short_options(*failures: str) -> Options:
    return Options(
        workspaces=200,
        dead=3,
        interval=1.0,
        failures=tuple(failures),
        ttl=20,
        backstop_interval=5,
        backstop_grace=5,
        registrations_per_second=2.0,
        quiet=False,
    )


def assert_nothing_lost(outcome: Outcome) -> None:
    report = "\n".join(outcome.lines())
    assert outcome.failover_seconds is not None, report
    assert outcome.restarted_seconds is not None, report
    assert outcome.heartbeats_acked > 0 and outcome.heartbeats_lost == 0, report
    assert outcome.registrations_acked > 0 and outcome.registrations_lost == 0, report
    assert outcome.cards_lost == 0, report
    assert outcome.events_recorded > 0 and outcome.events_lost == 0, report
    assert outcome.false_transitions == 0, report
    assert outcome.dead_marked == outcome.dead > 0, report
    assert outcome.dead_marked_max_seconds is not None, report
    assert outcome.dead_marked_max_seconds <= outcome.dead_bound_seconds, report


__all__ = ["FailoverRun", "assert_nothing_lost", "short_options"]
