"""Every configuration option, declared once: name, type, default and meaning.

Options come from the environment. An invalid value never crashes a process:
it falls back to the default and says so in the log, once per variable.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

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


def fraction(raw: str) -> float:
    """A share in (0, 1]: above 1 a share-of-the-fleet check could never trigger."""
    value = float(raw.strip())
    if not 0 < value <= 1:  # also rejects NaN
        raise ValueError("must be a number in (0, 1]")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw.strip())
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise ValueError("must be zero or a positive number")
    return value


def port_number(raw: str) -> int:
    value = int(raw.strip())
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number (0 to 65535)")
    return value


def heartbeat_batch_size(raw: str) -> int:
    """1 to 1,000: the most items a `registry.heartbeat_batch` envelope may hold."""
    from molecule_registry_client.names import MAX_HEARTBEAT_BATCH

    value = int(raw.strip())
    if not 1 <= value <= MAX_HEARTBEAT_BATCH:
        raise ValueError(f"must be 1 to {MAX_HEARTBEAT_BATCH}")
    return value


def token_cache_seconds(raw: str) -> float:
    """0 to 5: a revoked token must be refused by every gateway within 5 seconds."""
    value = float(raw.strip())
    if not 0 <= value <= 5:  # also rejects NaN
        raise ValueError("must be 0 to 5 seconds")
    return value


def report_parts(raw: str) -> int:
    """1 to 8: one transaction (and one core of the database) per part, all from the
    process's connection pool (10) beside the report's own."""
    value = int(raw.strip())
    if not 1 <= value <= 8:
        raise ValueError("must be 1 to 8")
    return value


def flap_count(raw: str) -> int:
    """2 to 100: one change is no flapping, and the change times are kept in the row."""
    value = int(raw.strip())
    if not 2 <= value <= 100:
        raise ValueError("must be 2 to 100")
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


_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def instance_id(raw: str) -> str:
    """A platform instance id: it goes into a Docker label filter, so a plain token."""
    value = raw.strip()
    if not _INSTANCE_ID.match(value):
        raise ValueError("must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
    return value


def host_ports(raw: str) -> tuple[tuple[str, int], ...]:
    """Comma-separated `host:port` (IPv6 as `[addr]:port`): the Sentinels to ask."""
    pairs: list[tuple[str, int]] = []
    for raw_item in raw.split(","):
        item = raw_item.strip()
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"{item!r} is not host:port")
        pairs.append((host, int(port)))
    return tuple(pairs)


_SERVICE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def service_name(raw: str) -> str:
    """A Sentinel master (service) name: Sentinel itself allows no spaces in it."""
    value = raw.strip()
    if not _SERVICE_NAME.match(value):
        raise ValueError("must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    return value


def queue_type(raw: str) -> str:
    from molecule_registry_client.names import QUEUE_TYPES

    value = raw.strip().lower()
    if value not in QUEUE_TYPES:
        raise ValueError(f"must be one of {', '.join(QUEUE_TYPES)}")
    return value


@dataclass(frozen=True)
class Option:
    env: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    shown: str | None = None  # how the docs show the default when the value would mislead

    @property
    def default_text(self) -> str:
        """The default as the configuration table shows it."""
        if self.shown is not None:
            return self.shown
        if self.default is None or self.default == "":
            return "unset"
        if isinstance(self.default, str):
            return f"`{self.default}`"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)


def _opt(
    env: str, parse: Callable[[str], Any], default: Any, doc: str, *, shown: str | None = None
) -> Any:
    # Stored as dataclass field metadata so docs and the parser share one declaration:
    # the configuration tables of README.md and docs/CONTRACT.md are generated from it
    # (`scripts/gen-config-table`), and tests/test_contract.py checks they match.
    return field(default=default, metadata={"option": Option(env, parse, default, doc, shown)})


@dataclass(frozen=True)
class Settings:
    database_url: str = _opt(
        "DATABASE_URL", text, DEFAULT_DATABASE_URL, "SQLAlchemy URL of the registry database"
    )
    redis_url: str = _opt("REDIS_URL", text, DEFAULT_REDIS_URL, "liveness keys, caches, events")
    redis_sentinels: tuple[tuple[str, int], ...] = _opt(
        "REDIS_SENTINELS",
        host_ports,
        (),
        "comma-separated `host:port` of the Redis Sentinels; with REDIS_SENTINEL_MASTER, "
        "every Redis user follows the primary they name (REDIS_URL's host is then unused, "
        "its database number and password still apply)",
        shown="unset",
    )
    redis_sentinel_master: str = _opt(
        "REDIS_SENTINEL_MASTER",
        service_name,
        "",
        "the Sentinels' service (master) name; set both or neither (one alone, or a name "
        "the Sentinels do not know, stops every process at start)",
    )
    broker_url: str = _opt(
        "CELERY_BROKER_URL",
        text,
        "",
        "broker (`redis://…` or `amqp://…`)",
        shown="`REDIS_URL`",
    )
    result_backend: str = _opt(
        "CELERY_RESULT_BACKEND",
        text,
        "",
        "where task results go (kept 5 minutes; a producer reads its registration's token there)",
        shown="`REDIS_URL`",
    )
    broker_queue_type: str = _opt(
        "BROKER_QUEUE_TYPE",
        queue_type,
        "classic",
        "RabbitMQ only: `quorum` declares the registry queues as quorum queues (replicated "
        "across the cluster's nodes); `classic` (the default) keeps durable classic queues",
    )
    celery_visibility_timeout: int = _opt(
        "CELERY_VISIBILITY_TIMEOUT",
        positive_int,
        300,
        "Redis broker: seconds before a dead worker's unacknowledged messages are redelivered",
    )
    liveness_ttl_seconds: int = _opt(
        "LIVENESS_TTL_SECONDS", positive_int, 180, "TTL of the liveness key `ws:<id>`"
    )
    remote_liveness_stale_after: int = _opt(
        "REMOTE_LIVENESS_STALE_AFTER",
        positive_int,
        180,
        "seconds without heartbeat before an external workspace becomes `awaiting_agent`",
    )
    provision_timeout_seconds: int | None = _opt(
        "PROVISION_TIMEOUT_SECONDS",
        positive_int,
        None,
        "a positive integer replaces every runtime's provisioning timeout (12 min; `hermes` 30 min)",
    )
    deploy_mode: str = _opt(
        "MOLECULE_DEPLOY_MODE",
        text,
        "",
        "`saas` relaxes the private-range URL check; `self-hosted`/`selfhosted`/`standalone` keep it",
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
        "RELAY_EVENTS_INTERVAL", positive_int, 15, "seconds between runs of the event outbox relay"
    )
    events_retention_days: int = _opt(
        "EVENTS_RETENTION_DAYS",
        non_negative_int,
        90,
        'days `structure_events` rows are kept (registry.prune_events); 0 keeps them forever; a replay from before the window answers "too old"',
    )
    prune_events_interval: int = _opt(
        "PRUNE_EVENTS_INTERVAL",
        positive_int,
        600,
        "seconds between registry.prune_events runs (each re-queues itself while more is due)",
    )
    status_counts_reconcile_interval: int = _opt(
        "STATUS_COUNTS_RECONCILE_INTERVAL",
        positive_int,
        3600,
        "seconds between exact recounts of the workspaces per status "
        "(registry.reconcile_status_counts; one index-only count of the fleet)",
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
        fraction,
        0.5,
        "share of the fleet about to be marked unreachable that pauses automatic marking "
        "(fleets of 20 online workspaces or more)",
    )
    self_preservation_reuse_seconds: int = _opt(
        "SELF_PRESERVATION_REUSE_SECONDS",
        non_negative_int,
        5,
        "a sweep on a fleet of 10,000 or more reuses a self-preservation evaluation younger "
        "than this while its share is at most half the threshold (instead of measuring "
        "again every tick); 0 measures on every tick",
    )
    heartbeat_backlog_seconds: int = _opt(
        "HEARTBEAT_BACKLOG_SECONDS",
        positive_int,
        60,
        "age of the oldest waiting heartbeat above which the queue counts as backlogged "
        "(automatic marking pauses)",
    )
    events_stream_maxlen: int = _opt(
        "EVENTS_STREAM_MAXLEN",
        positive_int,
        100_000,
        "approximate cap of the `events:stream` length",
    )
    events_stream_broadcasts: bool = _opt(
        "EVENTS_STREAM_BROADCASTS",
        boolean,
        False,
        "also append broadcast-only events (WORKSPACE_HEARTBEAT, TASK_UPDATED) to "
        "events:stream; for small fleets only (CONTRACT §7)",
    )
    # Fleet insight (CONTRACT §13): incidents and flapping.
    incident_min_members: int = _opt(
        "INCIDENT_MIN_MEMBERS",
        positive_int,
        5,
        "workspaces degrading with one error signature (or marked unreachable under one "
        "parent) within INCIDENT_WINDOW_SECONDS that open an incident",
    )
    incident_window_seconds: int = _opt(
        "INCIDENT_WINDOW_SECONDS",
        positive_int,
        300,
        "window an incident's members are counted in; an incident resolves once no "
        "member has been degraded (or unreachable) for this long",
    )
    flap_threshold: int = _opt(
        "FLAP_THRESHOLD",
        flap_count,
        6,
        "status changes within FLAP_WINDOW_SECONDS that flag a workspace as flapping (2 to 100)",
    )
    flap_window_seconds: int = _opt(
        "FLAP_WINDOW_SECONDS",
        positive_int,
        600,
        "window flapping is counted in; a flapping workspace is unflagged after this "
        "long without a status change",
    )
    flap_damping: bool = _opt(
        "FLAP_DAMPING",
        boolean,
        False,
        "a flapping workspace's recovery to `online` waits until it has been healthy for "
        "FLAP_HOLD_SECONDS (off: the transition table stays the original's)",
    )
    flap_hold_seconds: int = _opt(
        "FLAP_HOLD_SECONDS",
        positive_int,
        120,
        "with FLAP_DAMPING, how long a flapping workspace must stay healthy before it is "
        "brought back online",
    )
    report_parts: int = _opt(
        "REPORT_PARTS",
        report_parts,
        2,
        "id ranges `molecule-registry report` aggregates at once, each in a database "
        "connection of its own on one snapshot (1 to 8; about the database's cores)",
    )
    insight_sweep_interval: int = _opt(
        "INSIGHT_SWEEP_INTERVAL",
        positive_int,
        10,
        "seconds between insight sweeps (incident updates and resolution, flapping cleared)",
    )
    # The gateway's WebSocket `GET /ws` (CONTRACT §11).
    gateway_allowed_origins: str = _opt(
        "GATEWAY_ALLOWED_ORIGINS",
        text,
        "",
        "comma-separated `Origin`s a canvas WebSocket is admitted from (a connection "
        "without `Origin` is admitted)",
        shown="the gateway's own origin and `http://localhost:3000`",
    )
    gateway_canvas_token: str = _opt(
        "GATEWAY_CANVAS_TOKEN",
        text,
        "",
        "when set, a canvas WebSocket (no `X-Workspace-ID`) must send it as "
        "`Authorization: Bearer …`; a secret, never logged",
    )
    gateway_ws_queue_frames: int = _opt(
        "GATEWAY_WS_QUEUE_FRAMES",
        positive_int,
        1000,
        "frames a WebSocket client may fall behind by; beyond, it is closed (code 4008) "
        "and resumes from its last position",
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
        "CONTAINER_BACKEND",
        text,
        "none",
        "`docker` enables the container checker, hibernation stopper and orphan reaper "
        "(Docker Engine API; `DOCKER_HOST` honoured); `none` disables them",
    )
    platform_instance_id: str = _opt(
        "PLATFORM_INSTANCE_ID",
        instance_id,
        "default",
        "the provisioner's `molecule.platform.instance` label value (copy it from the "
        "provisioner: the first 16 hex digits of the SHA-256 of its database URL); the "
        "orphan sweep reaps a rowless container only when it carries this instance's id",
    )
    token_secret: str = _opt(
        "REGISTRY_TOKEN_SECRET",
        text,
        "",
        "key that re-derives a token for a redelivered registration; by default a random "
        "secret the migrations store in the database",
        shown="generated",
    )
    # Bounded work (docs/SECURITY.md "Bounded work"): nothing a message or a sweep does
    # may outlive the broker's visibility timeout, or its message would run twice.
    task_soft_time_limit: int = _opt(
        "TASK_SOFT_TIME_LIMIT",
        positive_int,
        120,
        "seconds after which a task is interrupted (its transaction rolls back); kept "
        "below TASK_TIME_LIMIT",
    )
    task_time_limit: int = _opt(
        "TASK_TIME_LIMIT",
        positive_int,
        150,
        "seconds after which a task's pool process is killed and its message acknowledged "
        "as failed; kept below CELERY_VISIBILITY_TIMEOUT (prefork pool only)",
    )
    db_statement_timeout_ms: int = _opt(
        "DB_STATEMENT_TIMEOUT_MS",
        non_negative_int,
        30_000,
        "PostgreSQL statement_timeout of the registry's connections; 0 disables",
    )
    db_lock_timeout_ms: int = _opt(
        "DB_LOCK_TIMEOUT_MS",
        non_negative_int,
        10_000,
        "PostgreSQL lock_timeout of the registry's connections (a message waiting longer "
        "for a row lock is retried); 0 disables",
    )
    dns_timeout_seconds: float = _opt(
        "DNS_TIMEOUT_SECONDS",
        positive_float,
        3.0,
        "longest wait for the URL guard's DNS lookup; a slower name is refused as unresolvable",
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
    # The gateway (`molecule-registry gateway`, CONTRACT §11): the original
    # platform's HTTP calls turned into queue messages.
    gateway_host: str = _opt(
        "GATEWAY_HOST",
        text,
        "127.0.0.1",
        "address the gateway listens on (`--host` overrides it)",
    )
    gateway_port: int = _opt(
        "GATEWAY_PORT",
        port_number,
        8080,
        "port the gateway listens on (`--port` overrides it)",
    )
    gateway_heartbeat_batch_max_items: int = _opt(
        "GATEWAY_HEARTBEAT_BATCH_MAX_ITEMS",
        heartbeat_batch_size,
        500,
        "most heartbeats one `registry.heartbeat_batch` message of the gateway carries (1 to 1000)",
    )
    gateway_heartbeat_batch_max_wait_ms: float = _opt(
        "GATEWAY_HEARTBEAT_BATCH_MAX_WAIT_MS",
        non_negative_float,
        5.0,
        "longest a heartbeat waits in the gateway for company before its batch is "
        "published; a lone heartbeat on an idle gateway is answered after at most this",
    )
    gateway_register_timeout_seconds: float = _opt(
        "GATEWAY_REGISTER_TIMEOUT_SECONDS",
        positive_float,
        10.0,
        "how long the gateway waits for the worker's answer to a registration or card "
        "update before answering 503 (the message expires then: no worker applies it later)",
    )
    gateway_token_cache_seconds: float = _opt(
        "GATEWAY_TOKEN_CACHE_SECONDS",
        token_cache_seconds,
        5.0,
        "how long the gateway trusts a token check it made (0 to 5; a revoked token is "
        "refused by every gateway within this)",
    )
    rate_limit: int = _opt(
        "RATE_LIMIT",
        positive_int,
        600,
        "gateway requests per minute per token (per client address without one), "
        "counted by each gateway process",
    )

    @property
    def sentinel(self) -> bool:
        """Redis is reached through Sentinel (REDIS_SENTINELS or REDIS_SENTINEL_MASTER set)."""
        return bool(self.redis_sentinels or self.redis_sentinel_master)

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        if self.sentinel:
            return sentinel_transport_url(self)
        return self.redis_url

    @property
    def quorum_queues(self) -> bool:
        """Quorum queues are a RabbitMQ feature: asked for, and the broker is AMQP."""
        return self.broker_queue_type == "quorum" and self.effective_broker_url.startswith(
            ("amqp://", "amqps://", "pyamqp://")
        )

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.sentinel:
            return sentinel_transport_url(self)
        return self.redis_url


def sentinel_transport_url(settings: Settings) -> str:
    """`sentinel://[:password@]h1:p1/db;sentinel://…@h2:p2/db`: Celery's and kombu's
    spelling of the Sentinels, carrying REDIS_URL's database and password."""
    url = urlsplit(settings.redis_url)
    auth = ""
    if url.password is not None:
        auth = f"{quote(unquote(url.username or ''), safe='')}:{quote(unquote(url.password), safe='')}@"
    db = url.path.strip("/") or parse_qs(url.query).get("db", ["0"])[0]
    hosts = [f"[{h}]" if ":" in h else h for h, _ in settings.redis_sentinels]
    return ";".join(
        f"sentinel://{auth}{host}:{port}/{db}"
        for host, (_, port) in zip(hosts, settings.redis_sentinels, strict=True)
    )


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
