"""The subscriber: every event once, in order, across disconnects, trims and Redis restarts."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from board_helpers import (
    collect,
    drain,
    events_only,
    make_workspace,
    numbered,
    private_redis,
    publish,
)
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text

from registry.config import get_settings, reload_settings
from registry.events.outbox import (
    BROADCAST_CHANNEL,
    EVENT_STREAM,
    Event,
    insert_recorded_event,
    relay_unpublished_events,
)
from registry.events.subscriber import (
    HistoryTooOld,
    Position,
    ReceivedEvent,
    ReplayTooOld,
    StreamGap,
    Subscriber,
    latecommits,
    parse_stream_id,
    stream_head,
    stream_id_at,
    stream_id_before,
)
from registry.statuses import EventType

# Heartbeats reach the stream only with EVENTS_STREAM_BROADCASTS on (CONTRACT §7).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("events_stream_broadcasts")]


def numbers(items) -> list[int]:
    return [e.payload["n"] for e in events_only(items)]


def recorded_ids(engine, after: int = 0) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id FROM structure_events WHERE id > :a ORDER BY id"), {"a": after}
            ).scalars()
        )


def own_client() -> redis.Redis:
    """A client with its own connections, like a separate subscriber process."""
    return redis.Redis.from_url(get_settings().redis_url, decode_responses=True, socket_timeout=5)


def republish(engine, client, event_id: int) -> None:
    """Make the outbox relay publish an already published event again (at least once)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO event_outbox (event_id, created_at) "
                "VALUES (:id, now() - interval '1 minute')"
            ),
            {"id": event_id},
        )
        assert relay_unpublished_events(conn, client, grace_seconds=1, stream_maxlen=10**6) == 1


# ---------------------------------------------------------------------------
# Positions (no services)


def test_position_token_round_trip_and_rejects_garbage():
    position = Position("1712345678901-7", 42, "0f" * 20)
    assert Position.from_token(position.token()) == position
    assert Position.from_token("1712345678901-7") == Position("1712345678901-7")
    assert Position.from_token("1712345678901") == Position("1712345678901-0")
    for bad in ("yesterday", "12-3:x", "12-3:4:run id", ""):
        with pytest.raises(ValueError):
            Position.from_token(bad)


def test_stream_id_before_is_the_exclusive_bound_xread_needs():
    assert stream_id_before("100-5") == "100-4"
    assert parse_stream_id(stream_id_before("100-0")) == (99, 2**64 - 1)
    assert stream_id_before("0-0") == "0-0"


# ---------------------------------------------------------------------------
# Reading and resuming


def test_independent_subscribers_each_see_every_event_in_order(db, redis_client):
    ws = make_workspace(db, "alpha")
    first, second = Subscriber(redis_client, db), Subscriber(own_client(), db)
    assert first.poll(block_ms=0) == [] and second.poll(block_ms=0) == []  # "now": nothing old
    publish(db, redis_client, numbered(30, ws))
    for subscriber in (first, second):
        got = events_only(collect(subscriber, 30))
        assert [e.payload["n"] for e in got] == list(range(30))
        assert all(e.stream_id is not None and e.workspace_id == ws for e in got)
        heartbeats = [e for e in got if e.type == EventType.WORKSPACE_HEARTBEAT]
        assert len(heartbeats) == 10 and all(e.event_id is None for e in heartbeats)


def test_resume_after_disconnect_gets_1000_events_once_in_order(db, redis_client):
    ws = make_workspace(db, "busy")
    client = own_client()
    subscriber = Subscriber(client, db)
    publish(db, redis_client, numbered(5, ws))
    assert numbers(collect(subscriber, 5)) == [0, 1, 2, 3, 4]
    saved = subscriber.position.token()  # what a consumer persists
    client.connection_pool.disconnect()  # the subscriber goes away

    publish(db, redis_client, numbered(1000, ws, start=5))
    # The outbox relay republishes one of them (publication is at least once).
    republish(db, redis_client, recorded_ids(db)[500])

    resumed = Subscriber(own_client(), db, since=Position.from_token(saved))
    items = drain(resumed)
    assert not any(isinstance(i, StreamGap) for i in items)
    got = events_only(items)
    assert [e.payload["n"] for e in got] == list(range(5, 1005))
    ids = [e.event_id for e in got if e.event_id is not None]
    assert len(ids) == len(set(ids)) == len(recorded_ids(db)) - 4  # once each
    assert ids == sorted(ids)


