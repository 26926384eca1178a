"""Small ASGI helpers shared by the policy stages: JSON error answers, caller keys."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.types import Scope, Send

from meshkit.identity import peer_identity

ANONYMOUS = "anonymous"


async def send_json(
    send: Send, status: int, payload: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Answer with a JSON body: the mesh's error responses, written as raw ASGI messages."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def caller_key(scope: Scope) -> str:
    """The caller's SPIFFE ID as text, or ``anonymous``: what limits are counted per."""
    caller = peer_identity(scope)
    return ANONYMOUS if caller is None else str(caller)
