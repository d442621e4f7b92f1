"""The cyclic garbage collector tuned for a worker, in every worker process.

A worker holds some 100,000 long-lived objects once its modules are imported (Celery,
SQLAlchemy, pydantic, the registry), and a heartbeat batch keeps tens of thousands of
objects alive while it applies, all freed by reference counting when it ends. With
Python's defaults that batch triggers dozens of young collections, which promote its
objects, and every few batches a full collection walking the whole heap: together
they cost the batch path a fifth of its CPU (bench/throughput.py,
`registry.heartbeat_batch`). So, at start:

- `gc.freeze()` moves the objects present at start into a permanent generation that
  full collections never walk;
- the youngest generation is collected after YOUNG_THRESHOLD net allocations instead
  of 700: a batch's objects are mostly gone by then. Cyclic garbage waits at most
  that many allocations (a few megabytes) longer.
"""

from __future__ import annotations

import gc
from typing import Any

from celery.signals import worker_process_init, worker_ready

YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


@worker_process_init.connect
def _in_pool_process(**_: Any) -> None:
    # A forked pool process: everything inherited from the parent is start-up state.
    tune_collector()


@worker_ready.connect
def _in_main_process(**_: Any) -> None:
    # The consumer (and, with the threads or solo pool, the tasks) runs here.
    tune_collector()
