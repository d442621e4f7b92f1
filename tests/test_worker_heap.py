"""The worker's collector tuning (workers/heap.py): frozen start-up heap, rare young collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from celery.signals import worker_process_init, worker_ready

from workers import heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tuning_freezes_the_heap_and_raises_the_young_threshold(restored_collector: None) -> None:
    _, older, oldest = gc.get_threshold()
    gc.unfreeze()

    heap.tune_collector()

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, older, oldest)
    assert gc.isenabled()  # cycles are still collected, only later


def test_every_worker_process_is_tuned() -> None:
    import workers.app  # noqa: F401 - connects the worker's signals

    pool = [receiver() for _, receiver in worker_process_init.receivers]
    main = [receiver() for _, receiver in worker_ready.receivers]
    assert heap._in_pool_process in pool
    assert heap._in_main_process in main
