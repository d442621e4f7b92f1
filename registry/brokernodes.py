"""The nodes of a broker URL list (`amqp://…@h1//;amqp://…@h2//`, kombu's failover form).

kombu moves on to the next node when one does not answer, which is what a cluster
needs at run time but would hide a typo for ever: a node whose host name does not
resolve is a configuration error, refused at start (`node_problem`); a node that does
not answer is an outage, reported (`unreachable_nodes`) but not fatal, since a worker
restarted while one node is down must start.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from molecule_registry_client import safe_url

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "pyamqp": 5672, "redis": 6379, "sentinel": 26379}


def nodes(url: str) -> list[tuple[str, str, int]]:
    """(safe URL, host, port) of each URL in a `;`-separated list."""
    found: list[tuple[str, str, int]] = []
    for raw in url.split(";"):
        part = raw.strip()
        if not part:
            continue
        parsed = urlsplit(part)
        try:
            port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 0)
        except ValueError:  # a port that is not a number
            port = -1
        found.append((safe_url(part), parsed.hostname or "localhost", port))
    return found


def node_problem(url: str) -> str | None:
    """One line when a listed node cannot be right whatever the network does: a host
    name that does not resolve, or a port that is not a port. None otherwise."""
    if ";" not in url:
        return None  # a single URL: its own connection errors say everything
    for shown, host, port in nodes(url):
        if not 0 < port <= 65535:
            return f"CELERY_BROKER_URL lists {shown}, whose port is not valid"
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return f"CELERY_BROKER_URL lists {shown}, whose host {host!r} does not resolve ({exc})"
    return None


def unreachable_nodes(url: str, timeout: float = 2.0) -> list[str]:
    """The listed nodes that do not accept a TCP connection now (safe URLs)."""
    down: list[str] = []
    if ";" not in url:
        return down
    for shown, host, port in nodes(url):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            down.append(f"{shown} ({exc})")
    return down