def test_same_subscriber_rides_out_a_killed_connection(db, redis_client):
    ws = make_workspace(db, "flaky")
    subscriber = Subscriber(own_client(), db)
    subscriber.poll(block_ms=0)
    got: list = []
    stop = threading.Event()

    def consume() -> None:
        for item in subscriber.events(stop=stop, block_ms=500):
            got.append(item)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        time.sleep(0.3)
        our_db = str(redis_client.connection_pool.connection_kwargs["db"])
        killed = 0
        for info in redis_client.client_list():
            if info.get("db") == our_db and info.get("cmd") in ("xread", "multi", "exec", "info"):
                killed += redis_client.client_kill_filter(_id=info["id"])
        assert killed >= 1
        publish(db, redis_client, numbered(50, ws))
        deadline = time.monotonic() + 20
        while len(got) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert numbers(got) == list(range(50))


def test_since_start_time_and_stream_id(db, redis_client):
    ws = make_workspace(db, "history")
    publish(db, redis_client, numbered(10, ws))
    time.sleep(0.02)  # stream ids are milliseconds: a clear boundary between the halves
    middle = datetime.now(UTC)
    time.sleep(0.02)
    publish(db, redis_client, numbered(10, ws, start=10))

    assert numbers(drain(Subscriber(redis_client, db, since="start"))) == list(range(20))
    assert numbers(drain(Subscriber(redis_client, db, since=middle))) == list(range(10, 20))
    entries = redis_client.xrange(EVENT_STREAM)
    from_id = Subscriber(redis_client, db, since=entries[14][0])
    assert numbers(drain(from_id)) == list(range(15, 20))
    assert drain(Subscriber(redis_client, db, since="now")) == []


# ---------------------------------------------------------------------------
# Gaps: a trimmed stream, a Redis restart


@pytest.mark.parametrize("resume_with", ["position", "stream_id"])
def test_trimmed_stream_is_filled_from_the_database(db, redis_client, monkeypatch, resume_with):
    monkeypatch.setenv("EVENTS_STREAM_MAXLEN", "50")
    reload_settings()
    try:
        ws = make_workspace(db, "trimmed")
        subscriber = Subscriber(own_client(), db)
        publish(db, redis_client, numbered(6, ws))
        collect(subscriber, 6)
        saved = subscriber.position
        assert saved.event_id is not None
        # A stream id alone is a time: make the events read so far clearly older.
        with db.begin() as conn:
            conn.execute(
                text("UPDATE structure_events SET created_at = created_at - interval '1 second'")
            )

        publish(db, redis_client, numbered(120, ws, start=6))  # 80 recorded, 40 broadcast
        redis_client.xtrim(EVENT_STREAM, maxlen=5, approximate=False)
        first_left = redis_client.xinfo_stream(EVENT_STREAM)["first-entry"][0]
        assert parse_stream_id(first_left) > parse_stream_id(saved.stream_id)

        since = saved if resume_with == "position" else saved.stream_id
        resumed = Subscriber(own_client(), db, since=since)
        items = drain(resumed)
        gap = items[0]
        assert isinstance(gap, StreamGap) and gap.reason == "trimmed"
        replayed = events_only(items[1:])
        # Every recorded event of the gap, from structure_events, in id order; the
        # broadcast-only ones (n % 3 == 2) are what the notice says is lost.
        assert all(e.replayed and e.stream_id is None for e in replayed)
        expected = recorded_ids(db, after=saved.event_id)
        assert [e.event_id for e in replayed] == expected
        assert [e.payload["n"] for e in replayed] == [n for n in range(6, 126) if n % 3 != 2]
        assert resumed.position.stream_id == gap.resume_stream_id
        assert resumed.position.event_id == expected[-1]

        # Then live, from the stream, with nothing delivered twice.
        publish(db, redis_client, numbered(9, ws, start=126))
        live = events_only(collect(resumed, 9))
        assert [e.payload["n"] for e in live] == list(range(126, 135))
        assert all(e.stream_id is not None for e in live)
        assert len(redis_client.xrange(EVENT_STREAM)) <= 5 + 9
    finally:
        monkeypatch.delenv("EVENTS_STREAM_MAXLEN")
        reload_settings()


