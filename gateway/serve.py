"""Running the gateway process on uvicorn (`molecule-registry gateway`)."""

from __future__ import annotations

import importlib.util
import logging

from registry.config import Settings
from registry.redaction import install_log_redaction


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def serve(settings: Settings, host: str, port: int, log_level: str) -> None:
    """Serve until interrupted. Never logs a token or an Authorization header: uvicorn's
    access log shows the method, path and status only, and every log record passes
    the registry's redaction (CONTRACT §4.1 step 8)."""
    import uvicorn

    from gateway.app import build_app

    install_log_redaction()
    logging.getLogger().setLevel(log_level.upper())
    uvicorn.run(
        build_app(settings),
        host=host,
        port=port,
        log_level=log_level.lower(),
        # The C parser and event loop where installed (uvicorn[standard]); the pure
        # Python ones otherwise.
        http="httptools" if _available("httptools") else "h11",
        loop="uvloop" if _available("uvloop") else "asyncio",
        # Forwarded headers from a proxy are trusted only from localhost (uvicorn's
        # default), so the rate limit's client address cannot be forged from outside.
        proxy_headers=True,
        server_header=False,
        lifespan="on",
    )
