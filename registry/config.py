"""Every configuration option, declared once: name, type, default and meaning.

Options come from the environment. An invalid value never crashes a process:
it falls back to the default and says so in the log, once per variable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/molecule_registry"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

_warned: set[str] = set()


def _warn_once(name: str, message: str) -> None:
    if name not in _warned:
        _warned.add(name)
        log.warning(message)


def positive_int(raw: str) -> int:
    value = int(raw.strip())
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def non_negative_int(raw: str) -> int:
    value = int(raw.strip())
    if value < 0:
        raise ValueError("must be zero or a positive integer")
    return value


def positive_float(raw: str) -> float:
    value = float(raw.strip())
    if not value > 0:  # also rejects NaN
        raise ValueError("must be a positive number")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw.strip())
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise ValueError("must be zero or a positive number")
    return value


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def text(raw: str) -> str:
    return raw.strip()


@dataclass(frozen=True)
class Option:
    env: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


def _opt(env: str, parse: Callable[[str], Any], default: Any, doc: str) -> Any:
    # Stored as dataclass field metadata so docs and the parser share one declaration.
    return field(default=default, metadata={"option": Option(env, parse, default, doc)})


@dataclass(frozen=True)
class Settings:
    database_url: str = _opt(
        "DATABASE_URL", text, DEFAULT_DATABASE_URL, "SQLAlchemy URL of the registry database"
    )
    redis_url: str = _opt("REDIS_URL", text, DEFAULT_REDIS_URL, "liveness keys, caches, events")
    broker_url: str = _opt(
        "CELERY_BROKER_URL", text, "", "broker (Redis or AMQP); default REDIS_URL"
    )
    result_backend: str = _opt(
        "CELERY_RESULT_BACKEND", text, "", "task results (short expiry); default REDIS_URL"
    )
    celery_visibility_timeout: int = _opt(
        "CELERY_VISIBILITY_TIMEOUT",
        positive_int,
        300,
        "Redis broker: seconds before a message a dead worker held is redelivered",
    )
    liveness_ttl_seconds: int = _opt(
        "LIVENESS_TTL_SECONDS", positive_int, 180, "TTL of the liveness key ws:<id>"
    )
    remote_liveness_stale_after: int = _opt(
        "REMOTE_LIVENESS_STALE_AFTER",
        positive_int,
        90,
        "seconds without heartbeat before an external workspace is swept",
    )
    provision_timeout_seconds: int | None = _opt(
        "PROVISION_TIMEOUT_SECONDS",
        positive_int,
        None,
        "if set, replaces every runtime's provisioning timeout",
    )
    deploy_mode: str = _opt(
        "MOLECULE_DEPLOY_MODE", text, "", "`saas` relaxes the private-range URL check"
    )
    org_id: str = _opt(
        "MOLECULE_ORG_ID",
        text,
        "",
        "legacy SaaS signal, used only when MOLECULE_DEPLOY_MODE is unset",
    )
    backstop_sweep_interval: int = _opt(
        "BACKSTOP_SWEEP_INTERVAL",
        positive_int,
        30,
        "seconds between stale-heartbeat backstop sweeps",
    )
    health_sweep_interval: int = _opt(
        "HEALTH_SWEEP_INTERVAL", positive_int, 15, "seconds between health sweeps"
    )
    provision_sweep_interval: int = _opt(
        "PROVISION_SWEEP_INTERVAL", positive_int, 30, "seconds between provisioning-timeout sweeps"
    )
    hibernation_sweep_interval: int = _opt(
        "HIBERNATION_SWEEP_INTERVAL", positive_int, 120, "seconds between hibernation sweeps"
    )
    orphan_sweep_interval: int = _opt(
        "ORPHAN_SWEEP_INTERVAL", positive_int, 60, "seconds between orphan-container sweeps"
    )
    relay_events_interval: int = _opt(
        "RELAY_EVENTS_INTERVAL", positive_int, 15, "seconds between outbox relay runs"
    )
    relay_grace_seconds: int = _opt(
        "RELAY_GRACE_SECONDS",
        positive_int,
        10,
        "an outbox event older than this is assumed unpublished and is republished by the relay",
    )
    backstop_grace_seconds: int = _opt(
        "BACKSTOP_GRACE_SECONDS",
        positive_int,
        30,
        "added to LIVENESS_TTL_SECONDS before the backstop treats a heartbeat as stale",
    )
    self_preservation_threshold: float = _opt(
        "SELF_PRESERVATION_THRESHOLD",
        positive_float,
        0.5,
        "share of the fleet about to be marked unreachable that pauses automatic marking",
    )
    heartbeat_backlog_seconds: int = _opt(
        "HEARTBEAT_BACKLOG_SECONDS",
        positive_int,
        60,
        "age of the oldest waiting heartbeat above which the queue counts as backlogged",
    )
    events_stream_maxlen: int = _opt(
        "EVENTS_STREAM_MAXLEN", positive_int, 100_000, "approximate cap of the events:stream length"
    )
    events_stream_broadcasts: bool = _opt(
        "EVENTS_STREAM_BROADCASTS",
        boolean,
        False,
        "also append broadcast-only events (WORKSPACE_HEARTBEAT, TASK_UPDATED) to "
        "events:stream; for small fleets only (CONTRACT §7)",
    )
    heartbeat_batch_max_items: int = _opt(
        "HEARTBEAT_BATCH_MAX_ITEMS",
        positive_int,
        200,
        "per-message heartbeats a worker process applies in one transaction at most",
    )
    heartbeat_batch_max_wait_ms: float = _opt(
        "HEARTBEAT_BATCH_MAX_WAIT_MS",
        non_negative_float,
        20.0,
        "under load (the previous batch just ended), how long a per-message heartbeat "
        "batch waits for company; an idle worker applies a lone heartbeat at once",
    )
    container_backend: str = _opt(
        "CONTAINER_BACKEND", text, "none", "`docker` or `none`: container checker/stopper/reaper"
    )
    token_secret: str = _opt(
        "REGISTRY_TOKEN_SECRET",
        text,
        "",
        "key that re-derives a token for a redelivered registration; default: generated "
        "once per database by the migrations",
    )
    metrics_port: int = _opt(
        "METRICS_PORT",
        non_negative_int,
        9808,
        "port of the worker's Prometheus endpoint; 0 disables it",
    )
    metrics_addr: str = _opt(
        "METRICS_ADDR",
        text,
        "0.0.0.0",  # noqa: S104 - Prometheus scrapes the worker from another host
        "address the worker's Prometheus endpoint listens on",
    )

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url


def options() -> list[tuple[str, Option]]:
    """(field name, option) for every setting, in declaration order (used by docs and CLI)."""
    return [(f.name, f.metadata["option"]) for f in fields(Settings)]


def load(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, opt in options():
        raw = env.get(opt.env)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[name] = opt.parse(raw)
        except (ValueError, TypeError):
            _warn_once(
                opt.env,
                f"{opt.env}={raw!r} is not valid; using the default {opt.default!r}",
            )
    return Settings(**values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
    return get_settings()
