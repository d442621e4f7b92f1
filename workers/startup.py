"""The worker's start-up checks (celeryd_init: the main process, before the pool starts).

A worker on a database whose schema is missing or not at the migrations' head would
fail every task it takes (and, with late acks and retries, churn through them): it
refuses to start instead, with one line saying how to migrate. A database that cannot
be reached at start is only a warning: tasks retry, and the worker rides out an
outage like any other.

Redis settings that cannot work (REDIS_SENTINEL_MASTER unknown to the Sentinels, no
Sentinel answering, one of the two settings alone) stop a worker or beat at start too.

(The in-process test worker, celery.contrib.testing, sends no celeryd_init.)
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import sqlalchemy.exc
from celery.signals import beat_init, celeryd_init

from molecule_registry_client import safe_url
from registry.brokernodes import node_problem, unreachable_nodes
from registry.config import get_settings
from registry.db import get_engine
from registry.migrate import SchemaNotAtHead, check_schema
from registry.redisconn import config_problem

log = logging.getLogger(__name__)

# EX_CONFIG (sysexits.h): a supervisor can tell it from a crash and not restart it in a
# loop (systemd: RestartPreventExitStatus=78).
EXIT_SCHEMA = 78


def schema_refusal() -> str | None:
    """Why this worker must not start, or None."""
    settings = get_settings()
    try:
        check_schema(get_engine())
    except SchemaNotAtHead as exc:
        return f"worker not started: {safe_url(settings.database_url)}: {exc}"
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        log.warning(
            "cannot check the schema of %s at start (%s); starting anyway",
            safe_url(settings.database_url),
            reason,
        )
    return None


def ignored_settings() -> list[str]:
    """Settings this worker's broker makes meaningless, each as one line to log."""
    settings = get_settings()
    if settings.broker_queue_type == "quorum" and not settings.quorum_queues:
        return [
            "BROKER_QUEUE_TYPE=quorum is ignored: quorum queues are RabbitMQ's, and the "
            f"broker is {safe_url(settings.effective_broker_url)}"
        ]
    return []


def redis_refusal() -> str | None:
    """Why this process must not start because of its Redis (Sentinel) settings or its
    broker node list, or None: never a silent fallback to REDIS_URL's single node
    (registry/redisconn.py) nor to the nodes of a list that happen to be spelt right
    (registry/brokernodes.py). A listed node that is merely down is only logged."""
    settings = get_settings()
    problem = config_problem(settings) or node_problem(settings.effective_broker_url)
    if problem is not None:
        return f"not started: {problem}"
    for node in unreachable_nodes(settings.effective_broker_url):
        log.warning("broker node %s does not answer; using the others", node)
    return None


@beat_init.connect
def _refuse_a_bad_redis_configuration(**_: Any) -> None:
    refusal = redis_refusal()
    if refusal is not None:
        print(f"beat {refusal}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SCHEMA)


@celeryd_init.connect
def _refuse_an_unmigrated_database(**_: Any) -> None:
    for line in ignored_settings():
        log.warning(line)
    refusal = redis_refusal()
    if refusal is not None:
        print(f"worker {refusal}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SCHEMA)
    refusal = schema_refusal()
    if refusal is not None:
        # Logging is not set up yet this early: one plain line on stderr. Celery's
        # signal dispatch swallows exceptions, but not SystemExit.
        print(refusal, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SCHEMA)
