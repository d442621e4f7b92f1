"""Run a stop function at SIGINT/SIGTERM, then whatever handled the signal before."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: Callable[[], None]) -> Callable[[], None]:
    """Chain `stop` before the current handlers; returns the function that unchains it.

    Signals are handled in the main thread only: elsewhere (a server in a test's
    thread) nothing is chained, and whoever stops that server calls `stop` itself.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handler(sig: int, frame: FrameType | None) -> None:
        stop()
        before = previous[sig]
        if callable(before):
            before(sig, frame)
        elif before != signal.SIG_IGN:  # the default action: as if we had not been here
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in SIGNALS:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before if before is not None else signal.SIG_DFL)

    return restore
