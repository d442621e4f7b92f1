"""The board's event stream (`/api/events`) as server-sent events, on ASGI.

Each stream has its own `Subscriber`, reading from the position the page asks for
(its snapshot's, or `Last-Event-ID` when the browser reconnects by itself), so no
page can miss or slow down another's events. The Subscriber and the broadcast
channel (`ChannelBeats`) are blocking Redis clients: each poll (at most
`POLL_BLOCK_MS`) runs in a worker thread, never on the event loop, so an open
stream costs a worker thread while it waits and about two Redis connections (the
blocking XREAD and the pub/sub subscription).

Streams are capped (`max_streams`, DEFAULT_MAX_STREAMS): past the cap a new stream
is answered 503 at once. Uncapped, a few thousand open pages exhaust Redis's client
limit (10,000 by default) and take the registry's own connections with them
(issue 20). The page loads again a little later when refused.

A stream ends when the browser goes away, when a write to it has waited
`WRITE_TIMEOUT_SECONDS` (a stalled browser), or within a second of `stop()`.
"""

from __future__ import annotations

import json
import logging
import threading

import anyio
import anyio.to_thread
import redis
from sqlalchemy import Engine
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from gateway.board_guard import send_error
from registry.board.beats import BEAT_TYPES, ChannelBeats
from registry.events.subscriber import (
    RETRYABLE_ERRORS,
    Item,
    Position,
    ReceivedEvent,
    StreamGap,
    Subscriber,
)
from registry.events.text import describe
from registry.jsontext import dumps

log = logging.getLogger("gateway.board")

DEFAULT_MAX_STREAMS = 200  # ~400 Redis connections and 200 worker threads at most
POLL_BLOCK_MS = 1000
KEEPALIVE_SECONDS = 10
RECONNECT_MS = 2000  # how soon a browser retries a dropped event stream
WRITE_TIMEOUT_SECONDS = 30  # a browser that stops reading is dropped after this
REFUSED_RETRY_SECONDS = 5  # Retry-After of a stream refused over the cap


class EventStreams:
    """The open streams of one board: their cap, their threads, and stopping them."""

    def __init__(self, engine: Engine, client: redis.Redis, max_streams: int) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.engine = engine
        self.client = client
        self.max_streams = max_streams
        self.open_count = 0
        self.stopping = threading.Event()
        self._stops: set[threading.Event] = set()  # one per open stream
        # stop() may come from another thread, or from a signal handler interrupting
        # admit() on this one: reentrant.
        self._lock = threading.RLock()
        self._limiter: anyio.CapacityLimiter | None = None  # made on the loop, when first used

    def admit(self) -> threading.Event | None:
        """A slot for one more stream (its stop event), or None when full or stopping."""
        with self._lock:
            if self.stopping.is_set() or self.open_count >= self.max_streams:
                return None
            self.open_count += 1
            stop = threading.Event()
            self._stops.add(stop)
            return stop

    def release(self, stop: threading.Event) -> None:
        with self._lock:
            self._stops.discard(stop)
            self.open_count -= 1

    def stop(self) -> None:
        """End every stream within a second (thread-safe: a signal handler may call it)."""
        with self._lock:
            self.stopping.set()
            for stop in self._stops:
                stop.set()

    def limiter(self) -> anyio.CapacityLimiter:
        # Streams' own threads: they never wait for, nor starve, the snapshot requests'.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_streams)
        return self._limiter

    def stream(self, since: str, last_event_id: str | None) -> EventStream:
        return EventStream(self, last_event_id or since)


