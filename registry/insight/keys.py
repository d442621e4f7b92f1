"""Transaction advisory locks on incident keys: one writer per (kind, key) at a time.

Every path that counts an incident's window or opens, updates or resolves it holds
the key's lock first, so two workers (or a worker and the sweep) never both see four
members and both stay silent, nor both open one. Locks are taken in the order of
their names, the same everywhere, so two batches sharing keys cannot deadlock. They are
released by the transaction's end.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

SHARED_ERROR = "shared_error"
GROUP_UNREACHABLE = "group_unreachable"

# A subquery with OFFSET 0 is sorted before the outer query calls the lock function.
_LOCK_KEYS = text(
    """
    SELECT count(pg_advisory_xact_lock(hashtextextended(k, 19)))
    FROM (SELECT DISTINCT k FROM unnest(CAST(:keys AS text[])) AS u(k)
          ORDER BY 1 OFFSET 0) s
    """
)


def lock_name(kind: str, key: str) -> str:
    return f"{kind}:{key}"


def lock_keys(conn: Connection, kind: str, keys: Iterable[str]) -> None:
    names = sorted({lock_name(kind, k) for k in keys})
    if names:
        conn.execute(_LOCK_KEYS, {"keys": names})
