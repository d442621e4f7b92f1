"""Self-preservation (CONTRACT §5): never mark workspaces unreachable for the registry's own trouble.

In a queue-based registry a stalled or backlogged heartbeat consumer lets every
liveness key expire while every agent is alive and sending. So the automatic paths
that mark a workspace unreachable — the liveness listener, the stale-heartbeat
backstop and the remote-agent pass of the health sweep — first ask `evaluate`, and
pause while the heartbeat queue is backlogged or too large a share of the fleet is
about to be marked.

One module per job:

- `probes`: the heartbeat-queue probe table and the backlog it measures;
- `counts`: workspaces per status, kept by triggers (the fleet size without a count);
- `measuring`: both signals, as an `Assessment` (changes nothing);
- `state`: the shared on/off row and its start/end events (`evaluate`);
- `reuse`: the last evaluation kept for sweeps to reuse for a few seconds;
- `gate`: the listener's cached evaluation.
"""

from registry.liveness.selfpreservation.gate import SelfPreservationGate
from registry.liveness.selfpreservation.measuring import (
    HEARTBEAT_STALE,
    LIVENESS_EXPIRED,
    LIVENESS_REASONS,
    MIN_FLEET,
    REASON_BACKLOG,
    REASON_FLEET_SHARE,
    Assessment,
    FleetShare,
    assess,
    measure_fleet_share,
)
from registry.liveness.selfpreservation.probes import (
    Backlog,
    HeartbeatProbePayload,
    measure_backlog,
    record_probe,
    send_probe_if_due,
)
from registry.liveness.selfpreservation.state import (
    current_state,
    evaluate,
    evaluate_now,
    evaluate_recent,
)

__all__ = [
    "HEARTBEAT_STALE",
    "LIVENESS_EXPIRED",
    "LIVENESS_REASONS",
    "MIN_FLEET",
    "REASON_BACKLOG",
    "REASON_FLEET_SHARE",
    "Assessment",
    "Backlog",
    "FleetShare",
    "HeartbeatProbePayload",
    "SelfPreservationGate",
    "assess",
    "current_state",
    "evaluate",
    "evaluate_now",
    "evaluate_recent",
    "measure_backlog",
    "measure_fleet_share",
    "record_probe",
    "send_probe_if_due",
]
