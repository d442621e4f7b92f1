"""A fake Docker Engine for the demo's simulator and the tests: never a real fleet's.

No Docker engine runs where the demo and the tests run, and mocking the SDK would
test our assumptions about it rather than the SDK itself. So the real `docker`
client talks HTTP on 127.0.0.1 to this server, which speaks only the Engine API
calls registry.containers makes:

    GET    /version, /v<ver>/version        (API version negotiation, if asked)
    GET    /v<ver>/containers/json          (all, filters={"label"|"name": [...]})
    GET    /v<ver>/containers/<name>/json   (State.Running)
    POST   /v<ver>/containers/<name>/stop   (204; 304 if already stopped)
    DELETE /v<ver>/volumes/<name>           (204)

Unknown names answer 404 like the engine; unsupported endpoints answer 501, so a
test notices a new SDK call.

Two uses:

- The demo (`simulate_workspaces=True`, the worker gets `CONTAINER_BACKEND=docker`
  and `DOCKER_HOST=tcp://127.0.0.1:<port>`): every workspace container the registry
  asks about (`ws-<full id>`, or the legacy `ws-<first 12>`) and its volumes
  (`-configs`, `-claude-sessions`) exist, unlabelled (so the orphan sweep only ever
  reaps those of removed workspaces, never "unknown" ones), and the container runs until
  someone stops it: the hibernation sweep (via the API) or the simulator itself
  (`crash`, a container that died with its agent). Listing shows only the simulated
  containers asked about so far.
- Tests: `add_container` and `volumes` set the engine up; `fail[name] = status`
  makes every request about that container or volume answer `status` (500,
  409, ...); `fail_list` does the same for the container list; `ignore_filters`
  makes the list return every container (a misbehaving engine). Every request is
  recorded in `requests` (unless `record_requests=False`, for a long demo).

Usage:
    with FakeDockerEngine() as engine:
        engine.add_container("ws-<id>", running=True, labels={...})
        client = DockerContainers(engine.base_url)

The server socket is bound on construction and served from `start()` (or entering
the `with` block), so the port is known before a process that uses it starts.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID

from registry.sweeps.containers import container_name

API_VERSION = "1.43"

_VERSIONED = re.compile(r"^/v(?P<version>[0-9.]+)(?P<rest>/.*)$")
_CONTAINER = re.compile(r"^/containers/(?P<name>[^/]+)/(?P<action>json|stop)$")
_VOLUME = re.compile(r"^/volumes/(?P<name>[^/]+)$")
# What a simulated workspace's container and volumes are called (registry.sweeps.containers):
# the full id or the legacy 12-character prefix.
_KEY = r"[0-9a-f]{8}-[0-9a-f]{3}(?:[0-9a-f]-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?"
_SIMULATED_CONTAINER = re.compile(rf"ws-{_KEY}")
_SIMULATED_VOLUME = re.compile(rf"ws-{_KEY}-(?:configs|claude-sessions)")


@dataclass
class FakeContainer:
    running: bool = True
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the /v<ver> prefix, names unquoted
    api_version: str | None
    query: dict[str, list[str]]

    def filters(self) -> Any:
        """The decoded `filters` query parameter (JSON in the Engine API)."""
        return json.loads(self.query["filters"][0]) if "filters" in self.query else None


class FakeDockerEngine:
    """The engine's state (containers, volumes, failure knobs) and its HTTP server."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        simulate_workspaces: bool = False,
        record_requests: bool = True,
    ) -> None:
        self.simulate_workspaces = simulate_workspaces
        self.record_requests = record_requests
        self.containers: dict[str, FakeContainer] = {}
        self.volumes: set[str] = set()
        self.fail: dict[str, int] = {}
        self.fail_list: int | None = None
        self.ignore_filters = False
        self.requests: list[RecordedRequest] = []
        self.stops_requested = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"tcp://{host}:{port}"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-docker-engine",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeDockerEngine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Setting up and inspecting the engine (tests).

    def add_container(
        self, name: str, *, running: bool = True, labels: dict[str, str] | None = None
    ) -> None:
        with self._lock:
            self.containers[name] = FakeContainer(running=running, labels=dict(labels or {}))

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # What the simulated agents ask and do (the demo).

    def is_stopped(self, workspace_id: UUID) -> bool:
        with self._lock:
            container = self._container_named(container_name(workspace_id))
            return container is not None and not container.running

    def crash(self, workspace_id: UUID) -> None:
        """The container exits on its own (its agent process died with it)."""
        with self._lock:
            name = container_name(workspace_id)
            self.containers.setdefault(name, FakeContainer()).running = False

    # The Engine API: returns (status, JSON body or None).

    def handle(self, method: str, raw_path: str) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        match = _VERSIONED.match(parts.path)
        version, path = (match["version"], match["rest"]) if match else (None, parts.path)
        path = unquote(path)
        query = parse_qs(parts.query)
        with self._lock:
            if self.record_requests:
                self.requests.append(RecordedRequest(method, path, version, query))
            return self._route(method, path, query)

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if method == "GET" and path == "/version":
            return 200, {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Version": "24.0.0"}
        if method == "GET" and path == "/containers/json":
            return self._list(query)
        if (m := _CONTAINER.match(path)) and (method, m["action"]) in (
            ("GET", "json"),
            ("POST", "stop"),
        ):
            return self._container(m["name"], m["action"])
        if method == "DELETE" and (m := _VOLUME.match(path)):
            return self._remove_volume(m["name"])
        return 501, {"message": f"fake engine: {method} {path} is not implemented"}

    def _container_named(self, name: str) -> FakeContainer | None:
        container = self.containers.get(name)
        if container is None and self.simulate_workspaces and _SIMULATED_CONTAINER.fullmatch(name):
            # A simulated workspace's container runs from the moment it is first asked about.
            container = self.containers[name] = FakeContainer()
        return container

    def _list(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        if self.fail_list is not None:
            return self.fail_list, {"message": "fake engine: list failed"}
        show_all = query.get("all", ["0"])[0] not in ("0", "false", "")
        filters = json.loads(query["filters"][0]) if "filters" in query else {}
        wanted_labels = [] if self.ignore_filters else list(filters.get("label", []))
        wanted_names = [] if self.ignore_filters else list(filters.get("name", []))
        result = []
        for name, container in sorted(self.containers.items()):
            if not (show_all or container.running):
                continue
            if not all(_label_matches(container.labels, want) for want in wanted_labels):
                continue
            if wanted_names and not any(_name_matches(name, want) for want in wanted_names):
                continue
            result.append(
                {
                    "Id": f"id-{name}",
                    "Names": [f"/{name}"],
                    "Labels": container.labels,
                    "State": "running" if container.running else "exited",
                }
            )
        return 200, result

    def _container(self, name: str, action: str) -> tuple[int, Any]:
        if action == "stop":
            self.stops_requested += 1
        if name in self.fail:
            return self.fail[name], {"message": f"fake engine: failing {name}"}
        container = self._container_named(name)
        if container is None:
            return 404, {"message": f"No such container: {name}"}
        if action == "json":
            return 200, {
                "Id": f"id-{name}",
                "Name": f"/{name}",
                "State": {
                    "Running": container.running,
                    "Status": "running" if container.running else "exited",
                },
                "Config": {"Labels": container.labels},
            }
        if not container.running:
            return 304, None  # the engine's answer for "already stopped"
        container.running = False
        return 204, None

    def _remove_volume(self, name: str) -> tuple[int, Any]:
        if name in self.fail:
            return self.fail[name], {"message": f"fake engine: failing {name}"}
        simulated = self.simulate_workspaces and _SIMULATED_VOLUME.fullmatch(name)
        if name not in self.volumes and not simulated:
            return 404, {"message": f"get {name}: no such volume"}
        self.volumes.discard(name)
        return 204, None


def _label_matches(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _name_matches(name: str, want: str) -> bool:
    # Like the engine: a regular expression searched anywhere in "/<name>"; several
    # values of the filter are alternatives, where several labels must all match.
    return re.search(want, f"/{name}") is not None


def _handler_for(engine: FakeDockerEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so shutting down never waits on an
        # idle keep-alive connection of the SDK's pool.
        protocol_version = "HTTP/1.0"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)  # drain, so closing does not reset the socket
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
            pass  # the caller's log (or `engine.requests`) says what was asked

    return Handler
