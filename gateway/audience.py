"""Who receives an event: every canvas, and the agents that may see its workspace.

Indexed by workspace, so fanning an event out costs what its recipients cost, not a
filter call per connected client (a thousand agents, a hundred events a second).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.clients import Client


class Audience:
    def __init__(self) -> None:
        self.canvases: set[Client] = set()
        self.agents: set[Client] = set()
        self._watching: dict[str, set[Client]] = {}  # workspace id -> agents that may see it
        self._connected: dict[str, set[Client]] = {}  # workspace id -> its own agents' clients

    def __len__(self) -> int:
        return len(self.canvases) + len(self.agents)

    def add(self, client: Client) -> None:
        if client.viewer.is_canvas:
            self.canvases.add(client)
            return
        self.agents.add(client)
        own = client.viewer.workspace_id
        if own is not None:
            self._connected.setdefault(own, set()).add(client)
        self._watch(client, client.peers)
        client.on_peers = self._repeer

    def discard(self, client: Client) -> None:
        self.canvases.discard(client)
        if client in self.agents:
            self.agents.discard(client)
            own = client.viewer.workspace_id
            connected = self._connected.get(own) if own is not None else None
            if connected is not None:
                connected.discard(client)
                if not connected:
                    del self._connected[own]  # type: ignore[arg-type]
            client.on_peers = None
            self._unwatch(client, client.peers)

    def watching(self, workspace_id: str | None) -> Iterable[Client]:
        """The agents whose peers include `workspace_id`."""
        if workspace_id is None:
            return ()
        return self._watching.get(workspace_id, ())

    def connected(self, workspace_id: str) -> Iterable[Client]:
        """The agent connections of workspace `workspace_id` (usually none or one)."""
        return self._connected.get(workspace_id, ())

    def _repeer(self, client: Client, old: frozenset[str], new: frozenset[str]) -> None:
        self._unwatch(client, old - new)
        self._watch(client, new - old)

    def _watch(self, client: Client, ids: Iterable[str]) -> None:
        for workspace_id in ids:
            self._watching.setdefault(workspace_id, set()).add(client)

    def _unwatch(self, client: Client, ids: Iterable[str]) -> None:
        for workspace_id in ids:
            watchers = self._watching.get(workspace_id)
            if watchers is not None:
                watchers.discard(client)
                if not watchers:
                    del self._watching[workspace_id]
