"""Fault injection for resilience tests: delay or abort an instance's own requests.

``Mesh`` installs ``FaultMiddleware`` only when ``MeshSettings.faults`` (the
``MESHKIT_FAULTS`` variable) asks for it, so a service without faults pays nothing on
the request path. It sits inside the telemetry and deadline middleware: an injected
delay counts against the caller's deadline (the deadline middleware answers 504 when
it runs out) and injected answers show in the metrics like real ones. The admin port
is never faulted, so health checks keep the instance registered, as a sick but
running process would be.
"""

from __future__ import annotations

import random

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from meshkit.middleware._asgi import send_json
from meshkit.settings import Faults


class FaultMiddleware:
    """Of the HTTP requests under ``faults.path``, ``faults.percent`` are delayed, aborted
    or both; the others pass straight through."""

    def __init__(self, app: ASGIApp, *, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        faults = self.faults
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(faults.path)
            or random.random() * 100 >= faults.percent
        ):
            await self.app(scope, receive, send)
            return
        if faults.delay:
            await anyio.sleep(faults.delay)
        if faults.abort is None:
            await self.app(scope, receive, send)
            return
        detail = f"injected by MESHKIT_FAULTS (abort={faults.abort})"
        await send_json(send, faults.abort, {"error": "fault_injected", "detail": detail})
