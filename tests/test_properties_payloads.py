"""Property tests: every payload model takes anything and answers with a model or a
PayloadError naming the field, never another exception (the long campaign: bench/fuzz.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from fuzzing import MODELS, check_payload, near_valid_payload, raw_payloads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.ingestion.payloads import HeartbeatPayload, PayloadError, parse_payload

# The suite runs a quick pass; FUZZ_EXAMPLES raises it for a longer local run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("FUZZ_RANDOM") is None,  # the suite is reproducible
)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FAST
@given(data=st.data())
def test_near_valid_payloads_parse_or_are_refused(model: type, data: st.DataObject) -> None:
    check_payload(model, data.draw(near_valid_payload(model)))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FAST
@given(raw=raw_payloads)
def test_arbitrary_values_parse_or_are_refused(model: type, raw: Any) -> None:
    check_payload(model, raw)


def test_the_strategies_reach_both_outcomes() -> None:
    # A property that only ever sees refusals proves little: make sure valid ones come too.
    outcomes: dict[bool, int] = {True: 0, False: 0}

    @settings(max_examples=120, deadline=None, derandomize=True)
    @given(data=st.data())
    def sample(data: st.DataObject) -> None:
        model = data.draw(st.sampled_from(MODELS))
        outcomes[check_payload(model, data.draw(near_valid_payload(model)))] += 1

    sample()
    assert outcomes[True] > 0 and outcomes[False] > 0


@pytest.mark.parametrize("sent_at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+00:01"])
def test_sent_at_beyond_the_calendar_in_utc_is_a_clear_refusal(sent_at: str) -> None:
    # Found by the campaign: the conversion to UTC overflowed and failed the task.
    raw = {"workspace_id": "6f1c8a4e-1d7b-4d55-9a43-0f1f5e1b2c3d", "sent_at": sent_at}
    with pytest.raises(PayloadError, match=r"sent_at: is out of range"):
        parse_payload(HeartbeatPayload, raw)
