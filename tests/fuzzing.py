"""Strategies and properties of the trust-boundary fuzzing, shared by the fast property
tests (tests/test_properties_*.py) and the long campaign (bench/fuzz.py).

Each `check_*` function is one property: it takes one generated input and raises
AssertionError when the property fails. Nothing here touches a service.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import socket
import string
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

from hypothesis import strategies as st

from registry.ingestion import payloads
from registry.ingestion.payloads import PayloadError, parse_payload
from registry.ingestion.registration import agent_url_for
from registry.ingestion.urlguard import RANGES, UnsafeURL, check_agent_url, embedded_ipv4
from registry.outcomes import Rejected

# ---------------------------------------------------------------------------
# Payloads

MODELS = (
    payloads.RegisterPayload,
    payloads.HeartbeatPayload,
    payloads.UpdateCardPayload,
    payloads.CreateWorkspacePayload,
    payloads.RemoveWorkspacePayload,
    payloads.CanCommunicatePayload,
    payloads.RuntimeMetadata,
)

# Text that breaks storage or parsers: NUL, lone surrogates, huge, right-to-left, IDNA.
awkward_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None), max_size=20),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "\ud800",
            "\udfff",
            "Z",
            "z",
            "NaN",
            "Infinity",
            "-1",
            "1e309",
            "0x10",
            "\u202e",
            "\uff48\uff54\uff54\uff50://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00+25:00",
            "9999-12-31T23:59:59.999999-23:59",
            "0001-01-01T00:00:00+00:01",
        ]
    ),
    st.integers(min_value=1, max_value=5).map(lambda n: "x" * (payloads.MAX_STRING * n // 4 + 1)),
)
awkward_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 2**31, 2**63, 10**12 + 1, -(10**19), 1e300, -0.0, math.nan]),
    st.booleans(),
)
scalars = st.one_of(
    st.none(),
    awkward_text,
    awkward_numbers,
    st.uuids().map(str),
    st.uuids(),  # Celery's JSON decodes UUID objects from a Python producer
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC))),
    st.binary(max_size=8),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(awkward_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def deep(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": [value]}
    return value


# Per field, values near the valid ones: the validator's edges get most of the attention.
NEAR_VALID: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.uuids().map(str), st.uuids(), awkward_text, st.none()),
    "workspace_id": st.one_of(st.uuids().map(str), awkward_text, awkward_numbers),
    "caller_id": st.one_of(st.uuids().map(str), awkward_text),
    "target_id": st.one_of(st.uuids().map(str), awkward_text),
    "parent_id": st.one_of(st.none(), st.uuids().map(str), awkward_text),
    "url": st.one_of(st.just("http://8.8.8.8/"), awkward_text, st.none()),
    "agent_card": st.one_of(
        st.dictionaries(awkward_text, json_like, max_size=4),
        json_like,
        st.integers(min_value=50, max_value=3000).map(deep),
        st.just({"big": "y" * (payloads.AGENT_CARD_MAX_BYTES + 1)}),
        st.just({"n": math.nan}),
    ),
    "delivery_mode": st.one_of(st.sampled_from(["push", "poll", "", "PUSH", None]), json_like),
    "auth_token": st.one_of(st.none(), awkward_text, st.text(min_size=256, max_size=300)),
    "error_rate": st.one_of(st.floats(), awkward_numbers, awkward_text),
    "sample_error": st.one_of(st.none(), awkward_text),
    "current_task": st.one_of(st.none(), awkward_text),
    "active_tasks": awkward_numbers,
    "uptime_seconds": awkward_numbers,
    "monthly_spend": awkward_numbers,
    "runtime_state": st.one_of(awkward_text, st.sampled_from(["", "running", "wedged"])),
    "runtime_metadata": st.one_of(
        st.none(),
        json_like,
        st.fixed_dictionaries(
            {},
            optional={
                "capabilities": st.dictionaries(awkward_text, json_like, max_size=3),
                "idle_timeout_seconds": awkward_numbers,
            },
        ),
    ),
    "sent_at": st.one_of(
        st.none(),
        awkward_numbers,
        awkward_text,
        st.datetimes(),
        st.datetimes(timezones=st.just(UTC)),
        st.floats(min_value=1e10, max_value=1e20),
    ),
    "name": st.one_of(awkward_text, st.text(min_size=1, max_size=300)),
    "runtime": st.one_of(st.sampled_from(["langgraph", "external", "A", "-x", ""]), awkward_text),
    "tier": awkward_numbers,
    "hibernation_idle_minutes": st.one_of(st.none(), awkward_numbers),
    "max_concurrent_tasks": awkward_numbers,
    "capabilities": st.dictionaries(awkward_text, json_like, max_size=3),
    "idle_timeout_seconds": awkward_numbers,
}


def near_valid_payload(model: type) -> st.SearchStrategy[dict[str, Any]]:
    fields = {name: NEAR_VALID.get(name, json_like) for name in model.model_fields}
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(awkward_text, json_like, max_size=2).map(lambda extra: d | extra)
    )


raw_payloads = st.one_of(json_like, st.dictionaries(awkward_text, json_like, max_size=6))


def _storable(value: Any) -> None:
    """No string that PostgreSQL cannot store got through."""
    if isinstance(value, str):
        assert "\x00" not in value
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _storable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _storable(item)


class NoAnswer:
    """A resolver for payload fuzzing: every name resolves to a public address."""

    def __call__(self, host: str) -> list[str]:
        return ["93.184.216.34"]


def check_payload(model: type, raw: Any) -> bool:
    """parse_payload gives a model or a PayloadError naming a field, nothing else.

    Returns True when the payload was accepted.
    """
    try:
        parsed = parse_payload(model, raw)
    except PayloadError as exc:
        message = str(exc)
        assert message and ":" in message, message  # "<field>: <what is wrong>"
        return False
    assert isinstance(parsed, model)
    _storable(parsed.model_dump())
    for name in ("sample_error", "current_task"):
        text = getattr(parsed, name, None)
        assert text is None or len(text) <= payloads.TEXT_CAP
    spend = getattr(parsed, "monthly_spend", 0)
    assert 0 <= spend <= payloads.MAX_SPEND_CENTS
    sent_at = getattr(parsed, "sent_at", None)
    assert sent_at is None or sent_at.tzinfo is not None
    if isinstance(parsed, payloads.RegisterPayload):
        # The next gate a registration meets: the URL check names the field or passes.
        for mode in ("push", "poll"):
            try:
                agent_url_for(parsed, mode, NoAnswer())
            except Rejected as exc:
                # Push mode may fall back to the card's url (CONTRACT §12).
                assert str(exc).startswith(("url: ", "url is ", "agent_card.url: ")), str(exc)
    return True


# ---------------------------------------------------------------------------
# URL guard

ALWAYS_BLOCKED = [r.network for r in RANGES if r.always_blocked]
PRIVATE = [r.network for r in RANGES if not r.always_blocked]


def address_in(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> st.SearchStrategy[Any]:
    first, last = int(network.network_address), int(network.broadcast_address)
    edges = st.sampled_from([first, last, first + 1 if first < last else first])
    make = ipaddress.IPv6Address if network.version == 6 else ipaddress.IPv4Address
    return st.one_of(edges, st.integers(first, last)).map(make)


def _part(value: int, style: str) -> str:
    if style == "oct":
        return "0" + format(value, "o") if value else "0"
    if style == "hex":
        return "0x" + format(value, "x")
    if style == "HEX":
        return "0X" + format(value, "X")
    return str(value)


@st.composite
def ipv4_text(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """Any textual form inet_aton reads as `address`: 1-4 parts, dec/oct/hex each."""
    value = int(address)
    octets = list(address.packed)
    parts = draw(st.sampled_from([1, 2, 3, 4]))
    if parts == 1:
        numbers = [value]
    elif parts == 2:
        numbers = [octets[0], value & 0xFFFFFF]
    elif parts == 3:
        numbers = [octets[0], octets[1], value & 0xFFFF]
    else:
        numbers = octets
    styles = st.sampled_from(["dec", "oct", "hex", "HEX"])
    text = ".".join(_part(n, draw(styles)) for n in numbers)
    if draw(st.booleans()) and "." in text and draw(st.integers(0, 3)) == 0:
        text = text.replace(".", draw(st.sampled_from(["\u3002", "\uff0e", "\uff61"])))
    if draw(st.integers(0, 4)) == 0:  # fullwidth digits: IDNA maps them back
        text = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in text)
    return text


def _v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


@st.composite
def carriers(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """An IPv6 literal that carries `address` (mapped, compatible, SIIT, NAT64, 6to4, Teredo)."""
    v = int(address)
    kind = draw(st.sampled_from(["mapped", "mapped_dotted", "compat", "siit", "nat64", "6to4"]))
    if kind == "mapped":
        return _v6(0xFFFF << 32 | v)
    if kind == "mapped_dotted":
        return f"::ffff:{address}"
    if kind == "compat" and v >= 1 << 24:
        return f"::{address}"
    if kind == "siit":
        return f"::ffff:0:{address}"
    if kind == "6to4":
        return _v6(0x2002 << 112 | v << 80 | draw(st.integers(0, 2**80 - 1)))
    return _v6(int(ipaddress.IPv6Address("64:ff9b::")) | v)


@st.composite
def teredo(draw: st.DrawFn, address: ipaddress.IPv4Address, as_client: bool) -> str:
    other = draw(st.sampled_from([0x08080808, 0x41364E78]))  # public
    server, client = (other, int(address)) if as_client else (int(address), other)
    flags_port = draw(st.integers(0, 2**32 - 1))
    return _v6(0x20010000 << 96 | server << 64 | flags_port << 32 | (~client & 0xFFFFFFFF))


@st.composite
def ipv6_text(draw: st.DrawFn, address: ipaddress.IPv6Address) -> str:
    text = draw(st.sampled_from([address.compressed, address.exploded]))
    if draw(st.booleans()):
        text = text.upper()
    return text


@st.composite
def bracketed(draw: st.DrawFn, text: str) -> str:
    zone = draw(st.sampled_from(["", "", "%25eth0", "%25lo", "%251"]))
    return f"[{text}{zone}]"


@st.composite
def url_around(draw: st.DrawFn, host: str, *, may_add_dot: bool = True) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    userinfo = draw(st.sampled_from(["", "user@", "user:pw@", "8.8.8.8@", "a%40b@"]))
    dot = "." if may_add_dot and not host.startswith("[") and draw(st.booleans()) else ""
    port = draw(st.sampled_from(["", ":80", ":8000", ":65535", ":"]))
    path = draw(st.sampled_from(["", "/", "/a2a", "/?q=1#f", "#x"]))
    return f"{scheme}://{userinfo}{host}{dot}{port}{path}"


@st.composite
def blocked_url(draw: st.DrawFn) -> tuple[str, bool, ipaddress.IPv4Address | Any]:
    """(url, always_blocked, address): a blocked address in one of its textual forms."""
    always = draw(st.booleans())
    network = draw(st.sampled_from(ALWAYS_BLOCKED if always else PRIVATE))
    address = draw(address_in(network))
    if isinstance(address, ipaddress.IPv4Address):
        form = draw(st.sampled_from(["v4", "v4", "carrier", "teredo_client", "teredo_server"]))
        if form == "v4":
            host = draw(ipv4_text(address))
        elif form == "carrier":
            host = draw(bracketed(draw(ipv6_text(ipaddress.IPv6Address(draw(carriers(address)))))))
        else:
            host = draw(bracketed(draw(teredo(address, as_client=form == "teredo_client"))))
    else:
        host = draw(bracketed(draw(ipv6_text(address))))
    return draw(url_around(host)), always, address


class NoLookup:
    """A resolver that must not be called for IP literals."""

    def __call__(self, host: str) -> list[str]:
        raise AssertionError(f"an address was looked up as a name: {host!r}")


def check_blocked_url(url: str, always: bool, saas: bool) -> None:
    """Every textual form of a blocked address is refused, naming its range."""
    if not always and saas:
        return
    try:
        check_agent_url(url, saas=saas, resolver=NoLookup())
    except UnsafeURL as exc:
        # A URL with userinfo is refused for that first (CONTRACT §6, amended).
        named = ("blocked_range", "private_range") + (("userinfo",) if "@" in url else ())
        assert exc.rule in named, (url, exc.rule, str(exc))
        return
    raise AssertionError(f"blocked address passed the guard: {url!r}")


# Arbitrary URL-ish text: the guard refuses or accepts, never raises anything else.
_url_chars = (
    string.ascii_letters + string.digits + ":/@[]%.-_~?#\\ \t\x00!$&'()*+,;=" + "\u3002\uff10\uff11"
)
public_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}", fullmatch=True),
    st.sampled_from(["localhost", "LOCALHOST.", "agent.example.com", "xn--bcher-kva.example"]),
    st.text(min_size=1, max_size=12),
)
structured_urls = st.builds(
    lambda scheme, userinfo, host, dot, port, path: f"{scheme}://{userinfo}{host}{dot}{port}{path}",
    st.sampled_from(["http", "https", "HTTP", "hTtPs", "ftp"]),
    st.sampled_from(["", "u@", "u:p@", "@", "a@b@", "127.0.0.1@", "[::1]@"]),
    public_hosts,
    st.sampled_from(["", "", ".", ".."]),
    st.sampled_from(["", ":0", ":80", ":65536", ":-1", ":8000", "::80"]),
    st.sampled_from(["", "/", "/a2a?x=1", "#f", "\\@127.0.0.1/", "/..;/"]),
)
url_text = st.one_of(
    structured_urls,
    st.text(max_size=60),
    st.text(alphabet=_url_chars, max_size=60),
    st.tuples(
        st.sampled_from(["http://", "https://", "HTTP://", "http:/", "http:", "//", ""]),
        st.text(alphabet=_url_chars, max_size=40),
    ).map("".join),
)
resolved_lists = st.lists(
    st.one_of(
        st.ip_addresses().map(str),
        st.sampled_from(["169.254.169.254", "fe80::1%eth0", "::ffff:127.0.0.1", "not-an-ip"]),
        st.text(max_size=10),
    ),
    max_size=3,
)


def _numeric_read(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """What the C resolver makes of `host` without DNS (AI_NUMERICHOST), if anything."""
    if not host:
        return []
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


def _oracle_blocked(address: Any, saas: bool) -> bool:
    """An independent reading of CONTRACT §6 plus the carried-IPv4 rule."""
    checks = [address]
    if isinstance(address, ipaddress.IPv6Address):
        checks += [inner for inner, _ in embedded_ipv4(address)]
    for candidate in checks:
        for entry in RANGES:
            if candidate.version != entry.network.version or candidate not in entry.network:
                continue
            if entry.always_blocked or not saas:
                return True
    return False


def _hosts_a_dialler_sees(url: str) -> list[str]:
    """The host as urlsplit and as urllib3 (what requests/docker use) read the URL."""
    hosts: list[str] = []
    with contextlib.suppress(ValueError):
        hosts.append(urlsplit(url.strip()).hostname or "")
    try:
        from urllib3.util import parse_url

        hosts.append((parse_url(url.strip()).host or "").strip("[]"))
    except Exception:
        pass
    return [h for h in hosts if h]


class TableResolver:
    def __init__(self, answer: list[str]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if not self.answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answer


def check_any_url(url: str, resolved: list[str], saas: bool) -> bool:
    """Anything: refused with UnsafeURL, or accepted and then truly safe to dial.

    Accepted means: no parser the platform uses reads the host as a blocked address,
    and every address the (fake) resolver gave is allowed. Returns True if accepted.
    """
    resolver = TableResolver(resolved)
    try:
        check_agent_url(url, saas=saas, resolver=resolver)
    except UnsafeURL as exc:
        assert exc.rule and str(exc).startswith("url: "), str(exc)
        return False
    for host in _hosts_a_dialler_sees(url):
        for address in _numeric_read(host.removesuffix(".")):
            assert not _oracle_blocked(address, saas), (url, host, address)
    if resolver.asked:
        for raw in resolved:
            address = ipaddress.ip_address(raw.partition("%")[0])
            assert not _oracle_blocked(address, saas), (url, raw)
    return True
