"""Helpers for the security tests: a broker of their own, a producer, a task-event tap.

Subprocess workers get a Redis database of their own as broker, so the in-process
`worker` fixture (which consumes the test run's broker) cannot take their messages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
import redis
from celery import Celery


@pytest.fixture
def spare_redis_broker() -> Iterator[str]:
    from conftest import REDIS_BASE, _reserve_redis_dbs

    first, _second, lock = _reserve_redis_dbs()
    url = f"{REDIS_BASE}/{first}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        lock.close()


def producer(broker_url: str) -> Celery:
    """A foreign producer: sends to `broker_url`, reads results from the run's backend.

    It is a plain Celery app (not the registry's), so nothing of the registry's own
    redaction helps it: what it sends is what an arbitrary producer sends.
    """
    app = Celery("security-test-producer")
    app.config_from_object("celeryconfig")
    app.conf.broker_write_url = broker_url
    app.conf.broker_read_url = broker_url
    return app


@contextmanager
def task_events(broker_url: str) -> Iterator[list[dict[str, Any]]]:
    """Every task event the workers on `broker_url` send while the block runs."""
    app = Celery("security-test-events")
    app.conf.broker_read_url = broker_url  # CELERY_BROKER_URL would win over broker=
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    stop = threading.Event()

    receivers: list[Any] = []

    def run() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            receiver.on_iteration = ready.set  # consuming: the subscription is in place
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "event receiver did not start"
    try:
        yield seen
    finally:
        time_to_flush = 1.0  # the last events are still on their way
        stop.wait(time_to_flush)
        for receiver in receivers:
            receiver.should_stop = True
        thread.join(5)


class FreezableProxy:
    """A TCP proxy to a real service that the test can freeze: bytes stop flowing.

    Lets a test stop a worker *after* its commit and before its acknowledgement, by
    freezing the worker's path to the Redis data database (its after-commit writes).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket

        self.target = (target_host, target_port)
        self.frozen = threading.Event()
        self._closed = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        import time

        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.frozen.is_set() and not self._closed.is_set():
                    time.sleep(0.02)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
