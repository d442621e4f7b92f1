"""Apply heartbeats (CONTRACT §4.2), a list at a time, set-based.

A batch costs a fixed number of statements whatever its size N:

0. only when some heartbeat carries an `agent_card`: one unlocked SELECT of the rows
   that could use it, and the card URL checks (registry.ingestion.cardbackfill);
1. one SELECT that locks the rows (in id order) and reads their tokens;
2. one `UPDATE workspaces ... FROM json_to_recordset(...)` for every workspace that
   keeps its status, and one for those whose status changes (only when some do), each
   row still conditional on `status = <status read under the lock>`;
3. one INSERT of every recorded event (structure_events + outbox; only when some);
4. one UPDATE of the tokens whose last_used_at is due (at most once a minute each);
5. after the commit, one Redis pipeline (liveness keys and event publication).

The heartbeats are judged one by one, in list order (refusals, ordering guard,
transitions, events and results), so the same workspace twice in one batch behaves
exactly as two messages would; only the row write is collapsed per workspace to
what the last applicable heartbeat leaves behind.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text

from registry import metrics
from registry.config import get_settings
from registry.db import array_literal
from registry.events.outbox import Event, rfc3339
from registry.ingestion.cardbackfill import usable_cards
from registry.ingestion.payloads import MAX_SENT_AT_SKEW_SECONDS, HeartbeatPayload
from registry.ingestion.tokens import (
    LAST_USED_RESOLUTION_SECONDS,
    UNAUTHORIZED_ERROR,
    hash_token,
    is_authorized,
    touch_tokens,
)
from registry.ingestion.urlguard import Resolver
from registry.insight.damping import damped, write_holds
from registry.jsontext import dumps
from registry.liveness.keys import liveness_key
from registry.liveness.transitions import (
    REGISTER_FAILURE_WINDOW_SECONDS,
    HeartbeatFacts,
    heartbeat_transition,
)
from registry.outcomes import Ignored, MessageRefused, Rejected, Unauthorized
from registry.statuses import EventType, Status
from registry.uow import UnitOfWork, record_events_on_commit

_LOCK_AND_READ = text(
    """
    SELECT hb.ord, w.id::text AS id, w.status, w.current_task, now() AS db_now,
           w.last_heartbeat_sent_at AS last_sent_at,
           w.agent_card IS NULL AS card_missing,
           COALESCE(w.last_register_failure_at
                    > now() - make_interval(secs => :failure_window), false) AS register_failing,
           t.has_live, t.matched_id, t.touch_due,
           w.flapping, w.flap_hold_since IS NOT NULL AS hold_started,
           COALESCE(w.flap_hold_since <= now() - make_interval(secs => :hold), false) AS hold_done
    FROM unnest(CAST(:ids AS uuid[]), CAST(:hashes AS text[])) WITH ORDINALITY AS hb(id, hash, ord)
    JOIN workspaces w ON w.id = hb.id
    LEFT JOIN LATERAL (
        SELECT count(*) > 0 AS has_live,
               (array_agg(tk.id) FILTER (WHERE tk.token_hash = hb.hash))[1]::text AS matched_id,
               -- last_used_at is refreshed at most once per resolution: most heartbeats
               -- then cost no write to the tokens table at all.
               coalesce(bool_or(tk.token_hash = hb.hash AND (tk.last_used_at IS NULL
                   OR tk.last_used_at < now() - make_interval(secs => :touch_after))), false)
                   AS touch_due
        FROM workspace_auth_tokens tk
        WHERE tk.workspace_id = w.id AND tk.revoked_at IS NULL
    ) t ON true
    -- Locks in id order, so two batches touching the same workspaces cannot deadlock;
    -- sweeps use SKIP LOCKED and simply pass over a row a heartbeat holds.
    ORDER BY w.id
    FOR UPDATE OF w
    """
)

# The row each workspace ends with, for all rows of the batch at once: one JSON array of
# objects, one per workspace (a key left out is NULL). One text parameter that
# PostgreSQL parses in one pass costs a fraction of fifteen bound lists, which the
# driver sends as ARRAY[...] constructors of a thousand constants each. The planner
# cannot see how many rows a JSON document holds (it assumes 100): the LIMIT, the count
# sent, tells it, so a batch of a few rows probes the primary key instead of scanning
# the table.
_ROWS = """
    (SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS r(
        id uuid, expected text, new_status text, error_rate float8, sample_error text,
        active_tasks int, uptime_seconds int, current_task text, monthly_spend bigint,
        runtime_metadata jsonb, sent_at timestamptz, busy_before boolean, is_busy boolean,
        card jsonb, clear_failure boolean)
     LIMIT :count) AS v
