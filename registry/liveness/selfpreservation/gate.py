"""The liveness listener's cached view of self-preservation (CONTRACT §5)."""

from __future__ import annotations

import time
from collections.abc import Callable

from registry.config import Settings
from registry.liveness.selfpreservation.measuring import Assessment
from registry.liveness.selfpreservation.state import evaluate_now


class SelfPreservationGate:
    """For a long-running process (the listener): evaluates at most every `refresh` s.

    A burst of expiry notifications then costs one evaluation, not one per key.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._checked_at: float | None = None
        self._assessment: Assessment | None = None

    def assessment(self) -> Assessment:
        now = self._clock()
        if (
            self._assessment is None
            or self._checked_at is None
            or now - self._checked_at >= self.refresh_seconds
        ):
            self._assessment = evaluate_now(self.settings)
            self._checked_at = now
        return self._assessment
