"""The one module that imports httpx, and the only one that touches its private names.

meshkit speaks httpx's public API: the mesh client is an ``httpx.AsyncClient`` whose
transports wrap each other; the CA client and the dev registry's HTTP checks are plain
``AsyncClient`` calls. Everything else imports httpx's names from here, so moving to
httpx2 (its maintained continuation) is a change to this file.

One fast path reaches into httpx's private fields. A mesh response arrives whole off
the wire, and httpx's public way to attach a body, ``Response.aread()`` through its
decoder chain, costs a fifth of a mesh call's client CPU (bench/client.py, against the
stock path in the same run). ``complete_response`` sets what ``aread()`` leaves behind
instead. At import a response is built both ways and the two compared; if this httpx
differs (a field renamed, a new one set by reading), one warning, and the stock path is
used: slower, never wrong.
"""

from __future__ import annotations

import datetime
import importlib.util
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from httpx import (
    URL,
    USE_CLIENT_DEFAULT,
    AsyncBaseTransport,
    AsyncClient,
    ByteStream,
    Headers,
    HTTPError,
    InvalidURL,
    LocalProtocolError,
    Request,
    RequestNotRead,
    Response,
    SyncByteStream,
    Timeout,
    TimeoutException,
    TransportError,
)
from httpx import RequestError as HttpxRequestError

__all__ = [
    "URL",
    "USE_CLIENT_DEFAULT",
    "AsyncBaseTransport",
    "AsyncClient",
    "ByteStream",
    "HTTPError",
    "Headers",
    "HttpxRequestError",
    "InvalidURL",
    "LocalProtocolError",
    "PeerCheck",
    "PeerGate",
    "Request",
    "RequestNotRead",
    "Response",
    "Timeout",
    "TimeoutException",
    "TransportError",
    "complete_response",
    "fast_paths_problem",
    "http2_available",
    "use_fast_paths",
]

# -- the fast path and its stock twin ----------------------------------------------------


def _read_privately(response: Response, body: bytes) -> None:
    """What ``Response.aread()`` leaves behind for a body that needs no decoding."""
    response._content = body
    response.is_stream_consumed = True
    response.is_closed = True


_attach: Callable[[Response, bytes], None] | None = None  # None: the stock path


async def complete_response(
    status: int,
    raw_headers: list[tuple[bytes, bytes]],
    body: bytes,
    request: Request,
    elapsed: float,
) -> Response:
    """An ``httpx.Response`` for a complete HTTP/1.1 message read off the wire, read."""
    response = Response(status, headers=raw_headers, stream=ByteStream(body), request=request)
    response.elapsed = datetime.timedelta(seconds=elapsed)
    if _attach is None or "content-encoding" in response.headers:
        await response.aread()  # httpx's decoders (gzip, br, ...)
    else:
        _attach(response, body)
    return response


# -- the check at import -----------------------------------------------------------------


class _Unreadable(SyncByteStream):
    """A stream that fails if read: the fast path must never need it."""

    def __iter__(self) -> Iterator[bytes]:
        raise AssertionError("the stream was read")


def _check_response() -> None:
    """Raise unless the fast path builds what the stock one does, and httpx reads it."""
    raw = [(b"Content-Type", b"application/json"), (b"X-Id", b"a"), (b"x-id", b"b")]
    body = b'{"ok": true}'
    request = Request("GET", "http://check/")
    stock = Response(200, headers=raw, stream=ByteStream(body), request=request)
    stock.read()
    fast = Response(200, headers=raw, stream=_Unreadable(), request=request)
    _read_privately(fast, body)
    assert fast.read() == fast.content == stock.content == body
    assert list(fast.iter_bytes()) == [body]
    assert fast.json() == stock.json() and fast.text == stock.text
    assert (fast.is_closed, fast.is_stream_consumed) == (stock.is_closed, stock.is_stream_consumed)
    # Every field reading sets is set, but the decoder, which httpx makes when it needs it.
    missing = vars(stock).keys() - vars(fast).keys() - {"_decoder"}
    assert not missing, f"reading also sets {sorted(missing)}"


def fast_paths_problem() -> str | None:
    """Why this httpx cannot take the fast path, or None when it can."""
    try:
        _check_response()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def use_fast_paths(enabled: bool = True) -> bool:
    """Take the fast path (if this httpx passes the check) or the stock one; True if fast.

    Called once at import; tests and benches call it to run the stock path on purpose.
    """
    global _attach
    _attach = None
    if not enabled:
        return False
    problem = fast_paths_problem()
    if problem is not None:
        warnings.warn(
            f"meshkit: httpx {httpx.__version__} fails meshkit's check of its fast path "
            f"({problem}); using httpx's public constructors (correct, more CPU per call)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    _attach = _read_privately
    return True


use_fast_paths()


def http2_available() -> bool:
    """Whether httpx can speak HTTP/2 here: it needs the optional ``h2`` package."""
    return importlib.util.find_spec("h2") is not None


# -- the peer's certificate before the request is sent -----------------------------------

PeerCheck = Callable[[bytes | None], None]
"""Gets the server's certificate (DER, or None) after the handshake; raises to refuse it."""

_HANDSHAKE_DONE = "connection.start_tls.complete"
_SENDING = "http11.send_request_headers.started"


class PeerGate:
    """Request extensions that show the server's certificate to ``check`` after the TLS
    handshake and before any byte of the request (a join token, a CSR) is sent.

    Built on httpx's ``trace`` extension. It fails closed: if a new httpcore stopped
    emitting the handshake event, sending refuses, and ``verify_ran()`` after the
    response catches what a renamed send event would let through.
    """

    def __init__(self, check: PeerCheck) -> None:
        self._check = check
        self.ran = False
        self.extensions: dict[str, Any] = {"trace": self._trace}

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event == _HANDSHAKE_DONE:
            await self._on_handshake(info["return_value"])
        elif event == _SENDING and not self.ran:
            raise LocalProtocolError("the server's certificate was not checked before sending")

    async def _on_handshake(self, stream: Any) -> None:
        ssl_object = stream.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            self._check(der)
        except BaseException:
            await stream.aclose()  # httpcore has not taken the stream yet: it is ours to close
            raise
        self.ran = True

    def verify_ran(self) -> None:
        if not self.ran:
            raise LocalProtocolError("the server's certificate was never checked")
