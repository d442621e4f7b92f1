"""The registry's web stack: ASGI apps (Starlette) served by uvicorn, an application
layer over `registry` (it may import `registry`, never the reverse).

The platform gateway (CONTRACT §11) turns the original platform's HTTP calls into the
registry's queue messages and serves its events on a WebSocket. It publishes queue
messages and reads PostgreSQL; it writes nothing itself. Handlers (`gateway.http`) are
thin: the rules (payload models, tokens, who may talk to whom) come from `registry`,
and the edge's own concerns each have a module: `auth` (token check with a short
cache), `ratelimit`, `publisher` (heartbeat coalescing and publishing with broker
confirms), `replies` (a registration's answer). `board.py` is the fleet board's
routes; the gateway mounts them at `/board`.
"""
