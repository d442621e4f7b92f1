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
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.common import (  # noqa: E402
    REDIS_BASE,
    fresh_database,
    reserve_redis_dbs,
    seed_fleet,
    service_env,
    unique_database_name,
)

DATA_DB, BROKER_DB, _LOCK = reserve_redis_dbs()
DB_NAME = unique_database_name("molecule_registry_quick")
os.environ.update(
    service_env(DB_NAME, f"{REDIS_BASE}/{DATA_DB}", f"{REDIS_BASE}/{BROKER_DB}", METRICS_PORT="0")
)

from sqlalchemy import text  # noqa: E402

from registry.db import get_engine, get_redis  # noqa: E402
from registry.ingestion.heartbeats import apply_heartbeats  # noqa: E402
from registry.ingestion.payloads import HeartbeatPayload, parse_payload  # noqa: E402
from registry.uow import unit_of_work  # noqa: E402

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


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


def _purge(broker_url: str) -> None:
    from kombu import Connection

    from molecule_registry_client.names import HEARTBEAT_QUEUE

    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.default_channel
        channel.queue_declare(queue=HEARTBEAT_QUEUE, durable=True, auto_delete=False)
        channel.queue_purge(HEARTBEAT_QUEUE)


def _drain(broker_url: str, worker_args: list[str], name: str, bodies: list[Any]) -> float:
    """Queue `bodies` as `name` messages, then start a worker and time it draining them."""
    from celery import Celery
    from workerproc import managed_process, process_env

    from molecule_registry_client.names import HEARTBEAT_QUEUE

    _purge(broker_url)
    get_redis().delete("quick:first", "quick:done")
    producer = Celery("quick", broker=broker_url)
    producer.conf.broker_write_url = broker_url
    with producer.producer_or_acquire() as prod:
        for body in bodies:
            producer.send_task(name, args=[body], queue=HEARTBEAT_QUEUE, producer=prod)
    producer.close()
    env = process_env(dict(os.environ), CELERY_BROKER_URL=broker_url, QUICK_EXPECT=str(len(bodies)))
    env["PYTHONPATH"] = f"{ROOT / 'bench'}:{ROOT}"
    argv = [*_worker_argv(worker_args)]
    with managed_process(argv, env=env, log_dir=Path("/tmp"), name="quick") as worker:
        worker.wait_for_log(r"QUICK done", timeout=900)
        return float(worker.log().rsplit("QUICK done ", 1)[1].split()[2])


def _worker_argv(worker_args: list[str]) -> list[str]:
    from molecule_registry_client.names import HEARTBEAT_QUEUE

    return [
        sys.executable, "-m", "celery", "-A", "heartbeat_quick_app", "worker",
        "-Q", HEARTBEAT_QUEUE, *worker_args, "-l", "WARNING",
        "--without-mingle", "--without-gossip", "-n", f"quick-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip


def lone_latency(fleet: dict[str, str], broker_url: str, worker_args: list[str]) -> float:
    """Median ms from sending one heartbeat to its row being written, on an idle worker."""
    from celery import Celery
    from workerproc import managed_process, process_env

    from molecule_registry_client.names import HEARTBEAT_QUEUE, HEARTBEAT_TASK

    _purge(broker_url)
    env = process_env(dict(os.environ), CELERY_BROKER_URL=broker_url)
    env["PYTHONPATH"] = f"{ROOT / 'bench'}:{ROOT}"
    producer = Celery("quick", broker=broker_url)
    producer.conf.broker_write_url = broker_url
    ws = next(iter(fleet))
    engine = get_engine()
    latencies = []
    argv = _worker_argv(worker_args)
    with (
        managed_process(argv, env=env, log_dir=Path("/tmp"), ready=None, name="lone"),
        producer.producer_or_acquire() as prod,
    ):
        time.sleep(5)  # the worker starts and goes idle
        for n in range(50):
            marker = 1_000_000 + n
            payload = {"workspace_id": ws, "auth_token": fleet[ws], "uptime_seconds": marker}
            started = time.perf_counter()
            producer.send_task(HEARTBEAT_TASK, args=[payload], queue=HEARTBEAT_QUEUE, producer=prod)
            with engine.connect() as db:
                while (
                    db.execute(
                        text("SELECT uptime_seconds FROM workspaces WHERE id = :id"), {"id": ws}
                    ).scalar_one()
                    != marker
                ):
                    db.rollback()
                    time.sleep(0.0005)
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.1)
    producer.close()
    return statistics.median(latencies)


def end_to_end(
    fleet: dict[str, str], broker: str, count: int, worker_args: list[str], reps: int
) -> dict[str, float]:
    """Through a real worker subprocess with `worker_args` (pool, concurrency, prefetch).

    The no-op and per-message drains alternate `reps` times; the ratio is the median of
    the ratios of each pair (a loaded machine moves both figures of a pair alike).
    """
    from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, HEARTBEAT_TASK

    broker_url = AMQP_URL if broker == "amqp" else os.environ["CELERY_BROKER_URL"]
    raw = payloads(fleet, count)
    noops, messages, ratios = [], [], []
    for _ in range(reps):
        noop = count / _drain(
            broker_url, worker_args, "quick.noop", [{"n": i} for i in range(count)]
        )
        per_message = count / _drain(broker_url, worker_args, HEARTBEAT_TASK, raw)
        noops.append(noop)
        messages.append(per_message)
        ratios.append(per_message / noop)
    batches = [{"heartbeats": raw[i : i + 1000]} for i in range(0, len(raw), 1000)]
    batched = _drain(broker_url, worker_args, HEARTBEAT_BATCH_TASK, batches)
    return {
        "no-op task, messages/s (median)": statistics.median(noops),
        "registry.heartbeat per message, heartbeats/s (median)": statistics.median(messages),
        "per message / no-op (median of pairs)": statistics.median(ratios),
        "registry.heartbeat_batch of 1,000, heartbeats/s": count / batched,
        "lone heartbeat applied, ms (median of 50)": lone_latency(fleet, broker_url, worker_args),
    }


# The heartbeat worker's command line (docs/OPERATIONS.md).
HEARTBEAT_WORKER_ARGS = ["--pool", "prefork", "-c", "2", "--prefetch-multiplier", "200"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--broker", choices=("none", "redis", "amqp", "both"), default="none")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--worker-args",
        default=" ".join(HEARTBEAT_WORKER_ARGS),
        help="pool, concurrency, prefetch of the worker (default: the heartbeat worker's)",
    )
    args = parser.parse_args()
    with fresh_database(DB_NAME):
        fleet = seed_fleet(args.fleet, analyze=False)
        figures = domain(fleet, args.seconds) if args.seconds > 0 else {}
        brokers = {"none": [], "both": ["redis", "amqp"]}.get(args.broker, [args.broker])
        for broker in brokers:
            measured = end_to_end(fleet, broker, args.messages, args.worker_args.split(), args.reps)
            for label, value in measured.items():
                figures[f"{broker}: {label}"] = value
        for label, value in figures.items():
            print(f"{value:12,.2f}  {label}")


if __name__ == "__main__":
    main()
