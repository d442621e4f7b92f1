"""The behaviours a simulated agent can have, and how a fleet is split between them."""

from __future__ import annotations

from enum import StrEnum

from registry.statuses import Status


class Behaviour(StrEnum):
    HEALTHY = "healthy"  # registers, heartbeats steadily
    DYING = "dying"  # stops heartbeating for good → liveness expiry → offline
    FLAKY = "flaky"  # wedges or reports high error rates, then recovers → degraded ↔ online
    IDLE = "idle"  # no work, hibernation enabled → hibernated
    LAPTOP = "laptop"  # external runtime, vanishes and re-registers → awaiting_agent ↔ online
    STUCK = "stuck"  # created, never registers → failed by the provisioning sweep
    # The original's newest registry (CONTRACT §12):
    LATE = "late"  # boots after the provisioning timeout → failed, then its heartbeat → online
    MISCONFIGURED = "misconfigured"  # a registration refused after auth → degraded, then fixed
    PAUSED = "paused"  # paused by the operator; its re-registrations do not wake it


# The status each behaviour exists to show.
SHOWCASE_STATUS: dict[Behaviour, Status] = {
    Behaviour.HEALTHY: Status.ONLINE,
    Behaviour.DYING: Status.OFFLINE,
    Behaviour.FLAKY: Status.DEGRADED,
    Behaviour.IDLE: Status.HIBERNATED,
    Behaviour.LAPTOP: Status.AWAITING_AGENT,
    Behaviour.STUCK: Status.FAILED,
    Behaviour.LATE: Status.ONLINE,  # after `failed`: the comeback is the point
    Behaviour.MISCONFIGURED: Status.DEGRADED,
    Behaviour.PAUSED: Status.PAUSED,
}

DEFAULT_MIX: dict[Behaviour, float] = {
    Behaviour.HEALTHY: 55,
    Behaviour.DYING: 8,
    Behaviour.FLAKY: 8,
    Behaviour.IDLE: 8,
    Behaviour.LAPTOP: 8,
    Behaviour.STUCK: 4,
    Behaviour.LATE: 3,
    Behaviour.MISCONFIGURED: 3,
    Behaviour.PAUSED: 3,
}


def parse_mix(text: str) -> dict[Behaviour, float]:
    """`healthy=60,dying=10,…` → weights. Behaviours not named get weight 0.

    Raises ValueError naming the bad part (an unknown behaviour, a weight that is not
    a non-negative number, all weights zero).
    """
    names = ", ".join(b.value for b in Behaviour)
    weights: dict[Behaviour, float] = dict.fromkeys(Behaviour, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        try:
            behaviour = Behaviour(name.strip().lower())
        except ValueError:
            raise ValueError(f"unknown behaviour {name.strip()!r} (known: {names})") from None
        try:
            weight = float(raw) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not weight >= 0:  # also rejects NaN
            raise ValueError(f"{part!r}: the weight must be a non-negative number")
        weights[behaviour] = weight
    if not any(weights.values()):
        raise ValueError(f"the mix gives no agent any behaviour (known: {names})")
    return weights


def allocate(fleet: int, mix: dict[Behaviour, float]) -> dict[Behaviour, int]:
    """Agents per behaviour: proportional to the weights (largest remainder).

    Every behaviour with a positive weight gets at least one agent when the fleet is
    large enough (taken from the largest group), so even a small demo fleet shows
    every status.
    """
    wanted = [b for b in Behaviour if mix.get(b, 0) > 0]
    counts = dict.fromkeys(Behaviour, 0)
    if fleet <= 0 or not wanted:
        return counts
    total = sum(mix[b] for b in wanted)
    shares = {b: fleet * mix[b] / total for b in wanted}
    for behaviour in wanted:
        counts[behaviour] = int(shares[behaviour])
    left = fleet - sum(counts.values())
    by_remainder = sorted(wanted, key=lambda b: shares[b] - int(shares[b]), reverse=True)
    for behaviour in by_remainder[:left]:
        counts[behaviour] += 1
    if fleet >= len(wanted):
        for behaviour in wanted:
            if counts[behaviour] == 0:
                largest = max(wanted, key=lambda b: counts[b])
                counts[largest] -= 1
                counts[behaviour] = 1
    return counts
