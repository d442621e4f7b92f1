"""`molecule-registry doctor`: is every part of the registry in place and healthy?

One line per check — what was found and, when it is not right, the fix — then an
exit status: 0 when nothing failed, 1 otherwise (`--strict`: warnings count too).

Checks, in order (a check that needs an unreachable store is skipped):
- postgresql     reachable, schema at the migrations' head
- redis          reachable (REDIS_URL, or the primary REDIS_SENTINELS name: liveness
                 keys, events); a Sentinel setting that cannot work fails here
- notifications  `notify-keyspace-events` publishes expired key-events
- broker         reachable and persistent (Redis AOF; RabbitMQ durable or quorum queues)
- workers        a worker consumes each registry queue (Celery remote control)
- beat           sweeps ran recently (the note each sweep run leaves in Redis)
- listener       a liveness listener is alive (the key each listener refreshes)
- heartbeat-lag  messages waiting in registry.heartbeats, and the probe's measured lag
- self-preservation  not active (automatic unreachable-marking not paused)
- outbox         no recorded event left unpublished past the relay's grace period
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import click
import redis
import redis.exceptions
import sqlalchemy.exc
from sqlalchemy import Engine, text

from cli.base import main
from molecule_registry_client import safe_url
from molecule_registry_client.names import HEARTBEAT_QUEUE, QUEUE_NAMES
from registry.config import Settings, get_settings
from registry.migrate import DatabaseReadOnly, SchemaNotAtHead, check_schema

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
LISTENER_FIX = "start one: `python -m workers.liveness` (or `molecule-registry liveness`)"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self, width: int) -> str:
        fix = f" — fix: {self.fix}" if self.fix and self.status in (WARN, FAIL) else ""
        return f"{self.status:<4}  {self.name:<{width}}  {self.detail}{fix}"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Doctor:
    """Runs the checks in order; later ones use what earlier ones found."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.engine: Engine | None = None
        self.redis: redis.Redis | None = None
        self.broker_reachable = False

    def run(self) -> Iterator[Check]:
        steps: list[tuple[str, Callable[[], Check]]] = [
            ("postgresql", self.postgresql),
            ("redis", self.redis_reachable),
            ("notifications", self.notifications),
            ("broker", self.broker),
            ("workers", self.workers),
            ("beat", self.beat),
            ("listener", self.listener),
            ("heartbeat-lag", self.heartbeat_lag),
            ("self-preservation", self.self_preservation),
            ("outbox", self.outbox),
        ]
        for name, step in steps:
            try:
                yield step()
            except (sqlalchemy.exc.SQLAlchemyError, redis.exceptions.RedisError, OSError) as exc:
                # A store that answered the first check and failed this one.
                yield Check(name, FAIL, f"could not check: {_first_line(exc)}")

    # -- stores ------------------------------------------------------------------

    def postgresql(self) -> Check:
        from registry.db import get_engine

        where = safe_url(self.settings.database_url)
        engine = get_engine()
        try:
            revision = check_schema(engine)
        except DatabaseReadOnly as exc:
            return Check("postgresql", FAIL, f"{where}: {exc}")
        except SchemaNotAtHead as exc:
            return Check("postgresql", FAIL, f"{where}: {str(exc).split(':')[0]}", _MIGRATE)
        except sqlalchemy.exc.OperationalError as exc:
            reason = _first_line(exc)
            fix = (
                f"{_MIGRATE} (it creates the database)"
                if "does not exist" in reason
                else "start PostgreSQL, or point DATABASE_URL at it"
            )
            return Check("postgresql", FAIL, f"cannot reach {where}: {reason}", fix)
        self.engine = engine
        return Check("postgresql", OK, f"{where}: reachable, schema at head {revision}")

    def redis_reachable(self) -> Check:
        from registry.db import get_redis
        from registry.redisconn import config_problem, describe

        where = describe(self.settings)
        problem = config_problem(self.settings)
        if problem is not None:  # never a silent fallback to REDIS_URL's own node
            return Check("redis", FAIL, problem, "correct REDIS_SENTINELS / REDIS_SENTINEL_MASTER")
        client = get_redis()
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            return Check(
                "redis", FAIL, f"cannot reach {where}: {exc}", "start Redis, or set REDIS_URL"
            )
        self.redis = client
        return Check("redis", OK, f"{where}: reachable")

    def notifications(self) -> Check:
        from registry.liveness.expiry import merged_flags

        if self.redis is None:
            return Check("notifications", SKIP, "Redis unreachable")
        try:
            flags = str(self.redis.config_get("notify-keyspace-events").get(
                "notify-keyspace-events", ""
            ))  # fmt: skip
        except redis.exceptions.ResponseError as exc:  # CONFIG renamed or refused
            return Check(
                "notifications",
                WARN,
                f"cannot read notify-keyspace-events ({exc}); a running listener proves them",
                "make sure the server's notify-keyspace-events includes 'Ex'",
            )
        if merged_flags(flags) is not None:
            return Check(
                "notifications",
                FAIL,
                f"notify-keyspace-events is {flags!r}: expired key-events are not published, "
                "so no workspace goes offline until the backstop sweep",
                "`CONFIG SET notify-keyspace-events Ex` (and in redis.conf), or restart the "
                "liveness listener, which enables them",
            )
        return Check("notifications", OK, f"notify-keyspace-events={flags!r} (expired events on)")

    def broker(self) -> Check:
        from registry.brokernodes import node_problem, unreachable_nodes

        url = self.settings.effective_broker_url
        problem = node_problem(url)
        if problem is not None:
            self.broker_reachable = False
            return Check("broker", FAIL, problem, "correct CELERY_BROKER_URL's node list")
        down = unreachable_nodes(url, timeout=self.timeout)
        if down and len(down) < len(url.split(";")):
            self.broker_reachable = True
            return Check(
                "broker",
                WARN,
                f"{len(down)} listed node(s) do not answer: {'; '.join(down)}",
                "bring the node back, or take it out of CELERY_BROKER_URL",
            )
        if url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
            check = self._redis_broker(url)
        else:
            check = self._amqp_broker(url)
        self.broker_reachable = not check.detail.startswith("cannot reach")
        return check

    def _redis_broker(self, url: str) -> Check:
        from registry.redisconn import is_sentinel_url, redis_client

        where = safe_url(url)
        options = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout}
        if is_sentinel_url(url):  # the Sentinels' primary, REDIS_URL's database
            if self.settings.redis_sentinel_master == "" or self.redis is None:
                return Check("broker", FAIL, f"cannot reach {where}: see the redis check")
            client = redis_client(self.settings, **options)
        else:
            client = redis.Redis.from_url(url, **options)
        with client:
            try:
                persistence = client.info("persistence")
            except redis.exceptions.ConnectionError as exc:
                return Check("broker", FAIL, f"cannot reach {where}: {exc}", "start the broker")
        if int(persistence.get("aof_enabled", 0)):
            return Check("broker", OK, f"Redis {where}: reachable, AOF on (messages persist)")
        return Check(
            "broker",
            WARN,
            f"Redis {where}: reachable, AOF off: a broker restart loses every waiting message",
            "`appendonly yes` on the broker's Redis, or RabbitMQ with BROKER_QUEUE_TYPE=quorum",
        )

    def _amqp_broker(self, url: str) -> Check:
        from kombu import Connection, Queue

        import celeryconfig

        where = safe_url(url)
        declared = {q.name: q for q in celeryconfig.registry_queues(self.settings.quorum_queues)}
        kind = "quorum" if self.settings.quorum_queues else "durable classic"
        missing: list[str] = []
        mismatched: list[str] = []
        conn = Connection(url, connect_timeout=self.timeout)
        try:
            with conn:
                conn.ensure_connection(max_retries=1)
                for name in QUEUE_NAMES:
                    # Passive first (changes nothing); then a declaration equal to the
                    # workers', which RabbitMQ refuses if the queue differs (type, durable).
                    with conn.channel() as channel:
                        try:
                            channel.queue_declare(name, passive=True)
                        except conn.channel_errors:
                            missing.append(name)
                            continue
                    with conn.channel() as channel:
                        try:
                            queue: Queue = declared[name]
                            queue.bind(channel).queue_declare()
                        except conn.channel_errors as exc:
                            mismatched.append(f"{name} ({_first_line(exc)})")
        except (*conn.connection_errors, OSError) as exc:
            return Check("broker", FAIL, f"cannot reach {where}: {_first_line(exc)}", "start it")
        if mismatched:
            return Check(
                "broker",
                FAIL,
                f"RabbitMQ {where}: queues not {kind} as configured: {'; '.join(mismatched)}",
                "set BROKER_QUEUE_TYPE to the queues' type, or drain and delete the queues so "
                "the workers re-declare them",
            )
        detail = f"RabbitMQ {where}: reachable, {kind} queues"
        if missing:
            detail += f" (not declared yet: {', '.join(missing)})"
        if self.settings.quorum_queues:
            return Check("broker", OK, detail + ", replicated (messages persist)")
        return Check(
            "broker",
            OK,
            detail + ", persistent messages (lost only with the broker node's disk)",
        )

    # -- processes ---------------------------------------------------------------

    def workers(self) -> Check:
        from celery import Celery

        if not self.broker_reachable:
            return Check("workers", SKIP, "broker unreachable")
        app = Celery("molecule-registry-doctor", set_as_current=False)
        app.conf.broker_url = self.settings.effective_broker_url
        app.conf.broker_connection_timeout = self.timeout
        app.conf.broker_connection_retry_on_startup = False
        try:
            replies = app.control.inspect(timeout=self.timeout).active_queues() or {}
        except Exception as exc:  # kombu/amqp errors vary by transport
            return Check("workers", FAIL, f"cannot ask the workers: {_first_line(exc)}")
        finally:
            app.close()
        consumers = {name: 0 for name in QUEUE_NAMES}
        for queues in replies.values():
            for queue in queues or []:
                if queue.get("name") in consumers:
                    consumers[queue["name"]] += 1
        counts = ", ".join(f"{name}: {n}" for name, n in consumers.items())
        idle = [name for name, n in consumers.items() if n == 0]
        if idle:
            return Check(
                "workers",
                FAIL,
                f"no worker consumes {', '.join(idle)} ({len(replies)} worker(s) answered; {counts})",
                f"start one: `celery -A workers.app worker -Q {','.join(idle)}`",
            )
        return Check(
            "workers", OK, f"{len(replies)} worker(s) answered; consumers per queue: {counts}"
        )

    def beat(self) -> Check:
        from registry.lifesigns import sweep_run_ages
        from tasks.schedule import beat_schedule

        if self.redis is None:
            return Check("beat", SKIP, "Redis unreachable")
        ages = sweep_run_ages(self.redis)
        fix = (
            "run `celery -A workers.app beat` (one is enough; more do no harm) and a worker "
            "consuming registry.sweeps"
        )
        if not ages:
            return Check("beat", FAIL, "no sweep has ever run", fix)
        shortest = min(entry["schedule"] for entry in beat_schedule(self.settings).values())
        allowed = 3 * shortest + 30
        task, age = min(ages.items(), key=lambda item: item[1])
        if age > allowed:
            return Check(
                "beat",
                FAIL,
                f"no sweep has run for {age:.0f} s (last: {task}; expected every {shortest:.0f} s)",
                fix,
            )
        return Check("beat", OK, f"last sweep run {age:.0f} s ago ({task})")

    def listener(self) -> Check:
        from registry.lifesigns import LISTENER_TTL_SECONDS, live_listeners

        if self.redis is None:
            return Check("listener", SKIP, "Redis unreachable")
        alive = live_listeners(self.redis)
        if not alive:
            return Check(
                "listener",
                FAIL,
                f"no liveness listener alive in the last {LISTENER_TTL_SECONDS} s: expired "
                "heartbeats are caught only by the backstop sweep",
                LISTENER_FIX,
            )
        return Check("listener", OK, f"{len(alive)} alive: {', '.join(alive)}")

    # -- state -------------------------------------------------------------------

    def heartbeat_lag(self) -> Check:
        from registry.liveness.selfpreservation import measure_backlog
        from workers.metrics_endpoint import QueueLengthCollector

        if self.engine is None:
            return Check("heartbeat-lag", SKIP, "PostgreSQL unavailable")
        try:
            waiting: int | str = (
                QueueLengthCollector(self.settings.effective_broker_url, queues=(HEARTBEAT_QUEUE,))
                .lengths()
                .get(HEARTBEAT_QUEUE, 0)
            )
        except Exception as exc:  # the broker check above names the broker's trouble
            waiting = f"unknown ({_first_line(exc)})"
        with self.engine.connect() as conn:
            backlog = measure_backlog(conn)
        limit = self.settings.heartbeat_backlog_seconds
        detail = f"{waiting} waiting in {HEARTBEAT_QUEUE}; lag {backlog.seconds:.1f} s"
        if backlog.seconds > limit:
            return Check(
                "heartbeat-lag",
                FAIL,
                f"{detail}, above HEARTBEAT_BACKLOG_SECONDS={limit}",
                f"add heartbeat workers: `celery -A workers.app worker -Q {HEARTBEAT_QUEUE}`",
            )
        return Check("heartbeat-lag", OK, detail)

    def self_preservation(self) -> Check:
        from registry.liveness.selfpreservation import current_state

        if self.engine is None:
            return Check("self-preservation", SKIP, "PostgreSQL unavailable")
        with self.engine.connect() as conn:
            state = current_state(conn)
        if state["active"]:
            return Check(
                "self-preservation",
                FAIL,
                f"ACTIVE for {state['active_for_seconds']:.0f} s ({state['reason']}): "
                "automatic unreachable-marking is paused",
                "find why heartbeats stopped (`molecule-registry self-preservation`); it "
                "ends by itself once they flow again",
            )
        return Check("self-preservation", OK, "inactive")

    def outbox(self) -> Check:
        if self.engine is None:
            return Check("outbox", SKIP, "PostgreSQL unavailable")
        grace = self.settings.relay_grace_seconds
        with self.engine.connect() as conn:
            row = conn.execute(_UNPUBLISHED, {"grace": grace}).one()
        if row.n:
            return Check(
                "outbox",
                FAIL,
                f"{row.n} recorded event(s) unpublished for more than {grace} s "
                f"(oldest {row.oldest:.0f} s)",
                "the relay (registry.relay_events) publishes them: run beat and a worker "
                "consuming registry.sweeps, with Redis reachable from it",
            )
        return Check("outbox", OK, "no event waiting past the relay's grace period")


_MIGRATE = "run `molecule-registry migrate`"
_UNPUBLISHED = text(
    """
    SELECT count(*) AS n, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS oldest
    FROM event_outbox
    WHERE created_at < now() - make_interval(secs => :grace)
    """
)


@main.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60),
    default=2.0,
    show_default=True,
    help="Seconds to wait for the broker and the workers' answers.",
)
@click.option("--strict", is_flag=True, help="Warnings count as failures too.")
@click.option("--json", "as_json", is_flag=True, help="The checks as a JSON list.")
def doctor(timeout: float, strict: bool, as_json: bool) -> None:
    """Check every part of the registry, one line each with a fix; exit 1 if one failed."""
    checks = list(Doctor(get_settings(), timeout).run())
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            click.echo(check.line(width))
    failing = {FAIL, WARN} if strict else {FAIL}
    bad = [c.name for c in checks if c.status in failing]
    if bad and not as_json:
        click.echo(f"\n{len(bad)} problem(s): {', '.join(bad)}", err=True)
    click.get_current_context().exit(1 if bad else 0)
