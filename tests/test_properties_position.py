"""Property tests for the subscriber's resume token: what is saved is what comes back,
and anything else is a ValueError (the `events --since` and board inputs)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.events.subscriber import Position
from registry.events.subscriber.position import MAX_PENDING

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FAST = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") is None
)

positions = st.builds(
    Position,
    stream_id=st.tuples(st.integers(0, 2**48), st.integers(0, 2**64 - 1)).map(
        lambda p: f"{p[0]}-{p[1]}"
    ),
    event_id=st.none() | st.integers(0, 2**63 - 1),
    redis_run_id=st.none() | st.text("0123456789abcdef", min_size=1, max_size=40),
    pending=st.lists(st.integers(0, 2**62), max_size=20, unique=True).map(
        lambda ids: tuple(sorted(ids))
    ),
)


@FAST
@given(position=positions)
def test_a_saved_position_comes_back_unchanged(position: Position) -> None:
    assert Position.from_token(position.token()) == position


@FAST
@given(text=st.text(max_size=40) | st.text("0123456789-:,ab", max_size=40))
def test_any_text_is_a_position_or_a_value_error(text: str) -> None:
    try:
        position = Position.from_token(text)
    except ValueError:
        return
    assert Position.from_token(position.token()) == position


@FAST
@given(
    start=st.integers(0, 10**6),
    steps=st.lists(st.integers(-50, 50), max_size=40),
)
def test_delivered_ids_are_never_pending_and_skipped_ones_are(start: int, steps: list[int]):
    position = Position("1-0", start)
    delivered: set[int] = set()
    for step in steps:
        event_id = max(0, start + step)
        position = position.delivered(event_id)
        delivered.add(event_id)
    high = max([start, *delivered])
    assert position.event_id == high
    assert not delivered & set(position.pending)
    expected = set(range(start + 1, high)) - delivered
    assert set(position.pending) == set(sorted(expected)[-MAX_PENDING:])


def test_a_huge_jump_keeps_only_the_last_pending_ids(caplog: pytest.LogCaptureFixture) -> None:
    position = Position("1-0", 10).delivered(10 + MAX_PENDING * 5)
    assert len(position.pending) == MAX_PENDING
    assert position.pending[-1] == 10 + MAX_PENDING * 5 - 1
    assert "watched for a late commit" in caplog.text