class EventStream:
    """One `/api/events` response (an ASGI app): opens, follows, and always lets go."""

    def __init__(self, streams: EventStreams, token: str) -> None:
        self.streams = streams
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streams = self.streams
        try:
            start: Position | str = Position.from_token(self.token) if self.token else "now"
        except ValueError:
            await send_error(send, 400, f"{self.token!r} is not a stream position")
            return
        stop = streams.admit()
        if stop is None:
            if streams.stopping.is_set():
                message = "the board is stopping; retry later"
            else:
                log.warning("board: event stream refused: %d open (the cap)", streams.open_count)
                message = f"too many board event streams open ({streams.max_streams}); retry later"
            retry = {"Retry-After": str(REFUSED_RETRY_SECONDS)}
            await send_error(send, 503, message, extra=retry)
            return
        beats = ChannelBeats(streams.client)
        try:
            try:
                # Before the page hears "open": no heartbeat after that is missed, and
                # "now" is resolved before the response begins (no change is skipped).
                subscriber = await anyio.to_thread.run_sync(
                    _open, streams, beats, start, limiter=streams.limiter()
                )
            except RETRYABLE_ERRORS as exc:
                log.warning("board: %s", str(exc).strip().splitlines()[0])
                await send_error(send, 503, "registry stores unreachable; retry")
                return
            await self._respond(scope, receive, send, subscriber=subscriber, beats=beats, stop=stop)
        finally:
            beats.close()
            streams.release(stop)

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        subscriber: Subscriber,
        beats: ChannelBeats,
        stop: threading.Event,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"x-accel-buffering", b"no"),  # a proxy in front must not buffer
                ],
            }
        )
        host = Headers(scope=scope).get("host", "?")
        async with anyio.create_task_group() as tasks:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                stop.set()  # cuts a poll's backoff short
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            try:
                await self._follow(send, subscriber, beats, stop)
            except OSError:
                log.debug("board: event stream (Host %s) closed", host)
            except Exception:  # headers are sent: end this stream, the browser reconnects
                log.exception("board: event stream (Host %s) failed", host)
            tasks.cancel_scope.cancel()

    async def _follow(
        self, send: Send, subscriber: Subscriber, beats: ChannelBeats, stop: threading.Event
    ) -> None:
        streams = self.streams
        if not await _write(send, f"retry: {RECONNECT_MS}\n\n"):
            return
        quiet_polls = 0
        while not stop.is_set() and not streams.stopping.is_set():
            text, came = await anyio.to_thread.run_sync(
                _next_messages, subscriber, beats, stop, limiter=streams.limiter()
            )
            if text and not await _write(send, text):
                return
            quiet_polls = 0 if came else quiet_polls + 1
            # A comment line now and then: proxies keep the connection, and a closed
            # browser is noticed even when the fleet is quiet.
            if quiet_polls * POLL_BLOCK_MS >= KEEPALIVE_SECONDS * 1000:
                if not await _write(send, ": keepalive\n\n"):
                    return
                quiet_polls = 0
        # Stopping: finish the response so the server can close the connection.
        with anyio.move_on_after(1):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _open(streams: EventStreams, beats: ChannelBeats, start: Position | str) -> Subscriber:
    beats.open()
    return Subscriber(streams.client, streams.engine, since=start)


def _next_messages(
    subscriber: Subscriber, beats: ChannelBeats, stop: threading.Event
) -> tuple[str, bool]:
    """One poll (in a worker thread): the messages to send, and whether anything came."""
    batch = subscriber.poll_with_positions(block_ms=POLL_BLOCK_MS, stop=stop)
    # A stream that also keeps beats (a small fleet's setting): they come from the
    # channel below, once.
    messages = [
        _sse_message(item, position)
        for item, position in batch
        if not (isinstance(item, ReceivedEvent) and item.type in BEAT_TYPES)
    ]
    latest = beats.drain()
    if latest:  # no id: a reconnecting page resumes by the stream's position
        messages.append(f"event: beats\ndata: {dumps(latest)}\n\n")
    # One write per poll: a flood is a few packets, not one per event.
    return "".join(messages), bool(batch or latest)


async def _write(send: Send, text: str) -> bool:
    """Send a chunk; False when the browser has not taken it in WRITE_TIMEOUT_SECONDS."""
    with anyio.move_on_after(WRITE_TIMEOUT_SECONDS):
        await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
        return True
    log.info("board: an event stream's browser stopped reading; dropped")
    return False


def _sse_message(item: Item, position: Position) -> str:
    if isinstance(item, StreamGap):
        data = {**item.as_dict(), "text": item.describe()}
        return f"id: {position.token()}\nevent: gap\ndata: {json.dumps(data)}\n\n"
    data = {**item.as_dict(), "gist": describe(item.type, item.payload)}
    return f"id: {position.token()}\nevent: registry\ndata: {dumps(data)}\n\n"
