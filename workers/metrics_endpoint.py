"""The worker's Prometheus endpoint (series: registry/metrics.py).

Started by Celery signals in a `celery worker` process (never by the in-process
test worker): the HTTP server runs in the worker's main process once it is ready,
on METRICS_ADDR:METRICS_PORT (default 0.0.0.0:9808; METRICS_PORT=0 disables it).

Pools:
- `--pool threads` (or solo/gevent): one process records and serves; nothing to set.
- prefork (Celery's default): tasks run in forked pool processes, so their counters
  live there, and prometheus_client's multiprocess mode sums them: every process
  writes its values into one directory, the endpoint reads them all. Nothing to set:
  at start (celeryd_init, before the pool forks) the worker creates a private
  directory (`$TMPDIR/molecule-registry-metrics-<pid>-*`), points
  PROMETHEUS_MULTIPROC_DIR at it and removes it at shutdown (and, at the next start,
  any such directory a killed worker left). An operator who wants the directory
  elsewhere sets PROMETHEUS_MULTIPROC_DIR (it is created if missing); files of
  processes that are gone are removed from it at start.

`registry_queue_length{queue}` is read from the broker at scrape time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery.signals import celeryd_init, worker_process_shutdown, worker_ready, worker_shutdown
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from molecule_registry_client.names import QUEUE_NAMES
from registry import metrics as _series  # the series must exist before a scrape
from registry.config import Settings, get_settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# kombu's Redis transport keeps a queue's prioritised messages in extra lists.
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITY_STEPS = (3, 6, 9)
_PID_FILE = re.compile(r"_(\d+)\.db$")
PRIVATE_DIR_PREFIX = "molecule-registry-metrics-"
_PRIVATE_DIR = re.compile(rf"^{PRIVATE_DIR_PREFIX}(\d+)-")

# The running HTTP server of this process, if any, and the directory it created.
_state: dict[str, Any] = {"server": None, "private_dir": None}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class QueueLengthCollector(Collector):
    """`registry_queue_length{queue}`: messages waiting in each registry queue.

    Read from the broker on every scrape, so it is never stale: LLEN on a Redis
    broker, a passive declare on AMQP. A broker that cannot answer yields no sample
    (Prometheus then shows the series as absent) rather than a misleading 0.
    """

    def __init__(self, broker_url: str, queues: tuple[str, ...] = QUEUE_NAMES) -> None:
        self.broker_url = broker_url
        self.queues = queues
        self._redis: Any = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "registry_queue_length", "Messages waiting in a registry queue", labels=["queue"]
        )
        try:
            lengths = self.lengths()
        except Exception as exc:  # a scrape must never fail because the broker did
            log.warning("metrics: cannot read queue lengths from the broker: %s", exc)
            lengths = {}
        for queue, length in lengths.items():
            family.add_metric([queue], length)
        yield family

    def lengths(self) -> dict[str, int]:
        if self.broker_url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
            return self._redis_lengths()
        return self._amqp_lengths()

    def _redis_lengths(self) -> dict[str, int]:
        import redis

        if self._redis is None and self.broker_url.startswith("sentinel://"):
            from registry.config import get_settings
            from registry.redisconn import redis_client

            # The broker is REDIS_URL's database on the Sentinels' primary.
            self._redis = redis_client(get_settings(), socket_timeout=2, socket_connect_timeout=2)
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.broker_url, socket_timeout=2, socket_connect_timeout=2
            )
        pipe = self._redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.llen(queue)
            for step in _REDIS_PRIORITY_STEPS:
                pipe.llen(f"{queue}{_REDIS_PRIORITY_SEPARATOR}{step}")
        counts = pipe.execute()
        per_queue = 1 + len(_REDIS_PRIORITY_STEPS)
        return {
            queue: sum(counts[i * per_queue : (i + 1) * per_queue])
            for i, queue in enumerate(self.queues)
        }

    def _amqp_lengths(self) -> dict[str, int]:
        from kombu import Connection

        lengths: dict[str, int] = {}
        with Connection(self.broker_url, connect_timeout=2) as conn:
            for queue in self.queues:
                # A passive declare on a missing queue closes the channel: one per queue.
                with conn.channel() as channel:
                    try:
                        lengths[queue] = channel.queue_declare(queue, passive=True).message_count
                    except conn.channel_errors:
                        continue  # not declared yet: no worker ever consumed it
        return lengths


def build_registry(settings: Settings) -> CollectorRegistry:
    """What the endpoint serves: this process's series, or every pool process's."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_DefaultRegistryView())
    registry.register(QueueLengthCollector(settings.effective_broker_url))
    return registry


