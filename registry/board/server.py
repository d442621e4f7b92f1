"""The board's HTTP server: static page, JSON snapshot, and events as server-sent events.

The standard library's ThreadingHTTPServer is enough: one thread per connection, so a
slow or stalled browser only holds its own thread (and is dropped when a write has
waited `WRITE_TIMEOUT_SECONDS`). Each event stream has its own `Subscriber`, reading
from the position the page asks for (its snapshot's, or `Last-Event-ID` when the
browser reconnects by itself), so no page can miss or slow down another's events.

Routes: `/` (page), `/board.js`, `/board.css`, `/api/snapshot[?limit=&after=]` (the
fleet in pages, problems first), `/api/snapshot?changed_since=<time>` (incremental),
`/api/workspaces/<id>`, `/api/events?since=<position>` (text/event-stream).

Every request is first checked for its `Host` header (hosts.py): a name this board
does not serve gets 403, whatever the path or method. Responses the browser
accepts gzip for are gzipped (the snapshot of 5,000 workspaces shrinks ~10x).
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import redis
from sqlalchemy import Engine

from registry.board.beats import BEAT_TYPES, ChannelBeats
from registry.board.hosts import HostCheck
from registry.board.snapshot import (
    BadRequest,
    changes_since,
    fleet_snapshot,
    one_workspace,
    ordered_fleet,
    parse_limit,
    parse_since,
)
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

log = logging.getLogger(__name__)

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/board.js": ("board.js", "text/javascript; charset=utf-8"),
    "/board.css": ("board.css", "text/css; charset=utf-8"),
}
WRITE_TIMEOUT_SECONDS = 30
POLL_BLOCK_MS = 1000
KEEPALIVE_SECONDS = 10
RECONNECT_MS = 2000  # how soon a browser retries a dropped event stream
STREAMS_DRAIN_SECONDS = 3.0
GZIP_MIN_BYTES = 1024  # smaller bodies are not worth the header and the CPU
GZIP_LEVEL = 5  # most of level 9's ratio on JSON at a fraction of its CPU


class BoardServer(ThreadingHTTPServer):
    """Serves one board; `stopping` ends every event stream within a second."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        client: redis.Redis,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.engine = engine
        self.client = client
        self.ordered = ordered_fleet(engine)  # later snapshot pages are sliced from it
        self.stopping = threading.Event()
        self._open_streams = 0
        self._streams_changed = threading.Condition()
        super().__init__(address, BoardHandler)
        # The port is known once bound (0 picks one).
        self.host_check = HostCheck(address[0], self.server_address[1], allowed_hosts)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()

    def server_close(self) -> None:
        """Close, and give open event streams a moment to end (they poll `stopping`)."""
        self.stopping.set()
        super().server_close()
        with self._streams_changed:
            self._streams_changed.wait_for(
                lambda: self._open_streams == 0, timeout=STREAMS_DRAIN_SECONDS
            )

    @contextmanager
    def stream_open(self) -> Iterator[None]:
        with self._streams_changed:
            self._open_streams += 1
        try:
            yield
        finally:
            with self._streams_changed:
                self._open_streams -= 1
                self._streams_changed.notify_all()


