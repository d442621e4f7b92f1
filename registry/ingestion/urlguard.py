"""Agent URL check (SSRF guard for push mode), CONTRACT §6.

The registry pushes to agent URLs that tenants supply, so a URL must never lead
the worker to cloud metadata, loopback, link-local or reserved addresses. Private
networks are allowed only in SaaS mode, where agents run on the platform's own
private network.

The check reads the host the way the dialler will: every textual form the C
resolver accepts as an address is turned into that address first (`127.1`,
`0x7f.1`, `2130706433`, `017700000001` are all 127.0.0.1 to `inet_aton`, and so to
`getaddrinfo`), Unicode hosts are IDNA-encoded as `socket` does before a lookup
(so fullwidth digits and ideographic full stops spell 127.0.0.1 too), and an IPv6 address that carries an IPv4
address (IPv4-mapped or -compatible, SIIT, NAT64, 6to4, Teredo) must pass the IPv4
rules too. Anything the check cannot read unambiguously (a host that looks numeric
but is not an address, percent-escapes, whitespace, backslashes, userinfo (`user@`),
a bracket holding no IPv6 address) is refused rather than guessed at.
"""

from __future__ import annotations

import ipaddress
import logging
import re
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

# The one table of blocked ranges, in the contract's order, then our extensions.
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
    # Amended in CONTRACT §6 (turn 3), as the original's newest guard blocks them.
    Range(_net("fec0::/10"), "IPv6 site-local (deprecated)", True),
    Range(_net("100::/64"), "IPv6 discard-only", True),
    Range(_net("198.18.0.0/15"), "benchmarking", True),
    Range(_net("192.0.0.0/24"), "IETF protocol assignments", True),
    # Beyond CONTRACT §6's list: on Linux a connection to the unspecified address reaches
    # the host's own services, exactly what the loopback rule keeps out.
    Range(_net("0.0.0.0/8"), "this host (unspecified)", True),
    Range(_net("::/128"), "IPv6 unspecified", True),
    # Beyond CONTRACT §6's list: the IPv6 twin of 224/4, and the reserved block that
    # ends in the limited broadcast address; no agent can live in either.
    Range(_net("ff00::/8"), "IPv6 multicast", True),
    Range(_net("240.0.0.0/4"), "reserved, broadcast", True),
    Range(_net("10.0.0.0/8"), "private network", False),
    Range(_net("172.16.0.0/12"), "private network", False),
    Range(_net("192.168.0.0/16"), "private network", False),
    Range(_net("fd00::/8"), "IPv6 unique local, fd00::/8", False),
    # Beyond CONTRACT §6's list: RFC 8215's local-use NAT64 prefix translates into the
    # operator's own IPv4 network, so it is as private as that network.
    Range(_net("64:ff9b:1::/48"), "local-use NAT64", False),
)

