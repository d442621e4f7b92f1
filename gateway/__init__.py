"""The registry's web stack: ASGI apps (Starlette) served by uvicorn.

An application layer over `registry`: it may import `registry`, never the reverse.
`board.py` is the fleet board's routes; the gateway app mounts them at `/board`.
"""