"""

_SET_HEARTBEAT_COLUMNS = """
    last_heartbeat_at = now(),
    updated_at = now(),
    last_error_rate = v.error_rate,
    last_sample_error = v.sample_error,
    active_tasks = v.active_tasks,
    uptime_seconds = v.uptime_seconds,
    current_task = v.current_task,
    -- 0 means "no update": the batch carries the last non-zero spend it saw, or 0.
    monthly_spend = CASE WHEN v.monthly_spend > 0 THEN v.monthly_spend ELSE w.monthly_spend END,
    runtime_metadata = CAST(v.runtime_metadata AS jsonb),
    last_heartbeat_sent_at = GREATEST(w.last_heartbeat_sent_at, v.sent_at),
    -- Idle time is tracked from the first idle heartbeat; further idle ones keep it. A
    -- busy heartbeat earlier in the batch ended the previous idle spell.
    idle_since = CASE WHEN v.active_tasks > 0 THEN NULL
                      WHEN v.busy_before THEN now()
                      ELSE COALESCE(w.idle_since, now()) END,
    is_busy = v.is_busy,
    -- CONTRACT §12: a heartbeat's card only fills a row that has none (checked again
    -- here, under the lock), and a usable one clears a register failure.
    agent_card = COALESCE(w.agent_card, CAST(v.card AS jsonb)),
    last_register_failure_at = CASE WHEN v.clear_failure THEN NULL
                                    ELSE w.last_register_failure_at END
"""

_UPDATE_SAME_STATUS = text(
    f"UPDATE workspaces w SET {_SET_HEARTBEAT_COLUMNS} FROM {_ROWS} "
    "WHERE w.id = v.id AND w.status = v.expected"
)
# A transition is the same UPDATE plus the status, still conditional on the status
# read under the row lock: a concurrent delete or sweep can never be overwritten.
_UPDATE_WITH_TRANSITION = text(
    f"UPDATE workspaces w SET {_SET_HEARTBEAT_COLUMNS}, status = v.new_status FROM {_ROWS} "
    "WHERE w.id = v.id AND w.status = v.expected"
)

UNKNOWN_ERROR = "workspace_id: unknown workspace"
REMOVED_REASON = "workspace was removed"
OLDER_REASON = "older than the last heartbeat applied (sent_at)"
STALE_REASON = "stale: sent longer ago than the liveness TTL (sent_at)"


@dataclass(slots=True)
class _Locked:
    """A workspace row as the batch sees it, advanced as its heartbeats apply."""

    status: str
    current_task: str | None
    last_sent_at: datetime | None
    card_missing: bool  # the row has no agent_card (a heartbeat's card may fill it)
    register_failing: bool  # last_register_failure_at is within the window (§12)
    has_live_token: bool
    db_now: datetime  # the database's clock: every time comparison uses it (CONTRACT §3)
    flapping: bool = False  # FLAP_DAMPING (registry.insight.damping)
    hold_started: bool = False
    hold_done: bool = False


@dataclass(slots=True)
class _Tokens:
    """The batch's tokens as read under the lock."""

    matched: dict[int, str | None]  # the live token each heartbeat carried, by position
    touch_due: set[str]  # matched tokens whose last_used_at is due a refresh


@dataclass(slots=True)
class _RowWrite:
    """What the batch writes to one workspace row: its last applicable heartbeat."""

    expected: str  # the status read under the lock
    new_status: str
    last: HeartbeatPayload
    spend: int  # last non-zero monthly_spend of the batch (0: keep the stored one)
    busy_before: bool  # a heartbeat before `last` reported active tasks
    sent_at: datetime | None  # newest sent_at applied
    key_ttl: int  # liveness key TTL the freshest heartbeat allows
    card: dict[str, Any] | None = None  # the card that backfills the row, if any
    clear_failure: bool = False  # a usable card cleared last_register_failure_at

    def absorb(self, hb: HeartbeatPayload, key_ttl: int) -> None:
        self.busy_before = self.busy_before or self.last.active_tasks > 0
        self.last = hb
        if hb.monthly_spend > 0:
            self.spend = hb.monthly_spend
        if hb.sent_at is not None and (self.sent_at is None or hb.sent_at > self.sent_at):
            self.sent_at = hb.sent_at
        self.key_ttl = max(self.key_ttl, key_ttl)


