"""An open-loop HTTP heartbeat generator for bench/gateway.py (wrk2 is not in Debian).

Request i is due at `start + i / rate` whatever the answers before it did (open loop:
a slow answer never delays the next call, so no coordinated omission). Due requests go
out on a pool of keep-alive connections; when every connection is busy they wait,
and that wait counts in their latency, measured from the time they were due. Each
request is the next fleet member's heartbeat with its bearer token (each member at
most once), and every answer's wall-clock time is kept so the benchmark can compare
it with the time PostgreSQL applied that heartbeat (`workspaces.last_heartbeat_at`).

HTTP/1.1 is written and read by hand on asyncio streams (uvloop): a client library
would cost more CPU than the gateway on this 2-core box.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

TICK_SECONDS = 0.001


@dataclass
class Answer:
    due: float  # wall clock (time.time()) the request was due
    answered: float  # wall clock the whole answer was read
    status: int


def heartbeat_request(workspace_id: str, token: str) -> bytes:
    body = f'{{"workspace_id":"{workspace_id}","active_tasks":1,"uptime_seconds":60}}'.encode()
    head = (
        "POST /registry/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def open_loop(
    host: str, port: int, fleet: list[tuple[str, str]], rate: float, connections: int
) -> dict[str, Answer]:
    """Send one heartbeat per fleet member at `rate` per second; workspace id -> Answer."""
    requests = [(ws, heartbeat_request(ws, token)) for ws, token in fleet]
    due: asyncio.Queue[tuple[str, bytes, float] | None] = asyncio.Queue()
    answers: dict[str, Answer] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (job := await due.get()) is not None:
                ws, raw, due_at = job
                writer.write(raw)
                status = await _read_answer(reader)
                answers[ws] = Answer(due_at, time.time(), status)
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # connections open before the clock starts
    start = time.time()
    sent = 0
    while sent < len(requests):
        now = time.time()
        until = min(len(requests), int((now - start) * rate) + 1)
        while sent < until:
            ws, raw = requests[sent]
            due.put_nowait((ws, raw, start + sent / rate))
            sent += 1
        await asyncio.sleep(TICK_SECONDS)
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    return answers


def run_open_loop(
    host: str, port: int, fleet: list[tuple[str, str]], rate: float, connections: int
) -> dict[str, Answer]:
    try:
        import uvloop

        return uvloop.run(open_loop(host, port, fleet, rate, connections))
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        return asyncio.run(open_loop(host, port, fleet, rate, connections))
