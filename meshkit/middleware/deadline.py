"""Enforce the caller's deadline on the server: a cancel scope, then a 504 JSON answer.

The incoming deadline headers (``meshkit.deadline`` says what they carry and why)
become the current deadline for the handler, counted from when the request's head
arrived, so the mesh calls it makes are bounded by it and pass on what is left. A
request whose caller has stopped waiting — its budget spent while it sat unread, or
the attempt's start time passed — is answered 504 at once, without running the
handler: that work would run for nobody, and maybe a second time beside the caller's
retry. When the deadline passes before the response has started the handler is
cancelled and the caller gets ``504`` with a JSON body; so does a handler whose own
mesh call raised ``DeadlineExceeded``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from meshkit import deadline as deadlines
from meshkit.client import DeadlineExceeded
from meshkit.middleware._asgi import send_json
from meshkit.settings import MeshSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_RAN_OUT = "the caller's deadline ran out"
_NOT_STARTED = "the caller stopped waiting before the request could start"
_DEADLINE = deadlines.DEADLINE_HEADER_BYTES
_SENT = deadlines.SENT_HEADER_BYTES
_START = deadlines.START_HEADER_BYTES


class DeadlineMiddleware:
    """Run each HTTP request under its incoming deadline (or ``default_timeout``), both
    counted from the request's arrival; ``max_clock_skew`` is how far the caller's clock
    may disagree with ours before its sent time counts (see ``meshkit.deadline``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_timeout: float | None = None,
        max_clock_skew: float = MeshSettings.max_clock_skew,
    ) -> None:
        self.app = app
        self.default_timeout = default_timeout
        self.max_clock_skew = max_clock_skew

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bounds = self._bounds(scope)
        if bounds is None:
            await self.app(scope, receive, send)
            return
        start_by, deadline = bounds
        if deadlines.now() >= start_by:
            await send_deadline_exceeded(send, _NOT_STARTED)
            return
        await self._run_bounded(scope, receive, send, deadline)

    def _bounds(self, scope: Scope) -> tuple[float, float] | None:
        """(start by, finish by) on ``deadlines.now()``'s clock, or None when unbounded."""
        budget = sent = start = None
        for name, value in scope["headers"]:
            if name == _DEADLINE:
                budget = deadlines.parse_header(value)
            elif name == _SENT:
                sent = deadlines.parse_sent(value)
            elif name == _START:
                start = deadlines.parse_header(value)
        if budget is None:
            if self.default_timeout is None:
                return None
            budget, sent, start = self.default_timeout, None, None
        return self._incoming(scope, budget, sent, start)

    def _incoming(
        self, scope: Scope, budget: float, sent: float | None, start: float | None
    ) -> tuple[float, float]:
        now = deadlines.now()
        # The budget counts from the head's arrival (without meshkit's protocol: from now),
        # moved earlier by the time the sent time shows it waited unread beyond the skew.
        since = min(scope.get(deadlines.ARRIVED_KEY, now), now)
        if sent is not None:
            arrived_wall = deadlines.wall() - (now - since)
            since -= deadlines.time_unread(sent, arrived_wall, self.max_clock_skew)
        deadline = since + budget
        if start is None or start >= budget:
            return deadline, deadline
        return since + start, deadline

    async def _run_bounded(
        self, scope: Scope, receive: Receive, send: Send, deadline: float
    ) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            with anyio.move_on_after(deadline - deadlines.now()) as cancel_scope:
                with deadlines.use_deadline(deadline):
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


async def send_deadline_exceeded(send: Send, detail: str = _RAN_OUT) -> None:
    """Answer 504 with meshkit's JSON error body."""
    await send_json(send, 504, {"error": "deadline_exceeded", "detail": detail})
