"""Serve the board alone (at `/`) with uvicorn: `molecule-registry board`, tests, bench, demo.

The socket is bound (and listening) first, so a busy port is an error before anything starts and
port 0 is resolved for the Host check (it must know the board's port).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

import redis
import uvicorn
from sqlalchemy import Engine
from starlette.applications import Starlette

from gateway.board import Board, board_lifespan, board_routes
from gateway.board_events import DEFAULT_MAX_STREAMS
from gateway.http11 import BoardH11Protocol
from registry.board.hosts import HostCheck

STREAMS_DRAIN_SECONDS = 3  # open streams end within a second of stop(); a backstop


class BoardServer:
    """One board on its own socket: `serve_forever()` here, or `start()` in a thread.

    `prefix`: the path it is served under ("" for `/`; the gateway uses "/board").
    """

    def __init__(
        self,
        host: str,
        port: int,
        engine: Engine,
        client: redis.Redis,
        allowed_hosts: Iterable[str] = (),
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        prefix: str = "",
    ) -> None:
        self.prefix = prefix.rstrip("/")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
            self.socket.listen(2048)  # connections wait in the backlog until uvicorn runs
        except OSError:
            self.socket.close()
            raise
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        host_check = HostCheck(host, self.server_address[1], allowed_hosts)
        self.board = Board(engine, client, host_check, max_streams=max_streams)
        app = Starlette(
            routes=board_routes(self.board, self.prefix),
            lifespan=lambda _app: board_lifespan(self.board),
        )
        config = uvicorn.Config(
            app,
            http=BoardH11Protocol,
            lifespan="on",
            log_config=None,  # the CLI's (or the test's) logging stays as it is
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=STREAMS_DRAIN_SECONDS,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{self.prefix}/"

    def serve_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (main thread; board_lifespan ends the streams
        first) or `stop()`."""
        self.server.run(sockets=[self.socket])

    def start(self) -> None:
        """Serve in a thread; returns once the board answers."""
        self._thread = threading.Thread(target=self.serve_forever, name="board", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the board server did not start")
            self._thread.join(0.02)

    def stop(self) -> None:
        """End the event streams, then the server; waits for the thread."""
        self.board.stop()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.socket.close()
