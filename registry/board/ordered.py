"""The fleet in board order, read once and served page by page from memory.

A full load asks for the fleet in pages (problems first, then by name). Each page as a
query of its own sorted the whole table again (50,000 rows: ~60 ms a page before any
JSON). Instead, the first *later* page of a load reads the whole fleet once, in order,
with its tiles' JSON; that page and the following ones are slices of it.

Which read may serve a load: the load's first page came from one database snapshot and
its events are followed from there, so a later page must not show a row *older* than
that snapshot (a change in between would be lost); newer is fine (events say where a
workspace ends up). So a read serves a load only if it began after the load's first
page was done: the first page's cursor carries a stamp of this server's clock
(`stamp()`), and a cursor from another server or process (its stamp names another
board) is served by keyset instead.
"""

from __future__ import annotations

import secrets
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, TextClause

MAX_AGE_SECONDS = 30.0  # a read older than this is dropped (memory: ~12 MB per 50,000)
KEPT = 2  # reads kept at most (the newest)

Key = tuple[int, str, str]  # (rank, name, id): board order, names in code-point order


@dataclass(frozen=True)
class Read:
    began_ns: int  # time.monotonic_ns() before its transaction began
    keys: list[Key]
    tiles: list[str]

    def after(self, key: Key, limit: int | None) -> tuple[list[str], Key | None]:
        """The tiles after `key` (at most `limit`), and the last one's key if more follow."""
        start = bisect_right(self.keys, key)
        end = len(self.keys) if limit is None else min(len(self.keys), start + limit)
        following = self.keys[end - 1] if end < len(self.keys) else None
        return self.tiles[start:end], following


class OrderedFleet:
    """The recent whole-fleet reads of one board server, shared by its requests."""

    def __init__(self, engine: Engine, query: TextClause, params: dict[str, Any]) -> None:
        self._engine = engine
        # (rank, name, id, tile) rows: the whole fleet, in board order.
        self._query, self._params = query, params
        self._board = secrets.token_hex(4)  # this server: its clock means nothing elsewhere
        self._reads: list[Read] = []
        self._lock = threading.Lock()  # one read at a time: pages asked at once share it

    def stamp(self) -> str:
        """Now, on this server's clock: taken when a load's first page is done."""
        return f"{self._board}:{time.monotonic_ns()}"

    def read_for(self, stamp: str) -> Read | None:
        """A read begun after `stamp` (made now if none is kept); None: not our stamp."""
        board, _, ns = stamp.partition(":")
        if board != self._board or not ns.isdigit():
            return None
        done = int(ns)
        with self._lock:
            oldest = time.monotonic_ns() - int(MAX_AGE_SECONDS * 1e9)
            self._reads = [r for r in self._reads if r.began_ns > oldest]
            for read in reversed(self._reads):
                if read.began_ns > done:
                    return read
            read = self._read()
            self._reads = [*self._reads, read][-KEPT:]
            return read

    def _read(self) -> Read:
        began = time.monotonic_ns()
        with self._engine.connect() as conn:
            rows = conn.execute(self._query, self._params).all()
        return Read(began, [(r[0], r[1], r[2]) for r in rows], [r[3] for r in rows])
