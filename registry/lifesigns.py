"""Signs of life of the registry's background processes, read by `molecule-registry doctor`.

Two cheap Redis keys in REDIS_URL's database (an extension of CONTRACT §8; nothing
else reads them):

- `registry:sweeps:last-run`, a hash: periodic task name → Unix time (Redis's clock)
  its last run ended, ok or not. Written by the worker after each sweep task
  (workers/sweep_signals.py), so a fresh entry means beat schedules and a worker consumes
  `registry.sweeps`.
- `registry:liveness-listener:<host>:<pid>`, one per running liveness listener, with a
  TTL of LISTENER_TTL_SECONDS that the listener refreshes every
  LISTENER_REFRESH_SECONDS; deleted when it stops cleanly, gone within the TTL when
  it is killed. (Its own expiry is ignored by every listener: not a `ws:<id>` key.)

Times come from the Redis server's clock, so machines with skewed clocks agree.
"""

from __future__ import annotations

import os
import socket

import redis

SWEEP_RUNS_KEY = "registry:sweeps:last-run"
LISTENER_PREFIX = "registry:liveness-listener:"
LISTENER_TTL_SECONDS = 30
LISTENER_REFRESH_SECONDS = 10


def redis_time(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


def mark_sweep_run(client: redis.Redis, task_name: str) -> None:
    client.hset(SWEEP_RUNS_KEY, task_name, f"{redis_time(client):.3f}")


def sweep_run_ages(client: redis.Redis) -> dict[str, float]:
    """Seconds since each periodic task last ran (those that ever did)."""
    now = redis_time(client)
    return {
        _text(name): max(now - float(at), 0.0)
        for name, at in client.hgetall(SWEEP_RUNS_KEY).items()
    }


def listener_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_listener_alive(client: redis.Redis, identity: str) -> None:
    client.set(LISTENER_PREFIX + identity, f"{redis_time(client):.3f}", ex=LISTENER_TTL_SECONDS)


def forget_listener(client: redis.Redis, identity: str) -> None:
    client.delete(LISTENER_PREFIX + identity)


def live_listeners(client: redis.Redis) -> list[str]:
    """Identities (host:pid) of the listeners alive within the last TTL."""
    return sorted(
        _text(key)[len(LISTENER_PREFIX) :]
        for key in client.scan_iter(match=LISTENER_PREFIX + "*", count=100)
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
