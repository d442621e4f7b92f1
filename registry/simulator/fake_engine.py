"""A simulator-only Docker Engine: lets the demo's worker check and stop "containers".

The simulated fleet has no containers, yet the health sweep asks the engine whether
each workspace's container runs, and the hibernation sweep stops idle ones. This
engine answers the few Engine API calls registry.containers makes, over HTTP on
127.0.0.1, for the real `docker` SDK (the worker gets `CONTAINER_BACKEND=docker` and
`DOCKER_HOST=tcp://127.0.0.1:<port>`):

    GET    /version, /v<ver>/version        (version negotiation, if asked)
    GET    /v<ver>/containers/json          (the list the orphan sweep reads: empty —
                                             the simulator has no orphans)
    GET    /v<ver>/containers/ws-<id>/json  (running unless stopped)
    POST   /v<ver>/containers/ws-<id>/stop  (204; 304 if already stopped)
    DELETE /v<ver>/volumes/<name>           (204)

Every `ws-<12 hex/dash chars>` container exists and runs until someone stops it:
the hibernation sweep (via the API) or the simulator itself (`crash`, a container
that died with its agent). Not a test double for registry.containers (that is
tests/fake_docker_engine.py); never point a real worker of a real fleet at it.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from registry.containers import container_name

API_VERSION = "1.43"

_VERSIONED = re.compile(r"^/v[0-9.]+(?P<rest>/.*)$")
_CONTAINER = re.compile(r"^/containers/(?P<name>ws-[0-9a-f-]{1,12})/(?P<action>json|stop)$")
_VOLUME = re.compile(r"^/volumes/[^/]+$")


class SimulatedEngine:
    """The engine's state (which containers were stopped) and its HTTP server.

    The server socket is bound on construction and served only after `start()`, so
    the port is known before the worker that uses it is started.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._stopped: set[str] = set()
        self._lock = threading.Lock()
        self.stops_requested = 0
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"tcp://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="simulated-docker-engine",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    # What the simulated agents ask and do.

    def is_stopped(self, workspace_id: UUID) -> bool:
        with self._lock:
            return container_name(workspace_id) in self._stopped

    def crash(self, workspace_id: UUID) -> None:
        """The container exits on its own (its agent process died with it)."""
        with self._lock:
            self._stopped.add(container_name(workspace_id))

    # The Engine API.

    def handle(self, method: str, raw_path: str) -> tuple[int, Any]:
        path = unquote(urlsplit(raw_path).path)
        if match := _VERSIONED.match(path):
            path = match["rest"]
        if method == "GET" and path == "/version":
            return 200, {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Version": "sim"}
        if method == "GET" and path == "/containers/json":
            return 200, []  # the orphan sweep's list: the simulator has no orphans
        if method == "DELETE" and _VOLUME.match(path):
            return 204, None
        match = _CONTAINER.match(path)
        action = {("GET", "json"): self._inspect, ("POST", "stop"): self._stop}.get(
            (method, match["action"]) if match else ("", "")
        )
        if match is None or action is None:
            return 404, {"message": f"simulated engine: {method} {path} is not supported"}
        return action(match["name"])

    def _inspect(self, name: str) -> tuple[int, Any]:
        with self._lock:
            running = name not in self._stopped
        state = {"Running": running, "Status": "running" if running else "exited"}
        return 200, {"Id": f"sim-{name}", "Name": f"/{name}", "State": state}

    def _stop(self, name: str) -> tuple[int, Any]:
        with self._lock:
            self.stops_requested += 1
            if name in self._stopped:
                return 304, None  # the engine's answer for "already stopped"
            self._stopped.add(name)
        return 204, None

    def __enter__(self) -> SimulatedEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _handler_for(engine: SimulatedEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so shutting down never waits on an
        # idle keep-alive connection of the SDK's pool.
        protocol_version = "HTTP/1.0"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, body = engine.handle(self.command, self.path)
            payload = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the worker's log says what it asked

    return Handler