def test_gap_before_the_first_read_replays_only_what_came_after_now(db, redis_client):
    ws = make_workspace(db, "late-reader")
    publish(db, redis_client, numbered(9, ws))  # history from before the subscriber
    subscriber = Subscriber(own_client(), db)  # "now"
    publish(db, redis_client, numbered(9, ws, start=9))
    redis_client.xtrim(EVENT_STREAM, maxlen=1, approximate=False)
    items = drain(subscriber)
    assert isinstance(items[0], StreamGap)
    assert numbers(items) == [n for n in range(9, 18) if n % 3 != 2]


def test_redis_restart_is_replayed_from_the_database(db):
    ws = make_workspace(db, "restart")
    with private_redis() as server:
        client = server.client()
        subscriber = Subscriber(server.client(), db)
        publish(db, client, numbered(6, ws))
        assert numbers(collect(subscriber, 6)) == list(range(6))
        before = subscriber.position

        # Published, not yet read, then lost with the server.
        publish(db, client, numbered(6, ws, start=6))
        server.kill()
        assert subscriber.poll(block_ms=100) == []  # connection refused: backs off, no raise
        # Committed while Redis is down: publication fails, the outbox keeps them.
        with pytest.raises(redis.exceptions.ConnectionError):
            publish(db, client, numbered(3, ws, start=12), per_transaction=3)
        server.start()
        publish(db, client, numbered(6, ws, start=15))

        items = collect(subscriber, 10)
        gap = items[0]
        assert isinstance(gap, StreamGap) and gap.reason == "redis_reset"
        replayed = events_only(items)
        # All recorded events after the last one seen, including those the dead
        # server held and those never published; heartbeats (n % 3 == 2) are lost.
        assert [e.payload["n"] for e in replayed] == [n for n in range(6, 21) if n % 3 != 2]
        assert [e.event_id for e in replayed] == recorded_ids(db, after=before.event_id)
        assert subscriber.position.redis_run_id != before.redis_run_id

        # The relay publishes what the outbox kept: already delivered, so skipped.
        with db.begin() as conn:
            conn.execute(text("UPDATE event_outbox SET created_at = now() - interval '1 minute'"))
            assert relay_unpublished_events(conn, client, grace_seconds=1, stream_maxlen=1000) == 2
        publish(db, client, numbered(3, ws, start=21))
        assert numbers(collect(subscriber, 3)) == [21, 22, 23]
        assert stream_head(client).redis_run_id == subscriber.position.redis_run_id


def test_unreachable_redis_backs_off_instead_of_spinning(db):
    # No retries inside redis-py: what is measured is the subscriber's own backoff.
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    subscriber = Subscriber(dead, db)
    stop = threading.Event()
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < 1.0:
        assert subscriber.poll(block_ms=100, stop=stop) == []
        calls += 1
    assert calls <= 3  # 0.25-0.5 s, then 0.5-1 s, ...: a handful of tries, not thousands
    stop.set()
    assert subscriber.poll(block_ms=100, stop=stop) == []  # stop cuts the wait short


