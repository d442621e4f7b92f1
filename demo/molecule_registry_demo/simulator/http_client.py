"""The simulated agents' registry calls over HTTP, through the gateway (`--via http`).

The original platform's agents register and heartbeat over HTTP; this client makes
the simulated ones do the same through `molecule-registry gateway`, with the calls
and answers of CONTRACT §11. It offers the two methods the agents use of
`RegistryClient` (`register`, `heartbeat`) and the same errors; what an agent never
sends (the provisioner's `create_workspace`, `remove_workspace`) still goes through
the queue, as the platform's provisioner would send it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from molecule_registry_client import (
    RegistryClient,
    RegistryError,
    RegistryRefused,
    RegistryTimeout,
    RegistryUnavailable,
)
from molecule_registry_client.names import HEARTBEAT_TASK, REGISTER_TASK


class HttpRegistryClient:
    """`register` and `heartbeat` over the gateway; the rest through `admin` (the queue)."""

    def __init__(self, gateway_url: str, admin: RegistryClient, *, timeout: float = 30) -> None:
        self.gateway_url = gateway_url
        self.admin = admin
        # Thread-safe, pooled keep-alive connections: the fleet's threads share it.
        self._http = httpx.Client(
            base_url=gateway_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def register(
        self,
        workspace_id: uuid.UUID | str,
        agent_card: Mapping[str, Any],
        *,
        url: str = "",
        delivery_mode: str = "",
        auth_token: str | None = None,
        timeout: float | None = None,
    ) -> str:
        body: dict[str, Any] = {"id": str(workspace_id), "agent_card": dict(agent_card)}
        if url:
            body["url"] = url
        if delivery_mode:
            body["delivery_mode"] = delivery_mode
        answer = self._post(REGISTER_TASK, "/registry/register", body, auth_token)
        token = answer.get("auth_token") or auth_token
        if not token:
            raise RegistryError(f"{REGISTER_TASK}: registered without a token: {answer}")
        return str(token)

    def heartbeat(
        self, workspace_id: uuid.UUID | str, auth_token: str | None = None, **fields: Any
    ) -> str:
        body = {"workspace_id": str(workspace_id)}
        body.update({key: value for key, value in fields.items() if value is not None})
        self._post(HEARTBEAT_TASK, "/registry/heartbeat", body, auth_token)
        return ""  # the gateway batches heartbeats: no message id of their own

    def create_workspace(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return self.admin.create_workspace(name, **kwargs)

    def remove_workspace(self, workspace_id: uuid.UUID | str, **kwargs: Any) -> dict[str, Any]:
        return self.admin.remove_workspace(workspace_id, **kwargs)

    def close(self) -> None:
        self._http.close()
        self.admin.close()

    def _post(
        self, task: str, path: str, body: dict[str, Any], token: str | None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            answer = self._http.post(path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable("gateway", self.gateway_url, exc) from exc
        data = answer.json() if answer.headers.get("content-type") == "application/json" else {}
        if answer.status_code == 200:
            return dict(data)
        error = str(data.get("error") or answer.reason_phrase)
        if answer.status_code == 401:
            raise RegistryRefused(task, {"status": "unauthorized", "error": error})
        if answer.status_code == 503:
            raise RegistryTimeout(f"{task}: {error}")
        if 400 <= answer.status_code < 500:
            raise RegistryRefused(task, {"status": "rejected", "error": error})
        raise RegistryError(f"{task}: the gateway answered {answer.status_code}: {error}")