def _lock_rows(
    uow: UnitOfWork, ids: list[str], heartbeats: Sequence[HeartbeatPayload]
) -> tuple[dict[str, _Locked], _Tokens]:
    """Lock and read the batch's rows, keyed by the workspace id as text (cheaper to
    hash, bind and format than UUID objects, thousands of times per batch)."""
    hashes = [hash_token(hb.auth_token) if hb.auth_token else "" for hb in heartbeats]
    rows = uow.conn.execute(
        _LOCK_AND_READ,
        {
            "ids": array_literal(ids),
            "hashes": array_literal(hashes),
            "touch_after": LAST_USED_RESOLUTION_SECONDS,
            "failure_window": REGISTER_FAILURE_WINDOW_SECONDS,
            "hold": get_settings().flap_hold_seconds,
        },
    ).all()
    locked: dict[str, _Locked] = {}
    tokens = _Tokens({}, set())
    for row in rows:
        (ord_, ws, status, task, db_now, last_sent, no_card, failing, live, matched, due,
         flapping, hold_started, hold_done) = row  # fmt: skip
        if ws not in locked:
            locked[ws] = _Locked(
                status, task, last_sent, no_card, failing, live, db_now,
                flapping, hold_started, hold_done,
            )  # fmt: skip
        tokens.matched[ord_ - 1] = matched
        if due:
            tokens.touch_due.add(matched)
    return locked, tokens


def _age_seconds(sent_at: datetime, db_now: datetime) -> float:
    """How long ago a heartbeat was sent, on the database clock."""
    return max(0.0, (db_now - sent_at).total_seconds())


def _row_write(
    writes: dict[str, _RowWrite], ws: str, state: _Locked, hb: HeartbeatPayload, key_ttl: int
) -> _RowWrite:
    """The row the batch writes for `ws`, with `hb` taken in (the last applicable wins)."""
    write = writes.get(ws)
    if write is None:
        write = writes[ws] = _RowWrite(
            state.status, state.status, hb, hb.monthly_spend, False, hb.sent_at, key_ttl
        )
    else:
        write.absorb(hb, key_ttl)
    return write


