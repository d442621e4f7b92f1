"""Group commit for per-message heartbeats (CONTRACT §4.2; docs/ARCHITECTURE.md, heartbeat path).

The heartbeat task's strategy (workers/heartbeat_intake.py) hands each validated
heartbeat to this process's batcher with `submit_async` and is called back once the
transaction holding it has committed; only then is its message acknowledged. (`submit`
is the same, blocking, for a direct call of the task.) One flusher thread takes
whatever is waiting — up to HEARTBEAT_BATCH_MAX_ITEMS, after waiting at most
HEARTBEAT_BATCH_MAX_WAIT_MS for company when heartbeats are streaming in — and applies
it with one `apply_heartbeats`: a fixed number of statements for the lot. Under load
the next batch gathers while the previous one commits; a lone heartbeat on an idle
worker is applied at once. How many can wait is bounded by the consumer's prefetch
window (unacknowledged messages).

Guarantees: nothing is acknowledged before its commit (a SIGKILLed worker's messages
are redelivered; `sent_at` makes the second application moot). A batch failing on a
dependency (database or Redis down, connection killed) is tried again with backoff
while its messages stay unacknowledged, for as long as its heartbeats can still count
(CONTRACT §4.2, freshness: `sent_at` + LIVENESS_TTL_SECONDS, else first seen + TTL, on
the worker's clock since the database's cannot be read then); a heartbeat past that is
given up (`ignored`, stale). A batch failing for any other reason is split and each
heartbeat applied alone, so one heartbeat the database refuses cannot fail its
neighbours.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from registry.backoff import Backoff
from registry.config import get_settings
from registry.ingestion.heartbeats import STALE_REASON, apply_heartbeats
from registry.ingestion.payloads import HeartbeatPayload
from registry.outcomes import Ignored
from registry.uow import unit_of_work

log = logging.getLogger(__name__)

Apply = Callable[[Sequence[HeartbeatPayload]], list[dict[str, Any]]]

# A batch that ended this recently means heartbeats are streaming in: the next one waits
# up to HEARTBEAT_BATCH_MAX_WAIT_MS for company.
BUSY_WITHIN_SECONDS = 0.2
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
STALE_RESULT = Ignored(STALE_REASON, label="stale").as_result()


def apply_in_one_transaction(heartbeats: Sequence[HeartbeatPayload]) -> list[dict[str, Any]]:
    with unit_of_work() as uow:
        return apply_heartbeats(uow, heartbeats)


def count_until(heartbeat: HeartbeatPayload, first_seen: float, ttl: int) -> float:
    """Epoch seconds after which trying again cannot make `heartbeat` count any more."""
    start = heartbeat.sent_at.timestamp() if heartbeat.sent_at is not None else first_seen
    return start + ttl


def apply_until_committed(
    heartbeats: Sequence[HeartbeatPayload],
    deadlines: Sequence[float],
    *,
    apply: Apply = apply_in_one_transaction,
    transient: tuple[type[BaseException], ...],
) -> list[dict[str, Any]]:
    """Apply in one transaction; on a dependency failure wait and try again with the
    heartbeats that can still count. Returns one result per heartbeat."""
    results: list[dict[str, Any]] = [STALE_RESULT] * len(heartbeats)
    waiting = list(range(len(heartbeats)))
    attempt = 0
    backoff = Backoff(first=RETRY_FIRST_SECONDS, cap=RETRY_MAX_SECONDS)
    while True:
        now = time.time()
        # The first attempt always goes to the database, which judges staleness by its
        # own clock; the worker's clock only bounds the retries after a failure.
        expired = [i for i in waiting if attempt and deadlines[i] <= now]
        if expired:
            # Counted by the task, as any refusal (reason "stale").
            log.warning("%d heartbeat(s) given up: they could no longer count", len(expired))
            waiting = [i for i in waiting if deadlines[i] > now]
        if not waiting:
            return results
        try:
            applied = apply([heartbeats[i] for i in waiting])
        except transient as exc:
            # Never past the last moment a waiting heartbeat could still count.
            delay = min(backoff.next_delay(), max(deadlines[i] for i in waiting) - now)
            log.warning(
                "%d heartbeat(s) waiting for a dependency (%s: %s); retry in %.1f s",
                len(waiting),
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                max(delay, 0),
            )
            time.sleep(max(delay, 0))
            attempt += 1
            continue
        for i, result in zip(waiting, applied, strict=True):
            results[i] = result
        return results


# Called once a heartbeat's fate is known: (result, None) after its batch committed or it
# was given up as stale, (None, error) when applying it failed for good.
Done = Callable[[dict[str, Any] | None, BaseException | None], None]


@dataclass
class _Pending:
    heartbeat: HeartbeatPayload
    count_until: float
    on_done: Done
    finished: bool = False

    def finish(self, result: dict[str, Any] | None, error: BaseException | None) -> None:
        self.finished = True
        try:
            self.on_done(result, error)
        except Exception:  # a caller's callback must not stop the flusher
            log.exception("heartbeat completion callback failed")


class HeartbeatBatcher:
    """Gathers heartbeats from concurrent callers and applies them together."""

    def __init__(
        self,
        apply: Apply = apply_in_one_transaction,
        *,
        max_items: int,
        max_wait_seconds: float,
        transient: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._apply = apply
        self.max_items = max_items
        self.max_wait_seconds = max_wait_seconds
        self._transient = transient
        self._ttl = get_settings().liveness_ttl_seconds
        self._cond = threading.Condition()
        self._waiting: deque[_Pending] = deque()
        self._pid: int | None = None
        self._last_flush = 0.0  # monotonic time the previous batch ended
        self.batches = 0  # how many batches were applied (tests, diagnostics)
        # How many unacknowledged messages the broker may hand this process at once
        # (the consumer's prefetch window), when the caller knows it: see _take_batch.
        self._window: Callable[[], int | None] = lambda: None

    def bound_by(self, window: Callable[[], int | None]) -> None:
        """Tell the batcher the prefetch window its heartbeats arrive through (a count,
        or None/0 when unbounded), read afresh for every batch (it may change)."""
        self._window = window

    def _batch_limit(self) -> int:
        """The most heartbeats a batch can gather: max_items, or fewer when the prefetch
        window is smaller. A message waiting here is unacknowledged, so once the window
        is all here the broker hands over nothing more until this batch commits: waiting
        for company then would only add the whole wait to every batch."""
        try:
            window = self._window()
        except Exception:  # the consumer is restarting: no bound known this time
            window = None
        return min(self.max_items, window) if window and window > 0 else self.max_items

    def submit(self, heartbeat: HeartbeatPayload) -> dict[str, Any]:
        """Apply `heartbeat` with whatever else is waiting; returns once it committed
        (or was given up as stale after a dependency stayed down for its whole life)."""
        done = threading.Event()
        outcome: list[Any] = []

        def finished(result: dict[str, Any] | None, error: BaseException | None) -> None:
            outcome[:] = [result, error]
            done.set()

        self.submit_async(heartbeat, finished)
        done.wait()
        result, error = outcome
        if error is not None:
            raise error
        assert result is not None
        return result

    def submit_async(self, heartbeat: HeartbeatPayload, on_done: Done) -> None:
        """Queue `heartbeat` for the next batch and return at once; the flusher thread
        calls `on_done` after the batch holding it committed (or it was given up)."""
        pending = _Pending(heartbeat, count_until(heartbeat, time.time(), self._ttl), on_done)
        with self._cond:
            self._start_if_needed()
            self._waiting.append(pending)
            # Wake the flusher only when it has something new to decide: the first
            # heartbeat to wait, or a full batch (not on every arrival while it waits).
            if len(self._waiting) == 1 or len(self._waiting) >= self._batch_limit():
                self._cond.notify()

    def _start_if_needed(self) -> None:
        # After a fork (prefork pool) the parent's flusher thread does not exist here.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._waiting.clear()
            threading.Thread(target=self._run, name="heartbeat-batcher", daemon=True).start()

    def _take_batch(self) -> list[_Pending]:
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            # Wait for company only under load (the previous batch ended moments ago):
            # a lone heartbeat on an idle worker is applied at once, while a steady
            # stream gathers into batches whose fixed cost (round trips, planning,
            # commit) is shared by many.
            busy = time.monotonic() - self._last_flush < BUSY_WITHIN_SECONDS
            deadline = time.monotonic() + (self.max_wait_seconds if busy else 0.0)
            limit = self._batch_limit()
            while len(self._waiting) < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            count = min(self.max_items, len(self._waiting))
            return [self._waiting.popleft() for _ in range(count)]

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            try:
                self._flush(batch)
                self._last_flush = time.monotonic()
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("heartbeat batcher failed")
                for pending in batch:
                    if not pending.finished:
                        pending.finish(None, exc)

    def _flush(self, batch: list[_Pending]) -> None:
        self.batches += 1
        try:
            results = apply_until_committed(
                [p.heartbeat for p in batch],
                [p.count_until for p in batch],
                apply=self._apply,
                transient=self._transient,
            )
        except Exception as exc:
            if len(batch) == 1:
                batch[0].finish(None, exc)
                return
            # Something in the batch the database refuses: apply each alone, so it
            # fails by itself and its neighbours commit.
            log.warning("heartbeat batch of %d failed (%s); applying one by one", len(batch), exc)
            for pending in batch:
                self._flush([pending])
            return
        for pending, result in zip(batch, results, strict=True):
            pending.finish(result, None)


_lock = threading.Lock()
_batcher: HeartbeatBatcher | None = None


def get_batcher(transient: tuple[type[BaseException], ...] = ()) -> HeartbeatBatcher:
    """This process's batcher, configured from the settings on first use."""
    global _batcher  # noqa: PLW0603 - one batcher per process is the point
    with _lock:
        if _batcher is None:
            settings = get_settings()
            _batcher = HeartbeatBatcher(
                max_items=settings.heartbeat_batch_max_items,
                max_wait_seconds=settings.heartbeat_batch_max_wait_ms / 1000,
                transient=transient,
            )
        return _batcher
