"""Agent URL check (CONTRACT §6): unit tests with a fake resolver (DNS is never asked),
then the bypass forms through registration and a real worker."""

from __future__ import annotations

import logging
import socket

import pytest
from fuzzing import NoLookup
from ingest_helpers import (
    db_snapshot,
    new_id,
    outcome,
    redis_snapshot,
    register_now,
    run_message,
)

from molecule_registry_client.names import REGISTER_TASK
from registry.ingestion import urlguard
from registry.ingestion.urlguard import UnsafeURL, check_agent_url, saas_mode, system_resolver


class FakeResolver:
    """A dict lookup that records its calls and fails like getaddrinfo for unknown names."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def reject(url: str, *, saas: bool = False, resolver: FakeResolver | None = None) -> UnsafeURL:
    with pytest.raises(UnsafeURL) as info:
        check_agent_url(url, saas=saas, resolver=resolver or FakeResolver())
    return info.value


# One address inside every always-blocked range: (host in URL, network, description).
ALWAYS_BLOCKED = [
    ("169.254.169.254", "169.254.0.0/16", "cloud metadata"),
    ("127.0.0.1", "127.0.0.0/8", "loopback"),
    ("127.255.255.255", "127.0.0.0/8", "loopback"),
    ("[fe80::1]", "fe80::/10", "link-local"),
    ("[febf:ffff::1]", "fe80::/10", "link-local"),
    ("[fe80::1%25eth0]", "fe80::/10", "link-local"),
    ("[::1]", "::1/128", "loopback"),
    ("192.0.2.10", "192.0.2.0/24", "TEST-NET-1"),
    ("198.51.100.10", "198.51.100.0/24", "TEST-NET-2"),
    ("203.0.113.10", "203.0.113.0/24", "TEST-NET-3"),
    ("100.64.0.1", "100.64.0.0/10", "carrier-grade NAT"),
    ("100.127.255.255", "100.64.0.0/10", "carrier-grade NAT"),
    ("224.0.0.1", "224.0.0.0/4", "multicast"),
    ("239.255.255.255", "224.0.0.0/4", "multicast"),
    ("[fc00::1]", "fc00::/8", "unique local"),
    ("[fcff:ffff::1]", "fc00::/8", "unique local"),
    ("[2001:db8::1]", "2001:db8::/32", "documentation"),
    # Added beyond CONTRACT §6 (docs/OPERATIONS.md): the unspecified addresses reach this host.
    ("0.0.0.0", "0.0.0.0/8", "unspecified"),
    ("[::]", "::/128", "unspecified"),
    ("[::ffff:0.0.0.0]", "0.0.0.0/8", "unspecified"),
    # Amended CONTRACT §6 (turn 3).
    ("[fec0::1]", "fec0::/10", "site-local"),
    ("[feff:ffff::1]", "fec0::/10", "site-local"),
    ("[100::1]", "100::/64", "discard-only"),
    ("198.18.0.1", "198.18.0.0/15", "benchmarking"),
    ("198.19.255.255", "198.18.0.0/15", "benchmarking"),
    ("192.0.0.8", "192.0.0.0/24", "IETF protocol assignments"),
]

# One address inside every range SaaS mode relaxes.
PRIVATE = [
    ("10.0.0.1", "10.0.0.0/8"),
    ("10.255.255.255", "10.0.0.0/8"),
    ("172.16.0.1", "172.16.0.0/12"),
    ("172.31.255.255", "172.16.0.0/12"),
    ("192.168.1.1", "192.168.0.0/16"),
    ("[fd00::1]", "fd00::/8"),
    ("[fdff:ffff::1]", "fd00::/8"),
]

# Just outside a range: allowed even in self-hosted mode.
JUST_OUTSIDE = [
    "169.253.255.255",
    "169.255.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "192.0.1.255",
    "192.0.3.0",
    "198.51.99.255",
    "198.51.101.0",
    "203.0.112.255",
    "203.0.114.0",
    "100.63.255.255",
    "100.128.0.0",
    "223.255.255.255",
    "[fe7f:ffff::1]",
    "[::2]",
    "198.17.255.255",
    "198.20.0.0",
    "192.0.1.0",
    "[100:0:0:1::1]",
    "[fbff:ffff::1]",
    "[fe00::1]",
    "[2001:db7:ffff::1]",
    "[2001:db9::1]",
    "8.8.8.8",
    "[2606:4700::1111]",
]


@pytest.mark.parametrize("saas", [False, True])
@pytest.mark.parametrize(("host", "network", "description"), ALWAYS_BLOCKED)
def test_always_blocked_ranges(host: str, network: str, description: str, saas: bool) -> None:
    exc = reject(f"http://{host}:8000/a2a", saas=saas)
    assert exc.rule == "blocked_range"
    assert "blocked range" in str(exc)
    assert f"({network}, " in str(exc)
    assert description in str(exc)


@pytest.mark.parametrize(("host", "network"), PRIVATE)
def test_private_ranges_blocked_unless_saas(host: str, network: str) -> None:
    exc = reject(f"https://{host}/", saas=False)
    assert exc.rule == "private_range"
    assert f"private range ({network}, " in str(exc)
    assert "SaaS" in str(exc)
    check_agent_url(f"https://{host}/", saas=True, resolver=FakeResolver())


@pytest.mark.parametrize("saas", [False, True])
@pytest.mark.parametrize("host", JUST_OUTSIDE)
def test_addresses_just_outside_ranges_pass(host: str, saas: bool) -> None:
    resolver = FakeResolver()
    check_agent_url(f"http://{host}/", saas=saas, resolver=resolver)
    assert resolver.calls == []  # IP literals are never looked up


@pytest.mark.parametrize(
    ("host", "rule", "network"),
    [
        ("[::ffff:169.254.169.254]", "blocked_range", "169.254.0.0/16"),
        ("[::FFFF:127.0.0.1]", "blocked_range", "127.0.0.0/8"),
        ("[::ffff:a9fe:a9fe]", "blocked_range", "169.254.0.0/16"),  # hex form
        ("[::ffff:10.1.2.3]", "private_range", "10.0.0.0/8"),
    ],
)
def test_ipv4_mapped_ipv6_is_checked_as_ipv4(host: str, rule: str, network: str) -> None:
    exc = reject(f"http://{host}/")
    assert exc.rule == rule
    assert f"({network}, " in str(exc)


def test_ipv4_mapped_private_allowed_in_saas_and_public_allowed() -> None:
    check_agent_url("http://[::ffff:10.1.2.3]/", saas=True, resolver=FakeResolver())
    check_agent_url("http://[::ffff:8.8.8.8]/", saas=False, resolver=FakeResolver())


@pytest.mark.parametrize(
    "url",
    [
        "HTTP://8.8.8.8/",
        "Https://8.8.8.8:443/x?y=1#z",
        "http://8.8.8.8./",
    ],
)
def test_url_forms_that_pass(url: str) -> None:
    check_agent_url(url, saas=False, resolver=FakeResolver())


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8@169.254.169.254/",
        "http://127.0.0.1@169.254.169.254/latest/meta-data/",
        "http://user@8.8.8.8/",
        "http://user:secret@8.8.8.8:8080/",
        "http://user:pw@localhost:9000/",
        "http://@8.8.8.8/",
    ],
)
def test_userinfo_is_refused(url: str) -> None:
    # CONTRACT §6 (amended): no URL with userinfo, whatever its host.
    exc = reject(url)
    assert exc.rule == "userinfo"
    assert "secret" not in str(exc) and "pw@" not in str(exc)  # credentials never echoed


def test_trailing_dot_on_ip_literal_is_still_checked() -> None:
    assert reject("http://127.0.0.1./").rule == "blocked_range"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/",
        "http://localhost:8000/a2a",
        "https://LOCALHOST/",
        "http://LocalHost./",
    ],
)
@pytest.mark.parametrize("saas", [False, True])
def test_localhost_allowed_without_lookup(url: str, saas: bool) -> None:
    resolver = FakeResolver({"localhost": ["127.0.0.1"]})
    check_agent_url(url, saas=saas, resolver=resolver)
    assert resolver.calls == []


def test_localhost_subdomain_is_resolved_and_checked() -> None:
    resolver = FakeResolver({"evil.localhost": ["127.0.0.1"]})
    exc = reject("http://evil.localhost/", resolver=resolver)
    assert resolver.calls == ["evil.localhost"]
    assert exc.rule == "blocked_range"


def test_name_resolving_to_public_addresses_passes() -> None:
    resolver = FakeResolver({"agent.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    check_agent_url("https://Agent.Example.COM./a2a", saas=False, resolver=resolver)
    assert resolver.calls == ["agent.example.com"]  # lower-cased, trailing dot dropped


@pytest.mark.parametrize(
    ("addresses", "saas", "rule", "network"),
    [
        (["93.184.216.34", "169.254.169.254"], False, "blocked_range", "169.254.0.0/16"),
        (["93.184.216.34", "169.254.169.254"], True, "blocked_range", "169.254.0.0/16"),
        (["2606:2800:220:1::1", "::1"], True, "blocked_range", "::1/128"),
        (["93.184.216.34", "::ffff:127.0.0.1"], True, "blocked_range", "127.0.0.0/8"),
        (["fe80::1%eth0"], True, "blocked_range", "fe80::/10"),
        (["93.184.216.34", "192.168.0.7"], False, "private_range", "192.168.0.0/16"),
    ],
)
def test_every_resolved_address_must_pass(
    addresses: list[str], saas: bool, rule: str, network: str
) -> None:
    exc = reject(
        "http://agent.example.com/",
        saas=saas,
        resolver=FakeResolver({"agent.example.com": addresses}),
    )
    assert exc.rule == rule
    assert "agent.example.com resolves to" in str(exc)
    assert f"({network}, " in str(exc)


def test_name_resolving_to_private_address_passes_in_saas() -> None:
    resolver = FakeResolver({"agent.internal": ["10.0.3.4", "fd12::4"]})
    check_agent_url("http://agent.internal:8000/", saas=True, resolver=resolver)


@pytest.mark.parametrize(
    ("table", "detail"),
    [
        ({}, "does not resolve"),
        ({"agent.example.com": []}, "no address"),
        ({"agent.example.com": ["not-an-ip"]}, "not an IP address"),
    ],
)
def test_unresolvable_names_are_rejected(table: dict[str, list[str]], detail: str) -> None:
    exc = reject("http://agent.example.com/", saas=True, resolver=FakeResolver(table))
    assert exc.rule == "unresolvable"
    assert "agent.example.com" in str(exc)
    assert detail in str(exc)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("ftp://example.com/file", "ftp"),
        ("file:///etc/passwd", "file"),
        ("javascript:alert(1)", "javascript"),
        ("gopher://127.0.0.1:6379/_INFO", "gopher"),
        ("//example.com/a2a", ""),
        ("example.com/a2a", ""),
    ],
)
def test_bad_schemes_are_rejected(url: str, scheme: str) -> None:
    resolver = FakeResolver({"example.com": ["93.184.216.34"]})
    exc = reject(url, resolver=resolver)
    assert exc.rule == "scheme"
    assert f"scheme {scheme!r} is not allowed" in str(exc)
    assert resolver.calls == []


@pytest.mark.parametrize(
    "url", ["", "   ", "http://", "https:///a2a", "http://:8000/", "http://user@/"]
)
def test_missing_host_is_rejected(url: str) -> None:
    exc = reject(url)
    assert exc.rule == "missing_host"
    assert "no host" in str(exc)


def test_malformed_url_is_rejected() -> None:
    exc = reject("http://[::1/a2a")
    assert exc.rule == "malformed"
    assert "cannot parse" in str(exc)


def test_unsafe_url_is_a_value_error() -> None:
    assert isinstance(reject("ftp://x/"), ValueError)


def test_system_resolver_deduplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_getaddrinfo(host: str, port: object, **_: object) -> list[tuple[object, ...]]:
        assert host == "agent.example.com"
        v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0))
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:220:1::1", 0, 0, 0))
        return [v4, v6, v4]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert system_resolver("agent.example.com") == ["93.184.216.34", "2606:2800:220:1::1"]


def test_system_resolver_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_getaddrinfo(host: str, port: object, **_: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
    with pytest.raises(UnsafeURL) as info:
        check_agent_url("http://agent.example.com/", saas=True)
    assert info.value.rule == "unresolvable"


# --- saas_mode -----------------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urlguard, "_warned_modes", set())


@pytest.mark.usefixtures("fresh_warnings")
@pytest.mark.parametrize(
    ("deploy_mode", "org_id", "expected"),
    [
        ("saas", "", True),
        ("saas", "org-1", True),
        ("SaaS", "", True),
        (" saas ", "", True),
        ("self-hosted", "", False),
        ("self-hosted", "org-1", False),
        ("selfhosted", "org-1", False),
        ("standalone", "org-1", False),
        ("", "", False),
        ("", "org-1", True),
        ("", "   ", False),
        ("   ", "org-1", True),
    ],
)
def test_saas_mode_known_values(
    deploy_mode: str, org_id: str, expected: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=urlguard.__name__):
        assert saas_mode(deploy_mode, org_id) is expected
    assert caplog.records == []


@pytest.mark.usefixtures("fresh_warnings")
@pytest.mark.parametrize("org_id", ["", "org-1"])
def test_saas_mode_unknown_value_is_off_with_one_warning(
    org_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=urlguard.__name__):
        assert saas_mode("cloud", org_id) is False
        assert saas_mode("cloud", org_id) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'cloud'" in warnings[0].getMessage()
    assert "self-hosted" in warnings[0].getMessage()


# --- every textual form the resolver accepts (issue: guards with gaps) ----------------


@pytest.mark.parametrize(
    ("host", "network"),
    [
        # inet_aton forms: one to four parts, decimal, octal or hex
        ("2130706433", "127.0.0.0/8"),
        ("017700000001", "127.0.0.0/8"),
        ("0x7f000001", "127.0.0.0/8"),
        ("0x7f.1", "127.0.0.0/8"),
        ("0X7F.0.0.1", "127.0.0.0/8"),
        ("127.1", "127.0.0.0/8"),
        ("127.0.1", "127.0.0.0/8"),
        ("0177.0.0.01", "127.0.0.0/8"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.0.0/16"),
        ("2852039166", "169.254.0.0/16"),
        ("169.254.43518", "169.254.0.0/16"),
        ("0", "0.0.0.0/8"),
        ("2130706433.", "127.0.0.0/8"),
        # IPv4 embedded in IPv6
        ("[::127.0.0.1]", "127.0.0.0/8"),
        ("[::a9fe:a9fe]", "169.254.0.0/16"),
        ("[::ffff:0:127.0.0.1]", "127.0.0.0/8"),
        ("[64:ff9b::127.0.0.1]", "127.0.0.0/8"),
        ("[64:ff9b::a9fe:a9fe]", "169.254.0.0/16"),
        ("[2002:7f00:1::]", "127.0.0.0/8"),
        ("[2002:a9fe:a9fe::1]", "169.254.0.0/16"),
        ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "127.0.0.0/8"),  # Teredo client
        ("[2001:0:7f00:1::f7f7:f7f7]", "127.0.0.0/8"),  # Teredo server
        # zone ids, case, IDNA
        ("[::FFFF:7F00:1%25eth0]", "127.0.0.0/8"),
        ("[FE80::1%25lo]", "fe80::/10"),
        ("\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11", "127.0.0.0/8"),  # fullwidth
        ("127\u30020\u30020\u30021", "127.0.0.0/8"),  # ideographic full stop
        ("①②⑦.⓪.⓪.①", "127.0.0.0/8"),
        # extensions beyond the contract's list
        ("[ff02::1]", "ff00::/8"),
        ("255.255.255.255", "240.0.0.0/4"),
    ],
)
def test_every_textual_form_of_a_blocked_address_is_refused(host: str, network: str) -> None:
    for url in (f"http://{host}/", f"HTTPS://{host}:8443/a2a"):
        exc = reject(url, saas=True)
        assert exc.rule == "blocked_range", url
        assert f"({network}, " in str(exc)


@pytest.mark.parametrize(
    ("host", "carried", "how"),
    [
        ("[64:ff9b::a9fe:a9fe]", "169.254.169.254", "NAT64"),
        ("[2002:7f00:1::]", "127.0.0.1", "6to4"),
        ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "127.0.0.1", "Teredo client"),
    ],
)
def test_refusal_names_the_embedding(host: str, carried: str, how: str) -> None:
    message = str(reject(f"http://{host}/"))
    assert f"carries {carried} ({how}" in message


def test_short_ipv4_form_names_what_it_is() -> None:
    exc = reject("http://0x7f.1/")
    assert "host 0x7f.1 is the address 127.0.0.1" in str(exc)


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("167772161", "10.0.0.0/8"),
        ("012.1", "10.0.0.0/8"),
        ("[64:ff9b::10.1.2.3]", "10.0.0.0/8"),
        ("[2002:c0a8:101::]", "192.168.0.0/16"),
        ("[64:ff9b:1::1]", "64:ff9b:1::/48"),
    ],
)
def test_embedded_private_addresses_follow_saas_mode(host: str, network: str) -> None:
    exc = reject(f"http://{host}/", saas=False)
    assert exc.rule == "private_range"
    assert f"({network}, " in str(exc)
    check_agent_url(f"http://{host}/", saas=True, resolver=FakeResolver())


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::8.8.8.8]",
        "[2002:808:808::1]",
        "[2001:0:4136:e378:8000:63bf:f7f7:f7f7]",  # Teredo: public server and client
        "134744072",  # 8.8.8.8
        "0x8.0x8.0x8.0x8",
        "[::ffff:0:8.8.8.8]",
    ],
)
def test_embedded_public_addresses_pass(host: str) -> None:
    resolver = FakeResolver()
    check_agent_url(f"http://{host}/", saas=False, resolver=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://127.0.0.1%2e/", "percent-escapes"),
        ("http://%31%32%37.0.0.1/", "percent-escapes"),
        ("http://08.0.0.1/", "looks like an IPv4 address"),
        ("http://1.2.3.4.5/", "looks like an IPv4 address"),
        ("http://127.0.0.256/", "looks like an IPv4 address"),
        ("http://4294967296/", "looks like an IPv4 address"),
        ("http://0x/", "looks like an IPv4 address"),
        ("http://example.123/", "looks like an IPv4 address"),
        ("http://[127.0.0.1]/", "cannot be in brackets"),
        ("http://[v1.fe]/", "brackets must hold an IPv6 address"),
        ("http://[::1]x/", "only a port"),
        ("http://evil.com\\@127.0.0.1/", "backslashes"),
        ("http://127.0.0.1\t/", "whitespace"),
        ("http://8.8.8.8 127.0.0.1/", "whitespace"),
        ("http://a..b/", "not a host name"),
        ("http://exa mple.com/", "whitespace"),
        ("http://exa*mple.com/", "not a host name"),
        ("http://example.com:99999/", "bad port"),
        ("http://example.com:http/", "bad port"),
        ("http://" + "a" * 64 + ".com/", "too long"),
        ("http://" + "a." * 127 + "com/", "too long"),
    ],
)
def test_ambiguous_hosts_are_refused_as_malformed(url: str, detail: str) -> None:
    resolver = FakeResolver({"example.com": ["93.184.216.34"]})
    exc = reject(url, resolver=resolver)
    assert exc.rule == "malformed", str(exc)
    assert detail in str(exc)
    assert resolver.calls == []


def test_two_at_signs_are_refused() -> None:
    exc = reject("http://a@8.8.8.8@127.0.0.1/")
    assert exc.rule == "userinfo"


def test_unicode_host_is_resolved_in_its_idna_form() -> None:
    resolver = FakeResolver({"xn--bcher-kva.example": ["93.184.216.34"]})
    check_agent_url("http://Bücher.example/", saas=False, resolver=resolver)
    assert resolver.calls == ["xn--bcher-kva.example"]
    metadata = FakeResolver({"xn--bcher-kva.example": ["169.254.169.254"]})
    assert reject("http://BÜCHER.example./", resolver=metadata).rule == "blocked_range"


def test_resolved_short_forms_and_zone_ids_are_read_as_addresses() -> None:
    resolver = FakeResolver({"agent.example.com": ["fe80::1%25eth0"]})
    assert reject("http://agent.example.com/", resolver=resolver).rule == "blocked_range"
    resolver = FakeResolver({"agent.example.com": ["64:ff9b::7f00:1"]})
    assert "carries 127.0.0.1" in str(reject("http://agent.example.com/", resolver=resolver))


# --- through registration and a real worker ----------------------------------------

BYPASS_FORMS = [
    "http://2130706433/",
    "http://0x7f.1/",
    "http://017700000001/",
    "http://127.1:8000/",
    "http://[64:ff9b::a9fe:a9fe]/latest",
    "http://[2002:7f00:1::]/",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
    "http://[::127.0.0.1]/",
    "http://[::ffff:7f00:1%25eth0]/",
    "http://\uff11\uff12\uff17.0.0.1/",
    "http://a@8.8.8.8@127.0.0.1/",
    "http://127.0.0.1%2e/",
]


@pytest.mark.integration
@pytest.mark.parametrize("url", BYPASS_FORMS)
def test_registration_refuses_every_bypass_form_and_changes_nothing(
    db, redis_client, url: str
) -> None:
    ws = new_id()
    before = (db_snapshot(db), redis_snapshot(redis_client))
    result = outcome(lambda: register_now(ws, url=url, delivery_mode="push", resolver=NoLookup()))
    assert result["status"] == "rejected", result
    assert result["error"].startswith("url: "), result
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before


@pytest.mark.integration
def test_worker_refuses_a_short_form_loopback_url(db, worker, celery_app) -> None:
    payload = {"id": new_id(), "agent_card": {}, "delivery_mode": "push", "url": "http://0x7f.1/"}
    result = run_message(celery_app, REGISTER_TASK, payload)
    assert result["status"] == "rejected"
    assert "host 0x7f.1 is the address 127.0.0.1" in result["error"]
    assert "(127.0.0.0/8, loopback)" in result["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@[v1.fe]/",
        "http://agent:hunter2@a@127.0.0.1/",
        "http://u:hunter2@[::1/",
        "http://u:hunter2@08.0.0.1/",
    ],
)
def test_refusals_never_quote_the_password_in_a_url(url: str) -> None:
    message = str(reject(url))
    assert "hunter2" not in message
    assert "***@" in message


def test_refusals_quote_at_most_a_short_prefix_of_a_long_url() -> None:
    message = str(reject("http://[v1.fe]/" + "a" * 3000))
    assert len(message) < 400
