"""Quick local measurement of the heartbeat path (not the official benchmark).

Domain level, in one run on one fleet: `apply_heartbeats` (validation, one transaction,
one Redis pipeline) in batches of 1, 100 and 1,000, against a raw set-based
`UPDATE ... FROM unnest(...)` of the same rows in batches of 1,000. With `--broker`,
also end to end through a real worker subprocess: a no-op task, per-message
`registry.heartbeat` and `registry.heartbeat_batch` (1,000 per message), with the
heartbeat worker command line of docs/OPERATIONS.md, plus the latency of a lone
heartbeat on the idle worker.

Run: `.venv/bin/python bench/heartbeat_quick.py [--fleet 2000] [--seconds 5]
[--broker redis|amqp|both]` (a database and Redis databases of its own, dropped after).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import REDIS_BASE, _reserve_redis_dbs  # noqa: E402

DATA_DB, BROKER_DB, _LOCK = _reserve_redis_dbs()
DB_NAME = f"molecule_registry_quick_{secrets.token_hex(4)}"
ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
os.environ.update(
    DATABASE_URL=ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}",
    REDIS_URL=f"{REDIS_BASE}/{DATA_DB}",
    CELERY_BROKER_URL=f"{REDIS_BASE}/{BROKER_DB}",
    CELERY_RESULT_BACKEND=f"{REDIS_BASE}/{BROKER_DB}",
    METRICS_PORT="0",
)

from sqlalchemy import create_engine, text  # noqa: E402

from registry import migrate  # noqa: E402
from registry.db import get_engine, reset_connections  # noqa: E402
from registry.ingestion.heartbeats import apply_heartbeats  # noqa: E402
from registry.ingestion.payloads import HeartbeatPayload, parse_payload  # noqa: E402
from registry.ingestion.tokens import hash_token  # noqa: E402
from registry.uow import unit_of_work  # noqa: E402

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def setup_fleet(size: int) -> dict[str, str]:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    migrate.upgrade(os.environ["DATABASE_URL"])
    fleet = {str(uuid.uuid4()): secrets.token_urlsafe(32) for _ in range(size)}
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, registered_at, last_heartbeat_at) "
                "SELECT id, id::text, 'online', now(), now() FROM unnest(CAST(:ids AS uuid[])) id"
            ),
            {"ids": list(fleet)},
        )
        conn.execute(
            text(
                "INSERT INTO workspace_auth_tokens (workspace_id, token_hash, prefix, last_used_at) "
                "SELECT ws, h, left(h, 8), now() "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:hashes AS text[])) AS t(ws, h)"
            ),
            {"ids": list(fleet), "hashes": [hash_token(t) for t in fleet.values()]},
        )
    return fleet


def drop_database() -> None:
    reset_connections()
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
    admin.dispose()


def payloads(fleet: dict[str, str], count: int) -> list[dict[str, Any]]:
    ids = list(fleet)
    now = time.time()
    return [
        {
            "workspace_id": ids[i % len(ids)],
            "auth_token": fleet[ids[i % len(ids)]],
            "active_tasks": i % 3,
            "uptime_seconds": i,
            "current_task": "task" if i % 3 else None,
            "sent_at": now + i * 1e-6,
        }
        for i in range(count)
    ]


def rate(seconds: float, work: Any) -> float:
    """Run `work()` (which returns how many heartbeats it handled) for `seconds`."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    return done / (time.perf_counter() - started)


