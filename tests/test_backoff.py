"""One backoff for every caller (registry/backoff.py): pure logic."""

from __future__ import annotations

import threading

from registry.backoff import Backoff
from registry.transient import DEPENDENCY_ERRORS, TRANSIENT_ERRORS


def test_delays_double_up_to_the_cap_within_the_jitter() -> None:
    backoff = Backoff(first=0.5, cap=4.0, jitter=0.5)
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.failures == len(ceilings)
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_a_set_stop_event_cuts_the_wait_short() -> None:
    stop = threading.Event()
    stop.set()
    backoff = Backoff(first=30.0, cap=30.0)
    assert backoff.wait(stop) >= 15.0  # returned at once, not after the delay


def test_dependency_errors_are_defined_once() -> None:
    from registry.events.subscriber import RETRYABLE_ERRORS

    assert RETRYABLE_ERRORS is DEPENDENCY_ERRORS
    assert set(DEPENDENCY_ERRORS) < set(TRANSIENT_ERRORS)
