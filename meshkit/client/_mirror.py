"""Mirroring (Envoy's request_mirror_policies): a share of calls copied elsewhere.

The copy goes fire-and-forget through the mirror destination's own client stack (its
own balancer, limits and breaker), in a task of its own: its answer is discarded and
its failure is only counted, so the caller's latency and errors are those of its own
call. At most ``max_in_flight`` copies run at once; beyond that a copy is dropped
(counted) rather than queued, so a slow mirror never holds memory or connections the
caller needs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from meshkit._httpx import AsyncBaseTransport, Request, Response
from meshkit.client._hooks import ClientHooks, MirrorEnded
from meshkit.client._transports import read_body


class MirrorTransport(AsyncBaseTransport):
    """Sends the call through ``inner`` and, for ``fraction`` of them, a copy to
    ``mirror`` (resolved on first use: the mirror's stack is built lazily)."""

    def __init__(
        self,
        destination: str,
        inner: AsyncBaseTransport,
        *,
        mirror: str,
        mirror_transport: Callable[[], AsyncBaseTransport],
        fraction: float,
        max_in_flight: int,
        hooks: ClientHooks | None,
    ) -> None:
        self._destination = destination
        self._inner = inner
        self._mirror = mirror
        self._mirror_transport = mirror_transport
        self._fraction = fraction
        self._max_in_flight = max_in_flight
        self._hooks = hooks
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: Request) -> Response:
        if request.url.host == self._destination and random.random() < self._fraction:
            await self._copy(request)
        return await self._inner.handle_async_request(request)

    async def _copy(self, request: Request) -> None:
        if len(self._tasks) >= self._max_in_flight:
            self._report(request.method, None, None, dropped=True)
            return
        body = await read_body(request)  # read once: the call replays it from here too
        headers = request.headers.copy()
        headers["host"] = self._mirror  # the copy is addressed to the mirror
        copy = Request(
            request.method, request.url.copy_with(host=self._mirror), headers=headers, content=body
        )
        task = asyncio.ensure_future(self._send(copy))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, copy: Request) -> None:
        status: int | None = None
        error: BaseException | None = None
        try:
            response = await self._mirror_transport().handle_async_request(copy)
            status = response.status_code
        except Exception as exc:  # a mirror's failure is only counted, never raised
            error = exc
        self._report(copy.method, status, error, dropped=False)

    def _report(
        self, method: str, status: int | None, error: BaseException | None, *, dropped: bool
    ) -> None:
        if self._hooks is not None:
            event = MirrorEnded(self._destination, self._mirror, method, status, dropped, error)
            self._hooks.on_mirror_ended(event)

    def close(self) -> None:
        """Cancel the copies still in flight (the client is closing)."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
