"""Events in words: the gist of each event type, shared by the events CLI and the board.

`describe` turns a payload into a short phrase ("online → degraded (error_rate
0.62)"); `event_line` makes the one line per event the CLI prints. Payloads come from
other producers too, so every field is optional and a wrong type never raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC
from typing import Any

from registry.events.subscriber import ReceivedEvent
from registry.statuses import EventType

SHORT_ID = 8
MAX_TEXT = 80


def short_id(workspace_id: str | None) -> str:
    return workspace_id[:SHORT_ID] if workspace_id else "fleet"


def _clip(value: Any, limit: int = MAX_TEXT) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quoted(value: Any) -> str:
    return json.dumps(_clip(value), ensure_ascii=False)


def _was(payload: dict[str, Any]) -> str:
    previous = payload.get("previous_status")
    return f"was {previous}" if previous else ""


def _join(*parts: str) -> str:
    inside = ", ".join(p for p in parts if p)
    return f" ({inside})" if inside else ""


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds < 0:
        return ""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _online(p: dict[str, Any]) -> str:
    if p.get("recovered_from"):
        return f"{p['recovered_from']} → online"
    mode = p.get("delivery_mode")
    return "registered → online" + _join(str(mode) if mode else "", _clip(p.get("url") or ""))


def _degraded(p: dict[str, Any]) -> str:
    # The transition table (CONTRACT §4.2) only degrades an online workspace.
    cause = (
        f"runtime {p['runtime_state']}"
        if p.get("runtime_state")
        else (f"error_rate {_number(p['error_rate'])}" if "error_rate" in p else "")
    )
    sample = _quoted(p["sample_error"]) if p.get("sample_error") else ""
    return "online → degraded" + _join(cause, sample)


def _offline(p: dict[str, Any]) -> str:
    return "offline" + _join(str(p.get("reason") or ""), _was(p))


def _awaiting(p: dict[str, Any]) -> str:
    runtime = f"runtime {p['runtime']}" if p.get("runtime") and not p.get("previous_status") else ""
    return "awaiting agent" + _join(str(p.get("reason") or ""), runtime, _was(p))


def _provision_failed(p: dict[str, Any]) -> str:
    timeout = f"timeout {p['timeout_secs']} s" if p.get("timeout_secs") else ""
    runtime = f"runtime {p['runtime']}" if p.get("runtime") else ""
    error = f": {_clip(p['error'])}" if p.get("error") else ""
    return "provisioning failed" + _join(timeout, runtime) + error


def _hibernated(p: dict[str, Any]) -> str:
    tier = f"tier {p['tier']}" if p.get("tier") is not None else ""
    return "hibernated" + _join("idle", tier)


def _removed(p: dict[str, Any]) -> str:
    return "removed" + _join(_was(p))


def _card(p: dict[str, Any]) -> str:
    card = p.get("agent_card")
    if not isinstance(card, dict):
        size = p.get("agent_card_bytes")  # a large card travels as its digest only
        return "agent card updated" + (_join(f"{size} bytes") if isinstance(size, int) else "")
    skills = card.get("skills")
    return "agent card updated" + _join(
        f"name {_quoted(card['name'])}" if card.get("name") else "",
        f"version {card['version']}" if card.get("version") else "",
        f"{len(skills)} skill{'s' if len(skills) != 1 else ''}" if isinstance(skills, list) else "",
    )


def _self_preservation(p: dict[str, Any]) -> str:
    if not p.get("active"):
        return "self-preservation OFF: unreachable-marking resumed"
    figures = p.get("figures")
    shown = (
        " ".join(f"{k}={_number(v)}" for k, v in figures.items())
        if isinstance(figures, dict)
        else ""
    )
    return "self-preservation ON: unreachable-marking paused" + _join(
        str(p.get("reason") or ""), shown
    )


def _task(p: dict[str, Any]) -> str:
    active = f"{p['active_tasks']} active" if "active_tasks" in p else ""
    task = p.get("current_task")
    return (f"task {_quoted(task)}" if task else "no current task") + _join(active)


def _heartbeat(p: dict[str, Any]) -> str:
    active = f"{p['active_tasks']} active" if "active_tasks" in p else ""
    uptime = _duration(p.get("uptime_seconds"))
    return "heartbeat" + _join(active, f"up {uptime}" if uptime else "")


def _incident(p: dict[str, Any]) -> str:
    head = f"incident #{p['incident_id']} {p['state']}"
    if p["state"] == "opened":
        return f"{head}: {p['members']} workspaces, {p['kind']} {_quoted(p['signature'])}"
    if p["state"] == "resolved":
        took = _duration(p.get("duration_seconds"))
        return head + _join(f"after {took}" if took else "", f"peak {p.get('peak_members')}")
    return f"{head}: {p['members']} workspaces" + _join(f"peak {p.get('peak_members')}")


def _flapping(p: dict[str, Any]) -> str:
    return f"flapping: {p['changes']} status changes in {_duration(p['window'])}"


def _stable(p: dict[str, Any]) -> str:
    return f"stable: no status change for {_duration(p['quiet_seconds'])}"


GIST: dict[str, Callable[[dict[str, Any]], str]] = {
    EventType.WORKSPACE_ONLINE: _online,
    EventType.WORKSPACE_DEGRADED: _degraded,
    EventType.WORKSPACE_OFFLINE: _offline,
    EventType.WORKSPACE_AWAITING_AGENT: _awaiting,
    EventType.WORKSPACE_PROVISION_FAILED: _provision_failed,
    EventType.WORKSPACE_HIBERNATED: _hibernated,
    EventType.WORKSPACE_REMOVED: _removed,
    EventType.AGENT_CARD_UPDATED: _card,
    EventType.REGISTRY_SELF_PRESERVATION: _self_preservation,
    EventType.TASK_UPDATED: _task,
    EventType.WORKSPACE_HEARTBEAT: _heartbeat,
    EventType.REGISTRY_INCIDENT: _incident,
    EventType.WORKSPACE_FLAPPING: _flapping,
    EventType.WORKSPACE_STABLE: _stable,
}


def describe(event_type: str, payload: dict[str, Any]) -> str:
    """The gist of an event's payload, for a person."""
    gist = GIST.get(event_type)
    if gist is not None:
        try:
            return gist(payload)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # a producer sent an odd shape: show the raw payload below
    return _clip(json.dumps(payload, sort_keys=True, default=str), 120)


def event_line(event: ReceivedEvent, name: str | None = None) -> str:
    """`time  workspace  TYPE  gist` (UTC), the events CLI's human format."""
    moment = event.timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    who = short_id(event.workspace_id) + (f" {_clip(name, 24)}" if name else "")
    replayed = " (replayed)" if event.replayed else ""
    return f"{moment}  {who:<33}  {event.type:<27}  {describe(event.type, event.payload)}{replayed}"
