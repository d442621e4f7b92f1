"""Node failures under load lose nothing: the failover proof (docs/PERFORMANCE.md).

    .venv/bin/python -m bench.failover [--workspaces 5000] [--dead 100] [--interval 3]
        [--failures rabbitmq,redis,postgres] [--ttl 30] [--write]

Brings up, on this machine, the clustered stores of bench/clusters.py (a PostgreSQL
primary with a synchronous standby, Redis behind three Sentinels, and with `rabbitmq`
among the failures a three-node RabbitMQ cluster with quorum queues as the broker;
else the broker is Redis through Sentinel), a worker, beat and a liveness listener
configured the production way (multi-host DATABASE_URL, REDIS_SENTINELS, the kombu
failover URL), and a simulated fleet: every workspace heartbeats each `--interval`
seconds through `registry.heartbeat_batch` messages, registrations and card updates
run beside them, and `--dead` agents stop for good before each failure. Then, one
after the other: kill -9 the RabbitMQ node leading registry.heartbeats, kill -9 the
Redis primary, kill -9 the PostgreSQL primary and promote the standby, each with a
worker SIGKILLed (and restarted) a second later. After each it prints what was lost.

"Acknowledged" is what the producer was told succeeded: a publish that returned (the
broker's confirm on RabbitMQ, the LPUSH on Redis), a registration or card update whose
reply came back. A publish that failed is retried until it is acknowledged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.clusters import PgPair, RabbitCluster, SentinelGroup  # noqa: E402
from bench.common import PERFORMANCE_MD, write_section  # noqa: E402

FAILURES = ("rabbitmq", "redis", "postgres")
BATCH = 500


@dataclass
class Options:
    workspaces: int = 5000
    dead: int = 100
    interval: float = 3.0
    failures: tuple[str, ...] = FAILURES
    ttl: int = 30
    backstop_interval: int = 10
    backstop_grace: int = 10
    registrations_per_second: float = 2.0
    concurrency: int = 2
    base_dir: Path = Path("/var/tmp")
    quiet: bool = False


@dataclass
class Outcome:
    failure: str
    failover_seconds: float | None
    heartbeats_acked: int
    heartbeats_lost: int
    registrations_acked: int
    registrations_lost: int
    cards_acked: int
    cards_lost: int
    events_recorded: int
    events_lost: int
    false_transitions: int
    dead: int
    dead_marked: int
    dead_marked_max_seconds: float | None
    dead_bound_seconds: float
    notes: list[str] = field(default_factory=list)
    restarted_seconds: float | None = None  # ... applied by the worker started after the SIGKILL

    @property
    def clean(self) -> bool:
        return (
            self.failover_seconds is not None
            and self.heartbeats_lost == 0
            and self.registrations_lost == 0
            and self.cards_lost == 0
            and self.events_lost == 0
            and self.false_transitions == 0
            and self.dead_marked == self.dead
            and (self.dead_marked_max_seconds or 0) <= self.dead_bound_seconds
        )

    def lines(self) -> list[str]:
        failover = "none" if self.failover_seconds is None else f"{self.failover_seconds:.1f} s"
        worst = (
            "-" if self.dead_marked_max_seconds is None else f"{self.dead_marked_max_seconds:.1f} s"
        )
        restarted = "none" if self.restarted_seconds is None else f"{self.restarted_seconds:.1f} s"
        return [
            f"[{self.failure}] failover (kill -> first heartbeat sent after it applied): "
            f"{failover}; with the replacement worker: {restarted}",
            f"  acknowledged heartbeats lost: {self.heartbeats_lost} of {self.heartbeats_acked}",
            f"  acknowledged registrations lost: {self.registrations_lost} of "
            f"{self.registrations_acked}; card updates lost: {self.cards_lost} of {self.cards_acked}",
            f"  events lost: {self.events_lost} of {self.events_recorded} recorded",
            f"  false offline/awaiting_agent: {self.false_transitions}",
            f"  dead agents marked: {self.dead_marked} of {self.dead}, slowest {worst} after "
            f"their last heartbeat (bound TTL + backstop interval + grace + outage = "
            f"{self.dead_bound_seconds:.1f} s)",
            *[f"  note: {note}" for note in self.notes],
        ]


class Processes:
    """The registry's processes (worker, beat, listener), each in its own group."""

    def __init__(self, env: dict[str, str], log_dir: Path, concurrency: int) -> None:
        self.env = env
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._n = 0

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def worker_argv(self) -> list[str]:
        from molecule_registry_client.names import QUEUE_NAMES

        self._n += 1
        return [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "workers.app",
            "worker",
            "-Q",
            ",".join(QUEUE_NAMES),
            "--pool",
            "prefork",
            "-c",
            str(self.concurrency),
            "-l",
            "WARNING",
            "-n",
            f"failover{self._n}-{os.getpid()}@%h",
            "--without-mingle",
            "--without-gossip",
        ]

    def start(self) -> None:
        self._start("worker", self.worker_argv())
        self._start(
            "beat",
            [
                str(Path(sys.executable).with_name("celery")),
                "-A",
                "workers.app",
                "beat",
                "-l",
                "WARNING",
                "-s",
                str(self.log_dir / "beat-schedule"),
            ],
        )
        self._start("listener", [sys.executable, "-m", "workers.liveness"])

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole group (pool included) and start another, as a
        supervisor would."""
        proc = self.procs["worker"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self._start("worker", self.worker_argv())

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


class Fleet:
    """The simulated agents: heartbeats, registrations and card updates, and what of
    them was acknowledged."""

    def __init__(self, client: Any, tokens: dict[str, str], options: Options) -> None:
        self.client = client
        self.tokens = tokens  # live agents: id -> token
        self.options = options
        self.acked: dict[str, int] = {}  # id -> last acknowledged heartbeat (uptime_seconds)
        self.last_beat: dict[str, float] = {}  # id -> when its last heartbeat was sent
        self.dead: dict[str, float] = {}  # id -> when it last heartbeat (it stopped then)
        self.registered: dict[str, str] = {}  # acknowledged registrations: id -> token
        self.cards: dict[str, int] = {}  # id -> last acknowledged card version
        self.cards_pending: dict[str, int] = {}  # id -> a version sent without an answer
        self.heartbeats_acked = 0
        self.registrations_acked = 0
        self.cards_acked = 0
        self.publish_errors = 0
        self._round = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target in (self._heartbeats, self._registrations):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def pause(self) -> None:
        self._paused.set()
        time.sleep(self.options.interval + 1)  # the round in flight ends

    def resume(self) -> None:
        self._paused.clear()

    def kill_agents(self, count: int) -> list[str]:
        """`count` live agents stop heartbeating for good (registered ones stay live)."""
        with self._lock:
            candidates = [ws for ws in self.tokens if ws not in self.registered]
            chosen = random.sample(candidates, min(count, len(candidates)))
            for ws in chosen:
                self.tokens.pop(ws)
                self.dead[ws] = self.last_beat.get(ws, time.time())
        return chosen

    def _publish(self, items: list[dict[str, Any]]) -> None:
        from molecule_registry_client import RegistryError

        while not self._stop.is_set():
            try:
                self.client.heartbeat_batch(items)
                return
            except RegistryError:
                self.publish_errors += 1
                time.sleep(0.2)

    def _heartbeats(self) -> None:
        from molecule_registry_client import heartbeat_payload

        while not self._stop.is_set():
            start = time.monotonic()
            if not self._paused.is_set():
                self._round += 1
                with self._lock:
                    fleet = list(self.tokens.items())
                for i in range(0, len(fleet), BATCH):
                    chunk = fleet[i : i + BATCH]
                    now = time.time()
                    items = [
                        heartbeat_payload(ws, token, uptime_seconds=self._round, sent_at=now)
                        for ws, token in chunk
                    ]
                    self._publish(items)
                    with self._lock:
                        for ws, _ in chunk:
                            if ws in self.tokens:
                                self.acked[ws] = self._round
                                self.last_beat[ws] = now
                        self.heartbeats_acked += len(chunk)
            self._stop.wait(max(0.0, self.options.interval - (time.monotonic() - start)))

    def _registrations(self) -> None:
        from molecule_registry_client import RegistryError

        period = 1.0 / self.options.registrations_per_second
        version = 0
        while not self._stop.is_set():
            self._stop.wait(period)
            if self._paused.is_set():
                continue
            ws = str(uuid.uuid4())
            try:
                token = self.client.register(ws, {"name": "v0"}, delivery_mode="poll")
            except RegistryError:
                continue  # not acknowledged: nothing to check
            with self._lock:
                self.registered[ws] = token
                self.cards[ws] = 0
                self.tokens[ws] = token  # it heartbeats from now on
                self.registrations_acked += 1
                target = random.choice(list(self.registered))
            version += 1
            self.cards_pending[target] = version
            try:
                reply = self.client.update_card(
                    target, {"name": f"v{version}"}, auth_token=self.registered[target]
                )
            except RegistryError:
                continue
            if reply.get("status") == "error":
                continue
            self.cards[target] = version
            self.cards_acked += 1


class FailoverRun:
    """The whole proof: stores, processes, fleet; `scenario()` once per failure."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.dir = options.base_dir / f"molecule-failover-{secrets.token_hex(4)}"
        self.pg = PgPair(self.dir / "pg")
        self.redis = SentinelGroup(self.dir / "redis")
        self.rabbit = (
            RabbitCluster(self.dir / "rabbitmq") if "rabbitmq" in options.failures else None
        )
        self.processes: Processes | None = None
        self.fleet: Fleet | None = None
        self.client: Any = None
        self.started_at = 0.0
        self.last_kill_at = 0.0
        self.scenario_started_at = 0.0
        self._samples: list[tuple[float, float]] = []
        self._saved_env: dict[str, str] | None = None
        self._database_url: str | None = None
        self._monitor_stop = threading.Event()

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(text, flush=True)

    # -- set-up ---------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        o = self.options
        env = {
            **os.environ,
            **self.redis.env(),
            "DATABASE_URL": self.pg.url(),
            "LIVENESS_TTL_SECONDS": str(o.ttl),
            "REMOTE_LIVENESS_STALE_AFTER": str(o.ttl),
            "BACKSTOP_SWEEP_INTERVAL": str(o.backstop_interval),
            "BACKSTOP_GRACE_SECONDS": str(o.backstop_grace),
            "RELAY_EVENTS_INTERVAL": "2",
            "RELAY_GRACE_SECONDS": "3",
            "CELERY_VISIBILITY_TIMEOUT": "20",
            "METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        if self.rabbit is not None:
            env["CELERY_BROKER_URL"] = self.rabbit.url()
            env["BROKER_QUEUE_TYPE"] = "quorum"
        return env

    def __enter__(self) -> FailoverRun:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self) -> None:
        self._saved_env = dict(os.environ)
        self.dir.mkdir(parents=True)
        self.say(f"stores in {self.dir}")
        self.pg.start()
        self.redis.start()
        if self.rabbit is not None:
            self.rabbit.start()
        env = self.env()
        os.environ.update({k: v for k, v in env.items() if k not in ("PYTHONUNBUFFERED",)})
        from registry import migrate
        from registry.config import reload_settings
        from registry.db import reset_redis_clients

        # The stores' own DATABASE_URL gets an engine of its own; only the Redis clients
        # are replaced, so a test process's engine (and what listens on it) stays.
        settings = reload_settings()
        reset_redis_clients()
        self._database_url = settings.database_url
        migrate.upgrade(settings.database_url)
        from bench.common import seed_fleet

        tokens = seed_fleet(self.options.workspaces, analyze=False)
        self.processes = Processes(env, self.dir, self.options.concurrency)
        self.processes.start()
        self.client = self._client(settings)
        self.fleet = Fleet(self.client, tokens, self.options)
        self.started_at = time.time()
        threading.Thread(target=self._monitor, daemon=True).start()
        self.fleet.start()
        self._wait_for_first_round()

    def _client(self, settings: Any) -> Any:
        from molecule_registry_client import RegistryClient
        from registry.redisconn import sentinel_transport_options

        options: dict[str, Any] = {}
        if settings.effective_broker_url.startswith("amqp"):
            options = {"confirm_publish": True}  # publisher confirms: acknowledged = stored
        else:
            options = sentinel_transport_options(settings)
        return RegistryClient(
            settings.effective_broker_url,
            result_backend=settings.effective_result_backend,
            transport_options=options,
            result_transport_options=sentinel_transport_options(settings),
            queue_type="quorum" if self.rabbit is not None else "classic",
            result_timeout=20,
            publish_retries=5,
        )

    def _wait_for_first_round(self) -> None:
        from sqlalchemy import text

        from registry.db import get_engine

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with get_engine().connect() as conn:
                done = conn.execute(
                    text("SELECT count(*) FROM workspaces WHERE uptime_seconds >= 1")
                ).scalar()
            if done >= self.options.workspaces:
                self.say(f"fleet of {done} heartbeating")
                return
            time.sleep(0.5)
        raise RuntimeError("the fleet's first round was not applied within 120 s")

    def _monitor(self) -> None:
        """(when, newest heartbeat applied) every 0.2 s: when heartbeats flow again."""
        from sqlalchemy import text

        from registry.db import get_engine

        while not self._monitor_stop.is_set():
            try:
                with get_engine().connect() as conn:
                    # The newest sent_at applied: a heartbeat sent after an instant X
                    # shows there once one was applied after X.
                    newest = conn.execute(
                        text(
                            "SELECT extract(epoch FROM max(last_heartbeat_sent_at)) FROM workspaces"
                        )
                    ).scalar()
                self._samples.append((time.time(), float(newest or 0)))
            except Exception:  # the database is failing over: try again
                pass
            self._monitor_stop.wait(0.2)

    def close(self) -> None:
        self._monitor_stop.set()
        if self.fleet is not None:
            self.fleet.stop()
        if self.client is not None:
            self.client.close()
        if self.processes is not None:
            self.processes.stop()
        if self.rabbit is not None:
            self.rabbit.discard()  # its data goes with the directory below
        for store in (self.redis, self.pg):
            try:
                store.stop()
            except Exception as exc:  # a killed node: the others still stop
                self.say(f"stopping {type(store).__name__}: {exc}")
        if self._saved_env is not None:  # this process's own settings again (tests)
            os.environ.clear()
            os.environ.update(self._saved_env)
            from registry.config import reload_settings
            from registry.db import dispose_engine, reset_redis_clients

            reload_settings()
            reset_redis_clients()
            if self._database_url is not None:
                dispose_engine(self._database_url)
        # The processes' logs outlive the stores, for a look at what happened.
        logs = self.options.base_dir / "molecule-failover-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        for log in self.dir.glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- failures -------------------------------------------------------------------

    def kill_rabbitmq(self) -> str:
        from molecule_registry_client.names import HEARTBEAT_QUEUE

        assert self.rabbit is not None
        ask = next(n for n in (1, 2, 3) if self._rabbit_up(n))
        leader = self.rabbit.leader_of(HEARTBEAT_QUEUE, ask=ask)
        self.rabbit.kill(leader)
        return f"killed RabbitMQ node {leader}, leader of {HEARTBEAT_QUEUE}"

    def _rabbit_up(self, n: int) -> bool:
        assert self.rabbit is not None
        try:
            os.kill(self.rabbit.pid(n), 0)
            return True
        except (OSError, RuntimeError, ValueError):
            return False

    def kill_redis(self) -> str:
        port = self.redis.kill_primary()
        return f"killed the Redis primary on {port}"

    def kill_postgres(self) -> str:
        self.pg.kill_primary()
        self.pg.promote()
        return f"killed the PostgreSQL primary on {self.pg.primary_port}, promoted the standby"

    def killer(self, failure: str) -> Callable[[], str]:
        return {
            "rabbitmq": self.kill_rabbitmq,
            "redis": self.kill_redis,
            "postgres": self.kill_postgres,
        }[failure]

    def scenario(self, failure: str) -> Outcome:
        assert self.fleet is not None and self.processes is not None
        o = self.options
        self.scenario_started_at = time.time()
        dead = self.fleet.kill_agents(o.dead)
        time.sleep(1.0)
        kill_at = self.last_kill_at = time.time()
        what = self.killer(failure)()
        self.say(f"[{failure}] {what}")
        time.sleep(1.0)
        worker_killed_at = time.time()
        self.processes.kill_worker()
        self.say(f"[{failure}] SIGKILLed the worker, started another")
        failover = self._applied_after(kill_at, timeout=120)
        restarted = self._applied_after(worker_killed_at, timeout=120)
        # Long enough for every dead agent's key to expire and the backstop to run. The
        # outage lasts until heartbeats apply again, replacement worker included.
        outage = max(failover or 0, restarted or 0)
        bound = o.ttl + o.backstop_interval + o.backstop_grace + outage
        deadline = kill_at + bound + 5
        while time.time() < deadline and not self._all_marked(dead):
            time.sleep(1.0)
        self.fleet.pause()
        outcome = self._check(failure, failover, dead, bound)
        outcome.restarted_seconds = restarted
        self.fleet.resume()
        for line in outcome.lines():
            self.say(line)
        return outcome

    def _applied_after(self, instant: float, timeout: float) -> float | None:
        """Seconds from the kill until a heartbeat sent after `instant` was applied."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for when, newest in list(self._samples):
                if newest > instant:
                    return when - self.last_kill_at
            time.sleep(0.2)
        return None

    def _all_marked(self, dead: list[str]) -> bool:
        from sqlalchemy import text

        from registry.db import get_engine

        try:
            with get_engine().connect() as conn:
                n = conn.execute(
                    text(
                        "SELECT count(*) FROM workspaces WHERE id = ANY(CAST(:ids AS uuid[])) "
                        "AND status IN ('offline', 'awaiting_agent')"
                    ),
                    {"ids": dead},
                ).scalar()
        except Exception:
            return False
        return n == len(dead)

    # -- checks ---------------------------------------------------------------------

    def _check(
        self, failure: str, failover: float | None, dead: list[str], bound: float
    ) -> Outcome:
        from sqlalchemy import text

        from registry.db import get_engine

        assert self.fleet is not None
        fleet = self.fleet
        engine = get_engine()
        notes: list[str] = []
        # Everything acknowledged has been applied once the queues drain.
        heartbeats_lost = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with fleet._lock:
                expected = {ws: n for ws, n in fleet.acked.items() if ws in fleet.tokens}
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT id::text, uptime_seconds FROM workspaces "
                        "WHERE id = ANY(CAST(:ids AS uuid[]))"
                    ),
                    {"ids": list(expected)},
                ).all()
            applied = {row[0]: row[1] for row in rows}
            heartbeats_lost = sum(1 for ws, n in expected.items() if applied.get(ws) != n)
            if heartbeats_lost == 0:
                break
            time.sleep(1.0)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT w.id::text, w.agent_card->>'name', "
                    "EXISTS (SELECT 1 FROM workspace_auth_tokens t WHERE t.workspace_id = w.id) "
                    "FROM workspaces w WHERE w.id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": list(fleet.registered)},
            ).all()
        present = {row[0]: (row[1], row[2]) for row in rows}
        registrations_lost = sum(
            1 for ws in fleet.registered if ws not in present or not present[ws][1]
        )
        cards_lost = 0
        for ws, version in fleet.cards.items():
            name = present.get(ws, ("", False))[0]
            allowed = {f"v{version}", f"v{fleet.cards_pending.get(ws, version)}"}
            if name not in allowed and not _newer_pending(name, version):
                cards_lost += 1
                notes.append(f"card of {ws}: acknowledged v{version}, found {name}")
        events_recorded, events_lost = self._events_check(notes)
        with engine.connect() as conn:
            # Live agents: every one whose heartbeat was acknowledged and that did not
            # die (a registration whose answer never came is not an agent we run).
            live = [ws for ws in fleet.acked if ws not in fleet.dead]
            false = conn.execute(
                text(
                    "SELECT count(*) FROM structure_events WHERE event_type IN "
                    "('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT') "
                    "AND workspace_id = ANY(CAST(:live AS uuid[])) "
                    "AND created_at > to_timestamp(:since)"
                ),
                {"live": live, "since": self.scenario_started_at},
            ).scalar()
            marked = conn.execute(
                text(
                    "SELECT workspace_id::text, extract(epoch FROM min(created_at)) "
                    "FROM structure_events WHERE event_type IN "
                    "('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT') "
                    "AND workspace_id = ANY(CAST(:ids AS uuid[])) GROUP BY workspace_id"
                ),
                {"ids": dead},
            ).all()
            if false:
                for row in conn.execute(
                    text(
                        "SELECT workspace_id::text, extract(epoch FROM created_at), "
                        "payload->>'reason' FROM structure_events WHERE event_type IN "
                        "('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT') "
                        "AND workspace_id = ANY(CAST(:live AS uuid[])) "
                        "AND created_at > to_timestamp(:since) ORDER BY created_at LIMIT 5"
                    ),
                    {"live": live, "since": self.scenario_started_at},
                ):
                    notes.append(
                        f"false transition of {row[0]} ({row[2]}) at "
                        f"{float(row[1]) - self.last_kill_at:+.1f} s from the kill; its last "
                        f"heartbeat acknowledged at {fleet.last_beat.get(row[0], 0) - self.last_kill_at:+.1f} s"
                    )
        delays = [float(at) - fleet.dead[ws] for ws, at in marked]
        return Outcome(
            failure=failure,
            failover_seconds=failover,
            heartbeats_acked=fleet.heartbeats_acked,
            heartbeats_lost=heartbeats_lost,
            registrations_acked=fleet.registrations_acked,
            registrations_lost=registrations_lost,
            cards_acked=fleet.cards_acked,
            cards_lost=cards_lost,
            events_recorded=events_recorded,
            events_lost=events_lost,
            false_transitions=int(false or 0),
            dead=len(dead),
            dead_marked=len(marked),
            dead_marked_max_seconds=max(delays) if delays else None,
            dead_bound_seconds=bound,
            notes=notes,
        )

    def _events_check(self, notes: list[str]) -> tuple[int, int]:
        """(recorded, missing from events:stream) once the outbox relay has caught up."""
        from sqlalchemy import text

        from registry.db import get_engine, get_redis
        from registry.events.outbox import EVENT_STREAM

        engine = get_engine()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                waiting = conn.execute(text("SELECT count(*) FROM event_outbox")).scalar()
            if not waiting:
                break
            time.sleep(1.0)
        else:
            notes.append(f"{waiting} event(s) still in the outbox after 60 s")
        with engine.connect() as conn:
            recorded = {row[0] for row in conn.execute(text("SELECT id FROM structure_events"))}
        streamed: set[int] = set()
        last = "-"
        client = get_redis()
        while True:
            entries = client.xrange(EVENT_STREAM, min=last, max="+", count=5000)
            if last != "-" and entries and entries[0][0] == last:
                entries = entries[1:]
            if not entries:
                break
            for entry_id, fields in entries:
                body = json.loads(fields["data"])
                if body.get("event_id") is not None:
                    streamed.add(int(body["event_id"]))
                last = entry_id
        return len(recorded), len(recorded - streamed)


def _newer_pending(name: str | None, version: int) -> bool:
    """A card update sent later than the last acknowledged one, without an answer,
    may have been applied: the acknowledged one is not lost then."""
    if not name or not name.startswith("v") or not name[1:].isdigit():
        return False
    return int(name[1:]) > version


# --------------------------------------------------------------------------- report


def report(options: Options, outcomes: list[Outcome], seconds: float) -> str:
    rows = [
        "| failure (plus a worker SIGKILL) | failover | with the replacement worker | "
        "heartbeats lost | registrations / card updates lost | events lost | false offline "
        "| dead marked (slowest / bound) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        failover = "none" if o.failover_seconds is None else f"{o.failover_seconds:.1f} s"
        restarted = "none" if o.restarted_seconds is None else f"{o.restarted_seconds:.1f} s"
        worst = "-" if o.dead_marked_max_seconds is None else f"{o.dead_marked_max_seconds:.0f} s"
        rows.append(
            f"| {o.failure} | {failover} | {restarted} | {o.heartbeats_lost} of "
            f"{o.heartbeats_acked:,} | "
            f"{o.registrations_lost} of {o.registrations_acked} / {o.cards_lost} of "
            f"{o.cards_acked} | {o.events_lost} of {o.events_recorded} | "
            f"{o.false_transitions} | {o.dead_marked} of {o.dead} ({worst} / "
            f"{o.dead_bound_seconds:.0f} s) |"
        )
    command = (
        f"`.venv/bin/python -m bench.failover --workspaces {options.workspaces} --dead "
        f"{options.dead} --interval {options.interval:g} --ttl {options.ttl} --failures "
        f"{','.join(options.failures)} --write`"
    )
    return "\n".join(
        [
            f"Measured with {command} ({seconds:.0f} s, one run, 2 shared cores): "
            f"{options.workspaces:,} workspaces heartbeating every {options.interval:g} s "
            f"through `registry.heartbeat_batch` ({options.workspaces / options.interval:,.0f} "
            f"heartbeats/s), {options.registrations_per_second:g} registrations and card "
            f"updates/s, {options.dead} agents dying before each failure; LIVENESS_TTL_SECONDS="
            f"{options.ttl}, BACKSTOP_SWEEP_INTERVAL={options.backstop_interval}, "
            f"BACKSTOP_GRACE_SECONDS={options.backstop_grace}; one worker (`-c "
            f"{options.concurrency}`), beat and a liveness listener. The failures run one "
            "after the other on the same stores; each also SIGKILLs the worker a second after "
            "the node and starts another. Failover is from the kill to the first heartbeat sent after "
            "it being applied (sampled every 0.2 s), by the old worker or the new one; the "
            "next column waits for one sent after the worker's SIGKILL. Heartbeats "
            "acknowledged counts every acknowledged heartbeat of the run so far; false "
            "offline counts live agents (their heartbeats acknowledged, not killed) marked "
            f"during the scenario. Load average during the run: {os.getloadavg()[0]:.1f}.",
            "",
            *rows,
        ]
    )


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspaces", type=int, default=5000)
    parser.add_argument("--dead", type=int, default=100)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--ttl", type=int, default=60)
    parser.add_argument("--failures", default=",".join(FAILURES))
    parser.add_argument("--write", action="store_true", help="write docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    failures = tuple(f.strip() for f in args.failures.split(",") if f.strip())
    unknown = set(failures) - set(FAILURES)
    if unknown:
        parser.error(f"unknown failure(s): {', '.join(sorted(unknown))}")
    options = Options(
        workspaces=args.workspaces,
        dead=args.dead,
        interval=args.interval,
        ttl=args.ttl,
        failures=failures,
    )
    options.write = args.write  # type: ignore[attr-defined]
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    start = time.monotonic()
    outcomes: list[Outcome] = []
    with FailoverRun(options) as run:
        for failure in options.failures:
            outcomes.append(run.scenario(failure))
    text = report(options, outcomes, time.monotonic() - start)
    print(text)
    if getattr(options, "write", False):
        write_section(
            PERFORMANCE_MD,
            "bench/failover.py",
            text,
            heading="## Node failures under load — `bench/failover.py`",
        )
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
