"""Bounds every message body is held to before anything walks it (CONTRACT §4).

A message's body is decoded JSON from whoever can publish to the broker. Everything
after intake walks it: pydantic, the log redaction, the JSONB encoder. Recursive walks
fail on a body nested a few hundred levels deep (RecursionError), and a huge body
costs memory everywhere it is copied. So the body's size and nesting are checked here
first, iteratively, and a body over either bound is refused as a whole.

The bounds are far above any real payload: the deepest legitimate body is a heartbeat
batch (message envelope, batch, item, runtime metadata, capabilities: 6 levels) plus
an agent card, which agents keep shallow.
"""

from __future__ import annotations

from typing import Any

# Raw message body, before decoding. A heartbeat batch of 1,000 items with long
# sample errors stays well below; a producer with more splits its batch.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Levels of JSON containers in a decoded body, the protocol's own [args, kwargs,
# embed] list included.
MAX_BODY_DEPTH = 32


def body_bound_error(value: Any, max_depth: int = MAX_BODY_DEPTH) -> str | None:
    """Why `value` (a decoded body) is refused, or None when it is within the bounds."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            return f"body: nested deeper than {max_depth} levels"
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | tuple)
        )
    return None
