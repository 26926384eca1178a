"""The one module that imports httpx: its names, and cheap builders for its objects.

Everything else in meshkit imports httpx names from here, so moving to httpx2 (its
maintained continuation) is a change to this file. The builders exist because
``httpx.Response(content=...)`` re-encodes headers and runs the body through the
decoder chain (~8 µs); a mesh response arrives complete, so when it carries no
``Content-Encoding`` it is attached as already read (~1.8 µs in all). They set a few of
httpx's private fields: a new httpx version is checked by tests/client/test_http.py.
"""

from __future__ import annotations

import datetime

import httpx
from httpx import (
    URL,
    AsyncBaseTransport,
    AsyncByteStream,
    AsyncClient,
    ByteStream,
    Headers,
    Request,
    Response,
    Timeout,
)
from httpx._client import USE_CLIENT_DEFAULT, UseClientDefault

__all__ = [
    "URL",
    "USE_CLIENT_DEFAULT",
    "AsyncBaseTransport",
    "AsyncByteStream",
    "AsyncClient",
    "ByteStream",
    "Headers",
    "Request",
    "Response",
    "Timeout",
    "UseClientDefault",
    "build_response",
    "httpx",
    "timeout_seconds",
]


async def build_response(
    status: int,
    raw_headers: list[tuple[bytes, bytes]],
    body: bytes,
    request: Request,
    elapsed: float,
) -> Response:
    """An httpx.Response for a complete HTTP/1.1 message read off the wire."""
    headers, encoded = _read_headers(raw_headers)
    response = Response(status, headers=headers, stream=ByteStream(body), request=request)
    response.elapsed = datetime.timedelta(seconds=elapsed)
    if encoded:
        await response.aread()  # through httpx's decoders (gzip, br, ...)
    else:
        # What Response.aread() leaves behind, minus the decoder pass it would run.
        response._content = body
        response.is_stream_consumed = True
        response.is_closed = True
    return response


def _read_headers(raw_headers: list[tuple[bytes, bytes]]) -> tuple[Headers, bool]:
    """``Headers(raw_headers)``, and whether they hold a Content-Encoding, in one pass.

    httpx normalizes each name and value to bytes first (~0.8 µs for a small response);
    the parser's are bytes already, so its entries (raw name, lowered name, value) are
    built directly (~0.35 µs).
    """
    entries = []
    encoded = False
    for name, value in raw_headers:
        lowered = name.lower()
        encoded = encoded or lowered == b"content-encoding"
        entries.append((name, lowered, value))
    headers = Headers.__new__(Headers)
    headers._list = entries
    headers._encoding = None
    return headers, encoded


def timeout_seconds(timeout: object) -> float | None:
    """A per-call ``timeout=`` argument as seconds: a number, or an httpx.Timeout's
    longest phase (the call timeout bounds the whole call, not one phase)."""
    if isinstance(timeout, int | float):
        return float(timeout)
    if isinstance(timeout, Timeout):
        phases = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t]
        return max(phases) if phases else None
    return None
