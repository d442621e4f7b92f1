"""A resuming client's gap: everything after its `since`, read by a Subscriber of its
own (stream, or the database when the stream lost it, CONTRACT §7) until caught up.

The replay runs in a thread of the fan-out's pool and hands events over through a small
queue, so a slow client slows its own replay, not anyone else's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator
from typing import Any

from gateway.fanout import Fanout
from registry.events.subscriber import Position, ReceivedEvent, Subscriber

HANDOVER = 256
_DONE = object()


async def replay(fanout: Fanout, since: Position) -> AsyncIterator[tuple[ReceivedEvent, Position]]:
    """Recorded events after `since`, each with the position after it.

    Raises `ReplayTooOld` when the gap reaches before the kept history.
    """
    loop = asyncio.get_running_loop()
    handover: asyncio.Queue[Any] = asyncio.Queue(HANDOVER)
    stop = threading.Event()

    def put(value: object) -> None:
        future = asyncio.run_coroutine_threadsafe(handover.put(value), loop)
        while not stop.is_set():
            try:
                future.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()

    def produce() -> None:
        subscriber = Subscriber(fanout.redis, fanout.engine, since=since, too_old="raise")
        try:
            for item in subscriber.events(follow=False, block_ms=0, stop=stop):
                if isinstance(item, ReceivedEvent):
                    put((item, subscriber.position))
            put(_DONE)
        except Exception as exc:  # handed to the connection (ReplayTooOld among them)
            put(exc)

    worker = loop.run_in_executor(fanout.replays, produce)
    try:
        while True:
            value = await handover.get()
            if value is _DONE:
                return
            if isinstance(value, Exception):
                raise value
            yield value
    finally:
        stop.set()
        worker.cancel()  # only if it has not started yet; a running one sees `stop`
