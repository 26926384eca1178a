"""Enforce the caller's deadline on the server: a cancel scope, then a 504 JSON answer.

The incoming ``x-meshkit-deadline-ms`` header (see ``meshkit.deadline``) becomes the
current deadline for the handler, so the mesh calls it makes are bounded by it and
pass on what is left. When the deadline passes before the response has started the
handler is cancelled and the caller gets ``504`` with a JSON body; so does a handler
whose own mesh call raised ``DeadlineExceeded``. A request that arrives with no time
left is answered at once without running the handler.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from meshkit import deadline as deadlines
from meshkit.errors import DeadlineExceeded

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY = json.dumps(
    {"error": "deadline_exceeded", "detail": "the caller's deadline ran out"}
).encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


class DeadlineMiddleware:
    """Run each HTTP request under its incoming deadline (or ``default_timeout``)."""

    def __init__(self, app: ASGIApp, *, default_timeout: float | None = None) -> None:
        self.app = app
        self.default_timeout = default_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seconds = _incoming_budget(scope)
        if seconds is None:
            seconds = self.default_timeout
        if seconds is None:
            await self.app(scope, receive, send)
            return
        if seconds <= 0:
            await send_deadline_exceeded(send)
            return
        await self._run_bounded(scope, receive, send, seconds)

    async def _run_bounded(
        self, scope: Scope, receive: Receive, send: Send, seconds: float
    ) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            with anyio.move_on_after(seconds) as cancel_scope:
                with deadlines.use_deadline(deadlines.now() + seconds):
                    await self.app(scope, receive, tracking_send)
        except DeadlineExceeded:
            # A mesh call the handler made ran out of our deadline: same answer.
            if started:
                raise
            await send_deadline_exceeded(send)
            return
        # Once the response has started its status is on the wire: nothing left to say.
        if cancel_scope.cancelled_caught and not started:
            await send_deadline_exceeded(send)


def _incoming_budget(scope: Scope) -> float | None:
    for name, value in scope["headers"]:
        if name == deadlines.DEADLINE_HEADER_BYTES:
            return deadlines.parse_header(value)
    return None


async def send_deadline_exceeded(send: Send) -> None:
    """Answer 504 with meshkit's JSON error body."""
    await send({"type": "http.response.start", "status": 504, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
