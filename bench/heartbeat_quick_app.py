"""The registry's Celery app plus a no-op task, for bench/heartbeat_quick.py's worker.

Each worker is told how many messages to expect (QUICK_EXPECT); it prints how long
they took from the first task's start to the last task's end. The count lives in
Redis (one INCR per task, for every task kind alike) so prefork children add up.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from registry.db import get_redis
from workers.app import app

NOOP_TASK = "quick.noop"
_lock = threading.Lock()  # one Redis connection for the count, whatever the concurrency


@app.task(name=NOOP_TASK, ignore_result=True)
def noop(payload: Any) -> dict[str, Any]:
    return {"status": "ok"}


@task_prerun.connect
def _started(**_: Any) -> None:
    with _lock:
        get_redis().set("quick:first", repr(time.time()), nx=True)


@task_postrun.connect
def _finished(**_: Any) -> None:
    client = get_redis()
    with _lock:
        # A per-message heartbeat is applied outside the pool and sends no task_prerun
        # (workers/heartbeat_intake.py): its drain is timed from the first one finished.
        client.set("quick:first", repr(time.time()), nx=True)
        done = client.incr("quick:done")
    if done == int(os.environ.get("QUICK_EXPECT", "0")):
        elapsed = time.time() - float(client.get("quick:first"))
        print(f"QUICK done {os.environ['QUICK_EXPECT']} in {elapsed:.4f} s", flush=True)
