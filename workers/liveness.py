"""The liveness listener process (CONTRACT §1, §5): `python -m workers.liveness`.

Also started as `molecule-registry liveness`. It subscribes to the expired key-events
of REDIS_URL's database (`__keyevent@<db>__:expired`, enabled at start, see
registry.liveness) and applies the liveness-expiry transition to every `ws:<id>` key
that expires, in batches of whatever has arrived. It:

- pauses marking while self-preservation is active (evaluated at most every 5 s);
- follows the primary through a Redis Sentinel failover (REDIS_SENTINELS): it checks
  every second that the node it is subscribed on is still the one the Sentinels name,
  and re-subscribes (and re-enables the notifications) on the new primary otherwise;
  what expired during the switch is caught by the backstop sweep;
- survives PostgreSQL or Redis going away: it reconnects with exponential backoff and
  jitter (0.25 s doubling up to 30 s), re-enables the notifications on reconnect (a
  restarted Redis forgets them), and the backstop sweep catches any expiry missed
  meanwhile;
- stops at start, with what to configure, if Redis will not publish expired events,
  or with how to migrate, if the database's schema is not at head;
- runs safely next to other listeners: each change is conditional (registry.transitions),
  so two listeners receiving the same notification change the row and record its event
  once;
- stops cleanly on SIGTERM or SIGINT (within about a second);
- shows it is alive: a Redis key of its own, refreshed every 10 s with a 30 s TTL and
  deleted when it stops (registry/lifesigns.py; `molecule-registry doctor` reads it).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import redis
import redis.client
import redis.exceptions
import sqlalchemy.exc

from molecule_registry_client import safe_url
from registry.backoff import Backoff
from registry.config import Settings, get_settings
from registry.db import get_engine
from registry.lifesigns import (
    LISTENER_REFRESH_SECONDS,
    forget_listener,
    listener_identity,
    mark_listener_alive,
)
from registry.liveness.expiry import (
    PRIMARY_CHECK_SECONDS,
    NotificationsUnavailable,
    ensure_expired_notifications,
    ensure_still_primary,
    expired_channel,
    mark_expired,
    subscribed_node,
)
from registry.liveness.keys import workspace_id_from_liveness_key
from registry.liveness.selfpreservation import SelfPreservationGate
from registry.migrate import SchemaNotAtHead, check_schema
from registry.redisconn import RedisConfigError, check_config, describe, redis_client
from registry.transient import DEPENDENCY_ERRORS
from registry.uow import unit_of_work

log = logging.getLogger("workers.liveness")

READY_MESSAGE = "liveness listener ready"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Dependency failures worth a reconnect: the registry's, plus a raw socket error.
_RECONNECT_ERRORS = (*DEPENDENCY_ERRORS, OSError)


class LivenessListener:
    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int = 500,
        poll_seconds: float = 1.0,
        backoff: Backoff | None = None,
        gate: SelfPreservationGate | None = None,
    ) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.backoff = backoff or Backoff(first=0.5, cap=30.0)
        self.gate = gate or SelfPreservationGate(settings)
        self.identity = listener_identity()
        self._stop = threading.Event()
        self._node: tuple[str, int] = ("", 0)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Listen until `stop()`; raises NotificationsUnavailable if Redis cannot notify."""
        failures = 0
        ready_before = False
        while not self._stop.is_set():
            # REDIS_URL's node, or the primary Sentinel names now (registry/redisconn.py).
            client = redis_client(
                self.settings,
                decode_responses=True,
                socket_connect_timeout=5,
                socket_keepalive=True,
                # A silently dead connection (no RST) is noticed by a PING.
                health_check_interval=10,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                self._connect(client, pubsub, reconnect=ready_before)
                ready_before = True
                failures = 0
                self.backoff.reset()
                self._listen(pubsub, client)
            except _RECONNECT_ERRORS as exc:
                failures += 1
                delay = self.backoff.next_delay()
                log.warning(
                    "lost %s (%s); reconnecting in %.1f s (attempt %d)",
                    _describe_dependency(exc, self.settings),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay,
                    failures,
                )
                self._stop.wait(delay)
            finally:
                _close_quietly(pubsub, client)
        self._forget()

    def _forget(self) -> None:
        # Stopped cleanly: say so at once rather than when the key's TTL runs out.
        try:
            with redis_client(self.settings, socket_timeout=2) as client:
                forget_listener(client, self.identity)
        except redis.exceptions.RedisError as exc:
            log.debug("could not remove this listener's sign of life: %s", exc)

    def _connect(
        self, client: redis.Redis, pubsub: redis.client.PubSub, *, reconnect: bool
    ) -> None:
        # Fail here, not at the first expiry: unreachable (reconnect), or a schema not
        # at head (SchemaNotAtHead: stop, saying how to migrate).
        check_schema(get_engine())
        db = int(client.connection_pool.connection_kwargs.get("db", 0))
        channel = expired_channel(db)
        pubsub.subscribe(channel)
        # Expiry notifications are raised only by the primary: with Sentinel, this one.
        self._node = subscribed_node(pubsub)
        flags = ensure_expired_notifications(client, pubsub, channel)
        log.info(
            "%s%s: %s on %s, node %s:%s (notify-keyspace-events=%s)",
            READY_MESSAGE,
            " again" if reconnect else "",
            channel,
            describe(self.settings),
            *self._node,
            flags,
        )

    def _listen(self, pubsub: redis.client.PubSub, client: redis.Redis) -> None:
        next_sign = next_primary_check = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_sign:
                mark_listener_alive(client, self.identity)
                next_sign = time.monotonic() + LISTENER_REFRESH_SECONDS
            if self.settings.sentinel and time.monotonic() >= next_primary_check:
                # After a failover the old primary may live on as a replica (no expiry
                # events there): raises PrimaryMoved, and the loop re-subscribes.
                ensure_still_primary(self.settings, self._node)
                next_primary_check = time.monotonic() + PRIMARY_CHECK_SECONDS
            message = pubsub.get_message(timeout=self.poll_seconds)
            if message is None:
                continue
            keys = [message["data"]]
            # Take whatever else has arrived: a burst of expiries is one UPDATE.
            while len(keys) < self.batch_size:
                more = pubsub.get_message(timeout=0.0)
                if more is None:
                    break
                keys.append(more["data"])
            self.handle(keys)

    def handle(self, keys: Sequence[Any]) -> int:
        """Apply the expiry transition for the `ws:<id>` keys among `keys`; rows changed."""
        ids: list[UUID] = [
            ws for key in keys if (ws := workspace_id_from_liveness_key(str(key))) is not None
        ]
        if not ids:
            return 0
        try:
            assessment = self.gate.assessment()
            if assessment.paused:
                log.warning(
                    "self-preservation (%s): not marking %d expired workspace(s); the "
                    "backstop re-checks them once it ends",
                    assessment.reason,
                    len(ids),
                )
                return 0
            with unit_of_work() as uow:
                changed = mark_expired(uow, ids, self.settings)
        except _RECONNECT_ERRORS as exc:
            # The notification is gone; the backstop sweep applies the same transition.
            log.error("could not apply %d expiry notification(s): %s", len(ids), exc)
            return 0
        for change in changed:
            log.info(
                "workspace %s %s -> %s (liveness_expired)",
                change.workspace_id,
                change.previous_status,
                change.new_status,
            )
        return len(changed)


def _describe_dependency(exc: BaseException, settings: Settings) -> str:
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return f"PostgreSQL at {safe_url(settings.database_url)}"
    return f"Redis at {describe(settings)}"


def _close_quietly(pubsub: redis.client.PubSub, client: redis.Redis) -> None:
    for closable in (pubsub, client):
        try:
            closable.close()
        except Exception:  # already broken: nothing left to release
            log.debug("ignored error while closing %r", closable, exc_info=True)


def configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    # The listener's own INFO lines (ready, each change) are its operational record.
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)


def run_listener(settings: Settings | None = None) -> int:
    """Run until SIGTERM/SIGINT; the process exit status."""
    configure_logging()
    listener = LivenessListener(settings or get_settings())

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        listener.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        check_config(listener.settings)
        listener.run()
    except (NotificationsUnavailable, SchemaNotAtHead, RedisConfigError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("liveness listener stopped")
    return 0


if __name__ == "__main__":
    sys.exit(run_listener())
