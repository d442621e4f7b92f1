"""Whole-message fuzzing: generated bodies, headers, content types and raw broker
entries, shared by the suite's property test (tests/test_properties_messages.py) and
the long campaign (bench/fuzz_messages.py).

The property: whatever arrives on a registry queue, the worker never exits, every
queue drains, and a valid heartbeat sent afterwards still applies.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from typing import Any

import redis
from hypothesis import strategies as st
from kombu import Connection

from molecule_registry_client import celery_message
from molecule_registry_client.names import (
    CAN_COMMUNICATE_TASK,
    CREATE_WORKSPACE_TASK,
    HEARTBEAT_BATCH_TASK,
    HEARTBEAT_TASK,
    QUEUE_NAMES,
    REGISTER_TASK,
    REMOVE_WORKSPACE_TASK,
    SWEEP_BACKSTOP_TASK,
    UPDATE_CARD_TASK,
    queue_for,
)

TASKS = (
    HEARTBEAT_TASK,
    HEARTBEAT_BATCH_TASK,
    REGISTER_TASK,
    UPDATE_CARD_TASK,
    CREATE_WORKSPACE_TASK,
    REMOVE_WORKSPACE_TASK,
    CAN_COMMUNICATE_TASK,
    SWEEP_BACKSTOP_TASK,
)

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def payload_for(draw: st.DrawFn, task: str) -> Any:
    """A payload that is often almost right for `task`, sometimes anything at all."""
    ws = str(uuid.uuid4())
    base: dict[str, Any] = {
        HEARTBEAT_TASK: {"workspace_id": ws, "active_tasks": 1},
        HEARTBEAT_BATCH_TASK: {"heartbeats": [{"workspace_id": ws}]},
        REGISTER_TASK: {"id": ws, "agent_card": {"name": "x"}, "delivery_mode": "poll"},
        UPDATE_CARD_TASK: {"workspace_id": ws, "agent_card": {}},
        CREATE_WORKSPACE_TASK: {"name": "fuzz"},
        REMOVE_WORKSPACE_TASK: {"workspace_id": ws},
        CAN_COMMUNICATE_TASK: {"caller_id": ws, "target_id": ws},
    }.get(task, {})
    kind = draw(st.sampled_from(["mutated", "anything", "deep", "huge_int"]))
    if kind == "anything":
        return draw(json_value)
    payload = dict(base)
    if kind == "deep":
        payload[draw(st.sampled_from([*payload, "x"]))] = deep(draw(st.integers(30, 900)))
    elif kind == "huge_int":
        payload[draw(st.sampled_from([*payload, "sent_at"]))] = 10 ** draw(st.integers(20, 500))
    else:
        for key in draw(st.lists(st.sampled_from([*payload, "sent_at", "auth_token"]), max_size=3)):
            payload[key] = draw(json_value)
    return payload


HEADER_KEYS = (
    "task", "id", "root_id", "parent_id", "group", "retries", "eta", "expires",
    "timelimit", "argsrepr", "kwargsrepr", "origin", "ignore_result", "lang", "shadow",
)  # fmt: skip


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    """Publish arguments of one generated message: queue, body, headers, content type."""
    task = draw(st.sampled_from(TASKS))
    body, headers, _ = celery_message(task, {}, origin="fuzz")
    shape = draw(st.sampled_from(["task", "task", "body", "raw"]))
    out: dict[str, Any] = {"queue": queue_for(task), "headers": headers}
    if shape == "task":
        out["body"] = ([draw(payload_for(task))], {}, body[2])
    elif shape == "body":
        out["body"] = draw(json_value)
    else:
        out["raw"] = draw(st.binary(max_size=64))
        out["content_type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/x-python-serialize"])
        )
    for key in draw(st.lists(st.sampled_from(HEADER_KEYS), max_size=3)):
        if draw(st.booleans()):
            headers.pop(key, None)
        else:
            headers[key] = draw(json_value)
    return out


@st.composite
def raw_redis_entry(draw: st.DrawFn) -> str:
    """A list entry written straight into a Redis queue, bypassing kombu."""
    envelope: dict[str, Any] = {
        "body": base64.b64encode(json.dumps([[{}], {}, {}]).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": HEARTBEAT_TASK, "id": str(uuid.uuid4())},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "registry.heartbeats"},
        },
    }
    kind = draw(st.sampled_from(["text", "mutated"]))
    if kind == "text":
        return draw(st.text(max_size=40))
    for key in draw(st.lists(st.sampled_from([*envelope, "properties.delivery_tag"]), max_size=3)):
        if key.startswith("properties."):
            if isinstance(envelope["properties"], dict):
                envelope["properties"]["delivery_tag"] = draw(json_value)
        else:
            envelope[key] = draw(json_value)
    return json.dumps(envelope)


def publish(broker_url: str, item: dict[str, Any]) -> bool:
    """Publish one generated message as a producer would (kombu, default exchange);
    False when the producer's own library cannot encode it (an AMQP header integer
    past 64 bits): such a message never reaches a worker."""
    try:
        _publish(broker_url, item)
    except (OverflowError, ValueError, TypeError, struct.error) as exc:
        if broker_url.startswith("amqp") or isinstance(exc, OverflowError):
            return False
        raise
    except Exception as exc:  # py-amqp's FrameSyntaxError and friends
        if type(exc).__module__.startswith("amqp"):
            return False
        raise
    return True


def _publish(broker_url: str, item: dict[str, Any]) -> None:
    with Connection(broker_url) as conn:
        producer = conn.Producer()
        options: dict[str, Any] = {"exchange": "", "routing_key": item["queue"]}
        options["headers"] = item["headers"]
        if "raw" in item:
            options.update(content_type=item["content_type"], content_encoding="binary")
            producer.publish(item["raw"], **options)
        else:
            producer.publish(item["body"], serializer="json", **options)


def push_raw(broker_url: str, entries: list[str]) -> None:
    client = redis.Redis.from_url(broker_url)
    for entry in entries:
        client.lpush("registry.heartbeats", entry)


def queues_drained(broker_url: str) -> bool:
    """Nothing waiting and nothing delivered-but-unacknowledged on the registry queues."""
    if broker_url.startswith("redis://"):
        client = redis.Redis.from_url(broker_url)
        waiting = sum(client.llen(name) for name in QUEUE_NAMES)
        return waiting == 0 and client.hlen("unacked") == 0
    with Connection(broker_url) as conn:
        channel = conn.channel()
        counts = [channel.queue_declare(name, passive=True).message_count for name in QUEUE_NAMES]
        return sum(counts) == 0
