"""Child processes of the demo, each in its own process group, all stopped on exit.

Each child starts a new session (so a Ctrl-C in the terminal reaches only the demo,
which then stops the children in order) and, on Linux, asks the kernel to send it
SIGTERM if the demo dies without cleaning up. Stopping signals the whole group —
a Celery worker's pool processes and embedded beat included: SIGTERM, then SIGKILL
for whatever is left after the grace period.

`celery_argv`, `start_in_own_group` and `signal_group` are the building blocks; the
tests' subprocess helper (tests/workerproc.py) uses them too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def celery_argv(*args: str) -> list[str]:
    """`celery -A workers.app <args>`, run by this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "workers.app", *args]


def start_in_own_group(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new session and process group (pgid == pid).

    Stdout and stderr go to `log_path`; every process it forks stays in its group, so
    `signal_group(process.pid, ...)` reaches them all.
    """
    with log_path.open("wb") as log:
        return subprocess.Popen(  # noqa: S603 - argv is built by the caller itself
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - callers spawn before starting threads
        )


def signal_group(pgid: int, signum: int) -> None:
    """Signal every process of the group; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.process.pid  # leader of its own session and group

    def exited(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        log_path = self.log_dir / f"{name}.log"
        # The spawn happens from the main thread before the demo starts any of its own
        # threads (PDEATHSIG follows the thread that forked, preexec_fn wants no other
        # threads).
        process = start_in_own_group(
            argv, env=env, log_path=log_path, preexec_fn=_die_with_parent()
        )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.exited() is not None), None)

    def stop_all(self, grace_seconds: float = 15.0) -> list[str]:
        """SIGTERM every group, SIGKILL what is left; returns what had to be killed."""
        for child in reversed(self.children):
            signal_group(child.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        killed: list[str] = []
        for child in reversed(self.children):
            if not _wait_group(child, deadline):
                killed.append(child.name)
                signal_group(child.pgid, signal.SIGKILL)
                _wait_group(child, time.monotonic() + 5)
        return killed


def _wait_group(child: Child, deadline: float) -> bool:
    """Wait until no process of the child's group is left; False at the deadline."""
    while True:
        child.process.poll()  # reap the leader, or its zombie keeps the group alive
        if child.process.returncode is not None and not _group_alive(child.pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    # killpg(…, 0) also succeeds for zombies that another parent has not reaped yet
    # (a pool process orphaned to init); only a process that still runs counts.
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
