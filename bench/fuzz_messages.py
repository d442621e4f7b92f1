"""The long message-level fuzzing campaign: whole generated messages against a real worker.

Generates messages with the strategies of tests/message_fuzzing.py (bodies, headers,
content types, raw Redis list entries), publishes them to a worker process of its own
on each broker (a private redis-server; a private RabbitMQ vhost), waits until every
queue drained, and counts from the worker's log how each ended: refused at intake (by
reason), answered by its task (by status), or applied. The property: the worker never
exits, every queue drains, and a valid heartbeat sent last still applies.

Run: `.venv/bin/python bench/fuzz_messages.py [--messages 5000] [--write-docs]`
(`--write-docs` puts the figures into docs/SECURITY.md between its markers). Needs
PostgreSQL, redis-server and RabbitMQ on this machine; makes and drops a database.
Exit status 1 when the worker exited or a queue did not drain.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from common import fresh_database, unique_database_name, write_section  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from liveness_helpers import PrivateRedis, private_rabbitmq_vhost  # noqa: E402
from message_fuzzing import message, publish, push_raw, queues_drained, raw_redis_entry  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from workerproc import WORKER_READY, celery_worker_argv, managed_process  # noqa: E402

from molecule_registry_client import celery_message  # noqa: E402
from molecule_registry_client.names import HEARTBEAT_QUEUE, HEARTBEAT_TASK  # noqa: E402

REFUSED = re.compile(r"message refused \((\w+)\)")
# A bug caught by the guard names its exception type (never the message).
UNEXPECTED = re.compile(r"message refused \(unexpected_error\): (\w+)")
ANSWERED = re.compile(r"succeeded in [0-9.e-]+s: \{'status': '(\w+)'")
HEARTBEAT_REFUSED = re.compile(r"heartbeat (rejected|unauthorized) \(workspace_id")


def generate(count: int, strategy: st.SearchStrategy[Any]) -> list[Any]:
    """`count` examples of `strategy`, drawn the way the property tests draw them."""
    drawn: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn[:count]


def run_broker(name: str, broker_url: str, env: dict[str, str], count: int, logs: Path) -> dict:
    messages = generate(count, message())
    raw = generate(max(1, count // 10), raw_redis_entry()) if name == "redis" else []
    engine = create_engine(env["DATABASE_URL"])
    proof = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO workspaces (id, name, status) VALUES (:id, :id, 'online')"),
            {"id": proof},
        )
    started = time.monotonic()
    with managed_process(
        celery_worker_argv(), env={**env, "CELERY_BROKER_URL": broker_url}, ready=WORKER_READY,
        log_dir=logs, name=f"fuzz-{name}", timeout=60,
    ) as worker:  # fmt: skip
        sent = sum(publish(broker_url, item) for item in messages)
        if raw:
            push_raw(broker_url, raw)
        body, headers, _ = celery_message(
            HEARTBEAT_TASK, {"workspace_id": proof, "active_tasks": 42}, origin="fuzz"
        )
        publish(broker_url, {"queue": HEARTBEAT_QUEUE, "body": body, "headers": headers})
        deadline = time.monotonic() + 600
        applied = drained = False
        while time.monotonic() < deadline and worker.alive:
            with engine.connect() as conn:
                applied = conn.execute(
                    text("SELECT active_tasks = 42 FROM workspaces WHERE id = :id"), {"id": proof}
                ).scalar()
            drained = bool(applied) and queues_drained(broker_url)
            if drained:
                break
            time.sleep(0.5)
        alive, log = worker.alive, worker.log()
    engine.dispose()
    return {
        "broker": name,
        "generated": len(messages) + len(raw),
        "published": sent + len(raw),
        "seconds": time.monotonic() - started,
        "alive": alive,
        "drained": drained,
        "proof_applied": bool(applied),
        "unrecoverable": log.count("Unrecoverable error"),
        "refused": Counter(REFUSED.findall(log)),
        "answered": Counter(ANSWERED.findall(log)),
        "heartbeat_refused": len(HEARTBEAT_REFUSED.findall(log)),
        "unexpected": Counter(UNEXPECTED.findall(log)),
    }


def render(results: list[dict], command: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} by `{command}` (a worker process of its own per broker, prefork "
        "`-c 2`, all registry queues).",
        "",
        "| broker | messages generated | published | worker exits | queues drained | "
        "valid heartbeat after them applied | seconds |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        exits = 0 if r["alive"] else 1
        lines.append(
            f"| {r['broker']} | {r['generated']:,} | {r['published']:,} | {exits} "
            f'("Unrecoverable error" lines: {r["unrecoverable"]}) | '
            f"{'yes' if r['drained'] else 'NO'} | {'yes' if r['proof_applied'] else 'NO'} | "
            f"{r['seconds']:.0f} |"
        )
    lines += ["", "How they ended, from the worker's log:", ""]
    for r in results:
        refused = ", ".join(f"`{k}` {v:,}" for k, v in r["refused"].most_common()) or "none"
        answered = ", ".join(f"`{k}` {v:,}" for k, v in r["answered"].most_common()) or "none"
        lines.append(
            f"- {r['broker']}: refused at intake — {refused}; answered by their task — "
            f"{answered}; heartbeats refused by validation or auth (logged): "
            f"{r['heartbeat_refused']:,}."
            + (
                " Caught by the guard as `unexpected_error` (a bug, the worker kept going): "
                + ", ".join(f"{k} {v}" for k, v in r["unexpected"].items())
                + "."
                if r["unexpected"]
                else ""
            )
        )
    lines.append(
        "\n(Messages a producer library could not encode — an AMQP header integer past 64 "
        "bits — never reach a worker and are not counted as published.)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000, help="generated per broker")
    parser.add_argument("--brokers", default="redis,amqp")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    results: list[dict] = []
    with (
        fresh_database(unique_database_name("molecule_registry_fuzz")) as database_url,
        tempfile.TemporaryDirectory() as tmp,
        PrivateRedis(Path(tmp)) as server,
    ):
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": server.url(0),
            "CELERY_RESULT_BACKEND": server.url(0),
            "METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        for name in args.brokers.split(","):
            if name == "redis":
                results.append(run_broker("redis", server.url(1), env, args.messages, Path(tmp)))
            else:
                with private_rabbitmq_vhost() as url:
                    results.append(run_broker("rabbitmq", url, env, args.messages, Path(tmp)))
            print(results[-1], flush=True)
    figures = render(results, " ".join(["bench/fuzz_messages.py", *sys.argv[1:]]))
    print(figures)
    if args.write_docs:
        path = ROOT / "docs" / "SECURITY.md"
        write_section(
            path, "bench/fuzz_messages.py", figures, heading="## Message fuzzing campaign"
        )
    ok = all(r["alive"] and r["drained"] and r["proof_applied"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
