"""Idempotency keys: a request carrying ``Idempotency-Key`` runs once per (caller, key).

The first request with a key runs the handler and its response is remembered for the
policy's ``ttl``; a repeat gets that response back (with ``Idempotent-Replayed: true``)
and a concurrent duplicate waits for the first to finish. Only complete responses
below 500 and under ``max_body_bytes`` are kept: after a 5xx, a crash or a timeout the
key is released so that a retry runs the handler again. The store is in memory, per
route and process, bounded by ``max_entries`` (oldest finished entries go first).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshkit.middleware._asgi import caller_key, send_json
from meshkit.policy.decorators import Idempotent

HEADER = b"idempotency-key"
REPLAYED_HEADER = (b"idempotent-replayed", b"true")
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    expires: float


@dataclass(slots=True)
class _Entry:
    done: anyio.Event = field(default_factory=anyio.Event)
    response: StoredResponse | None = None


class _Recorder:
    """Passes the response through while keeping a copy, up to a size limit."""

    def __init__(self, send: Send, max_body: int) -> None:
        self._send = send
        self._max_body = max_body
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            self.size += len(body)
            if self.size <= self._max_body:
                self.chunks.append(body)
            self.complete = not message.get("more_body", False)
        await self._send(message)

    def stored(self, expires: float) -> StoredResponse | None:
        if not self.complete or self.status >= 500 or self.size > self._max_body:
            return None
        return StoredResponse(self.status, self.headers, b"".join(self.chunks), expires)


class IdempotencyStage:
    """Runs each (caller, Idempotency-Key) once; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        policy: Idempotent,
        *,
        route: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self._policy = policy
        self._route = route
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _idempotency_key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        if len(key) > MAX_KEY_LENGTH:
            payload = {"error": "invalid_idempotency_key", "route": self._route}
            await send_json(send, 400, payload)
            return
        store_key = (caller_key(scope), key)
        while (entry := self._current(store_key)) is not None:
            if entry.response is not None:
                await _replay(entry.response, send)
                return
            await entry.done.wait()  # a duplicate in flight: take its outcome
        await self._run_once(store_key, scope, receive, send)

    async def _run_once(
        self, store_key: tuple[str, bytes], scope: Scope, receive: Receive, send: Send
    ) -> None:
        entry = self._entries[store_key] = _Entry()
        self._evict()
        recorder = _Recorder(send, self._policy.max_body_bytes)
        try:
            await self.app(scope, receive, recorder.send)
        finally:
            entry.response = recorder.stored(self._clock() + self._policy.ttl)
            if entry.response is None and self._entries.get(store_key) is entry:
                del self._entries[store_key]  # released: a retry runs the handler again
            entry.done.set()

    def _current(self, store_key: tuple[str, bytes]) -> _Entry | None:
        entry = self._entries.get(store_key)
        response = None if entry is None else entry.response
        if response is not None and response.expires <= self._clock():
            del self._entries[store_key]
            return None
        return entry

    def _evict(self) -> None:
        """Drop the oldest finished entries past ``max_entries``; running ones stay."""
        excess = len(self._entries) - self._policy.max_entries
        if excess <= 0:
            return
        finished = (k for k, e in self._entries.items() if e.response is not None)
        for store_key in list(itertools.islice(finished, excess)):
            del self._entries[store_key]


def _idempotency_key(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return bytes(value)
    return None


async def _replay(response: StoredResponse, send: Send) -> None:
    headers = [*response.headers, REPLAYED_HEADER]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