class BoardHandler(BaseHTTPRequestHandler):
    server: BoardServer
    # Socket timeout: a browser that stops reading is dropped instead of holding a
    # thread forever.
    timeout = WRITE_TIMEOUT_SECONDS
    server_version = "molecule-registry-board"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _foreign_host(self) -> bool:
        """Refuse (403) a request whose Host is not this board's address; True if refused."""
        if self.server.host_check.allows(self.headers.get("Host")):
            return False
        log.info("board: refused a request for Host %r", self.headers.get("Host"))
        self._error(HTTPStatus.FORBIDDEN, "this board does not serve that Host name")
        return True

    def _not_allowed(self) -> None:
        if not self._foreign_host():
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the board is read-only: GET only")

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, made-up ones) gets the same 403/405, not a 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def do_GET(self) -> None:
        if self._foreign_host():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path in STATIC_FILES:
                self._static(*STATIC_FILES[url.path])
            elif url.path == "/api/snapshot":
                self._snapshot(query)
            elif url.path.startswith("/api/workspaces/"):
                self._workspace(url.path.removeprefix("/api/workspaces/"))
            elif url.path == "/api/events":
                self._events(query.get("since", [""])[0])
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
        except BadRequest as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except RETRYABLE_ERRORS as exc:
            log.warning("board: %s", str(exc).strip().splitlines()[0])
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "registry stores unreachable; retry")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("board: client %s went away", self.address_string())

    # -- plain responses ----------------------------------------------------

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        if self.command == "HEAD":
            body = b""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if len(body) >= GZIP_MIN_BYTES and self._accepts_gzip():
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._json_text(dumps(value), status)

    def _json_text(self, body: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, body.encode(), "application/json")

    def _accepts_gzip(self) -> bool:
        accepted = self.headers.get("Accept-Encoding", "")
        return any(
            part.split(";")[0].strip().lower() == "gzip" and "q=0" not in part.replace(" ", "")
            for part in accepted.split(",")
        )

    def _snapshot(self, query: dict[str, list[str]]) -> None:
        def one(name: str) -> str | None:
            return query.get(name, [None])[0]

        since = one("changed_since")
        if since is not None:
            self._json_text(changes_since(self.server.engine, parse_since(since)))
            return
        limit = parse_limit(one("limit"))
        server = self.server
        page = fleet_snapshot(
            server.engine, server.client, limit=limit, after=one("after"), ordered=server.ordered
        )
        self._json_text(page)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    def _static(self, name: str, content_type: str) -> None:
        body = resources.files("registry.board").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, body, content_type)

    def _workspace(self, raw_id: str) -> None:
        try:
            workspace_id = UUID(raw_id)
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, f"{raw_id!r} is not a workspace id")
            return
        with self.server.engine.connect() as conn:
            found = one_workspace(conn, workspace_id)
        if found is None:
            self._error(HTTPStatus.NOT_FOUND, f"unknown workspace {workspace_id}")
        else:
            self._json(found)

    # -- the event stream ---------------------------------------------------

    def _events(self, since: str) -> None:
        # A browser reconnecting by itself sends the id of the last message it got.
        token = self.headers.get("Last-Event-ID") or since
        try:
            start: Position | str = Position.from_token(token) if token else "now"
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, f"{token!r} is not a stream position")
            return
        beats = ChannelBeats(self.server.client)
        beats.open()  # before the page hears "open": no heartbeat after that is missed
        # Likewise the stream's starting point ("now" is resolved here): a change
        # recorded after the response began is never before it.
        try:
            subscriber = Subscriber(self.server.client, self.server.engine, since=start)
        except Exception:
            beats.close()
            raise
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")  # a proxy in front must not buffer
        self.end_headers()
        with self.server.stream_open():
            try:
                self._write(f"retry: {RECONNECT_MS}\n\n")
                self._follow(subscriber, beats)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                log.debug("board: event stream to %s closed", self.address_string())
            except Exception:  # headers are sent: end this stream, the browser reconnects
                log.exception("board: event stream to %s failed", self.address_string())
            finally:
                beats.close()

    def _follow(self, subscriber: Subscriber, beats: ChannelBeats) -> None:
        """Status changes from the stream (resumable, with ids); beats from the channel."""
        stopping = self.server.stopping
        quiet_polls = 0
        while not stopping.is_set():
            batch = subscriber.poll_with_positions(block_ms=POLL_BLOCK_MS, stop=stopping)
            # A stream that also keeps beats (a small fleet's setting): they come from
            # the channel below, once.
            messages = [
                _sse_message(item, position)
                for item, position in batch
                if not (isinstance(item, ReceivedEvent) and item.type in BEAT_TYPES)
            ]
            latest = beats.drain()
            if latest:  # no id: a reconnecting page resumes by the stream's position
                messages.append(f"event: beats\ndata: {dumps(latest)}\n\n")
            if messages:  # one write per poll: a flood is a few packets, not one per event
                self._write("".join(messages))
            quiet_polls = 0 if batch or latest else quiet_polls + 1
            # A comment line now and then: proxies keep the connection, and a closed
            # browser is noticed (the write fails) even when the fleet is quiet.
            if quiet_polls * POLL_BLOCK_MS >= KEEPALIVE_SECONDS * 1000:
                self._write(": keepalive\n\n")
                quiet_polls = 0

    def _write(self, text: str) -> None:
        self.wfile.write(text.encode())
        self.wfile.flush()


def _sse_message(item: Item, position: Position) -> str:
    if isinstance(item, StreamGap):
        data = {**item.as_dict(), "text": item.describe()}
        return f"id: {position.token()}\nevent: gap\ndata: {json.dumps(data)}\n\n"
    data = {**item.as_dict(), "gist": describe(item.type, item.payload)}
    return f"id: {position.token()}\nevent: registry\ndata: {dumps(data)}\n\n"


def serve(
    host: str, port: int, engine: Engine, client: redis.Redis, allowed_hosts: Iterable[str] = ()
) -> BoardServer:
    """A bound server (port 0 picks a free one); call `serve_forever()` on it.

    `allowed_hosts`: further names the board answers to (a DNS name in front of it).
    """
    return BoardServer((host, port), engine, client, allowed_hosts)