class _DefaultRegistryView(Collector):
    """The process-wide default registry (our series + process/platform ones)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def start_metrics_server(settings: Settings | None = None) -> tuple[Any, int] | None:
    """Serve the endpoint in a daemon thread; returns (server, port) or None if disabled.

    A port already in use is logged, not fatal: the worker's job is the queue.
    """
    settings = settings or get_settings()
    if settings.metrics_port == 0:
        log.info("metrics endpoint disabled (METRICS_PORT=0)")
        return None
    try:
        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_addr, registry=build_registry(settings)
        )
    except OSError as exc:
        log.warning(
            "metrics endpoint not started on %s:%s: %s",
            settings.metrics_addr,
            settings.metrics_port,
            exc,
        )
        return None
    port = int(server.server_address[1])
    log.info("metrics endpoint on http://%s:%d/metrics", settings.metrics_addr, port)
    return server, port


def remove_stale_files(directory: str) -> int:
    """Delete value files of processes that no longer exist; returns how many.

    prometheus_client expects the directory to be emptied between runs. Files of live
    processes (this one, or another worker sharing the directory) are kept.
    """
    removed = 0
    for path in Path(directory).glob("*.db"):
        match = _PID_FILE.search(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned_private_dirs(parent: str | None = None) -> int:
    """Delete private directories of workers that are gone (SIGKILLed); returns how many."""
    removed = 0
    for path in Path(parent or tempfile.gettempdir()).glob(f"{PRIVATE_DIR_PREFIX}*"):
        match = _PRIVATE_DIR.match(path.name)
        if match is None or not path.is_dir() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def create_private_dir() -> str:
    """A fresh multiprocess directory for this worker; PROMETHEUS_MULTIPROC_DIR points at it.

    Must run before the pool forks. The series defined at import (registry/metrics.py)
    were created in single-process mode: values are switched to files, and the
    unlabelled ones (which hold a value since import) are re-created. Labelled series
    create their values on first use, in the pool processes.
    """
    from prometheus_client import values
    from prometheus_client.metrics import MetricWrapperBase

    remove_abandoned_private_dirs()
    directory = tempfile.mkdtemp(prefix=f"{PRIVATE_DIR_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.MultiProcessValue()
    for series in vars(_series).values():
        if isinstance(series, MetricWrapperBase) and not series._labelnames:
            series._metric_init()
    return directory


def remove_private_dir() -> None:
    directory, _state["private_dir"] = _state["private_dir"], None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == directory:
            del os.environ[MULTIPROC_ENV]


@celeryd_init.connect
def _prepare_multiprocess_dir(options: dict[str, Any] | None = None, **_: Any) -> None:
    directory = multiprocess_dir()
    pool = str((options or {}).get("pool") or "prefork")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        removed = remove_stale_files(directory)
        if removed:
            log.info("metrics: removed %d value file(s) of finished processes", removed)
    elif "prefork" in pool and get_settings().metrics_port:
        _state["private_dir"] = create_private_dir()
        log.info("metrics: prefork pool; values of every process in %s", _state["private_dir"])


@worker_ready.connect
def _start_on_ready(**_: Any) -> None:
    if _state["server"] is None:
        started = start_metrics_server()
        _state["server"] = started[0] if started else None


@worker_shutdown.connect
def _stop_on_shutdown(**_: Any) -> None:
    server, _state["server"] = _state["server"], None
    if server is not None:
        server.shutdown()
        server.server_close()
    remove_private_dir()  # the pool has stopped: nobody writes there any more


@worker_process_shutdown.connect
def _forget_pool_process(**_: Any) -> None:
    # Gauges in "live" modes must drop an exited pool process's values.
    if multiprocess_dir():
        mark_process_dead(os.getpid())
