"""A simulated fleet of agents for the demo (`molecule-registry demo`).

Agents register and heartbeat through the real queue with the producer client
(client/molecule_registry_client/__init__.py), with behaviours that make every status appear: see
`behaviours.Behaviour`. `fake_engine.FakeDockerEngine` stands in for Docker so the
worker's health and hibernation sweeps have containers to check and stop.
"""

from molecule_registry_demo.simulator.agents import Timings
from molecule_registry_demo.simulator.behaviours import (
    DEFAULT_MIX,
    SHOWCASE_STATUS,
    Behaviour,
    allocate,
    parse_mix,
)
from molecule_registry_demo.simulator.fleet import Fleet

__all__ = [
    "DEFAULT_MIX",
    "SHOWCASE_STATUS",
    "Behaviour",
    "Fleet",
    "Timings",
    "allocate",
    "parse_mix",
]
