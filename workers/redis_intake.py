"""Redis broker: a malformed list entry is dropped, never delivered (docs/SECURITY.md).

With the Redis broker a message is a JSON envelope (body, headers, properties) that
any client holding the broker's credentials can push onto a queue's list. kombu's
Redis channel pops it, parses it and builds its Message before Celery sees anything,
so an entry that is not JSON, lacks `properties`, has a body that is not base64, or
headers that are not an object raised out of the worker's event loop and stopped it
("Unrecoverable error"), as workers/intake_guard.py describes for Celery's own layer.

`screened_channel` makes the worker's Redis channels (plain and Sentinel) check each
popped entry's envelope first. One that could not become a message is counted in
`registry_messages_refused_total{task="unknown",reason="bad_envelope"}`, logged
without its content, and dropped: it was already popped, it was never a message, and
there is nothing to acknowledge. Everything else is delivered exactly as kombu does.
"""

from __future__ import annotations

import binascii
import logging
from base64 import b64decode
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from registry import metrics

log = logging.getLogger(__name__)


def _body_error(body: Any, encoding: Any) -> str | None:
    if not isinstance(body, str | bytes):
        return "body: must be text"
    if encoding is None:
        return None
    if encoding != "base64":
        return "properties.body_encoding: unknown"
    try:
        b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return "body: not base64"
    return None


def _shape_error(envelope: Any) -> str | None:
    if not isinstance(envelope, dict):
        return "not an object"
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return "properties: must be an object"
    checks = (
        (isinstance(properties.get("delivery_tag"), str), "properties.delivery_tag: must be text"),
        (
            isinstance(properties.get("delivery_info", {}), dict),
            "properties.delivery_info: must be an object",
        ),
        (isinstance(envelope.get("headers", {}), dict), "headers: must be an object"),
        (
            isinstance(envelope.get("content-type", ""), str | type(None)),
            "content-type: must be text",
        ),
        (
            isinstance(envelope.get("content-encoding", ""), str | type(None)),
            "content-encoding: must be text",
        ),
    )
    for ok, problem in checks:
        if not ok:
            return problem
    return _body_error(envelope.get("body"), properties.get("body_encoding"))


def envelope_error(item: bytes | str) -> tuple[dict[str, Any] | None, str | None]:
    """(the parsed envelope, None), or (None, why it cannot become a message)."""
    try:
        envelope = loads(bytes_to_str(item))  # kombu's own decoder, as the channel's
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None, "not JSON"
    problem = _shape_error(envelope)
    return (None, problem) if problem is not None else (envelope, None)


class _ScreenedRead:
    """The BRPOP reader of kombu's Redis channel, with each entry's envelope checked."""

    def _brpop_read(self: Any, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            envelope, problem = envelope_error(item)
            if envelope is None:
                metrics.count_refusal("unknown", "bad_envelope")
                log.warning("message refused (bad_envelope): %s [queue=%s]", problem, dest)
                return True
            self.connection._deliver(envelope, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()


class ScreenedChannel(_ScreenedRead, kombu_redis.Channel):
    """kombu's Redis channel with screened reads."""


class ScreenedSentinelChannel(_ScreenedRead, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with screened reads."""


def screened_channel() -> None:
    """Make this process's Redis transports use the screened channels (idempotent)."""
    kombu_redis.Transport.Channel = ScreenedChannel
    kombu_redis.SentinelTransport.Channel = ScreenedSentinelChannel
