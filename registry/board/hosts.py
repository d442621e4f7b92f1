"""Which `Host` headers the board answers: its own address only (DNS-rebinding defence).

A page on `evil.example` whose name is re-pointed at 127.0.0.1 reaches the board
with `Host: evil.example`; refusing any name the board was not bound to (or told
about) stops it reading the fleet. An IP-literal Host cannot be rebound, so for a
wildcard bind (0.0.0.0, ::) any IP literal is accepted; for a specific address,
only that address (and, for a loopback bind, the loopback names).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _split(host_header: str) -> tuple[str, int | None] | None:
    """(host, port) from a Host header; None when it cannot be parsed."""
    value = host_header.strip().lower()
    if not value:
        return None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = value.partition(":")
    if not port_text:
        return host.rstrip("."), None
    if not port_text.isdigit():
        return None
    return host.rstrip("."), int(port_text)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class HostCheck:
    """Decides whether a request's Host header names this board."""

    def __init__(self, bound_host: str, port: int, extra_names: Iterable[str] = ()) -> None:
        self.port = port
        bound = _ip(bound_host)
        self.wildcard = bound is not None and bound.is_unspecified
        names = {bound_host.lower()}
        if bound_host.lower() == "localhost" or (bound is not None and bound.is_loopback):
            names.update(LOOPBACK_NAMES)
        if self.wildcard:  # reachable on loopback too
            names.update(LOOPBACK_NAMES)
        names.update(name.strip().lower().rstrip(".") for name in extra_names if name.strip())
        self.names = frozenset(names)

    def allows(self, host_header: str | None) -> bool:
        if host_header is None:
            return False
        parsed = _split(host_header)
        if parsed is None:
            return False
        host, port = parsed
        if (port if port is not None else 80) != self.port:
            return False
        if host in self.names:
            return True
        return self.wildcard and _ip(host) is not None
