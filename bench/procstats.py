"""CPU share per process role and resident memory, read from /proc (Linux only).

A benchmark phase takes a snapshot before and after; the difference says which
process used how much of the machine's cores during it — the measurement that
shows which physical limit stops a figure on a box shared by the broker,
PostgreSQL, the worker and everyone else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# comm (the kernel's 15-character process name) of each service we share the box with.
ROLES_BY_COMM = {
    "postgres": "postgres",
    "redis-server": "redis",
    "beam.smp": "rabbitmq",
    "erl_child_setup": "rabbitmq",
    "epmd": "rabbitmq",
    "inet_gethost": "rabbitmq",
}


@dataclass
class Snapshot:
    """CPU ticks per process and the machine's busy/total ticks at one instant."""

    ticks: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # pid: comm, pgid, t
    started: dict[int, int] = field(default_factory=dict)  # pid: start, ticks after boot
    uptime_ticks: float = 0.0
    # Run-queue figures of the processes under study: pid: (ns on a CPU, ns waiting for one).
    sched: dict[int, tuple[int, int]] = field(default_factory=dict)
    psi_some_us: int | None = None  # /proc/pressure/cpu: time some task waited for a CPU
    machine_busy: int = 0
    machine_total: int = 0


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """comm, process group, CPU ticks used, start time (ticks after boot)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces; the fields after it are fixed.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    pgid, utime, stime, start = int(rest[2]), int(rest[11]), int(rest[12]), int(rest[19])
    return comm, pgid, utime + stime, start


def _sched(pid: int) -> tuple[int, int]:
    """Nanoseconds on a CPU and waiting in the run queue, summed over the threads."""
    run = wait = 0
    with_tasks = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(with_tasks)
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            fields = (with_tasks / tid / "schedstat").read_text().split()
        except OSError:
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run, wait


def _psi_some_us() -> int | None:
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first.rsplit("total=", 1)[1])


def snapshot(detail_pgids: set[int] | None = None) -> Snapshot:
    """CPU ticks of every process; run-queue waits of those in `detail_pgids` and this one."""
    detail = detail_pgids or set()
    me = os.getpid()
    snap = Snapshot()
    snap.psi_some_us = _psi_some_us()
    snap.uptime_ticks = float(Path("/proc/uptime").read_text().split()[0]) * CLOCK_TICKS
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                comm, pgid, ticks, start = stat
                snap.ticks[int(entry)] = (comm, pgid, ticks)
                snap.started[int(entry)] = start
                if pgid in detail or int(entry) == me:
                    snap.sched[int(entry)] = _sched(int(entry))
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    snap.machine_total = sum(fields[:8])
    snap.machine_busy = snap.machine_total - idle
    return snap


def _role(pid: int, comm: str, database: str | None) -> str:
    role = ROLES_BY_COMM.get(comm, "other")
    if role == "postgres" and database:
        # Backends carry their database in the process title: another database's
        # backend is someone else's work; server processes (WAL writer, …) serve all.
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return role
        if "(" in title and f" {database} " not in title:
            return "other"
    return role


def cpu_shares(
    before: Snapshot, after: Snapshot, worker_pgids: set[int], database: str | None = None
) -> dict[str, float]:
    """Per role, the share of ONE core used between the snapshots (2.0 = two cores busy).

    Roles: worker (the benchmark's worker process groups), bench (this process),
    postgres (the server's own processes and the backends of `database`), redis,
    rabbitmq, other (every other process on the box, e.g. other people's test runs
    and their PostgreSQL backends), and machine (busy share of the whole box).
    """
    wall_ticks = (after.machine_total - before.machine_total) / CORES
    if wall_ticks <= 0:
        return {}
    used: dict[str, float] = {}
    me = os.getpid()
    for pid, (comm, pgid, ticks) in after.ticks.items():
        previous = before.ticks.get(pid)
        if previous is not None and before.started.get(pid) == after.started.get(pid):
            delta = ticks - previous[2]  # the same process (an exec keeps its times)
        elif after.started.get(pid, 0) >= before.uptime_ticks - CLOCK_TICKS:
            delta = ticks  # started during the phase
        else:
            continue  # existed before but was not read then: its share is unknown
        if delta <= 0:
            continue
        if pgid in worker_pgids:
            role = "worker"
        elif pid == me:
            role = "bench"
        else:
            role = _role(pid, comm, database)
        used[role] = used.get(role, 0.0) + delta
    shares = {role: ticks / wall_ticks for role, ticks in used.items()}
    shares["machine"] = (after.machine_busy - before.machine_busy) / wall_ticks
    waiting = _waiting_share(before, after, lambda pid, pgid: pgid in worker_pgids)
    if waiting is not None:
        shares["worker_wait"] = waiting
    waiting = _waiting_share(before, after, lambda pid, pgid: pid == me)
    if waiting is not None:
        shares["bench_wait"] = waiting
    if before.psi_some_us is not None and after.psi_some_us is not None:
        wall_us = wall_ticks / CLOCK_TICKS * 1_000_000
        shares["psi_some"] = (after.psi_some_us - before.psi_some_us) / wall_us
    return shares


def _waiting_share(
    before: Snapshot, after: Snapshot, pick: Callable[[int, int], bool]
) -> float | None:
    """How much of the picked processes' runnable time went waiting for a CPU."""
    run = wait = 0
    for pid, (run_after, wait_after) in after.sched.items():
        if not pick(pid, after.ticks.get(pid, ("", -1, 0))[1]):
            continue
        run_before, wait_before = before.sched.get(pid, (0, 0))
        run += run_after - run_before
        wait += wait_after - wait_before
    return wait / (run + wait) if run + wait > 0 else None


def format_shares(shares: dict[str, float]) -> str:
    order = ["worker", "postgres", "redis", "rabbitmq", "bench", "other", "machine"]
    parts = [f"{role} {shares.get(role, 0.0):.2f}" for role in order]
    text = f"cores used of {CORES}: " + ", ".join(parts)
    if "worker_wait" in shares:
        text += f"; worker runnable but waiting for a CPU {shares['worker_wait']:.0%}"
    if "bench_wait" in shares and "worker_wait" not in shares:
        text += f"; benchmark process runnable but waiting for a CPU {shares['bench_wait']:.0%}"
    if "psi_some" in shares:
        text += f"; some task waiting for a CPU {min(shares['psi_some'], 1.0):.0%} of the time"
    return text


def group_rss_kb(pgid: int) -> int:
    """Resident memory of every process in a process group (a worker and its pool)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[1] != pgid:
            continue
        try:
            resident_pages = int(Path(f"/proc/{entry}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident_pages * PAGE_KB
    return total
