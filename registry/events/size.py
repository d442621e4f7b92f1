"""Bounded event size: the agent card travels in an event only while it is small.

`events:stream` is capped by entry count (EVENTS_STREAM_MAXLEN), not bytes. With the
card in every WORKSPACE_ONLINE and AGENT_CARD_UPDATED event, one producer re-sending
256 KiB cards could make the stream hold 100,000 entries of 256 KiB (25 GiB) of Redis memory.
Above EVENT_CARD_MAX_BYTES an event carries the card's digest and size instead; the
card itself is in the workspace row (CONTRACT §7).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

EVENT_CARD_MAX_BYTES = 4 * 1024

# Canonical text: sorted keys, compact, UTF-8. PostgreSQL's JSONB reorders keys, so
# a subscriber recomputes the same digest from the stored card with these options.
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def card_digest(card: Any) -> dict[str, Any]:
    """{"agent_card_sha256", "agent_card_bytes"} of the card's canonical JSON."""
    data = _CANONICAL.encode(card).encode("utf-8")
    return {"agent_card_sha256": hashlib.sha256(data).hexdigest(), "agent_card_bytes": len(data)}


def bounded_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload`, with an `agent_card` above EVENT_CARD_MAX_BYTES replaced by its digest."""
    card = payload.get("agent_card")
    if card is None:
        return payload
    digest = card_digest(card)
    if digest["agent_card_bytes"] <= EVENT_CARD_MAX_BYTES:
        return payload
    bounded = {key: value for key, value in payload.items() if key != "agent_card"}
    bounded.update(digest)
    return bounded
