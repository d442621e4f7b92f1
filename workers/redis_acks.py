"""Redis broker: a worker's acknowledgements written in one round trip per loop turn.

kombu's Redis transport keeps every delivered, unacknowledged message in the `unacked`
hash and its `unacked_index` sorted set (how a dead worker's messages come back after
the visibility timeout), and acknowledging removes it from both: a pipeline round trip
per message, in the worker's event loop. A heartbeat worker acknowledges a whole batch
at once when its transaction commits, so those round trips were about a quarter of
the loop's time (a py-spy profile of the per-message run, docs/PERFORMANCE.md).

`BatchedRedisAcks` (a consumer bootstep) makes the task channel's acknowledgements
take effect locally at once (the prefetch window moves as before) and removes the
batch's messages from the hash and the index in one pipeline at the end of the loop
turn they were acknowledged in, before the loop waits again; the channel's close
writes what is pending first. A worker killed between the two loses nothing: the
message is still in the hash, comes back after the visibility timeout, and is
applied again to no effect (every task is idempotent, CONTRACT §4). Other brokers
(RabbitMQ acknowledgements are frames, not round trips) are left as they are.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps
from kombu.transport.redis import QoS as RedisQoS
from kombu.transport.virtual.base import QoS as VirtualQoS

log = logging.getLogger(__name__)


class _PendingAcks:
    """Delivery tags acknowledged this loop turn, removed from Redis in one pipeline."""

    def __init__(self, qos: RedisQoS, connection_errors: tuple[type[BaseException], ...]) -> None:
        self._qos = qos
        self._errors = connection_errors
        self._tags: list[str] = []
        self._lock = threading.Lock()

    def ack(self, delivery_tag: str) -> None:
        VirtualQoS.ack(self._qos, delivery_tag)  # the local state, now
        with self._lock:
            self._tags.append(delivery_tag)

    def flush(self) -> None:
        with self._lock:
            if not self._tags:
                return
            tags, self._tags = self._tags, []
        try:
            with self._qos.pipe_or_acquire() as pipe:
                pipe.zrem(self._qos.unacked_index_key, *tags)
                pipe.hdel(self._qos.unacked_key, *tags)
                pipe.execute()
        except self._errors as exc:
            # As a failed single ack: the messages come back after the visibility
            # timeout and are applied again, to no effect.
            log.warning("could not acknowledge %d message(s) on Redis: %s", len(tags), exc)


def batch_redis_acks(
    channel: Any, hub: Any, connection_errors: tuple[type[BaseException], ...]
) -> _PendingAcks | None:
    """Install batched acknowledgements on a Redis `channel`; None for other brokers
    or without an event loop (then nothing changes)."""
    qos = getattr(channel, "qos", None)
    if hub is None or not isinstance(qos, RedisQoS):
        return None
    pending = _PendingAcks(qos, connection_errors)
    qos.ack = pending.ack
    hub.on_tick.add(pending.flush)
    close = channel.close

    def flush_then_close() -> None:
        hub.on_tick.discard(pending.flush)
        pending.flush()
        close()

    channel.close = flush_then_close
    return pending


class BatchedRedisAcks(bootsteps.StartStopStep):
    """Consumer step: batched acknowledgements on the task channel (Redis broker only)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        channel = c.task_consumer.channel if c.task_consumer is not None else None
        if channel is not None and batch_redis_acks(channel, c.hub, c.connection_errors):
            log.debug("acknowledgements batched per loop turn on the Redis task channel")
