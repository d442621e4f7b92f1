"""The Celery application, importable as `workers.app:app` (CONTRACT §1)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from molecule_registry_client.names import QUEUE_NAMES
from registry.db import reset_connections
from registry.redaction import install_log_redaction
from workers.redis_intake import screened_channel

# CONTRACT §4.1 step 8: no plaintext token in any log line or task event of a worker,
# beat or pool process (registry/redaction.py; the events class redacts task events).
install_log_redaction()

__all__ = ["QUEUE_NAMES", "app"]

app = Celery("molecule_registry", events="registry.redaction:RedactingEvents")
app.config_from_object("celeryconfig")


# Redis broker: a malformed list entry is dropped, not delivered (workers/redis_intake.py).
screened_channel()

# Redis broker: acknowledgements written once per event-loop turn (workers/redis_acks.py).
app.steps["consumer"].add("workers.redis_acks:BatchedRedisAcks")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked pool process must not share the parent's database or Redis sockets.
    reset_connections()


# Connect the signals of `celery worker`. First the schema check at start, so that a
# worker refusing to start has prepared nothing (its celeryd_init handler must run
# before the metrics one, and handlers run in the order they were connected).
import workers.startup  # noqa: E402, I001

# Then the Prometheus endpoint, and the note of each sweep run `doctor` reads.
import workers.sweep_signals  # noqa: E402
import workers.metrics_endpoint  # noqa: E402

# The cyclic garbage collector tuned for a worker (workers/heap.py).
import workers.heap  # noqa: E402, F401