def test_replayed_event_matches_the_published_one(db, redis_client):
    ws = make_workspace(db, "same")
    publish(db, redis_client, [(EventType.WORKSPACE_OFFLINE, ws, {"reason": "r"})])
    (live,) = events_only(drain(Subscriber(redis_client, db, since="start")))
    redis_client.delete(EVENT_STREAM)
    run_id = stream_head(redis_client).redis_run_id
    old = Position(stream_id_before(live.stream_id), live.event_id - 1, run_id)
    items = drain(Subscriber(redis_client, db, since=old))
    assert isinstance(items[0], StreamGap)
    (replayed,) = events_only(items)
    assert isinstance(replayed, ReceivedEvent)
    published = {k: v for k, v in live.as_dict().items() if k != "stream_id"}
    assert {k: v for k, v in replayed.as_dict().items() if k != "stream_id"} == published
    assert datetime.now(UTC) - replayed.timestamp < timedelta(minutes=1)


# ---------------------------------------------------------------------------
# Late commits: ids are allocated at insert, transactions commit in any order


def open_transaction_with_event(db, ws: str, n: int):
    """A transaction that has inserted a recorded event (its id drawn) but not committed."""
    conn = db.connect()
    transaction = conn.begin()
    event = insert_recorded_event(conn, EventType.AGENT_CARD_UPDATED, uuid.UUID(ws), {"n": n})
    return conn, transaction, event.event_id


def test_token_round_trip_keeps_pending_ids():
    position = Position("1712345678901-7", 42, "ab12", (39, 40))
    assert position.token() == "1712345678901-7:42:ab12:39,40"
    assert Position.from_token(position.token()) == position
    assert Position.from_token("1-0:5::") == Position("1-0", 5)
    for bad in ("1-0:5:ab:x", "1-0:5:ab:1,,2", "1-0:5:ab:-1"):
        with pytest.raises(ValueError):
            Position.from_token(bad)


def test_xid_order_survives_wraparound():
    assert latecommits.precedes(10, 2**32 + 20)
    assert not latecommits.precedes(30, 2**32 + 20)
    assert latecommits.precedes(2**32 - 5, 2**33 + 3)  # just before the counter wrapped


def test_delivered_remembers_skipped_ids_until_they_come():
    position = Position("1-0", 10).delivered(13, "2-0")
    assert position == Position("2-0", 13, None, (11, 12))
    position = position.delivered(11, "3-0")
    assert position.event_id == 13 and position.pending == (12,)
    assert position.forget([12]).pending == ()


@pytest.mark.parametrize("resume", ["same_subscriber", "saved_token"])
def test_event_committed_late_behind_a_gap_is_replayed(db, redis_client, resume):
    ws = make_workspace(db, "late-commit")
    subscriber = Subscriber(own_client(), db)
    # Transaction A draws the lower id; B draws the next one and commits first.
    conn, transaction, late_id = open_transaction_with_event(db, ws, 0)
    try:
        publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": 1})])
        (first,) = events_only(collect(subscriber, 1))
        assert first.payload["n"] == 1 and first.event_id == late_id + 1
        assert subscriber.position.pending == (late_id,)
        transaction.commit()  # A commits late; its process dies before publishing
    finally:
        conn.close()
    publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": 2})])
    redis_client.xtrim(EVENT_STREAM, maxlen=0, approximate=False)  # the stream lost both

    if resume == "saved_token":
        subscriber = Subscriber(own_client(), db, since=subscriber.position.token())
    items = drain(subscriber)
    assert isinstance(items[0], StreamGap)
    replayed = events_only(items)
    # Before the fix the replay read ids above B's and skipped A's event for good.
    assert [e.payload["n"] for e in replayed] == [0, 2]
    assert all(e.replayed for e in replayed)
    assert subscriber.position.pending == ()
    assert drain(subscriber) == []  # nothing twice


