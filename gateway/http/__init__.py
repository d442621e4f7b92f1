"""The HTTP calls of CONTRACT §11, one thin handler each."""

from __future__ import annotations

from starlette.routing import Route

from gateway.http import registry, workspaces


def routes() -> list[Route]:
    return [
        Route("/registry/register", registry.register, methods=["POST"]),
        Route("/registry/heartbeat", registry.heartbeat, methods=["POST"]),
        Route("/registry/update-card", registry.update_card, methods=["POST"]),
        Route("/registry/check-access", registry.check_access, methods=["POST"]),
        Route("/registry/discover/{id}", registry.discover, methods=["GET"]),
        Route("/registry/{id}/peers", registry.peers, methods=["GET"]),
        Route("/workspaces/{id}/state", workspaces.state, methods=["GET"]),
    ]
