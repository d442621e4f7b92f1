"""Start-up objects out of the cyclic collector's way, in every worker process.

A worker holds some 100,000 long-lived objects once its modules are imported (Celery,
SQLAlchemy, pydantic, the registry). A heartbeat batch keeps tens of thousands of
objects alive while it applies, which promotes them, and every few batches that
triggers a full collection walking the whole heap: on average it cost more CPU than
applying the batch's rows (bench/throughput.py, `registry.heartbeat_batch`).
`gc.freeze()` moves the objects present at start into a permanent generation the
collector never walks; cycles made afterwards are collected as before.
"""

from __future__ import annotations

import gc
from typing import Any

from celery.signals import worker_process_init, worker_ready


@worker_process_init.connect
def _freeze_in_pool_process(**_: Any) -> None:
    # A forked pool process: everything inherited from the parent is start-up state.
    gc.freeze()


@worker_ready.connect
def _freeze_in_main_process(**_: Any) -> None:
    # The consumer (and, with the threads or solo pool, the tasks) run here.
    gc.freeze()
