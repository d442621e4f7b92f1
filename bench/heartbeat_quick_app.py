"""The registry's Celery app plus a no-op task, for bench/heartbeat_quick.py's worker.

Each worker is told how many messages to expect (QUICK_EXPECT); it prints how long
they took from the first task's start to the last task's end.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from workers.app import app

NOOP_TASK = "quick.noop"
_lock = threading.Lock()
_state: dict[str, Any] = {"first": None, "count": 0}


@app.task(name=NOOP_TASK, ignore_result=True)
def noop(payload: Any) -> dict[str, Any]:
    return {"status": "ok"}


@task_prerun.connect
def _started(**_: Any) -> None:
    with _lock:
        if _state["first"] is None:
            _state["first"] = time.perf_counter()


@task_postrun.connect
def _finished(**_: Any) -> None:
    with _lock:
        _state["count"] += 1
        if _state["count"] == int(os.environ.get("QUICK_EXPECT", "0")):
            elapsed = time.perf_counter() - _state["first"]
            print(f"QUICK done {_state['count']} in {elapsed:.4f} s", flush=True)