def apply_heartbeats(
    uow: UnitOfWork, heartbeats: Sequence[HeartbeatPayload], *, resolver: Resolver | None = None
) -> list[dict[str, Any]]:
    """Apply validated heartbeats in order; one result object per heartbeat."""
    if not heartbeats:
        return []
    # Before the row locks: a card's URL check may wait on DNS.
    cards, cards_skipped = usable_cards(uow.conn, heartbeats, resolver)
    ids = [str(hb.workspace_id) for hb in heartbeats]
    locked, tokens = _lock_rows(uow, ids, heartbeats)
    settings = get_settings()
    ttl = settings.liveness_ttl_seconds
    holds: dict[str, bool] = {}  # FLAP_DAMPING hold starts (True) and ends (False)
    results: list[dict[str, Any]] = []
    writes: dict[str, _RowWrite] = {}
    to_record: list[tuple[EventType, UUID | str | None, dict[str, Any]]] = []
    transitions: list[tuple[str, str]] = []
    used_tokens: set[str] = set()
    published_at = datetime.now(UTC)  # one timestamp for the batch's broadcast events
    stamp = rfc3339(published_at)

    for position, (ws, hb) in enumerate(zip(ids, heartbeats, strict=True)):
        state = locked.get(ws)
        sent_at = hb.sent_at
        age = _age_seconds(sent_at, state.db_now) if sent_at and state else 0.0
        matched = tokens.matched.get(position)
        refusal = _refusal(hb, state, matched, age >= ttl)
        if refusal is not None:
            results.append(refusal.as_result())
            continue
        assert state is not None  # _refusal answers for unknown workspaces

        # The key lives no longer than the heartbeat's evidence: TTL minus its age.
        key_ttl = max(1, math.ceil(ttl - age))
        write = _row_write(writes, ws, state, hb, key_ttl)
        if cards:
            _take_card(cards.get(position), state, write)

        facts = HeartbeatFacts(
            runtime_state=hb.runtime_state,
            error_rate=hb.error_rate,
            sample_error=hb.sample_error,
            native_status_mgmt=bool(hb.runtime_metadata and hb.runtime_metadata.native_status_mgmt),
            register_failing=state.register_failing,
        )
        rule = damped(heartbeat_transition(state.status, facts), ws, state, settings, holds)
        if rule is not None:
            to_record.append((rule.event, ws, rule.payload(facts)))
            transitions.append((state.status, str(rule.to_status)))
            state.status = write.new_status = str(rule.to_status)

        _broadcast(uow, ws, state, hb, published_at=published_at, stamp=stamp)
        if sent_at and (state.last_sent_at is None or sent_at > state.last_sent_at):
            state.last_sent_at = sent_at
        if matched is not None and matched in tokens.touch_due:
            used_tokens.add(matched)
        results.append({"status": "ok", "workspace_status": state.status})

    # The rows are already locked (in id order), so the writes need no order of their own.
    _write_rows(uow, writes)
    write_holds(uow.conn, holds)
    record_events_on_commit(uow, to_record)
    touch_tokens(uow.conn, used_tokens)
    if writes:
        keys = " ".join(f"{liveness_key(ws)} {w.key_ttl}" for ws, w in writes.items())
        uow.on_commit(lambda pipe: pipe.eval(_SET_KEYS, 0, keys))
    uow.after_commit(lambda: _count(results, transitions, cards_skipped))
    return results


# (Re)create every liveness key of the batch in one command, `SET … EX` each (a key
# lost to a Redis restart comes back). The "key ttl" pairs travel as one argument: a
# thousand arguments cost the client more than the whole script (see the outbox).
_SET_KEYS = """
local n = 0
for key, ttl in string.gmatch(ARGV[1], "(%S+) (%S+)") do
    redis.call('SET', key, 'online', 'EX', ttl)
    n = n + 1
end
return n
"""


def _broadcast(
    uow: UnitOfWork,
    ws: str,
    state: _Locked,
    hb: HeartbeatPayload,
    *,
    published_at: datetime,
    stamp: str,
) -> None:
    """Broadcast-only events (CONTRACT §4.2 step 8): published after the commit."""
    if (state.current_task or "") != (hb.current_task or ""):
        task = {"current_task": hb.current_task or "", "active_tasks": hb.active_tasks}
        uow.broadcast_events.append(Event(EventType.TASK_UPDATED, ws, task, published_at))
    beat = _Beat(
        EventType.WORKSPACE_HEARTBEAT,
        ws,
        {"active_tasks": hb.active_tasks, "uptime_seconds": hb.uptime_seconds},
        published_at,
    )
    # Event.to_json's text, formatted directly: a workspace id, a timestamp and two
    # integers need no JSON encoder (tests/test_heartbeat_batch.py compares the two).
    beat.text = (
        f'{_BEAT_HEAD}{ws}","timestamp":"{stamp}","payload":{{"active_tasks":'
        f'{hb.active_tasks},"uptime_seconds":{hb.uptime_seconds}}}}}'
    )
    uow.broadcast_events.append(beat)
    state.current_task = hb.current_task


_BEAT_HEAD = f'{{"event":"{EventType.WORKSPACE_HEARTBEAT}","workspace_id":"'


class _Beat(Event):
    """A WORKSPACE_HEARTBEAT event (one per heartbeat applied) with its JSON text."""

    text = ""

    def to_json(self) -> str:
        return self.text


def _take_card(card: dict[str, Any] | None, state: _Locked, write: _RowWrite) -> None:
    """A usable card fills a missing one and clears a register failure (CONTRACT §12),
    before its heartbeat is judged: the agent has announced itself properly again."""
    if card is None:
        return
    if state.card_missing:
        write.card, state.card_missing = card, False
    write.clear_failure, state.register_failing = True, False


