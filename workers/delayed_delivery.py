"""Celery's native delayed delivery, set up once per RabbitMQ cluster, not once per URL.

With quorum queues (BROKER_QUEUE_TYPE=quorum) a worker declares the exchanges and
queues that carry a retry's countdown before it starts consuming. Celery's own step
declares them through every URL of a failover list (`amqp://h1//;amqp://h2//;…`),
retrying each unreachable one for about 17 s: a worker (re)started while one node is
down would wait that long before taking a single message. The nodes of a list are one
cluster, whose definitions are replicated: this step declares them through the first
node that answers, once, and moves on.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.utils.url import maybe_sanitize_url

log = logging.getLogger(__name__)


class ClusterDelayedDelivery(DelayedDelivery):
    def start(self, c: Any) -> None:
        self._validate_configuration(c.app)
        errors: list[str] = []
        for url in str(c.app.conf.broker_url).split(";"):
            try:
                self._setup_delayed_delivery(c, url)
                return
            except Exception as exc:  # that node is down: the next one will do
                errors.append(f"{maybe_sanitize_url(url)}: {exc}")
        log.critical(
            "could not set up delayed delivery on any broker node (%s); retries with a "
            "countdown will not be delayed",
            "; ".join(errors),
        )
