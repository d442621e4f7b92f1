"""The signature rule (CONTRACT §13): what varies is replaced, the cause is kept, and
any input gives a bounded, stable result without raising."""

from __future__ import annotations

import logging
import random

import pytest

from registry import config
from registry.insight.signature import INPUT_MAX_CHARS, SIGNATURE_MAX_CHARS, signature

CASES = [
    ("rate limited (429), retry after 17s", "rate limited (<num>), retry after <num>s"),
    ("timeout after 30.5 s", "timeout after <num> s"),
    ("workspace 0f3c2a9b-1d2e-4c5f-8a9b-0c1d2e3f4a5b not found", "workspace <uuid> not found"),
    ("segfault at 0x7ffe12ab", "segfault at <hex>"),
    ("commit deadbeef1234 missing", "commit <hex> missing"),
    ("request req_8fK2x9aBcD12 failed", "request <id> failed"),
    ('key "sk-live-abc" rejected', "key <str> rejected"),
    ("file 'notes.txt' missing", "file <str> missing"),
    ("GET /v1/models/gpt-4/completions failed", "GET <path> failed"),
    (
        "upstream https://api.example.com/v1/chat?x=1 returned 503",
        "upstream https://api.example.com<path> returned <num>",
    ),
    ("  many   spaces\tand\ttabs  ", "many spaces and tabs"),
    ("line one\nline two", "line one line two"),
]


@pytest.mark.parametrize(("sample", "expected"), CASES)
def test_variable_parts_are_replaced(sample: str, expected: str) -> None:
    assert signature(sample) == expected


def test_errors_differing_only_in_numbers_and_ids_share_a_signature() -> None:
    found = {
        signature(f"HTTP 429 from https://api.x.com/v1/{n} for req_{n:012d}ab after {n}ms")
        for n in range(1000)
    }
    assert len(found) == 1


def test_different_causes_stay_apart() -> None:
    assert signature("connection refused") != signature("connection reset")
    assert signature("rate limited") != signature("quota exceeded")


@pytest.mark.parametrize("sample", [None, "", 0, 1.5, b"bytes", ["list"]])
def test_no_text_is_the_empty_signature(sample: object) -> None:
    assert signature(sample) == ""


def test_length_is_capped_and_the_work_bounded() -> None:
    assert signature("x") == "x"
    long = "error " + "y" * 10_000
    assert len(signature(long)) == SIGNATURE_MAX_CHARS
    assert signature(long) == signature(long[:INPUT_MAX_CHARS] + "z" * 50)


def test_binary_noise_is_stable_bounded_and_never_raises() -> None:
    rng = random.Random(19)
    for _ in range(300):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        text = noise.decode("latin-1")
        first = signature(text)
        assert first == signature(text)
        assert len(first) <= SIGNATURE_MAX_CHARS
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in first)


# Settings (CONTRACT §2): a bad value falls back to the default, loudly, once.
SETTINGS = {
    "INCIDENT_MIN_MEMBERS": ("incident_min_members", 5, ["0", "-3", "many", "2.5"]),
    "INCIDENT_WINDOW_SECONDS": ("incident_window_seconds", 300, ["0", "soon"]),
    "FLAP_THRESHOLD": ("flap_threshold", 6, ["1", "0", "101", "six"]),
    "FLAP_WINDOW_SECONDS": ("flap_window_seconds", 600, ["0", "-1", "x"]),
    "FLAP_DAMPING": ("flap_damping", False, ["maybe", "2"]),
    "FLAP_HOLD_SECONDS": ("flap_hold_seconds", 120, ["0", "later"]),
    "INSIGHT_SWEEP_INTERVAL": ("insight_sweep_interval", 10, ["0", "fast"]),
    "REPORT_PARTS": ("report_parts", 2, ["0", "9", "-1", "two"]),
}


@pytest.mark.parametrize("variable", sorted(SETTINGS))
def test_bad_settings_fall_back_loudly(
    variable: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    field, default, bad_values = SETTINGS[variable]
    for raw in bad_values:
        monkeypatch.setattr(config, "_warned", set())
        with caplog.at_level(logging.WARNING, logger="registry.config"):
            caplog.clear()
            settings = config.load({variable: raw})
        assert getattr(settings, field) == default
        assert [r.getMessage() for r in caplog.records] == [
            f"{variable}={raw!r} is not valid; using the default {default!r}"
        ]


def test_good_settings_are_taken() -> None:
    settings = config.load(
        {
            "INCIDENT_MIN_MEMBERS": "3",
            "FLAP_THRESHOLD": "2",
            "FLAP_DAMPING": "on",
            "REPORT_PARTS": "8",
        }
    )
    assert (settings.incident_min_members, settings.flap_threshold, settings.flap_damping) == (
        3,
        2,
        True,
    )
    assert settings.report_parts == 8
