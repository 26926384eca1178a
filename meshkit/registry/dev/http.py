"""The dev registry's HTTP vocabulary: a request as handlers read it, a response as they
answer, and the headers every blocking-query answer carries (Consul's X-Consul-*).

Kept apart from ``api`` so that endpoint modules beside it (config entries, Connect) can
answer the same way without importing the app that routes to them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshkit.registry.dev.query import Blocking, Query, first

Receive = Callable[[], Awaitable[dict[str, Any]]]


class Disconnected(Exception):
    """The client left while its body was being read: there is no one to answer."""


@dataclass
class Request:
    method: str
    path: str
    rest: str  # the path after the route's prefix (an ID, a name, a key)
    query: Query
    headers: list[tuple[bytes, bytes]]
    receive: Receive
    blocking: Blocking = field(default_factory=Blocking)

    def param(self, name: str) -> str:
        """The parameter's first value, "" when absent (Go's ``url.Values.Get``)."""
        return first(self.query, name)

    def has(self, name: str) -> bool:
        return name in self.query

    def header(self, name: bytes) -> str:
        """The first value of a header (Go's Header.Get), "" when absent."""
        return next((v.decode("latin-1") for k, v in self.headers if k == name), "")

    def content_length(self) -> int | None:
        raw = self.header(b"content-length")
        return int(raw) if raw.isascii() and raw.isdigit() else None

    async def read(self, limit: int) -> bytes | None:
        """The body, or None as soon as it passes ``limit`` bytes (no more is kept)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(value: Any, *, status: int = 200, index: int | None = None) -> Response:
    response = Response(status, dump(value), "application/json")
    if index is not None:
        response.headers = query_headers(index)
    return response


def dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def query_headers(index: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"X-Consul-Effective-Consistency", b"leader"),
        (b"X-Consul-Index", str(max(index, 1)).encode()),
        (b"X-Consul-Knownleader", b"true"),
        (b"X-Consul-Lastcontact", b"0"),
        (b"X-Consul-Query-Backend", b"blocking-query"),
    ]


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")
