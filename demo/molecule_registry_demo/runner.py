"""`molecule-registry demo`: the whole system with a simulated fleet, in one command.

It assumes PostgreSQL and Redis are running (scripts/demo starts them) and checks
them first, one clear line per problem. Then it migrates DATABASE_URL, starts

- a Celery worker with embedded beat, consuming all three queues (prefork pool,
  PROMETHEUS_MULTIPROC_DIR set, Prometheus endpoint on 127.0.0.1),
- the liveness listener (`python -m workers.liveness`),
- a simulated Docker engine in this process (CONTAINER_BACKEND=docker for the worker),
- the fleet board (`molecule-registry board`) in this process, on 127.0.0.1 (port
  8765, or any free one if that is taken); its URL is printed and kept in the header,

and runs a simulated fleet (registry/simulator) that registers and heartbeats
through the real queue with the producer client, while a live summary shows
counts per status, heartbeats per second and status events. It stops after
`--duration` seconds or on Ctrl-C, and then stops every process it started. The
fleet's workspaces stay in the database for inspection (`molecule-registry status`);
the next run removes them first, so a second demo does not start beside a "dead"
fleet that would (rightly) hold self-preservation on.

Timings are shortened, through the documented variables, for the processes the
demo starts (`demo_timings`) so that every status shows within about a minute; the
one exception is hibernation, whose unit is the minute (`hibernation_idle_minutes`,
at least 1): idle agents hibernate about 65 s after they registered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from molecule_registry_client import RegistryClient, RegistryError, safe_url
from molecule_registry_client.names import QUEUE_NAMES
from molecule_registry_demo.dbguard import (
    NotADemoDatabase,
    check_demo_database,
    mark_as_demo_database,
)
from molecule_registry_demo.simulator import DEFAULT_MIX, Behaviour, Fleet, Timings, allocate
from molecule_registry_demo.simulator.fake_engine import FakeDockerEngine
from molecule_registry_demo.simulator.fleet import DatabaseOperator, retire_earlier_fleets
from molecule_registry_demo.simulator.processes import Supervisor, celery_argv
from molecule_registry_demo.simulator.summary import (
    LiveSummary,
    clock,
    format_event,
    render_board,
    render_line,
    render_reached,
)
from registry.config import Settings, get_settings

log = logging.getLogger(__name__)


def demo_timings(heartbeat_interval: float) -> dict[str, str]:
    """Short timings for the processes the demo starts (each a documented variable).

    Liveness windows scale with the agents' heartbeat interval (a TTL of four
    intervals, as 180 s is to the platform's 30 s heartbeats with margin), so a
    bigger fleet can heartbeat less often without everything expiring.
    """
    return {
        "LIVENESS_TTL_SECONDS": str(max(8, math.ceil(4 * heartbeat_interval))),
        "REMOTE_LIVENESS_STALE_AFTER": str(max(6, math.ceil(3 * heartbeat_interval))),
        "PROVISION_TIMEOUT_SECONDS": "10",
        "BACKSTOP_SWEEP_INTERVAL": "3",
        "BACKSTOP_GRACE_SECONDS": str(max(4, math.ceil(2 * heartbeat_interval))),
        "HEALTH_SWEEP_INTERVAL": "2",
        "PROVISION_SWEEP_INTERVAL": "3",
        "HIBERNATION_SWEEP_INTERVAL": "3",
        "ORPHAN_SWEEP_INTERVAL": "30",
        "RELAY_EVENTS_INTERVAL": "5",
    }


HIBERNATION_IDLE_MINUTES = 1  # the smallest the contract allows
HIBERNATION_SHOWS_AFTER = 60 * HIBERNATION_IDLE_MINUTES + 6
WORKER_START_TIMEOUT = 90.0
LINE_EVERY_SECONDS = 5.0
BOARD_PORT = 8765  # the `molecule-registry board` default; any free port if taken

Out = Callable[[str], None]


class DemoError(Exception):
    """The demo cannot run; the message is one line saying why."""


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM) before the fleet was running: skip straight to clean-up."""


