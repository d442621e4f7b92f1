"""uvicorn's HTTP/1.1 protocol (h11), but a request without a Host header gets 403.

h11 rejects an HTTP/1.1 request that names no Host before any app sees it, with a
bare 400. The board's rule is one answer for every request that does not name the
board (registry/board/hosts.py): 403, saying why. Any other malformed request keeps
uvicorn's 400.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

NO_HOST = "Missing mandatory Host: header"  # h11's words for it


class BoardH11Protocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal = ""
        next_event = self.conn.next_event

        def remembering() -> Any:  # the reason h11 refused the request, for the answer
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._refusal = str(exc)
                raise

        self.conn.next_event = remembering  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        if NO_HOST not in self._refusal:
            super().send_400_response(msg)
            return
        body = json.dumps({"error": "this board does not serve that Host name"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=403, headers=headers, reason=b"Forbidden"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
