"""Agent URL check (SSRF guard for push mode), spec section 6.

The registry pushes to agent URLs that tenants supply, so a URL must never lead
the worker to cloud metadata, loopback, link-local or reserved addresses. Private
networks are allowed only in SaaS mode, where agents run on the platform's own
private network.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]

ALLOWED_SCHEMES = frozenset({"http", "https"})


class Range(NamedTuple):
    network: IPNetwork
    description: str
    always_blocked: bool  # False: blocked unless SaaS mode


_net = ipaddress.ip_network

# The one table of blocked ranges, in the spec's order.
RANGES: tuple[Range, ...] = (
    Range(_net("169.254.0.0/16"), "cloud metadata", True),
    Range(_net("127.0.0.0/8"), "loopback", True),
    Range(_net("fe80::/10"), "IPv6 link-local", True),
    Range(_net("::1/128"), "IPv6 loopback", True),
    Range(_net("192.0.2.0/24"), "documentation, TEST-NET-1", True),
    Range(_net("198.51.100.0/24"), "documentation, TEST-NET-2", True),
    Range(_net("203.0.113.0/24"), "documentation, TEST-NET-3", True),
    Range(_net("100.64.0.0/10"), "carrier-grade NAT", True),
    Range(_net("224.0.0.0/4"), "multicast", True),
    Range(_net("fc00::/8"), "IPv6 unique local, fc00::/8", True),
    Range(_net("2001:db8::/32"), "IPv6 documentation", True),
    # Beyond CONTRACT §6's list: on Linux a connection to the unspecified address reaches
    # the host's own services, exactly what the loopback rule keeps out.
    Range(_net("0.0.0.0/8"), "this host (unspecified)", True),
    Range(_net("::/128"), "IPv6 unspecified", True),
    Range(_net("10.0.0.0/8"), "private network", False),
    Range(_net("172.16.0.0/12"), "private network", False),
    Range(_net("192.168.0.0/16"), "private network", False),
    Range(_net("fd00::/8"), "IPv6 unique local, fd00::/8", False),
)

_SAAS_ON = frozenset({"saas"})
_SAAS_OFF = frozenset({"self-hosted", "selfhosted", "standalone"})
_warned_modes: set[str] = set()


class UnsafeURL(ValueError):
    """An agent URL the registry must not push to; `rule` names the check that failed."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def system_resolver(host: str) -> list[str]:
    """Every address `host` resolves to, in resolver order, without duplicates.

    Raises socket.gaierror (an OSError) when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    # sockaddr[0] is the address string for both AF_INET and AF_INET6.
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def saas_mode(deploy_mode: str, org_id: str) -> bool:
    """Whether private ranges are allowed, from MOLECULE_DEPLOY_MODE and MOLECULE_ORG_ID."""
    mode = deploy_mode.strip().lower()
    if not mode:
        # Legacy deployments signal SaaS only through the org id.
        return bool(org_id.strip())
    if mode in _SAAS_ON:
        return True
    if mode not in _SAAS_OFF and mode not in _warned_modes:
        # Unknown values fail safe (private ranges stay blocked); say so once per value.
        _warned_modes.add(mode)
        log.warning(
            "MOLECULE_DEPLOY_MODE=%r is not a known mode (saas, self-hosted, selfhosted, "
            "standalone); treating it as self-hosted: private-range agent URLs are blocked",
            deploy_mode,
        )
    return False


def _matching_range(address: IPAddress, *, saas: bool) -> Range | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d connects to a.b.c.d, so it must meet the IPv4 rules.
        address = address.ipv4_mapped
    for entry in RANGES:
        if address in entry.network and (entry.always_blocked or not saas):
            return entry
    return None


def _check_address(address: IPAddress, *, saas: bool, subject: str) -> None:
    entry = _matching_range(address, saas=saas)
    if entry is None:
        return
    if entry.always_blocked:
        rule, kind, suffix = "blocked_range", "a blocked range", ""
    else:
        rule, kind, suffix = "private_range", "a private range", "; allowed only in SaaS mode"
    raise UnsafeURL(
        rule, f"url: {subject} is in {kind} ({entry.network}, {entry.description}){suffix}"
    )


def check_scheme(url: str) -> SplitResult:
    """Raise UnsafeURL unless `url` parses and is http(s); returns its parts."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # e.g. an unclosed "[" IPv6 bracket
        raise UnsafeURL("malformed", f"url: cannot parse {url!r}: {exc}") from exc
    if parts.scheme not in ALLOWED_SCHEMES:  # urlsplit lower-cases the scheme
        raise UnsafeURL("scheme", f"url: scheme {parts.scheme!r} is not allowed (http, https only)")
    return parts


def check_agent_url(url: str, *, saas: bool, resolver: Resolver | None = None) -> None:
    """Raise UnsafeURL unless `url` is safe to push to; `resolver` defaults to DNS."""
    if not url.strip():
        raise UnsafeURL("missing_host", "url: empty URL has no host")
    parts = check_scheme(url)
    # .hostname drops userinfo, port and IPv6 brackets, and lower-cases the name.
    host = (parts.hostname or "").removesuffix(".")
    if not host:
        raise UnsafeURL("missing_host", f"url: {url!r} has no host")

    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        _check_address(literal, saas=saas, subject=str(literal))
        return

    if host == "localhost":
        return  # explicitly allowed by the spec, without a lookup

    try:
        resolved = (resolver or system_resolver)(host)
    except OSError as exc:
        raise UnsafeURL("unresolvable", f"url: host {host} does not resolve: {exc}") from exc
    if not resolved:
        raise UnsafeURL("unresolvable", f"url: host {host} resolves to no address")
    # Every address must pass: the connection may use any of them.
    for raw in resolved:
        try:
            address = ipaddress.ip_address(raw)
        except ValueError as exc:  # fail closed on anything that is not an address
            raise UnsafeURL(
                "unresolvable", f"url: host {host} resolves to {raw!r}, not an IP address"
            ) from exc
        _check_address(address, saas=saas, subject=f"host {host} resolves to {address}, which")
