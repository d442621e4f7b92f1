"""The platform gateway (CONTRACT §11): the original platform's HTTP calls in
front of the registry's queue.

It publishes queue messages and reads PostgreSQL; it writes nothing itself. Handlers
(`gateway.http`) are thin: the rules (payload models, tokens, who may talk to whom)
come from `registry`, and the edge's own concerns each have a module: `auth` (token
check with a short cache), `ratelimit`, `publisher` (heartbeat coalescing and
publishing with broker confirms), `replies` (a registration's answer).
"""
