"""Small ASGI helpers shared by the mesh middleware: JSON error answers, caller keys, what
notes the response's status."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

from starlette.types import Message, Scope, Send

from meshkit.identity import peer_identity
from meshkit.serving.cycle import RESPONSE_KEY

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


class ObservedSend:
    """An ASGI ``send`` that notes the response's status and how many body bytes went."""

    __slots__ = ("_send", "sent", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self.sent = 0

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        else:
            self.sent += len(message.get("body", b""))
        return self._send(message)


class Observed(Protocol):
    """What a response sent so far: its status (0 until it started), its body bytes."""

    status: int
    sent: int


def observe(scope: Scope, send: Send) -> tuple[Observed, Send]:
    """What notes the response's status and size, and the ``send`` to hand on.

    meshkit's server notes both itself (its request cycle, in the scope under
    ``RESPONSE_KEY``): nothing is wrapped. Elsewhere an ``ObservedSend`` from further
    out is used as it is, or a new one wraps ``send``."""
    response: Observed | None = scope.get(RESPONSE_KEY)
    if response is not None:
        return response, send
    wrapped = send if type(send) is ObservedSend else ObservedSend(send)
    return wrapped, wrapped
