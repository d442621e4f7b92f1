"""A Celery app with the registry's own settings and one task that does nothing.

bench/throughput.py runs `celery -A bench.noop_app worker` with exactly the worker
command line of the registry's heartbeat worker (pool, concurrency, prefetch), so
the no-op drain rate is Celery's ceiling for that command line on this machine.

Only the first and the last message of a run carry a mark; the task writes the time
it ran them into Redis (two writes per run), so the rate is measured worker side
without adding work to every message.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

app = Celery("molecule_registry_bench_noop")
# The same broker, serializer, acks_late, prefetch and transport options as the
# registry's worker; only the registry's task modules are left out.
app.config_from_object("celeryconfig")
app.conf.imports = ()
app.conf.beat_schedule = {}

NOOP_TASK = "bench.noop"
MARK_KEY = "bench:noop:{mark}"

_marks = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name=NOOP_TASK, ignore_result=True)
def noop(payload: Any) -> None:
    mark = payload.get("bench_mark") if isinstance(payload, dict) else None
    if mark:
        _marks.set(MARK_KEY.format(mark=mark), repr(time.time()))
