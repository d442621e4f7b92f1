"""The long fuzzing campaign on the trust boundary: payload models and the URL guard.

Runs the same properties as tests/test_properties_*.py (defined in tests/fuzzing.py),
with fresh randomness in rounds, until a time budget is spent; counts the inputs tried
and collects every falsifying example. Needs no service.

Run: `.venv/bin/python bench/fuzz.py [--minutes 10] [--write-docs]`
`--write-docs` puts the figures into docs/SECURITY.md (between its fuzz markers).
Exit status 1 when any property failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import fuzzing  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bench.common import write_section  # noqa: E402

ROUND_EXAMPLES = 2_000


@dataclass
class Target:
    name: str
    build: Callable[[Callable[[], None]], Callable[[], None]]
    inputs: int = 0
    accepted: int = 0
    rounds: int = 0
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)


def _payload_near_valid(count: Callable[[bool], None]) -> Callable[[], None]:
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        model = data.draw(st.sampled_from(fuzzing.MODELS))
        count(fuzzing.check_payload(model, data.draw(fuzzing.near_valid_payload(model))))

    return run


def _payload_arbitrary(count: Callable[[bool], None]) -> Callable[[], None]:
    @given(model=st.sampled_from(fuzzing.MODELS), raw=fuzzing.raw_payloads)
    def run(model: type, raw: Any) -> None:
        count(fuzzing.check_payload(model, raw))

    return run


def _url_blocked_forms(count: Callable[[bool], None]) -> Callable[[], None]:
    @given(case=fuzzing.blocked_url(), saas=st.booleans())
    def run(case: tuple[str, bool, Any], saas: bool) -> None:
        fuzzing.check_blocked_url(case[0], case[1], saas)
        count(False)

    return run


def _url_any_text(count: Callable[[bool], None]) -> Callable[[], None]:
    @given(url=fuzzing.url_text, resolved=fuzzing.resolved_lists, saas=st.booleans())
    def run(url: str, resolved: list[str], saas: bool) -> None:
        count(fuzzing.check_any_url(url, resolved, saas))

    return run


def _url_mutated(count: Callable[[bool], None]) -> Callable[[], None]:
    @given(case=fuzzing.blocked_url(), resolved=fuzzing.resolved_lists, saas=st.booleans())
    def run(case: tuple[str, bool, Any], resolved: list[str], saas: bool) -> None:
        url = case[0]
        for variant in (url.upper(), url.replace("[", ""), url + "@8.8.8.8"):
            count(fuzzing.check_any_url(variant, resolved, saas))

    return run


TARGETS = [
    ("payload models, near-valid fields", _payload_near_valid),
    ("payload models, arbitrary JSON values", _payload_arbitrary),
    ("URL guard, blocked addresses in every textual form", _url_blocked_forms),
    ("URL guard, arbitrary URL text + resolver answers", _url_any_text),
    ("URL guard, mutated blocked URLs", _url_mutated),
]


def run_round(target: Target, examples: int) -> None:
    def count(accepted: bool) -> None:
        target.inputs += 1
        target.accepted += int(accepted)

    test = target.build(count)
    configured = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )(test)
    started = time.monotonic()
    try:
        configured()
    except Exception as exc:
        notes = " ".join(getattr(exc, "__notes__", []))
        target.findings.append(f"{type(exc).__name__}: {str(exc)[:300]} {notes[:300]}")
    target.seconds += time.monotonic() - started
    target.rounds += 1


def campaign(minutes: float) -> list[Target]:
    targets = [Target(name, build) for name, build in TARGETS]
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        for target in targets:
            if time.monotonic() >= deadline:
                break
            run_round(target, ROUND_EXAMPLES)  # each round draws afresh
            print(
                f"  {target.name}: {target.inputs} inputs, {len(target.findings)} findings",
                flush=True,
            )
    return targets


def table(targets: list[Target], minutes: float) -> str:
    lines = [
        f"Campaign of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {minutes:g} min on this "
        "machine (`.venv/bin/python bench/fuzz.py --minutes "
        f"{minutes:g} --write-docs`):",
        "",
        "| property | inputs tried | accepted | inputs/s | findings |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in targets:
        rate = t.inputs / t.seconds if t.seconds else 0.0
        lines.append(
            f"| {t.name} | {t.inputs:,} | {t.accepted:,} | {rate:,.0f} | {len(t.findings)} |"
        )
    total = sum(t.inputs for t in targets)
    found = sum(len(t.findings) for t in targets)
    lines += ["", f"Total: {total:,} inputs, {found} finding(s)."]
    for t in targets:
        lines += [f"- {t.name}: {finding}" for finding in t.findings]
    return "\n".join(lines)


def write_docs(figures: str) -> None:
    # SECURITY.md must already hold the block: the figures belong in its prose.
    write_section(ROOT / "docs" / "SECURITY.md", "bench/fuzz.py", figures, required=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    targets = campaign(args.minutes)
    figures = table(targets, args.minutes)
    print(figures)
    if args.write_docs:
        write_docs(figures)
    return 1 if any(t.findings for t in targets) else 0


if __name__ == "__main__":
    raise SystemExit(main())
