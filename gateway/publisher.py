"""Publishing the gateway's queue messages, off the event loop.

kombu is blocking, so nothing here runs on the event loop:

- `send()` publishes one message (a registration, a card update) on a pooled broker
  connection; handlers call it through the thread pool.
- `heartbeat()` hands one heartbeat to the coalescer threads and returns a future. A
  thread takes what waits; while the other thread's batch is still on the wire it
  gathers more until that one is confirmed, `max_items` wait, or `max_wait` seconds
  after the first (an idle publisher sends at once), publishes them as ONE
  `registry.heartbeat_batch` message
  (CONTRACT §4.2a), and settles every future of the batch once the broker has it: on
  RabbitMQ only when the broker confirms it (publisher confirms, kombu's
  `confirm_publish`), on Redis when the push returns. A lone heartbeat on an idle
  gateway is therefore answered after one publish; a flood travels in batches as large
  as what arrives during one confirm round trip (group commit), never waiting longer
  than `max_wait` for company.

Messages are Celery message protocol v2, built by the project's client
(`molecule_registry_client.celery_message`), routed by queue name like every producer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kombu import Connection, Queue
from kombu.exceptions import KombuError

from molecule_registry_client import celery_message, publish_message, safe_url
from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, queue_arguments, queue_for
from registry.config import get_settings
from registry.redisconn import is_sentinel_url, sentinel_transport_options

log = logging.getLogger(__name__)

# Heartbeats waiting for the broker beyond this are answered 503 at once rather than
# piling up in memory while the broker is down.
MAX_WAITING_HEARTBEATS = 100_000

# Batches on the wire at once. Each caller waits for its batch's confirm, so with one
# publisher a gateway's throughput is its open calls per confirm round trip; a second
# publisher fills and sends the next batch while the first waits. Order between
# batches does not matter: every item carries its sent_at, and the worker never lets
# an older heartbeat roll a newer one back (CONTRACT §4.2 step 4).
PUBLISHER_THREADS = 2

_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.4, "interval_max": 1}


class BrokerUnavailable(Exception):
    """The message could not be handed to the broker (after a few retries)."""


def _is_amqp(url: str) -> bool:
    return url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def broker_connection(url: str) -> Connection:
    """A kombu connection; on RabbitMQ every publish waits for the broker's confirm."""
    options: dict[str, Any] = {"confirm_publish": True} if _is_amqp(url) else {}
    if is_sentinel_url(url):  # REDIS_SENTINELS: the broker is the Sentinels' primary
        options.update(sentinel_transport_options(get_settings()))
    return Connection(url, connect_timeout=5, transport_options=options)


class Publisher:
    """Thread-safe publishing of registry messages; `start()` on the loop, `close()` at exit."""

    def __init__(
        self, broker_url: str, *, queue_type: str, max_items: int, max_wait: float
    ) -> None:
        self.broker_url = broker_url
        self.max_items = max_items
        self.max_wait = max_wait
        self._origin = f"gateway-{os.getpid()}@{socket.gethostname()}"
        self._arguments = queue_arguments(queue_type)
        self._queues: dict[str, Queue] = {}
        self._pool = broker_connection(broker_url).Pool(limit=16)
        self._waiting: deque[tuple[dict[str, Any], asyncio.Future[None], float]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._in_flight = 0  # batches between take and the broker's confirm
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"heartbeat-publisher-{n}", daemon=True)
            for n in range(PUBLISHER_THREADS)
        ]
        self.batches_sent = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Publish what is waiting, then stop the thread and close the connections."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # every publisher thread drains and ends
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=15)
        self._pool.force_close_all()

    # Single messages (registrations, card updates).

    def send(
        self,
        task_name: str,
        payload: Mapping[str, Any],
        *,
        keep_result: bool = False,
        expires_in: float | None = None,
    ) -> str:
        """Publish one message (blocking: call it from a thread); returns its task id.

        `expires_in`: a worker that receives the message later than that discards it
        (Celery's `expires`), so a registration the gateway stopped waiting for never
        issues a token nobody receives.
        """
        body, headers, task_id = celery_message(
            task_name, payload, origin=self._origin, keep_result=keep_result
        )
        if expires_in is not None:
            headers["expires"] = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat()
        with self._pool.acquire(block=True, timeout=30) as conn:
            self._publish(conn, task_name, body, headers, task_id)
        return task_id

    # Heartbeats, coalesced.

    def heartbeat(self, item: dict[str, Any]) -> asyncio.Future[None]:
        """Queue one heartbeat payload (call on the loop); the future settles when the
        batch holding it is in the broker, or with BrokerUnavailable."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            if self._closed or len(self._waiting) >= MAX_WAITING_HEARTBEATS:
                future.set_exception(BrokerUnavailable("the gateway is not accepting heartbeats"))
                return future
            self._waiting.append((item, future, time.monotonic()))
            if len(self._waiting) == 1 or len(self._waiting) >= self.max_items:
                self._cond.notify()
        return future

    def _take(self) -> list[tuple[dict[str, Any], asyncio.Future[None], float]] | None:
        """The next batch: blocks for the first heartbeat; then, while another batch is
        on the wire, gathers what arrives until that one is confirmed, `max_items`
        wait, or `max_wait` after the first. None once closed and drained."""
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._waiting[0][2] + self.max_wait
            # Waiting for company pays only while the wire is busy: an idle publisher
            # sends at once (a lone heartbeat waits for no one), a busy one gathers the
            # calls that arrive during the other's confirm round trip (group commit).
            while len(self._waiting) < self.max_items and self._in_flight and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            count = min(self.max_items, len(self._waiting))
            self._in_flight += 1
            return [self._waiting.popleft() for _ in range(count)]

    def _run(self) -> None:
        conn = broker_connection(self.broker_url)
        try:
            while (batch := self._take()) is not None:
                error: BaseException | None = None
                try:
                    body, headers, task_id = celery_message(
                        HEARTBEAT_BATCH_TASK,
                        {"heartbeats": [item for item, _, _ in batch]},
                        origin=self._origin,
                    )
                    self._publish(conn, HEARTBEAT_BATCH_TASK, body, headers, task_id)
                    self.batches_sent += 1
                    log.debug("published a heartbeat batch of %d (message %s)", len(batch), task_id)
                except Exception as exc:
                    # Logged without the payload: it holds tokens.
                    log.warning("heartbeat batch of %d not published: %s", len(batch), exc)
                    error = exc if isinstance(exc, BrokerUnavailable) else BrokerUnavailable(exc)
                    conn.release()
                    conn = broker_connection(self.broker_url)
                finally:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()  # a gathering publisher sends now
                self._settle([future for _, future, _ in batch], error)
        finally:
            conn.release()

    def _settle(self, futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
        # One hop to the loop per batch, not per heartbeat.
        def settle() -> None:
            for future in futures:
                if future.done():  # the caller went away
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(settle)

    def _publish(
        self, conn: Connection, task_name: str, body: Any, headers: dict[str, Any], task_id: str
    ) -> None:
        queue = self._queue(queue_for(task_name))
        try:
            # With confirm_publish (RabbitMQ) publish() returns only once the broker
            # confirmed the message; a nack raises.
            publish_message(
                conn.Producer(), queue, body, headers, task_id=task_id, retry_policy=_RETRY_POLICY
            )
        except (KombuError, OSError, *conn.connection_errors, *conn.channel_errors) as exc:
            raise BrokerUnavailable(
                f"cannot publish to the broker at {safe_url(self.broker_url)}: {exc}"
            ) from exc

    def _queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(
                name, routing_key=name, durable=True, queue_arguments=self._arguments
            )
        return queue
