"""The batcher knows the prefetch window its heartbeats arrive through (issue: the
default worker settings' trap). A heartbeat waiting in the batcher is unacknowledged,
so once the whole window is waiting the broker hands over nothing more until the batch
commits: the batcher must apply it at once instead of waiting for company that cannot
come. Pure logic: the apply function is a recorder, no store is touched."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from registry.ingestion.batcher import HeartbeatBatcher
from registry.ingestion.payloads import HeartbeatPayload

LONG_WAIT = 30.0  # far longer than the test may take: reaching it would be the bug


def _recording_batcher(window: int | None) -> tuple[HeartbeatBatcher, list[int]]:
    sizes: list[int] = []

    def apply(heartbeats: Sequence[HeartbeatPayload]) -> list[dict[str, Any]]:
        sizes.append(len(heartbeats))
        return [{"status": "ok"} for _ in heartbeats]

    batcher = HeartbeatBatcher(apply, max_items=200, max_wait_seconds=LONG_WAIT)
    batcher.bound_by(lambda: window)
    return batcher, sizes


def _submit(batcher: HeartbeatBatcher, count: int) -> threading.Event:
    finished = threading.Event()
    left = [count]
    lock = threading.Lock()

    def done(result: Any, error: Any) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                finished.set()

    for _ in range(count):
        batcher.submit_async(HeartbeatPayload(workspace_id=uuid.uuid4()), done)
    return finished


def test_a_full_window_is_applied_without_waiting_for_company() -> None:
    batcher, sizes = _recording_batcher(window=8)
    assert _submit(batcher, 1).wait(5)  # idle: a lone heartbeat goes at once
    # Busy now (a batch just ended): without the window the next batch would wait
    # LONG_WAIT for 200 heartbeats that a window of 8 can never deliver.
    assert _submit(batcher, 8).wait(10)
    assert sizes[0] == 1 and sum(sizes) == 9 and max(sizes) <= 8


def test_without_a_known_window_the_batch_waits_up_to_max_items_or_the_wait() -> None:
    batcher, sizes = _recording_batcher(window=None)
    assert _submit(batcher, 1).wait(5)
    batcher.max_wait_seconds = 0.05
    time.sleep(0.01)
    assert _submit(batcher, 8).wait(10)
    assert sum(sizes) == 9


def test_an_unreadable_window_counts_as_unknown() -> None:
    batcher, _ = _recording_batcher(window=None)

    def broken() -> int:
        raise AttributeError("consumer restarting")

    batcher.bound_by(broken)
    assert batcher._batch_limit() == batcher.max_items
    batcher.bound_by(lambda: 0)  # prefetch 0 means unbounded
    assert batcher._batch_limit() == batcher.max_items
    batcher.bound_by(lambda: 5)
    assert batcher._batch_limit() == 5
