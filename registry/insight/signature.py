"""A degradation's cause: its `sample_error` reduced to a signature (CONTRACT §13).

Errors that differ only in their variable parts (numbers, ids, UUIDs, hex, quoted
values, URL paths) share a signature, so a thousand workspaces hitting one rate
limit make one incident. Any input gives a bounded result and never raises: the
text is cut to INPUT_MAX_CHARS before any pattern runs (the cost is bounded) and the
signature to SIGNATURE_MAX_CHARS.
"""

from __future__ import annotations

import re

INPUT_MAX_CHARS = 1024
SIGNATURE_MAX_CHARS = 160
NO_SAMPLE = ""  # a degradation without a sample error (e.g. a wedged runtime)

# Order matters: a URL's path and a quoted value may hold numbers and ids.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]+"), " "),  # control characters, noise
    (re.compile(r"\"[^\"]*\"|'[^']*'|`[^`]*`"), "<str>"),
    (re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s?#]+)[^\s]*", re.IGNORECASE), r"\1<path>"),
    (re.compile(r"(?<![\w.<:/])/[^\s,;)]*"), "<path>"),
    (
        re.compile(
            r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.IGNORECASE
        ),
        "<uuid>",
    ),
    (re.compile(r"\b0x[0-9a-f]+\b|\b(?=[a-f]*\d)[0-9a-f]{8,}\b", re.IGNORECASE), "<hex>"),
    # An id: a long token mixing letters and digits (req_8fK2x9..., tok-abc123def456).
    (re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{12,}\b"), "<id>"),
    (re.compile(r"[-+]?\d+(?:[.,]\d+)*"), "<num>"),
    (re.compile(r"\s+"), " "),
)


def signature(sample_error: object) -> str:
    """The signature of a sample error: stable, at most SIGNATURE_MAX_CHARS characters."""
    if not isinstance(sample_error, str) or not sample_error:
        return NO_SAMPLE
    text = sample_error[:INPUT_MAX_CHARS]
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text.strip()[:SIGNATURE_MAX_CHARS].rstrip()