# IPv6 prefixes that carry an IPv4 address in their last 32 bits.
_NAT64 = _net("64:ff9b::/96")
_SIIT = _net("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
_COMPATIBLE_FLOOR = 1 << 24  # ::/96 below ::1.0.0.0 is ::, ::1 and ::2-style addresses

MAX_LABEL = 63
MAX_HOST_NAME = 253

_SAAS_ON = frozenset({"saas"})
_SAAS_OFF = frozenset({"self-hosted", "selfhosted", "standalone"})
_warned_modes: set[str] = set()

# After IDNA: letters, digits, '-' and '_' (some internal zones use it), dot-separated.
_HOST_NAME = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
# A last label like these makes the resolver try the name as an IPv4 address first.
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
# Never part of a URL we dial: C0 controls, space, DEL and the backslash (which a WHATWG
# parser reads as '/', so the authority would end somewhere else than urlsplit thinks).
_FORBIDDEN_IN_URL = re.compile(r"[\x00-\x20\x7f\\]")


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


# ---------------------------------------------------------------------------
# Addresses


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[ipaddress.IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address leads to, each with the mechanism's name.

    A packet to any of these forms reaches (or is relayed to) the embedded IPv4
    address, so that address must pass the IPv4 rules too.
    """
    found: list[tuple[ipaddress.IPv4Address, str]] = []
    value = int(address)
    low32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append((address.ipv4_mapped, "IPv4-mapped, ::ffff:0:0/96"))
    elif value >> 32 == 0 and value >= _COMPATIBLE_FLOOR:
        found.append((low32, "IPv4-compatible, ::/96"))
    if address in _SIIT:
        found.append((low32, "IPv4-translated, ::ffff:0:0:0/96"))
    if address in _NAT64:
        found.append((low32, "NAT64, 64:ff9b::/96"))
    if address.sixtofour is not None:
        found.append((address.sixtofour, "6to4, 2002::/16"))
    if address.teredo is not None:
        server, client = address.teredo
        found.append((client, "Teredo client, 2001::/32"))
        found.append((server, "Teredo server, 2001::/32"))
    return found


def _matching_range(address: IPAddress, *, saas: bool) -> Range | None:
    for entry in RANGES:
        same_family = address.version == entry.network.version
        if same_family and address in entry.network and (entry.always_blocked or not saas):
            return entry
    return None


def _refuse(entry: Range, subject: str) -> UnsafeURL:
    if entry.always_blocked:
        rule, kind, suffix = "blocked_range", "a blocked range", ""
    else:
        rule, kind, suffix = "private_range", "a private range", "; allowed only in SaaS mode"
    return UnsafeURL(
        rule, f"url: {subject} is in {kind} ({entry.network}, {entry.description}){suffix}"
    )


def _check_address(address: IPAddress, *, saas: bool, subject: str) -> None:
    """Raise UnsafeURL when `address`, or an IPv4 address it carries, is blocked."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(int(address))  # a zone id changes no range
    carried = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
    # CONTRACT §6: IPv4-mapped IPv6 is checked as IPv4. The other carriers must pass
    # both as themselves and for the IPv4 address they lead to.
    for inner, how in carried:
        entry = _matching_range(inner, saas=saas)
        if entry is not None:
            if how.startswith("IPv4-mapped"):
                raise _refuse(entry, subject)
            raise _refuse(entry, f"{subject} carries {inner} ({how}), which")
    entry = _matching_range(address, saas=saas)
    if entry is not None:
        raise _refuse(entry, subject)


def ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address the C resolver reads `host` as (inet_aton rules), if any.

    `inet_aton` takes one to four parts, each decimal, octal (leading 0) or hex (0x),
    the last filling the remaining bytes: 127.1, 0x7f.1, 2130706433 and 017700000001
    are all 127.0.0.1. glibc also stops at whitespace, which never reaches here.
    """
    if not host or not host.isascii() or host != host.strip():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def ipv6_literal(text: str) -> ipaddress.IPv6Address | None:
    """The IPv6 address in `text` (a zone id, `%eth0` or URL-escaped `%25eth0`, dropped)."""
    address, _, _zone = text.partition("%")
    try:
        return ipaddress.IPv6Address(address)
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# URLs


_USERINFO = re.compile(r"^([^:/?#]*:?//)[^/?#]*@")
MAX_SHOWN = 200


def shown(url: str) -> str:
    """`url` as a refusal may quote it: userinfo (a password, perhaps) masked, length capped.

    Refusals reach the producer's result and the worker log; credentials must not.
    """
    masked = _USERINFO.sub(r"\1***@", url.strip())
    if len(masked) > MAX_SHOWN:
        masked = masked[: MAX_SHOWN - 1] + "…"
    return repr(masked)


def check_scheme(url: str) -> SplitResult:
    """Raise UnsafeURL unless `url` parses and is http(s); returns its parts."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # e.g. an unclosed "[" IPv6 bracket
        raise UnsafeURL("malformed", f"url: cannot parse {shown(url)}: {exc}") from exc
    if parts.scheme not in ALLOWED_SCHEMES:  # urlsplit lower-cases the scheme
        raise UnsafeURL("scheme", f"url: scheme {parts.scheme!r} is not allowed (http, https only)")
    return parts


class Host(NamedTuple):
    """The host of a URL as the dialler will see it."""

    name: str  # ASCII, lower case, no trailing dot; an IPv6 address without brackets
    address: IPAddress | None  # set when the host is an address in any textual form


def _malformed(url: str, why: str) -> UnsafeURL:
    return UnsafeURL("malformed", f"url: cannot use {shown(url)}: {why}")


def _idna(url: str, host: str) -> str:
    """A Unicode host as `socket` sends it to the resolver (the `idna` codec)."""
    if host.isascii():
        return host.lower()
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise _malformed(url, f"host is not a valid internationalised name ({exc})") from None


def _bracketed(url: str, hostport: str) -> tuple[str, IPAddress]:
    inside, closed, rest = hostport[1:].partition("]")
    address = ipv6_literal(inside)
    if not closed or address is None:
        raise _malformed(url, "brackets must hold an IPv6 address")
    if rest and not re.fullmatch(r":[0-9]*", rest):
        raise _malformed(url, "only a port may follow the IPv6 address")
    return str(address), address


def _named(url: str, hostport: str) -> tuple[str, IPAddress | None]:
    raw = hostport.rpartition(":")[0] if ":" in hostport else hostport
    if ":" in raw:
        raise _malformed(url, "an IPv6 address must be in brackets")
    if "%" in raw:
        raise _malformed(url, "percent-escapes are not allowed in the host")
    name = _idna(url, raw).removesuffix(".")  # a trailing dot is the root label: same host
    if not name:
        raise UnsafeURL("missing_host", f"url: {shown(url)} has no host")
    if not _HOST_NAME.fullmatch(name):
        raise _malformed(url, f"host {name!r} is not a host name or an IP address")
    if len(name) > MAX_HOST_NAME or any(len(x) > MAX_LABEL for x in name.split(".")):
        raise _malformed(url, "host name too long for DNS (63 per label, 253 in all)")
    literal = ipv4_literal(name)
    if literal is None and _NUMERIC_LABEL.fullmatch(name.rpartition(".")[2]):
        # The resolver would try it as an address first: refuse what it might read
        # differently from us instead of sending it to DNS.
        raise _malformed(url, f"host {name!r} looks like an IPv4 address but is not one")
    return name, literal


def parse_host(url: str, parts: SplitResult) -> Host:
    """The host `parts` leads to, normalised; UnsafeURL for anything ambiguous."""
    stripped = url.strip()
    if _FORBIDDEN_IN_URL.search(stripped):
        raise _malformed(url, "whitespace, control characters and backslashes are not allowed")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and "@" in userinfo:
        # Parsers disagree on which '@' ends the userinfo: refuse rather than pick one.
        raise UnsafeURL("userinfo", f"url: {shown(url)} has more than one '@' in its authority")
    if at:
        # CONTRACT §6 (amended): `http://127.0.0.1@169.254.169.254/` reads as loopback to
        # a prefix test and dials cloud metadata; no agent needs credentials in its URL.
        raise UnsafeURL("userinfo", f"url: {shown(url)} has userinfo (user@host); not allowed")
    name, literal = _bracketed(url, hostport) if hostport.startswith("[") else _named(url, hostport)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise _malformed(url, f"bad port ({exc})") from None
    return Host(name, literal)


def check_agent_url(url: str, *, saas: bool, resolver: Resolver | None = None) -> None:
    """Raise UnsafeURL unless `url` is safe to push to; `resolver` defaults to DNS."""
    if not url.strip():
        raise UnsafeURL("missing_host", "url: empty URL has no host")
    parts = check_scheme(url)
    if not parts.hostname:
        raise UnsafeURL("missing_host", f"url: {shown(url)} has no host")
    host = parse_host(url, parts)

    if host.address is not None:
        written = parts.hostname.removesuffix(".")
        subject = str(host.address)
        if written != subject and not isinstance(host.address, ipaddress.IPv6Address):
            subject = f"host {written} is the address {host.address}, which"
        _check_address(host.address, saas=saas, subject=subject)
        return

    if host.name == "localhost":
        return  # explicitly allowed by the contract, without a lookup

    try:
        resolved = (resolver or system_resolver)(host.name)
    except OSError as exc:
        raise UnsafeURL("unresolvable", f"url: host {host.name} does not resolve: {exc}") from exc
    except UnicodeError as exc:  # the resolver's own IDNA step
        raise UnsafeURL(
            "unresolvable", f"url: host {host.name} cannot be looked up: {exc}"
        ) from exc
    if not resolved:
        raise UnsafeURL("unresolvable", f"url: host {host.name} resolves to no address")
    # Every address must pass: the connection may use any of them.
    for raw in resolved:
        address = ipv6_literal(raw) if ":" in raw else ipv4_literal(raw)
        if address is None:  # fail closed on anything that is not an address
            raise UnsafeURL(
                "unresolvable", f"url: host {host.name} resolves to {raw!r}, not an IP address"
            )
        _check_address(address, saas=saas, subject=f"host {host.name} resolves to {address}, which")
