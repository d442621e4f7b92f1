"""A simulated fleet of agents for the demo (`molecule-registry demo`).

Agents register and heartbeat through the real queue with the producer client
(registry/client.py), with behaviours that make every status appear: see
`behaviours.Behaviour`. `fake_engine.FakeDockerEngine` stands in for Docker so the
worker's health and hibernation sweeps have containers to check and stop.
"""

from registry.simulator.agents import Timings
from registry.simulator.behaviours import (
    DEFAULT_MIX,
    SHOWCASE_STATUS,
    Behaviour,
    allocate,
    parse_mix,
)
from registry.simulator.fleet import Fleet

__all__ = [
    "DEFAULT_MIX",
    "SHOWCASE_STATUS",
    "Behaviour",
    "Fleet",
    "Timings",
    "allocate",
    "parse_mix",
]
