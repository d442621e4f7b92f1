"""Celery settings for `workers.app:app` (CONTRACT §1, §4, §5).

Every value here is read from the environment through registry.config, so one
declaration documents each option (see docs/OPERATIONS.md). Task names, queues,
schedules and `expires` are declared beside each task (tasks/base.py); the routes and
the beat schedule below are built from those declarations (tasks/schedule.py).
"""

from __future__ import annotations

from kombu import Exchange, Queue

from molecule_registry_client.names import DEFAULT_QUEUE, QUEUE_NAMES, queue_arguments
from registry.config import get_settings
from registry.redisconn import is_sentinel_url, sentinel_transport_options
from tasks import schedule as _schedule

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


def registry_queues(quorum: bool) -> list[Queue]:
    """The registry's queues: durable classic ones, or RabbitMQ quorum queues.

    Quorum queues (BROKER_QUEUE_TYPE=quorum with an AMQP broker) are replicated across
    the RabbitMQ cluster, so a message survives the loss of a node. Each is bound to a
    topic exchange of its own name: Celery's native delayed delivery (how a retry's
    countdown works on quorum queues, which have no per-message TTL) cannot route
    through direct exchanges. Producers publishing to the default exchange by queue
    name (molecule_registry_client) are unaffected.
    """
    if not quorum:
        return [Queue(name, routing_key=name) for name in QUEUE_NAMES]
    return [
        Queue(
            name,
            Exchange(name, type="topic", durable=True),
            routing_key=name,
            durable=True,
            queue_arguments=queue_arguments("quorum"),
        )
        for name in QUEUE_NAMES
    ]


task_queues = registry_queues(_settings.quorum_queues)
task_default_queue = DEFAULT_QUEUE
task_default_queue_type = "quorum" if _settings.quorum_queues else "classic"
# Quorum queues do not support global QoS: Celery detects them and uses a prefetch
# limit per consumer instead (a worker then holds up to that many per queue).
worker_detect_quorum_queues = True
task_routes = (_schedule.route,)

imports = _schedule.TASK_MODULES

# Every task is idempotent (CONTRACT §4), so a message is acknowledged only after its
# effect is committed, and one whose worker process died is put back, not dropped.
task_acks_late = True
task_reject_on_worker_lost = True

# Prefetch: with late acks, prefetched messages are held (unacked) by this worker
# and come back only when it dies. 4 per process keeps a heartbeat consumer busy
# between broker round trips while bounding what one stuck worker can hold.
worker_prefetch_multiplier = 4

# Per-message heartbeats (registry.heartbeat) never enter the pool: their strategy
# hands them to the main process's group commit (workers/heartbeat_intake.py) and
# acknowledges each after its batch committed, so their batch size is bounded by the
# prefetch window (concurrency times multiplier). The pool runs registry.heartbeat_batch
# messages, one transaction each, one process per core. The command line is in
# docs/OPERATIONS.md, "Heartbeat ingestion" (a 400-message window on two cores):
#   celery -A workers.app worker -Q registry.heartbeats --pool prefork -c 2 \
#       --prefetch-multiplier 200
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

# Redis behind Sentinel (REDIS_SENTINELS, REDIS_SENTINEL_MASTER): unless
# CELERY_BROKER_URL / CELERY_RESULT_BACKEND say otherwise, broker and backend are
# `sentinel://h1:p1/db;sentinel://h2:p2/db` (Settings.effective_broker_url), which
# follow the primary through a failover given the master's name.
if is_sentinel_url(broker_url):
    broker_transport_options.update(sentinel_transport_options(_settings))
if is_sentinel_url(result_backend):
    result_backend_transport_options = sentinel_transport_options(_settings)

# Results matter only to a producer waiting for a registration's token.
result_expires = 300

worker_hijack_root_logger = False
# Every delivered message is screened before its strategy runs, and nothing a message
# carries can raise out of intake and stop the worker (workers/intake_guard.py).
worker_consumer = "workers.intake_guard:GuardedConsumer"
beat_schedule = _schedule.beat_schedule(_settings)
