"""Run a project process (Celery worker, beat, liveness listener) as a real subprocess.

For tests that must kill a process the way an operator's machine would (SIGKILL of
the whole process group, prefork children included) or run several at once. The
process gets the test environment, writes stdout and stderr to one log file, and is
ready once a given line appears in that log. Whatever happens in the test, leaving
the `managed_process` block kills the whole process group.

    with managed_process(celery_worker_argv(), env=process_env(test_env),
                         ready=WORKER_READY, log_dir=tmp_path) as worker:
        ...
        worker.kill()  # SIGKILL, children included
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from molecule_registry_client.names import QUEUE_NAMES
from molecule_registry_demo.simulator.processes import celery_argv, signal_group, start_in_own_group

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKER_READY = r"\S+@\S+ ready\."  # "<name>@<host> ready."
BEAT_READY = r"beat: Starting\.\.\."


def process_env(test_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """This process's environment plus the test run's settings and `overrides`.

    The metrics endpoint is off unless asked for: parallel processes would fight
    over its port.
    """
    env = {**os.environ, "METRICS_PORT": "0", **test_env, **overrides}
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file as they are written
    return env


def celery_worker_argv(
    queues: Sequence[str] = QUEUE_NAMES,
    *,
    concurrency: int = 2,
    pool: str = "prefork",
    hostname: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """`celery -A workers.app worker` as CONTRACT §1 starts it, consuming `queues`."""
    name = hostname or f"test-{uuid.uuid4().hex[:8]}@%h"
    return celery_argv(
        "worker",
        "-Q",
        ",".join(queues),
        "--pool",
        pool,
        "-c",
        str(concurrency),
        "-l",
        "INFO",
        "-n",
        name,
        # Neither matters to these tests and each costs a second of start-up.
        "--without-mingle",
        "--without-gossip",
        *extra,
    )


def celery_beat_argv(schedule_file: Path, extra: Sequence[str] = ()) -> list[str]:
    """`celery -A workers.app beat`, keeping its schedule file out of the source tree."""
    return celery_argv("beat", "-l", "INFO", "-s", str(schedule_file), *extra)


@dataclass
class ManagedProcess:
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def wait_for_log(self, pattern: str, *, count: int = 1, timeout: float = 30) -> None:
        """Wait until `pattern` occurs `count` times in the log; fail with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(pattern) >= count:
                return
            if not self.alive:
                raise AssertionError(
                    f"process exited ({self.proc.returncode}) before {pattern!r} x{count}:\n"
                    + self.tail()
                )
            time.sleep(0.1)
        raise AssertionError(
            f"{pattern!r} x{count} not in the log after {timeout} s:\n{self.tail()}"
        )

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal_group(self, sig: signal.Signals) -> None:
        # The process leads its own group (pgid == pid), with every child it forks
        # (prefork pool processes) in it.
        signal_group(self.proc.pid, sig)

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL the whole process group (nothing gets to clean up) and reap it."""
        self.signal_group(signal.SIGKILL)
        self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (a Celery worker's warm shutdown), then SIGKILL if it lingers."""
        if self.alive:
            self.signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()


@contextmanager
def managed_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_dir: Path,
    ready: str | None = None,
    timeout: float = 30,
    name: str = "process",
) -> Iterator[ManagedProcess]:
    """Start `argv` in its own process group; yield once `ready` is logged; kill on exit."""
    log_path = Path(log_dir) / f"{name}-{uuid.uuid4().hex[:6]}.log"
    proc = start_in_own_group(argv, env=env, log_path=log_path, cwd=PROJECT_ROOT)
    managed = ManagedProcess(list(argv), log_path, proc)
    try:
        if ready is not None:
            managed.wait_for_log(ready, timeout=timeout)
        yield managed
    finally:
        managed.kill()
