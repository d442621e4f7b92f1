"""Liveness expiry (CONTRACT §5, §8): a `ws:<id>` key expiring marks its workspace unreachable.

Redis publishes `expired` key-event notifications only when `notify-keyspace-events`
asks for them; `ensure_expired_notifications` turns them on without clobbering the
flags an operator already set, or explains what to configure when the server refuses
CONFIG (managed Redis). `mark_expired` is the one transition the listener applies:
`mark_unreachable` with reason `liveness_expired` and its default exclusions (removed,
paused, hibernating, hibernated).

Notifications are fire-and-forget (lost while no listener runs, and a key lost to a
Redis restart never expires), so the backstop sweep applies the same transition from
the database side; nothing here needs to be exactly-once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from uuid import UUID

import redis
import redis.client
import redis.exceptions

from registry.config import Settings
from registry.liveness.selfpreservation import LIVENESS_EXPIRED
from registry.liveness.transitions import Unreachable, mark_unreachable
from registry.redisconn import primary_address
from registry.uow import UnitOfWork

log = logging.getLogger(__name__)

KEYEVENT_FLAG = "E"  # publish on __keyevent@<db>__:<event>
EXPIRED_FLAG = "x"  # ... for expired keys
ALL_EVENTS_FLAG = "A"  # alias that includes x
SELFTEST_PREFIX = "registry:liveness-selftest:"


# How often a listener behind Sentinel asks whether its node is still the primary.
PRIMARY_CHECK_SECONDS = 1.0


class NotificationsUnavailable(RuntimeError):
    """Redis will not publish expired-key events, and the registry cannot make it."""


class PrimaryMoved(redis.exceptions.ConnectionError):
    """The node a listener is subscribed on is no longer the primary (a failover)."""


def subscribed_node(pubsub: redis.client.PubSub) -> tuple[str, int]:
    """The node `pubsub`'s connection is on (after `subscribe`)."""
    connection = pubsub.connection
    if connection is None:
        raise redis.exceptions.ConnectionError("the pub/sub connection is not open")
    return str(connection.host), int(connection.port)


def ensure_still_primary(settings: Settings, node: tuple[str, int]) -> None:
    """Raise PrimaryMoved unless `node` is the primary the Sentinels name now.

    Expired events are raised only on the primary (a replica deletes the key when its
    primary tells it to, silently), so a listener left on a demoted node hears nothing.
    """
    now = primary_address(settings)
    if now != node:
        raise PrimaryMoved(f"the primary moved from {node[0]}:{node[1]} to {now[0]}:{now[1]}")


def expired_channel(db: int) -> str:
    return f"__keyevent@{db}__:expired"


def merged_flags(current: str) -> str | None:
    """`current` plus what expired key-events need; None when it already has them."""
    missing = ""
    if KEYEVENT_FLAG not in current:
        missing += KEYEVENT_FLAG
    if EXPIRED_FLAG not in current and ALL_EVENTS_FLAG not in current:
        missing += EXPIRED_FLAG
    return current + missing if missing else None


def _what_to_configure(current: str | None) -> str:
    have = f" (it has {current!r})" if current else ""
    return (
        "set `notify-keyspace-events` to include 'E' and 'x' (e.g. `notify-keyspace-events Ex`) "
        f"in the Redis server's configuration{have}: redis.conf, or the parameter group of a "
        "managed Redis"
    )


def ensure_expired_notifications(
    client: redis.Redis,
    pubsub: redis.client.PubSub,
    channel: str,
    *,
    selftest_timeout: float = 3.0,
) -> str:
    """Make sure `client`'s server publishes expired key-events; the flags, for the log.

    `pubsub` must already be subscribed to `channel` (the self-test listens on it).
    CONFIG refused (a managed Redis that renames or forbids it) is not fatal by itself:
    a short self-test then shows whether the operator configured it some other way.
    Raises NotificationsUnavailable with what to configure otherwise.
    """
    try:
        current = str(client.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
    except redis.exceptions.ResponseError as exc:
        log.warning("Redis refused CONFIG GET (%s); testing expired notifications instead", exc)
        if _selftest(client, pubsub, channel, selftest_timeout):
            return "unknown (CONFIG refused; expired notifications verified by a self-test)"
        raise NotificationsUnavailable(
            f"Redis refused CONFIG ({exc}) and does not publish expired key-events: "
            + _what_to_configure(None)
        ) from None
    wanted = merged_flags(current)
    if wanted is None:
        return current
    try:
        client.config_set("notify-keyspace-events", wanted)
    except redis.exceptions.ResponseError as exc:
        raise NotificationsUnavailable(
            f"Redis refused CONFIG SET notify-keyspace-events {wanted} ({exc}): "
            + _what_to_configure(current)
        ) from None
    log.info("notify-keyspace-events was %r; set to %r", current, wanted)
    return wanted


def _selftest(
    client: redis.Redis, pubsub: redis.client.PubSub, channel: str, timeout: float
) -> bool:
    """Set a key that expires at once and wait for its notification.

    Notifications for other keys that arrive meanwhile are dropped: only at start or
    after a reconnect, and the backstop sweep catches what they would have done.
    """
    key = f"{SELFTEST_PREFIX}{uuid.uuid4()}"
    client.set(key, "1", px=50)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message and message.get("channel") == channel and message.get("data") == key:
            return True
        client.exists(key)  # touching an expired key expires it now (lazy expiry)
    return False


# The key expired, so no heartbeat refreshed it for a whole TTL. A heartbeat applied
# in the last half TTL arrived after the expiry (or raced it): the agent is alive.
_EXPIRED_SQL = (
    "w.id = ANY(:ids) AND (w.last_heartbeat_at IS NULL "
    "OR w.last_heartbeat_at < now() - make_interval(secs => :fresh_seconds))"
)


def mark_expired(
    uow: UnitOfWork, workspace_ids: Sequence[UUID], settings: Settings
) -> list[Unreachable]:
    """Apply the liveness-expiry transition to workspaces whose `ws:<id>` key expired."""
    if not workspace_ids:
        return []
    return mark_unreachable(
        uow,
        reason=LIVENESS_EXPIRED,
        candidates_sql=_EXPIRED_SQL,
        params={
            "ids": list(dict.fromkeys(workspace_ids)),
            "fresh_seconds": settings.liveness_ttl_seconds / 2,
        },
        limit=len(workspace_ids),
    )
