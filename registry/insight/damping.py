"""FLAP_DAMPING (CONTRACT §13): a flapping workspace comes back online only once it
has been healthy for FLAP_HOLD_SECONDS, as Consul's `success_before_passing` does.

Off by default: the transition table stays the original's. When on, the heartbeat
batch asks `damped` about each transition of a flapping row; a held recovery starts
(or keeps) `workspaces.flap_hold_since`, a heartbeat that would not recover restarts
it, and the first recovering heartbeat after the hold applies the transition. The
holds are written by one statement per batch, only when some change.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from sqlalchemy import Connection, text

from registry.config import Settings
from registry.statuses import Status


class _Rule(Protocol):
    @property
    def to_status(self) -> Status: ...


class HoldState(Protocol):
    flapping: bool
    hold_started: bool
    hold_done: bool


R = TypeVar("R", bound=_Rule)


def damped(
    rule: R | None, ws: str, state: HoldState, settings: Settings, holds: dict[str, bool]
) -> R | None:
    """The transition to apply (None: held); records hold starts/ends in `holds`."""
    if not settings.flap_damping or not state.flapping:
        return rule
    if rule is not None and rule.to_status == Status.ONLINE:
        if state.hold_done:
            holds[ws], state.hold_started, state.hold_done = False, False, False
            return rule
        if not state.hold_started:
            holds[ws], state.hold_started = True, True
        return None
    if state.hold_started:  # not healthy (or worse): the hold starts again
        holds[ws], state.hold_started, state.hold_done = False, False, False
    return rule


_WRITE_HOLDS = text(
    """
    UPDATE workspaces w SET flap_hold_since = CASE WHEN v.start THEN now() END
    FROM unnest(CAST(:ids AS uuid[]), CAST(:starts AS boolean[])) AS v(id, start)
    WHERE w.id = v.id
    """
)


def write_holds(conn: Connection, holds: dict[str, bool]) -> None:
    if holds:
        conn.execute(_WRITE_HOLDS, {"ids": list(holds), "starts": list(holds.values())})
