"""The gateway's quick heartbeat check (gateway/http/quickcheck.py) never says "valid"
where the registry's §4.2 model refuses, and names the same workspace when it does.

Bodies are generated around the bounds of each field (types, ranges, text rules), the
shapes `molecule connect` and the workspace runtime send included.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http.heartbeat import MODEL_FIELDS
from gateway.http.quickcheck import certain_workspace_id
from registry.ingestion.payloads import MAX_INT32, HeartbeatPayload, PayloadError, parse_payload

WS = str(uuid.uuid4())

edgy_ints = st.sampled_from([-1, 0, 1, MAX_INT32, MAX_INT32 + 1, 10**30, -(10**30)])
edgy_floats = st.sampled_from([-0.0, 0.0, 0.5, 1.0, 1.0000001, -1e-9, float("nan"), float("inf")])
edgy_text = st.sampled_from(["", "ok", "x" * 64, "x" * 65, "a\x00b", "é", "\ud800", " "])
anything = st.one_of(
    st.none(),
    st.booleans(),
    edgy_ints,
    st.integers(),
    edgy_floats,
    st.floats(),
    edgy_text,
    st.text(max_size=70),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.booleans(), max_size=2),
)
metadata = st.one_of(
    anything,
    st.fixed_dictionaries(
        {},
        optional={
            "capabilities": st.one_of(
                anything, st.dictionaries(edgy_text, st.one_of(st.booleans(), anything))
            ),
            "idle_timeout_seconds": st.one_of(edgy_ints, anything),
            "other": anything,
        },
    ),
)
workspace_ids = st.one_of(
    st.just(WS),
    st.just(WS.upper()),
    st.just(WS.replace("-", "")),
    st.just("{" + WS + "}"),
    anything,
)
fields = {
    "error_rate": st.one_of(edgy_floats, anything),
    "sample_error": st.one_of(edgy_text, anything),
    "active_tasks": st.one_of(edgy_ints, anything),
    "uptime_seconds": st.one_of(edgy_ints, anything),
    "current_task": st.one_of(edgy_text, anything),
    "monthly_spend": st.one_of(edgy_ints, anything),
    "runtime_state": st.one_of(edgy_text, anything),
    "runtime_metadata": metadata,
    "agent_card": anything,
    "is_busy": anything,
    "sent_at": st.one_of(st.just(1.7e9), st.just("2026-01-01T00:00:00Z"), anything),
    "auth_token": anything,
    "unknown_field": anything,
}
bodies = st.fixed_dictionaries({}, optional={"workspace_id": workspace_ids, **fields})
# Near-valid bodies: each field valid but for one edge at a time, so the quick check
# says "valid" often and its bounds are met from both sides.
counts = st.one_of(st.integers(0, 100), edgy_ints)
near_valid = st.fixed_dictionaries(
    {"workspace_id": st.one_of(st.just(WS), workspace_ids)},
    optional={
        "error_rate": st.one_of(st.floats(0, 1), edgy_floats, st.integers(0, 1)),
        "sample_error": st.one_of(st.none(), st.text(max_size=5), edgy_text),
        "active_tasks": counts,
        "uptime_seconds": counts,
        "current_task": st.one_of(st.none(), st.text(max_size=5), edgy_text),
        "monthly_spend": st.one_of(st.integers(), edgy_ints, st.booleans()),
        "runtime_state": st.one_of(st.just("ok"), edgy_text, st.none()),
        "runtime_metadata": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "capabilities": st.dictionaries(
                        st.one_of(st.text(max_size=4), edgy_text),
                        st.one_of(st.booleans(), st.integers(0, 1), st.none()),
                        max_size=3,
                    ),
                    "idle_timeout_seconds": st.one_of(st.none(), counts),
                },
            ),
        ),
        "is_busy": st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
        "agent_card": anything,
        "auth_token": anything,
    },
)


def model_verdict(body: dict[str, Any]) -> uuid.UUID | None:
    fields = {key: value for key, value in body.items() if key != "auth_token"}
    try:
        return parse_payload(HeartbeatPayload, fields).workspace_id
    except PayloadError:
        return None


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(bodies, near_valid))
def test_quick_check_accepts_only_what_the_model_accepts(body: dict[str, Any]) -> None:
    quick = certain_workspace_id(body, MODEL_FIELDS)
    if quick is not None:
        assert model_verdict(body) == quick


def test_the_common_shapes_skip_the_model() -> None:
    connect = {"workspace_id": WS, "runtime_state": "ok", "uptime_seconds": 0}
    runtime = {
        "workspace_id": WS,
        "error_rate": 0.0,
        "sample_error": "",
        "active_tasks": 1,
        "uptime_seconds": 60,
        "current_task": "summarise the report",
        "runtime_metadata": {"capabilities": {"status_mgmt": True}, "idle_timeout_seconds": 300},
    }
    for body in (connect, runtime):
        assert certain_workspace_id(body, MODEL_FIELDS) == uuid.UUID(WS)
        assert model_verdict(body) == uuid.UUID(WS)


def test_bad_bodies_go_to_the_model() -> None:
    for body in (
        {},
        {"workspace_id": "nope"},
        {"workspace_id": WS, "active_tasks": -1},
        {"workspace_id": WS, "active_tasks": True},
        {"workspace_id": WS, "error_rate": 2.0},
        {"workspace_id": WS, "runtime_state": "a\x00b"},
        {"workspace_id": WS, "sent_at": 1.7e9},  # a richer rule: the model decides
    ):
        assert certain_workspace_id(body, MODEL_FIELDS) is None