def _write_rows(uow: UnitOfWork, writes: dict[str, _RowWrite]) -> None:
    """At most two UPDATEs for the whole batch: rows keeping their status, rows changing it."""
    same = [(ws, w) for ws, w in writes.items() if w.new_status == w.expected]
    changed = [(ws, w) for ws, w in writes.items() if w.new_status != w.expected]
    if same:
        rows = _rows_json(same, with_status=False)
        uow.conn.execute(_UPDATE_SAME_STATUS, {"rows": rows, "count": len(same)})
    if changed:
        rows = _rows_json(changed, with_status=True)
        uow.conn.execute(_UPDATE_WITH_TRANSITION, {"rows": rows, "count": len(changed)})


def _rows_json(rows: list[tuple[str, _RowWrite]], *, with_status: bool) -> str:
    """The batch's rows as _ROWS reads them. A key left out reads as NULL: optional
    columns are sent only when set, and a false flag is left out (NULL is not true in
    the CASEs that read it); new_status only for the statement that writes it."""
    out: list[dict[str, Any]] = []
    for ws, w in rows:
        hb = w.last
        row: dict[str, Any] = {
            "id": ws,
            "expected": w.expected,
            "error_rate": hb.error_rate,
            "active_tasks": hb.active_tasks,
            "uptime_seconds": hb.uptime_seconds,
            "current_task": hb.current_task,
            "monthly_spend": w.spend,
            "is_busy": hb.busy,
        }
        if with_status:
            row["new_status"] = w.new_status
        if w.busy_before:
            row["busy_before"] = True
        if w.clear_failure:
            row["clear_failure"] = True
        if hb.sample_error is not None:
            row["sample_error"] = hb.sample_error
        if hb.runtime_metadata is not None:
            row["runtime_metadata"] = hb.runtime_metadata.model_dump()
        if w.sent_at is not None:
            row["sent_at"] = w.sent_at.isoformat()
        if w.card is not None:
            row["card"] = w.card
        out.append(row)
    return dumps(out)


def _count(
    results: list[dict[str, Any]], transitions: list[tuple[str, str]], cards_skipped: list[str]
) -> None:
    """Metrics, once the batch committed (rolled-back work is never counted)."""
    for reason, n in Counter(cards_skipped).items():
        metrics.HEARTBEAT_CARDS_SKIPPED.labels(reason).inc(n)
    for status, n in Counter(r["status"] for r in results).items():
        metrics.HEARTBEATS.labels(status).inc(n)
    for (before, after), n in Counter(transitions).items():
        metrics.record_transition(before, after, n)


def _refusal(
    hb: HeartbeatPayload, state: _Locked | None, matched_token: str | None, stale: bool
) -> MessageRefused | None:
    """Why a heartbeat must not apply (CONTRACT §4.2 steps 1, 2 and 4, freshness), or None."""
    if state is None:
        return Rejected(UNKNOWN_ERROR, label="unknown_workspace")
    if hb.sent_at is not None:
        # A producer clock far ahead would block every later heartbeat by the
        # ordering guard; "ahead" is judged by the database's clock, not the worker's.
        ahead = (hb.sent_at - state.db_now).total_seconds()
        if ahead > MAX_SENT_AT_SKEW_SECONDS:
            return Rejected(
                f"sent_at: is {ahead:.0f} s in the future (more than {MAX_SENT_AT_SKEW_SECONDS} s)",
                label="sent_at_in_future",
            )
    if not is_authorized(state.has_live_token, matched_token):
        return Unauthorized(UNAUTHORIZED_ERROR)
    return _moot(hb, state, stale)


def _moot(hb: HeartbeatPayload, state: _Locked, stale: bool) -> Ignored | None:
    """Valid and authorized, but there is nothing it may change."""
    if state.status == Status.REMOVED:
        return Ignored(REMOVED_REASON, label="removed")
    if hb.sent_at and state.last_sent_at and hb.sent_at < state.last_sent_at:
        return Ignored(OLDER_REASON, label="out_of_order")
    if stale:
        # Evidence of life older than the liveness TTL: it may not bring back a workspace
        # marked unreachable since, nor refresh its key (CONTRACT §4.2, freshness). It
        # changes nothing at all, which also covers a workspace still marked online.
        return Ignored(STALE_REASON, label="stale")
    return None