def test_pending_id_is_forgotten_after_a_rollback_and_kept_while_its_transaction_is_open(
    db, redis_client, monkeypatch
):
    monkeypatch.setattr(latecommits, "GRACE_SECONDS", 0.0)
    monkeypatch.setattr(latecommits, "CHECK_EVERY_SECONDS", 0.0)
    ws = make_workspace(db, "in-flight")
    subscriber = Subscriber(own_client(), db)

    def settle(until_empty: bool = True) -> None:
        # The first check notes the horizon, the next ones decide.
        deadline = time.monotonic() + 20
        for _ in range(3):
            subscriber.poll(block_ms=0)
        while until_empty and subscriber.position.pending and time.monotonic() < deadline:
            subscriber.poll(block_ms=50)

    doomed_conn, doomed_tx, doomed_id = open_transaction_with_event(db, ws, 0)
    publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": 1})])
    collect(subscriber, 1)
    assert subscriber.position.pending == (doomed_id,)
    doomed_tx.rollback()
    doomed_conn.close()
    settle()
    assert subscriber.position.pending == ()  # rolled back: it can never commit

    open_conn, open_tx, open_id = open_transaction_with_event(db, ws, 2)
    try:
        publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": 3})])
        collect(subscriber, 1)
        settle(until_empty=False)
        # Still open: it may commit any moment, so the position (and its token) keep it.
        assert subscriber.position.pending == (open_id,)
        assert subscriber.position.token().endswith(f":{open_id}")
    finally:
        open_tx.rollback()
        open_conn.close()
    settle()
    assert subscriber.position.pending == ()


# ---------------------------------------------------------------------------
# Retention: a replay from before the window answers "too old"


def age_events(db, ids: list[int], days: int) -> None:
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE structure_events SET created_at = now() - make_interval(days => :d) "
                "WHERE id = ANY(:ids)"
            ),
            {"d": days, "ids": ids},
        )


def prune(db, days: int) -> None:
    """What the retention task does: delete rows older than the window."""
    with db.begin() as conn:
        conn.execute(
            text(
                "DELETE FROM structure_events WHERE created_at < now() - make_interval(days => :d)"
            ),
            {"d": days},
        )


def test_replay_from_before_the_retention_window_says_too_old(db, redis_client):
    ws = make_workspace(db, "ancient")
    subscriber = Subscriber(own_client(), db, retention_days=30)
    publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": 0})])
    collect(subscriber, 1)  # delivered n=0, then went away
    publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": n}) for n in (1, 2, 3)])
    delivered = subscriber.position
    # As if n=0 had come 40 days ago: its stream id is a time too.
    long_ago = stream_id_at(datetime.now(UTC) - timedelta(days=40))
    saved = Position(long_ago, delivered.event_id, delivered.redis_run_id)
    old = recorded_ids(db, after=saved.event_id - 1)
    age_events(db, old[:3], days=40)  # n=0..2 are older than the window
    prune(db, days=30)  # and deleted
    publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": 4})])
    redis_client.xtrim(EVENT_STREAM, maxlen=0, approximate=False)

    resumed = Subscriber(own_client(), db, since=saved, retention_days=30)
    items = drain(resumed)
    gap, notice = items[0], items[1]
    assert isinstance(gap, StreamGap) and gap.reason == "trimmed"
    assert isinstance(notice, HistoryTooOld) and notice.reason == "too_old"
    assert notice.retention_days == 30
    assert "older than the 30-day retention window" in notice.describe()
    assert notice.as_dict()["gap"] == "too_old"
    # Then what the window still holds, instead of a silent later start.
    assert [e.payload["n"] for e in events_only(items)] == [3, 4]

    strict = Subscriber(own_client(), db, since=saved, retention_days=30, too_old="raise")
    with pytest.raises(ReplayTooOld) as raised:
        drain(strict)
    assert raised.value.notice.retention_days == 30

    # 0 keeps history forever: no notice, whatever the age.
    forever = drain(Subscriber(own_client(), db, since=saved, retention_days=0))
    assert not any(isinstance(i, HistoryTooOld) for i in forever)


def test_replay_from_a_time_before_the_window_says_too_old(db, redis_client):
    ws = make_workspace(db, "long-ago")
    publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws, {"n": 0})])
    redis_client.delete(EVENT_STREAM)
    subscriber = Subscriber(
        own_client(), db, since=datetime.now(UTC) - timedelta(days=100), retention_days=90
    )
    items = drain(subscriber)
    assert any(isinstance(i, HistoryTooOld) for i in items)
    recent = Subscriber(
        own_client(), db, since=datetime.now(UTC) - timedelta(days=10), retention_days=90
    )
    assert not any(isinstance(i, HistoryTooOld) for i in drain(recent))


