"""A batching heartbeat publisher for gateways and agent hosts (CONTRACT §4.2a).

Collects heartbeats from any number of threads and sends them as
`registry.heartbeat_batch` messages: one per `max_items` heartbeats, or once the
oldest waiting heartbeat is `max_delay` seconds old, whichever comes first; `close()`
(or leaving the `with` block) sends what is left.

    with RegistryClient(broker_url) as registry, BatchingHeartbeatPublisher(registry) as hb:
        for agent in agents:  # from any thread
            hb.heartbeat(agent.id, agent.token, active_tasks=agent.busy)

Heartbeats keep their order: batches leave one at a time, in the order their
heartbeats were handed in. Each heartbeat carries its `sent_at` (when it was handed
in), so a late or repeated batch can never roll a workspace back. If the broker cannot
be reached, a batch sent in the background is kept and tried again with the next one
(up to `max_pending` heartbeats; beyond that the oldest are dropped — a newer
heartbeat of the same agent supersedes them anyway); `flush()` and `close()` raise
`RegistryUnavailable` instead.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from molecule_registry_client import RegistryClient, RegistryUnavailable, heartbeat_payload
from molecule_registry_client.names import MAX_HEARTBEAT_BATCH

log = logging.getLogger(__name__)


class BatchingHeartbeatPublisher:
    """Thread-safe: `heartbeat()` and `add()` may be called from any thread."""

    def __init__(
        self,
        client: RegistryClient,
        *,
        max_items: int = 500,
        max_delay: float = 0.2,
        max_pending: int = 10 * MAX_HEARTBEAT_BATCH,
    ) -> None:
        if not 1 <= max_items <= MAX_HEARTBEAT_BATCH:
            raise ValueError(f"max_items must be 1 to {MAX_HEARTBEAT_BATCH}")
        if max_delay <= 0:
            raise ValueError("max_delay must be positive")
        self.client = client
        self.max_items = max_items
        self.max_delay = max_delay
        self.max_pending = max(max_pending, max_items)
        self.sent_batches = 0
        self.dropped = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._oldest = 0.0  # monotonic time the oldest pending heartbeat was handed in
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # one batch on the wire at a time: order kept
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="heartbeat-batch-publisher", daemon=True
        )
        self._thread.start()

    def heartbeat(
        self, workspace_id: uuid.UUID | str, auth_token: str | None = None, **fields: Any
    ) -> None:
        """Queue one heartbeat (fields as `RegistryClient.heartbeat`)."""
        self.add(heartbeat_payload(workspace_id, auth_token, **fields))

    def add(self, payload: Mapping[str, Any]) -> None:
        """Queue one heartbeat payload as built by `heartbeat_payload`."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the publisher is closed")
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(dict(payload))
            full = len(self._pending) >= self.max_items
            self._cond.notify()
        if full:
            self._send_ready(raise_errors=False)

    def flush(self) -> int:
        """Send everything waiting now; returns how many heartbeats were sent."""
        sent = 0
        while True:
            count = self._send_ready(raise_errors=True, everything=True)
            if count == 0:
                return sent
            sent += count

    def close(self) -> None:
        """Send what is left and stop the background sender."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)
        self.flush()

    def _take(self, everything: bool) -> list[dict[str, Any]]:
        with self._cond:
            ready = len(self._pending) >= self.max_items or (
                self._pending and (everything or time.monotonic() - self._oldest >= self.max_delay)
            )
            if not ready:
                return []
            batch = [
                self._pending.popleft() for _ in range(min(self.max_items, len(self._pending)))
            ]
            self._oldest = time.monotonic()
            return batch

    def _put_back(self, batch: list[dict[str, Any]]) -> None:
        with self._cond:
            self._pending.extendleft(reversed(batch))
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self.dropped += 1

    def _send_ready(self, *, raise_errors: bool, everything: bool = False) -> int:
        with self._send_lock:
            batch = self._take(everything)
            if not batch:
                return 0
            try:
                self.client.heartbeat_batch(batch)
            except RegistryUnavailable as exc:
                self._put_back(batch)
                if raise_errors:
                    raise
                log.warning(
                    "heartbeat batch of %d not sent, kept for the next try: %s", len(batch), exc
                )
                return 0
            self.sent_batches += 1
            return len(batch)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                age = time.monotonic() - self._oldest
                wait = self.max_delay - age if self._pending else None
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                    continue
            self._send_ready(raise_errors=False)

    def __enter__(self) -> BatchingHeartbeatPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
