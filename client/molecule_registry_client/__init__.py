"""Producer client: what an agent or a gateway imports to talk to the registry.

It needs only the broker URL (and, to read a registration's reply, the result
backend URL): no database, none of the registry's settings. Messages are sent by
task name as JSON (Celery message protocol v2, built here with kombu), routed to
the queue the registry expects, so this module is also the reference for a
producer written in another language.

    with RegistryClient("redis://registry-redis:6379/0") as registry:
        token = registry.register(workspace_id, {"name": "planner"}, delivery_mode="poll")
        registry.heartbeat(workspace_id, token, active_tasks=1, uptime_seconds=3600)

A gateway relaying many agents' heartbeats batches them (`registry.heartbeat_batch`,
one message per up to 1,000): see `BatchingHeartbeatPublisher`.

Failures:
- the broker cannot be reached (after a few retries with backoff) → `RegistryUnavailable`,
  naming the broker URL with its password hidden;
- the registry refused a message (`rejected`, `unauthorized`, `ignored`) → `RegistryRefused`
  with the registry's error text;
- no reply within the timeout (no worker running?) → `RegistryTimeout`.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kombu import Connection, Queue
from kombu.exceptions import KombuError
from kombu.pools import ProducerPool
from kombu.utils.url import maybe_sanitize_url

from molecule_registry_client.names import (
    CREATE_WORKSPACE_TASK,
    HEARTBEAT_BATCH_TASK,
    HEARTBEAT_TASK,
    MAX_HEARTBEAT_BATCH,
    REGISTER_TASK,
    REMOVE_WORKSPACE_TASK,
    UPDATE_CARD_TASK,
    queue_arguments,
    queue_for,
)

if TYPE_CHECKING:
    from celery.backends.base import Backend

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_RESULT_TIMEOUT = 30.0
REFUSED_STATUSES = frozenset({"rejected", "unauthorized", "ignored"})


class RegistryError(Exception):
    """Base of every error this client raises."""


class RegistryUnavailable(RegistryError):
    """The broker (or the result backend) cannot be reached."""

    def __init__(self, what: str, url: str, reason: object) -> None:
        self.url = safe_url(url)
        super().__init__(f"cannot reach the {what} at {self.url}: {reason}")


class RegistryRefused(RegistryError):
    """The registry answered `rejected`, `unauthorized` or `ignored`; nothing changed."""

    def __init__(self, task: str, result: Mapping[str, Any]) -> None:
        self.status = str(result.get("status"))
        self.error = str(result.get("error") or result.get("reason") or "")
        self.result = dict(result)
        super().__init__(f"{task}: {self.status}: {self.error}")


class RegistryTimeout(RegistryError):
    """No reply in time: is a worker consuming the `registry` queue?"""


TASK_ID_PREFIX = re.compile(r"[A-Za-z0-9_]{1,64}")


def safe_url(url: str) -> str:
    """The URL with its password hidden, fit for a log line or an error; every URL of a
    `;`-separated list (kombu's failover and Sentinel spelling)."""
    return ";".join(str(maybe_sanitize_url(part, mask="***")) for part in url.split(";"))


def _origin() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def celery_message(
    task_name: str,
    payload: Mapping[str, Any],
    *,
    origin: str,
    keep_result: bool = False,
    task_id_prefix: str = "",
) -> tuple[Any, dict[str, Any], str]:
    """(body, headers, task id) of a Celery message protocol v2 for `task_name`.

    The task name and id travel in the headers, the body is (args, kwargs, embed), and
    the payload is the one positional argument. `argsrepr` never shows the payload: it
    holds the token, and monitoring tools display this header.
    """
    task_id = f"{task_id_prefix}-{uuid.uuid4()}" if task_id_prefix else str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": f"({task_name} payload)",
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": not keep_result,
    }
    body = (
        [dict(payload)],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    return body, headers, task_id


def publish_message(
    producer: Any,
    queue: Queue,
    body: Any,
    headers: dict[str, Any],
    *,
    task_id: str,
    retry_policy: dict[str, Any],
) -> None:
    """Publish one Celery message to `queue` through the default exchange, which routes
    by queue name on both AMQP and Redis; persistent, the queue declared as the
    workers declare it. (With confirm_publish on RabbitMQ it returns once confirmed.)"""
    producer.publish(
        body,
        exchange="",
        routing_key=queue.name,
        serializer="json",
        headers=headers,
        correlation_id=task_id,
        delivery_mode="persistent",
        declare=[queue],
        retry=True,
        retry_policy=retry_policy,
    )


def result_reader_app(name: str) -> Any:
    """A Celery app that only reads results (the `results` extra): JSON, short timeouts,
    no retry of a timed-out read (the caller decides)."""
    from celery import Celery

    return Celery(
        name,
        set_as_current=False,
        config_source={
            "result_accept_content": ["json"],
            "result_serializer": "json",
            "redis_socket_connect_timeout": 5,
            "redis_socket_timeout": 5,
            "redis_retry_on_timeout": False,
        },
    )


def heartbeat_payload(
    workspace_id: uuid.UUID | str,
    auth_token: str | None = None,
    *,
    error_rate: float = 0.0,
    sample_error: str | None = None,
    active_tasks: int = 0,
    uptime_seconds: int = 0,
    current_task: str | None = None,
    monthly_spend: int = 0,
    runtime_state: str = "",
    runtime_metadata: Mapping[str, Any] | None = None,
    sent_at: float | None = None,
) -> dict[str, Any]:
    """A `registry.heartbeat` payload (CONTRACT §4.2); `sent_at` defaults to now."""
    payload: dict[str, Any] = {
        "workspace_id": str(workspace_id),
        "error_rate": error_rate,
        "active_tasks": active_tasks,
        "uptime_seconds": uptime_seconds,
        "monthly_spend": monthly_spend,
        "runtime_state": runtime_state,
        "sent_at": time.time() if sent_at is None else sent_at,
    }
    optional = {
        "auth_token": auth_token,
        "sample_error": sample_error,
        "current_task": current_task,
        "runtime_metadata": dict(runtime_metadata) if runtime_metadata is not None else None,
    }
    payload.update({key: value for key, value in optional.items() if value is not None})
    return payload


class RegistryClient:
    """Sends registry messages; thread-safe (producers come from a kombu pool).

    `result_backend` defaults to the broker URL when that is a Redis URL (the
    registry's own default); with an AMQP broker it must be given, and must be the
    worker's CELERY_RESULT_BACKEND. `publish_retries` broker connection retries,
    with backoff up to `retry_interval_max` seconds, bound how long a send may take
    when the broker is down. `queue_type` must match the workers' BROKER_QUEUE_TYPE
    on RabbitMQ (`quorum` or `classic`): the client declares the queues, and RabbitMQ
    refuses a declaration whose type differs from the queue's. `task_id_prefix`
    starts every task id (`<prefix>-<uuid>`): with a Redis result backend whose ACL
    lets this caller read only `celery-task-meta-<prefix>-*` (`scripts/roles.sh redis
    caller`), its registration answers are readable by it alone.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        result_backend: str | None = None,
        result_timeout: float = DEFAULT_RESULT_TIMEOUT,
        connect_timeout: float = 5.0,
        publish_retries: int = 3,
        retry_interval_max: float = 1.0,
        pool_size: int = 10,
        queue_type: str = "classic",
        task_id_prefix: str = "",
        transport_options: Mapping[str, Any] | None = None,
        result_transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.broker_url = broker_url
        # Letters, digits and _ only: the ACL pattern "<prefix>-*" must never match
        # another caller's ids, and a glob character would widen it.
        if task_id_prefix and not TASK_ID_PREFIX.fullmatch(task_id_prefix):
            raise ValueError(f"task_id_prefix {task_id_prefix!r}: 1-64 letters, digits or _")
        self.task_id_prefix = task_id_prefix
        self._queue_arguments = queue_arguments(queue_type)  # a bad type fails here
        if result_backend is None and broker_url.startswith(("redis://", "rediss://")):
            result_backend = broker_url
        self.result_backend = result_backend
        self.result_timeout = result_timeout
        # A `sentinel://` result backend needs its own (`{"master_name": …}`).
        self._result_transport_options = dict(
            (transport_options if result_transport_options is None else result_transport_options)
            or {}
        )
        # transport_options: e.g. `{"master_name": …}` for a `sentinel://` broker, or
        # `{"confirm_publish": True}` for RabbitMQ publisher confirms.
        self._connection = Connection(
            broker_url,
            connect_timeout=connect_timeout,
            transport_options=dict(transport_options or {}),
        )
        # Private pools (not kombu's global ones), so close() only closes this client's.
        self._connections = self._connection.Pool(limit=pool_size)
        self._producers = ProducerPool(self._connections, limit=pool_size)
        self._retry_policy = {
            "max_retries": publish_retries,
            "interval_start": 0.1,
            "interval_step": 0.4,
            "interval_max": retry_interval_max,
        }
        # Declared (once per connection, kombu caches it) so a message sent before any
        # worker started waits in its queue instead of being dropped by an AMQP broker.
        self._queues: dict[str, Queue] = {}
        self._local = threading.local()
        self._result_app: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> RegistryClient:
        """CELERY_BROKER_URL (else REDIS_URL) and CELERY_RESULT_BACKEND, as the worker reads them."""
        env = os.environ if environ is None else environ
        broker = env.get("CELERY_BROKER_URL") or env.get("REDIS_URL") or DEFAULT_BROKER_URL
        backend = env.get("CELERY_RESULT_BACKEND") or env.get("REDIS_URL") or None
        kwargs.setdefault("result_backend", backend)
        return cls(broker, **kwargs)

    # The registry's messages (CONTRACT §4).

    def register(
        self,
        workspace_id: uuid.UUID | str,
        agent_card: Mapping[str, Any],
        *,
        url: str = "",
        delivery_mode: str = "",
        auth_token: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Register and wait for the reply; returns the token to use from now on.

        The token comes back only on the first registration: later ones send the
        token they hold, which is what this returns then.
        """
        payload: dict[str, Any] = {
            "id": str(workspace_id),
            "agent_card": dict(agent_card),
            "url": url,
            "delivery_mode": delivery_mode,
        }
        if auth_token:
            payload["auth_token"] = auth_token
        result = self.call(REGISTER_TASK, payload, timeout=timeout)
        token = result.get("auth_token") or auth_token
        if not token:
            raise RegistryError(f"{REGISTER_TASK}: registered without a token: {result}")
        return str(token)

    def heartbeat(
        self,
        workspace_id: uuid.UUID | str,
        auth_token: str | None = None,
        *,
        error_rate: float = 0.0,
        sample_error: str | None = None,
        active_tasks: int = 0,
        uptime_seconds: int = 0,
        current_task: str | None = None,
        monthly_spend: int = 0,
        runtime_state: str = "",
        runtime_metadata: Mapping[str, Any] | None = None,
        sent_at: float | None = None,
    ) -> str:
        """Fire and forget (no result is kept); returns the message id.

        `sent_at` defaults to now, so a redelivered or reordered heartbeat can never
        roll the workspace's state back.
        """
        payload = heartbeat_payload(
            workspace_id,
            auth_token,
            error_rate=error_rate,
            sample_error=sample_error,
            active_tasks=active_tasks,
            uptime_seconds=uptime_seconds,
            current_task=current_task,
            monthly_spend=monthly_spend,
            runtime_state=runtime_state,
            runtime_metadata=runtime_metadata,
            sent_at=sent_at,
        )
        return self.send(HEARTBEAT_TASK, payload)

    def heartbeat_batch(self, heartbeats: list[Mapping[str, Any]]) -> str:
        """Send up to 1,000 heartbeat payloads as one `registry.heartbeat_batch` message
        (CONTRACT §4.2a); fire and forget. See `BatchingHeartbeatPublisher` to collect them."""
        if not 1 <= len(heartbeats) <= MAX_HEARTBEAT_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_HEARTBEAT_BATCH} heartbeats")
        return self.send(HEARTBEAT_BATCH_TASK, {"heartbeats": [dict(h) for h in heartbeats]})

    def update_card(
        self,
        workspace_id: uuid.UUID | str,
        agent_card: Mapping[str, Any],
        *,
        auth_token: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "workspace_id": str(workspace_id),
            "agent_card": dict(agent_card),
        }
        if auth_token:
            payload["auth_token"] = auth_token
        return self.call(UPDATE_CARD_TASK, payload, timeout=timeout)

    def create_workspace(
        self, name: str, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Admin: `registry.create_workspace` (fields: id, runtime, parent_id, tier, …)."""
        payload = {
            "name": name,
            **{k: str(v) if isinstance(v, uuid.UUID) else v for k, v in fields.items()},
        }
        return self.call(CREATE_WORKSPACE_TASK, payload, timeout=timeout)

    def remove_workspace(
        self, workspace_id: uuid.UUID | str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        return self.call(
            REMOVE_WORKSPACE_TASK, {"workspace_id": str(workspace_id)}, timeout=timeout
        )

    # Generic sending.

    def send(self, task_name: str, payload: Mapping[str, Any], *, keep_result: bool = False) -> str:
        """Publish one message; returns its id. Retries broker connection errors."""
        queue = self._queue(queue_for(task_name))
        body, headers, task_id = celery_message(
            task_name,
            payload,
            origin=_origin(),
            keep_result=keep_result,
            task_id_prefix=self.task_id_prefix,
        )
        try:
            with self._producers.acquire(block=True, timeout=30) as producer:
                publish_message(
                    producer, queue, body, headers, task_id=task_id, retry_policy=self._retry_policy
                )
        except self._connection.channel_errors as exc:
            # The broker answered and refused, e.g. a queue declared with another type
            # (queue_type must match the workers' BROKER_QUEUE_TYPE): no retry helps.
            raise RegistryError(
                f"{task_name}: the broker at {safe_url(self.broker_url)} refused it: {_reason(exc)}"
            ) from exc
        except (KombuError, OSError, *self._connection.connection_errors) as exc:
            raise RegistryUnavailable("broker", self.broker_url, _reason(exc)) from exc
        return task_id

    def call(
        self, task_name: str, payload: Mapping[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send and wait for the reply; refusals raise RegistryRefused."""
        if not self.result_backend:
            raise RegistryError(
                f"{task_name}: a reply needs the result backend URL (the worker's "
                "CELERY_RESULT_BACKEND); pass result_backend="
            )
        task_id = self.send(task_name, payload, keep_result=True)
        result = self._wait(task_name, task_id, self.result_timeout if timeout is None else timeout)
        if not isinstance(result, dict):
            raise RegistryError(f"{task_name}: unexpected reply {result!r}")
        if result.get("status") in REFUSED_STATUSES:
            raise RegistryRefused(task_name, result)
        return result

    def _wait(self, task_name: str, task_id: str, timeout: float) -> Any:
        # Polled rather than subscribed: Celery's pub/sub result consumer is not
        # thread-safe, and a poll every 50-250 ms is nothing next to a registration.
        backend = self._backend()
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                meta = backend.get_task_meta(task_id)
            except (KombuError, OSError, *_redis_errors()) as exc:
                raise RegistryUnavailable(
                    "result backend", self.result_backend or "", _reason(exc)
                ) from exc
            state = meta.get("status")
            if state == "SUCCESS":
                return meta.get("result")
            if state in ("FAILURE", "REVOKED"):
                raise RegistryError(f"{task_name} failed in the worker: {meta.get('result')!r}")
            if time.monotonic() >= deadline:
                raise RegistryTimeout(
                    f"{task_name}: no reply within {timeout:g} s (message {task_id}); "
                    f"is a worker consuming the {queue_for(task_name)!r} queue?"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _backend(self) -> Backend:
        # Celery's result backend classes decode results for every backend it knows;
        # imported lazily so a heartbeat-only producer never loads Celery. Built from
        # the URL directly: a Celery app would let a CELERY_RESULT_BACKEND variable in
        # this process override the URL the caller gave.
        backend = getattr(self._local, "backend", None)
        if backend is None:
            from celery.app.backends import by_url

            with self._lock:
                if self._result_app is None:
                    self._result_app = result_reader_app("registry-client")
                    if self.result_backend.startswith("sentinel://"):  # the master's name
                        self._result_app.conf.result_backend_transport_options = (
                            self._result_transport_options
                        )
            backend_cls, url = by_url(self.result_backend, self._result_app.loader)
            # One per thread: backends hold connections that are not shared across threads.
            backend = self._local.backend = backend_cls(app=self._result_app, url=url)
        return backend

    def _queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(
                name, routing_key=name, durable=True, queue_arguments=self._queue_arguments
            )
        return queue

    def close(self) -> None:
        self._producers.force_close_all()
        self._connections.force_close_all()
        self._connection.release()
        if self._result_app is not None:
            self._result_app.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is a dependency of kombu[redis]
        return ()
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Imported last: the batching publisher builds on the client above.
from molecule_registry_client.batching import BatchingHeartbeatPublisher  # noqa: E402

__all__ = [
    "BatchingHeartbeatPublisher",
    "RegistryClient",
    "RegistryError",
    "RegistryRefused",
    "RegistryTimeout",
    "RegistryUnavailable",
    "heartbeat_payload",
    "safe_url",
]
