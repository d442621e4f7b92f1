"""Celery settings for `workers.app:app` (CONTRACT §1, §4, §5).

Every value here is read from the environment through registry.config, so one
declaration documents each option (see docs/OPERATIONS.md).
"""

from __future__ import annotations

from kombu import Queue

from molecule_registry_client.names import DEFAULT_QUEUE, QUEUE_NAMES, queue_for
from registry.config import get_settings
from registry.schedule import beat_schedule as _beat_schedule

_settings = get_settings()

broker_url = _settings.effective_broker_url
result_backend = _settings.effective_result_backend
broker_connection_retry_on_startup = True

# JSON only: producers in other languages send by task name, and pickle from a
# shared broker would be remote code execution.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

task_queues = [Queue(name, routing_key=name) for name in QUEUE_NAMES]
task_default_queue = DEFAULT_QUEUE
task_routes = (lambda name, args, kwargs, options, task=None, **kw: {"queue": queue_for(name)},)

imports = (
    "tasks.registration",
    "tasks.heartbeats",
    "tasks.lifecycle",
    "tasks.sweeps",  # backstop, health, outbox relay
    "tasks.maintenance",  # provisioning timeout, hibernation, orphans
    "tasks.access",
)

# Every task is idempotent (CONTRACT §4), so a message is acknowledged only after its
# effect is committed, and one whose worker process died is put back, not dropped.
task_acks_late = True
task_reject_on_worker_lost = True

# Prefetch: with late acks, prefetched messages are held (unacked) by this worker
# and come back only when it dies. 4 per process keeps a heartbeat consumer busy
# between broker round trips while bounding what one stuck worker can hold.
worker_prefetch_multiplier = 4

# Heartbeats (registry.heartbeat, registry.heartbeat_batch) are applied by group commit
# (workers/heartbeat_batcher.py): their worker runs the threads pool so that many tasks
# wait on one transaction at once, each acknowledged after that commit (acks late
# above). The command line is in docs/OPERATIONS.md, "Heartbeat ingestion":
#   celery -A workers.app worker -Q registry.heartbeats --pool threads -c 200 \
#       --prefetch-multiplier 2
# A heartbeat task retries a failed transaction itself (message unacknowledged) while
# its heartbeats can still count; it has no autoretry (tasks/heartbeats.py).

# Redis broker only: an unacked message is redelivered after visibility_timeout.
# It must exceed the longest task plus its retry countdown (60 s at most here), or a
# slow message would run twice; 300 s brings a dead worker's messages back quickly
# enough that heartbeats are still meaningful (the sent_at guard drops stale ones).
broker_transport_options = {
    "visibility_timeout": _settings.celery_visibility_timeout,
    # kombu looks for such messages every 10 s but by default scans only on every 10th
    # look, so they would wait up to ~100 s beyond the timeout: scan on every look
    # (one ZRANGE per worker per 10 s). tests/test_redelivery.py shows the difference.
    "unacked_restore_throttle": 1,
}

# Results matter only to a producer waiting for a registration's token.
result_expires = 300

worker_hijack_root_logger = False
beat_schedule = _beat_schedule(_settings)
