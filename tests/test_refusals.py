"""A refusal carries its metric label from where it is decided, and one function counts
every message type's refusals (registry/outcomes.py, registry/metrics.py)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from registry import metrics
from registry.ingestion.payloads import PayloadError
from registry.outcomes import Ignored, Rejected, Unauthorized, refusal_label


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_answer_is_unchanged_and_the_label_travels_beside_it() -> None:
    refused = Rejected("workspace_id: unknown workspace", label="unknown_workspace").as_result()
    assert refused == {"status": "rejected", "error": "workspace_id: unknown workspace"}
    assert refusal_label(refused) == "unknown_workspace"
    # The text plays no part: the same text with another label counts as that label.
    assert refusal_label(Rejected("workspace_id: unknown workspace").as_result()) == "invalid"
    assert refusal_label(Unauthorized("auth_token: no").as_result()) == "unauthorized"
    assert refusal_label(Ignored("moot", label="stale").as_result()) == "stale"
    assert refusal_label(PayloadError("x: bad").as_result()) == "invalid"
    assert refusal_label({"status": "ok"}) is None
    assert refusal_label({"status": "rejected", "error": "made elsewhere"}) == "rejected"


def test_one_function_counts_every_message_type() -> None:
    general = "registry_messages_refused_total"
    beats = "registry_heartbeats_rejected_total"
    before = (
        _sample(general, task="registry.register", reason="unauthorized"),
        _sample(general, task="registry.heartbeat", reason="stale"),
        _sample(beats, reason="stale"),
        _sample(beats, reason="unauthorized"),
    )
    metrics.count_refusal("registry.register", "unauthorized")
    metrics.count_refusal("registry.heartbeat", "stale")
    after = (
        _sample(general, task="registry.register", reason="unauthorized"),
        _sample(general, task="registry.heartbeat", reason="stale"),
        _sample(beats, reason="stale"),
        _sample(beats, reason="unauthorized"),
    )
    # A heartbeat's refusal also reaches the heartbeat series; a registration's does not.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 0]