@dataclass
class DemoOptions:
    fleet: int = 40
    duration: float = 0.0  # 0: until Ctrl-C
    mix: dict[Behaviour, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    heartbeat_interval: float = 2.0
    log_dir: Path = Path(".demo")
    metrics_port: int = 0  # 0: any free port
    concurrency: int = 2
    summary_json: Path | None = None
    seed: int | None = None
    # Run even against a database not recognised as a demo database (dbguard.py).
    allow_any_database: bool = False
    # How the agents reach the registry: "broker" (Celery messages, the client) or
    # "http" (the original platform's HTTP calls, through `molecule-registry gateway`).
    via: str = "broker"


def check_services(settings: Settings) -> None:
    """One line per unreachable service, naming its URL (password hidden)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    # The server, not the database: `migrate` creates the database when it is missing.
    url = make_url(settings.database_url)
    admin = create_engine(url.set(database="postgres"), connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise DemoError(
            f"cannot reach PostgreSQL at {url.render_as_string(hide_password=True)}: {reason}"
        ) from None
    finally:
        admin.dispose()
    _check_redis("Redis", settings.redis_url)
    broker = settings.effective_broker_url
    if broker.startswith(("redis://", "rediss://")):
        _check_redis("the broker", broker)
    else:
        _check_amqp(broker)
    backend = settings.effective_result_backend
    if backend.startswith(("redis://", "rediss://")):
        _check_redis("the result backend", backend)


def _check_redis(what: str, url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise DemoError(f"cannot reach {what} at {safe_url(url)}: {exc}") from None


def _check_amqp(url: str) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        raise DemoError(f"cannot reach the broker at {safe_url(url)}: {exc}") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_environment(
    timings: dict[str, str], *, engine_url: str, metrics_port: int, multiproc_dir: Path
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(timings)
    env.update(
        CONTAINER_BACKEND="docker",
        DOCKER_HOST=engine_url,
        METRICS_PORT=str(metrics_port),
        METRICS_ADDR="127.0.0.1",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


def worker_argv(log_dir: Path, node: str, concurrency: int, *, verbose: bool) -> list[str]:
    return celery_argv(
        "worker",
        "--beat",
        "--schedule",
        str(log_dir / "celerybeat-schedule"),
        "-Q",
        ",".join(QUEUE_NAMES),
        "-c",
        str(concurrency),
        "-n",
        node,
        "-l",
        "INFO" if verbose else "WARNING",
        # Nothing to synchronise with: start consuming at once.
        "--without-mingle",
        "--without-gossip",
    )


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous: dict[int, Any] = {}
    try:
        for signum in handled:
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    except ValueError:  # not the main thread: the caller stops us some other way
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_for_worker(
    broker_url: str, node: str, supervisor: Supervisor, stop: threading.Event
) -> None:
    from celery import Celery

    app = Celery("demo-ping", broker=broker_url, set_as_current=False)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not stop.is_set():
            if (dead := supervisor.first_exited()) is not None:
                raise DemoError(_died(dead))
            if app.control.ping(destination=[node], timeout=1.0):
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the worker did not answer a ping within {WORKER_START_TIMEOUT:.0f} s; "
                    f"see {supervisor.log_dir / 'worker.log'}"
                )
    finally:
        app.close()


def _died(child: Any) -> str:
    tail = child.log_tail()
    return (
        f"the {child.name} process exited (code {child.exited()}); its log "
        f"{child.log_path}:\n{tail}"
    )


def run_demo(options: DemoOptions, out: Out = print) -> int:
    """Run the demo; returns the exit code. Raises DemoError when it cannot start."""
    return Demo(options, out).run()


class Demo:
    """One run: check, migrate, start the processes, run the fleet, clean up."""

    def __init__(self, options: DemoOptions, out: Out) -> None:
        if options.fleet < 1:
            raise DemoError("--fleet must be at least 1")
        self.options = options
        self.out = out
        self.settings = get_settings()
        self.counts = allocate(options.fleet, options.mix)
        self.timings = demo_timings(options.heartbeat_interval)
        self.log_dir = options.log_dir.resolve()
        self.metrics_port = options.metrics_port or _free_port()
        self.node = f"demo-{os.getpid()}@{socket.gethostname()}"
        self.stop = threading.Event()
        self.supervisor = Supervisor(self.log_dir)
        self.gateway_url = ""
        self.client: RegistryClient | None = None
        self.fleet: Fleet | None = None
        self.board: Any = None
        self.result: dict[str, Any] = {"log_dir": str(self.log_dir)}

    def run(self) -> int:
        check_services(self.settings)
        # Before anything is written: never the demo's fake timings on a real registry.
        try:
            creates = check_demo_database(
                self.settings.database_url, allow_any=self.options.allow_any_database
            )
        except NotADemoDatabase as exc:
            raise DemoError(str(exc)) from None
        self._migrate()
        if creates:
            mark_as_demo_database(self.settings.database_url)
        retired = retire_earlier_fleets(_engine(self.settings))
        if retired:
            self.out(f"removed {retired} simulated workspace(s) left by earlier demo runs")
        self._serve_board()
        multiproc_dir = self.log_dir / "prometheus"
        shutil.rmtree(multiproc_dir, ignore_errors=True)
        multiproc_dir.mkdir(parents=True)
        # Bound now, served once the children are spawned; a long demo records no requests.
        engine = FakeDockerEngine(simulate_workspaces=True, record_requests=False)
        exit_code = 0
        try:
            with _stop_on_signals(self.stop):
                env = child_environment(
                    self.timings,
                    engine_url=engine.base_url,
                    metrics_port=self.metrics_port,
                    multiproc_dir=multiproc_dir,
                )
                self._start_processes(env)
                engine.start()
                _wait_for_worker(
                    self.settings.effective_broker_url, self.node, self.supervisor, self.stop
                )
                if self.stop.is_set():
                    raise _Interrupted
                exit_code = self._run_fleet(engine)
        except _Interrupted:
            self.out("interrupted")
            exit_code = 130
        except RegistryError as exc:
            raise DemoError(f"the simulated fleet could not start: {exc}") from None
        finally:
            self._clean_up(engine)
        return exit_code

    def _migrate(self) -> None:
        from registry import migrate

        # Alembic announces each revision it applies: the progress of a long migration.
        logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
        self.out(f"migrating {safe_url(self.settings.database_url)} …")
        migrate.upgrade(self.settings.database_url)

    def _serve_board(self) -> None:
        """The fleet board beside the terminal summary: the fleet in a browser too."""
        from gateway.board_serve import BoardServer

        engine, client = _engine(self.settings), _redis(self.settings)
        try:
            board = BoardServer("127.0.0.1", BOARD_PORT, engine, client)
        except OSError:
            board = BoardServer("127.0.0.1", 0, engine, client)
        board.start()
        self.board = board
        self.result["board_url"] = board.url
        self.out(f"fleet board: {board.url}")

    def _start_processes(self, env: dict[str, str]) -> None:
        verbose = self.options.fleet <= 200  # per-task log lines cost throughput in big fleets
        argv = worker_argv(self.log_dir, self.node, self.options.concurrency, verbose=verbose)
        worker = self.supervisor.start("worker", argv, env)
        listener = self.supervisor.start(
            "liveness", [sys.executable, "-m", "workers.liveness"], env
        )
        if self.options.via == "http":
            self._start_gateway(env)
        self.result["processes"] = {c.name: c.pgid for c in self.supervisor.children}
        self.result["metrics_url"] = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.out(
            f"started worker+beat (pid {worker.pgid}) and liveness listener (pid {listener.pgid}); "
            f"logs in {self.log_dir}"
        )
        self.out(f"metrics: {self.result['metrics_url']}")
        self.out("waiting for the worker …")

    def _start_gateway(self, env: dict[str, str]) -> None:
        """The gateway the agents call with `--via http`; every agent calls from this
        machine's address, so its per-address rate limit is lifted for the demo."""
        port = _free_port()
        command = str(Path(sys.executable).parent / "molecule-registry")
        argv = [command, "gateway", "--port", str(port), "--log-level", "warning"]
        gateway = self.supervisor.start("gateway", argv, {**env, "RATE_LIMIT": str(10**9)})
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.result["gateway_url"] = self.gateway_url
        self.out(f"started the gateway (pid {gateway.pgid}): {self.gateway_url}")

    def _wait_for_gateway(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stop.is_set():
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", int(self.gateway_url.rsplit(":", 1)[1]))) == 0:
                    return
            time.sleep(0.1)
        raise DemoError(f"the gateway did not start; see its log in {self.log_dir}")

    def _run_fleet(self, engine: FakeDockerEngine) -> int:
        options = self.options
        client = RegistryClient(
            self.settings.effective_broker_url,
            result_backend=self.settings.effective_result_backend,
        )
        if options.via == "http":
            from molecule_registry_demo.simulator.http_client import HttpRegistryClient

            self._wait_for_gateway()
            client = HttpRegistryClient(self.gateway_url, client)  # type: ignore[assignment]
        self.client = client
        timings = Timings(
            heartbeat_interval=options.heartbeat_interval,
            liveness_ttl=float(self.timings["LIVENESS_TTL_SECONDS"]),
            remote_stale_after=float(self.timings["REMOTE_LIVENESS_STALE_AFTER"]),
            hibernation_idle_minutes=HIBERNATION_IDLE_MINUTES,
            provision_timeout=float(self.timings["PROVISION_TIMEOUT_SECONDS"]),
        )
        fleet = Fleet(
            self.client,
            self.counts,
            timings=timings,
            containers=engine,
            operator=DatabaseOperator(_engine(self.settings)),
            seed=options.seed,
        )
        self.fleet = fleet
        _announce(self.out, options, self.counts, self.timings, fleet.run_tag)
        summary = LiveSummary(
            _engine(self.settings),
            _redis(self.settings),
            behaviour_of=fleet.behaviour_of,
            name_of=fleet.name_of,
            stats=fleet.stats,
        )
        fleet.start(progress=_progress(self.out, options.fleet, self.stop))
        exit_code = _watch(
            self.out,
            options,
            summary,
            self.supervisor,
            self.stop,
            board_url=self.result.get("board_url"),
        )
        fleet.stop()
        self._report(summary, fleet)
        return exit_code

    def _report(self, summary: LiveSummary, fleet: Fleet) -> None:
        reached = summary.reached()
        table, missing = render_reached(reached)
        self.out("")
        self.out(f"summary after {clock(summary.elapsed)}:")
        self.out(table)
        if missing:
            self.out(f"not shown: {', '.join(missing)}" + _why_missing(missing, self.options))
        self.result.update(
            fleet=self.options.fleet,
            run_tag=fleet.run_tag,
            counts=summary.counts(),
            heartbeats_sent=fleet.stats.heartbeats,
            send_errors=fleet.stats.errors,
            missing=missing,
            behaviours={
                b.value: {
                    "agents": entry["agents"],
                    "reached": sorted(entry["reached"]),
                    "now": entry["now"],
                }
                for b, entry in reached.items()
                if entry["agents"]
            },
        )

    def _clean_up(self, engine: FakeDockerEngine) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.client is not None:
            self.client.close()
        if self.supervisor.children:
            self.out("stopping the worker and the liveness listener …")
        killed = self.supervisor.stop_all()
        self.result["killed"] = killed
        engine.close()
        if self.board is not None:
            self.board.stop()
        if self.options.summary_json is not None:
            self.options.summary_json.write_text(json.dumps(self.result, indent=2, sort_keys=True))
        if killed:
            self.out(f"had to kill: {', '.join(killed)}")
        self.out("all processes stopped")


def _engine(settings: Settings) -> Any:
    from registry.db import get_engine

    return get_engine(settings.database_url)


def _redis(settings: Settings) -> Any:
    from registry.db import get_redis

    return get_redis(settings.redis_url)


def _announce(
    out: Out,
    options: DemoOptions,
    counts: dict[Behaviour, int],
    timings: dict[str, str],
    tag: str,
) -> None:
    mix = ", ".join(f"{b.value}={n}" for b, n in counts.items() if n)
    out(
        f"fleet {tag}: {options.fleet} agents ({mix}); heartbeat every {options.heartbeat_interval:g} s"
    )
    out("timings: " + " ".join(f"{k}={v}" for k, v in timings.items()))
    if counts.get(Behaviour.IDLE):
        note = f"idle agents hibernate after about {HIBERNATION_SHOWS_AFTER} s"
        if options.duration and options.duration < HIBERNATION_SHOWS_AFTER + 4:
            note += f" (longer than --duration {options.duration:g})"
        out(f"note: {note} (hibernation_idle_minutes={HIBERNATION_IDLE_MINUTES})")


def _progress(out: Out, total: int, stop: threading.Event) -> Callable[[int, int], None]:
    step = max(1, total // 20)
    tty = sys.stdout.isatty()

    def report(done: int, of: int) -> None:
        if stop.is_set():
            raise _Interrupted  # Fleet.start cancels the agents not yet set up
        if tty:
            end = "\n" if done == of else ""
            sys.stdout.write(f"\rstarting agents: {done}/{of}{end}")
            sys.stdout.flush()
        elif done == of or done % step == 0:
            out(f"starting agents: {done}/{of}")

    return report


def _watch(
    out: Out,
    options: DemoOptions,
    summary: LiveSummary,
    supervisor: Supervisor,
    stop: threading.Event,
    *,
    board_url: str | None = None,
) -> int:
    """Show the live summary until the duration ends, Ctrl-C, or a child dies."""
    tty = sys.stdout.isatty()
    ends_at = time.monotonic() + options.duration if options.duration else None
    last_line = 0.0
    header_end = (
        "Ctrl-C to stop" if not ends_at else f"runs {options.duration:g} s (Ctrl-C to stop)"
    )
    while not stop.wait(1.0):
        if (dead := supervisor.first_exited()) is not None:
            out(_died(dead))
            return 1
        snapshot = summary.refresh()
        if tty:
            header = (
                f"molecule-registry demo — {options.fleet} agents — {clock(snapshot.elapsed)} — "
                f"{header_end}" + (f"\nfleet board: {board_url}" if board_url else "")
            )
            sys.stdout.write(
                "\x1b[H\x1b[2J" + render_board(snapshot, summary.recent, header) + "\n"
            )
            sys.stdout.flush()
        else:
            for event in snapshot.new_events:
                out(f"  {format_event(event)}")
            if snapshot.elapsed - last_line >= LINE_EVERY_SECONDS:
                out(render_line(snapshot))
                last_line = snapshot.elapsed
        if ends_at is not None and time.monotonic() >= ends_at:
            break
    return 0


def _why_missing(missing: list[str], options: DemoOptions) -> str:
    if (
        Behaviour.IDLE.value in missing
        and options.duration
        and options.duration < HIBERNATION_SHOWS_AFTER + 4
    ):
        return f" (hibernation needs a run of at least {HIBERNATION_SHOWS_AFTER + 4} s)"
    return f" (see the logs in {options.log_dir})"