def domain(fleet: dict[str, str], seconds: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    for size in (1, 100, 1000):
        raw = payloads(fleet, size)

        def one_batch(raw: list[dict[str, Any]] = raw) -> int:
            batch = [parse_payload(HeartbeatPayload, r) for r in raw]
            with unit_of_work() as uow:
                apply_heartbeats(uow, batch)
            return len(batch)

        figures[f"apply_heartbeats, batches of {size}"] = rate(seconds, one_batch)
    ids = sorted(fleet)[:1000]
    raw_update = text(
        "UPDATE workspaces w SET last_heartbeat_at = now(), updated_at = now(), "
        "active_tasks = v.a, uptime_seconds = v.u, current_task = v.c "
        "FROM unnest(CAST(:ids AS uuid[]), CAST(:a AS int[]), CAST(:u AS int[]), "
        "CAST(:c AS text[])) AS v(id, a, u, c) WHERE w.id = v.id"
    )

    def raw_batch() -> int:
        with get_engine().begin() as conn:
            conn.execute(
                raw_update,
                {"ids": ids, "a": [1] * len(ids), "u": [2] * len(ids), "c": ["t"] * len(ids)},
            )
        return len(ids)

    figures["raw UPDATE ... FROM unnest, 1,000 rows per transaction"] = rate(seconds, raw_batch)
    return figures


def end_to_end(fleet: dict[str, str], broker: str, count: int) -> dict[str, float]:
    """Through a real worker subprocess, with the heartbeat worker's command line."""
    from celery import Celery
    from workerproc import managed_process, process_env

    from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, HEARTBEAT_QUEUE, HEARTBEAT_TASK

    broker_url = AMQP_URL if broker == "amqp" else os.environ["CELERY_BROKER_URL"]
    env = process_env(dict(os.environ), CELERY_BROKER_URL=broker_url)
    argv = [
        sys.executable,
        str(ROOT / "bench" / "heartbeat_quick_worker.py"),
        "worker",
        *HEARTBEAT_WORKER_ARGS,
        "-Q",
        HEARTBEAT_QUEUE,
        "-l",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"quick-{uuid.uuid4().hex[:6]}@%h",
    ]
    producer = Celery("quick", broker=broker_url)
    producer.conf.broker_write_url = broker_url
    figures: dict[str, float] = {}
    engine = get_engine()

    def applied() -> int:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT coalesce(sum(uptime_seconds), 0) FROM workspaces")
            ).scalar_one()

    with managed_process(
        argv, env=env, log_dir=Path("/tmp"), ready=r"ready\.", name="quick"
    ) as worker:
        with producer.connection_for_write() as conn, producer.producer_or_acquire(conn) as prod:

            def send(name: str, payload: Any) -> None:
                producer.send_task(name, args=[payload], queue=HEARTBEAT_QUEUE, producer=prod)

            # Lone-heartbeat latency on the idle worker: sent -> row written.
            ws = next(iter(fleet))
            latencies = []
            for n in range(50):
                marker = 10_000_000 + n
                started = time.perf_counter()
                send(
                    HEARTBEAT_TASK,
                    {"workspace_id": ws, "auth_token": fleet[ws], "uptime_seconds": marker},
                )
                while True:
                    with engine.connect() as c:
                        got = c.execute(
                            text("SELECT uptime_seconds FROM workspaces WHERE id = :id"), {"id": ws}
                        ).scalar_one()
                    if got == marker:
                        break
                    time.sleep(0.001)
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.05)
            figures["lone heartbeat applied, ms (median of 50)"] = statistics.median(latencies)

            for label, name, per_message in (
                ("no-op task (registry.heartbeat_probe-like), messages/s", "quick.noop", 1),
                ("registry.heartbeat per message, heartbeats/s", HEARTBEAT_TASK, 1),
                ("registry.heartbeat_batch of 1,000, heartbeats/s", HEARTBEAT_BATCH_TASK, 1000),
            ):
                with engine.begin() as c:
                    c.execute(
                        text(
                            "UPDATE workspaces SET uptime_seconds = 0, last_heartbeat_sent_at = NULL"
                        )
                    )
                messages = max(1, count // per_message)
                raw = payloads(fleet, messages * per_message)
                for item in raw:
                    item["uptime_seconds"] = 1
                    item.pop("sent_at")
                bodies = (
                    [raw[i * per_message : (i + 1) * per_message] for i in range(messages)]
                    if per_message > 1
                    else raw
                )
                # Queue everything first, then time the drain (the worker consumes as we go).
                started = time.perf_counter()
                for body in bodies:
                    send(name, {"heartbeats": body} if per_message > 1 else body)
                if name == "quick.noop":
                    worker.wait_for_log(r"noop done", count=1, timeout=600)
                    elapsed = float(worker.log().rsplit("noop done in ", 1)[1].split()[0])
                    figures[label] = messages / elapsed
                    continue
                target = messages * per_message
                while applied() < min(target, len(fleet)) * 1 and applied() < target:
                    time.sleep(0.02)
                    if time.perf_counter() - started > 600:
                        break
                figures[label] = target / (time.perf_counter() - started)
    producer.close()
    return figures


# The heartbeat worker's command line (docs/OPERATIONS.md).
HEARTBEAT_WORKER_ARGS = ["--pool", "threads", "-c", "64", "--prefetch-multiplier", "8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--broker", choices=("none", "redis", "amqp", "both"), default="none")
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    try:
        fleet = setup_fleet(args.fleet)
        figures = domain(fleet, args.seconds)
        brokers = {"none": [], "both": ["redis", "amqp"]}.get(args.broker, [args.broker])
        for broker in brokers:
            for label, value in end_to_end(fleet, broker, args.messages).items():
                figures[f"{broker}: {label}"] = value
        for label, value in figures.items():
            print(f"{value:12,.1f}  {label}")
    finally:
        drop_database()


if __name__ == "__main__":
    main()