# ---------------------------------------------------------------------------
# Broadcast-only events live from the channel (CONTRACT §7)


def broadcast_only(client, ws: str, n: int) -> None:
    """A heartbeat as the registry publishes it now: on the channel, not the stream."""
    event = Event(EventType.WORKSPACE_HEARTBEAT, uuid.UUID(ws), {"n": n, "active_tasks": 1})
    client.publish(BROADCAST_CHANNEL, event.to_json())


def ours(items, ws: str) -> list[ReceivedEvent]:
    """Pub/sub channels span Redis databases: other test runs' heartbeats arrive too."""
    return [e for e in events_only(items) if e.workspace_id == ws]


def collect_ours(subscriber: Subscriber, ws: str, count: int) -> list[ReceivedEvent]:
    got: list[ReceivedEvent] = []
    deadline = time.monotonic() + 20
    while len(got) < count:
        assert time.monotonic() < deadline, got
        got.extend(ours(subscriber.poll(block_ms=200), ws))
    return got


def test_broadcast_subscriber_gets_channel_heartbeats_and_stream_events_once(db, redis_client):
    ws = make_workspace(db, "pulse")
    subscriber = Subscriber(own_client(), db, broadcast=True)
    plain = Subscriber(own_client(), db)
    try:
        broadcast_only(redis_client, ws, 0)
        # The current path publishes heartbeats on both: still handed out once.
        publish(db, redis_client, numbered(3, ws, start=1))
        broadcast_only(redis_client, ws, 4)
        got = collect_ours(subscriber, ws, 5)
        assert sorted(e.payload["n"] for e in got) == [0, 1, 2, 3, 4]
        live = [e for e in got if e.type == EventType.WORKSPACE_HEARTBEAT]
        assert {e.payload["n"] for e in live} == {0, 2, 4}
        assert not any(e.replayed for e in got)
        assert ours(subscriber.poll(block_ms=300), ws) == []  # no second copy
        # Without asking, only the stream: channel-only heartbeats are not seen.
        assert sorted(e.payload["n"] for e in events_only(collect(plain, 3))) == [1, 2, 3]
    finally:
        subscriber.close()


def test_broadcast_subscriber_wakes_on_the_channel_while_waiting(db, redis_client):
    ws = make_workspace(db, "waiting")
    subscriber = Subscriber(own_client(), db, broadcast=True)
    got: list = []
    stop = threading.Event()

    def consume() -> None:
        for item in subscriber.events(stop=stop, block_ms=3000):
            got.append(item)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        broadcast_only(redis_client, ws, 7)
        while not ours(got, ws) and time.monotonic() - started < 10:
            time.sleep(0.02)
        assert time.monotonic() - started < 2.5  # not after the whole 3 s block
        publish(db, redis_client, [(EventType.WORKSPACE_OFFLINE, ws, {"reason": "r"})])
        while len(ours(got, ws)) < 2 and time.monotonic() - started < 10:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=10)
        subscriber.close()
    assert [e.type for e in ours(got, ws)] == [
        EventType.WORKSPACE_HEARTBEAT,
        EventType.WORKSPACE_OFFLINE,
    ]


def test_catching_up_ends_even_while_the_channel_is_busy(db, redis_client):
    ws = make_workspace(db, "busy-channel")
    publish(db, redis_client, numbered(3, ws))
    subscriber = Subscriber(own_client(), db, since="start", broadcast=True)
    stop = threading.Event()

    def chatter() -> None:
        n = 100
        while not stop.is_set():
            broadcast_only(redis_client, ws, n)
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        items = drain(subscriber, timeout=10)  # follow=False: history only, then it ends
    finally:
        stop.set()
        thread.join(timeout=10)
        subscriber.close()
    assert [e.payload["n"] for e in ours(items, ws)] == [0, 1, 2]
