"""Text that agents control, made safe to print on a terminal.

Workspace names, URLs, card fields and error samples come from agents. Printed as
they are, an escape sequence in them is run by the operator's terminal: it can set
the window title (`ESC ] 0;… BEL`), clear the screen (`ESC [2J`), move the cursor
to overwrite a line (`\\r`, CSI), or, on some terminals, write files or answer back.
`terminal_safe` replaces every control character with a visible escape, so the
sequence shows as text and does nothing. JSON output needs none of this: the JSON
encoder escapes every control character already (`--json` uses ensure_ascii).
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls (ESC, BEL, CR, LF, TAB, …), DEL, C1 controls (U+0080-U+009F, among
# them the one-character CSI U+009B and OSC U+009D that some terminals honour),
# and the Unicode line separators and bidirectional overrides that reorder or
# break what the operator reads.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(value: Any) -> str:
    """`str(value)` with every control character shown as an escape (`\\x1b`, `\\r`)."""
    return _UNSAFE.sub(_escape, str(value))
