"""The one module that imports httpx, and the only one that touches its private names.

meshkit speaks httpx's public API: the mesh client is an ``httpx.AsyncClient`` whose
transports wrap each other; the CA client and the dev registry's HTTP checks are plain
``AsyncClient`` calls. Everything else imports httpx's names from here, so moving to
httpx2 (its maintained continuation) is a change to this file.

Two fast paths reach into httpx's private fields. A mesh response arrives whole off
the wire, and httpx's public way to build one, ``Response(...)`` then ``read()``
through its decoder chain, derives again what the client already has (header tuples,
a stream, a decoder): ``complete_response`` fills in the fields those two leave behind
instead. Likewise ``copy_request`` copies a request the client built before (a
bodiless call) by its fields, where ``Request(...)`` would derive them again. At import
both are made both ways and compared field by field; if this httpx differs (a field
renamed, a new one set by building or reading), one warning, and the stock paths are
used: slower, never wrong.
"""

from __future__ import annotations

import datetime
import importlib.util
import operator
import sys
import warnings
from collections.abc import Callable
from typing import Any

# httpx imports its command-line client whenever click, rich and pygments are installed
# (uvicorn brings click, cookiecutter rich): 3.4 MiB resident in every service process,
# which never runs it (bench/memory.py). A None entry in sys.modules makes that one
# import fail at once, and httpx defines its stub ``main`` instead.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402
from httpx import (  # noqa: E402
    URL,
    USE_CLIENT_DEFAULT,
    AsyncBaseTransport,
    AsyncClient,
    ByteStream,
    Cookies,
    Headers,
    HTTPError,
    InvalidURL,
    LocalProtocolError,
    Request,
    RequestNotRead,
    Response,
    Timeout,
    TimeoutException,
    TransportError,
)
from httpx import RequestError as HttpxRequestError  # noqa: E402

__all__ = [
    "URL",
    "USE_CLIENT_DEFAULT",
    "AsyncBaseTransport",
    "AsyncClient",
    "ByteStream",
    "HTTPError",
    "HeaderFields",
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
    "client_headers",
    "complete_response",
    "copy_request",
    "fast_paths_problem",
    "header_fields",
    "http2_available",
    "plain_client",
    "use_fast_paths",
]

# -- the fast path and its stock twin ----------------------------------------------------


HeaderFields = list[tuple[bytes, bytes, bytes]]
"""Headers as (name as received, name lowercased, value), the form ``Headers`` keeps."""


def _build_privately(
    status: int,
    fields: HeaderFields,
    body: bytes,
    request: Request,
    elapsed: datetime.timedelta,
) -> Response:
    """The response ``Response(status, headers=<fields' names and values>,
    stream=ByteStream(body), request=request)`` is once ``read()`` has read a body that
    needs no decoding and ``elapsed`` is set: its fields filled in directly, none derived
    again. Its headers keep ``fields`` itself."""
    headers = Headers.__new__(Headers)
    headers._list = fields
    headers._encoding = None
    stream = ByteStream.__new__(ByteStream)
    stream._stream = body
    # Stored one by one, in the order Response() sets them, rather than as a new
    # __dict__: the instance keeps the class's shared keys, a third of the cost.
    response = Response.__new__(Response)
    response.status_code = status
    response.headers = headers
    response._request = request
    response.next_request = None
    response.extensions = {}
    response.history = []
    response.is_closed = True
    response.is_stream_consumed = True
    response.default_encoding = "utf-8"
    response.stream = stream
    response._num_bytes_downloaded = len(body)
    response._content = body
    response._elapsed = elapsed
    return response


def _copy_privately(template: Request, extensions: dict[str, Any]) -> Request:
    """The request ``Request(template.method, template.url, headers=template.headers,
    stream=template.stream, extensions=extensions)`` is once ``read()``, for a template
    already read: its fields filled in directly. The URL, immutable, is shared."""
    headers = Headers.__new__(Headers)
    headers._list = list(template.headers._list)
    headers._encoding = None
    request = Request.__new__(Request)  # its fields stored as _build_privately's are
    request.method = template.method
    request.url = template.url
    request.headers = headers
    request.extensions = extensions
    request.stream = template.stream
    request._content = template._content
    return request


_fast = False  # whether this httpx passed the check at import
_timedelta = datetime.timedelta
_ENCODED = b"content-encoding"
_lowered_name = operator.itemgetter(1)


def copy_request(template: Request, extensions: dict[str, Any]) -> Request:
    """A read request like ``template`` (read, its body in a ``ByteStream``) with a copy
    of its headers, that the transports may add to, and ``extensions``."""
    if _fast:
        return _copy_privately(template, extensions)
    return _copy_publicly(template, extensions)


def _copy_publicly(template: Request, extensions: dict[str, Any]) -> Request:
    request = Request(
        template.method,
        template.url,
        headers=template.headers,
        stream=template.stream,
        extensions=extensions,
    )
    request.read()
    return request


def complete_response(
    status: int,
    fields: HeaderFields,
    body: bytes,
    request: Request,
    elapsed: float,
) -> Response:
    """An ``httpx.Response`` for a complete HTTP/1.1 message read off the wire, read; it
    takes ``fields`` (the response's own list, not copied)."""
    took = _timedelta(0, elapsed)  # seconds given by position: no keyword parsing
    if _fast and not _encoded(fields):
        return _build_privately(status, fields, body, request, took)
    raw = [(name, value) for name, _, value in fields]
    response = _read_publicly(status, raw, body, request)
    response.elapsed = took
    return response


def _encoded(fields: HeaderFields) -> bool:
    """Whether the body has a Content-Encoding (httpx's decoders then read it)."""
    # Searched in C (an iterator of the lowercased names), not by a loop of bytecode.
    return _ENCODED in map(_lowered_name, fields)


def header_fields(headers: Headers) -> list[tuple[bytes, bytes, bytes]]:
    """``headers`` as (raw name, lowercased name, value) triples, in order, to read and
    compare only: the fast path's are the list ``Headers`` holds, the stock path's a
    copy. What httpx's ``Headers.raw`` and ``multi_items`` build on every call."""
    if _fast:
        return headers._list
    return [(name, name.lower(), value) for name, value in headers.raw]


def plain_client(client: AsyncClient) -> bool:
    """Whether ``client`` has nothing set that only httpx's full request path implements:
    event hooks, auth, redirects followed, cookies. The fast path reads the fields the
    client's properties return, without a call to each property."""
    if _fast:
        hooks = client._event_hooks
        return (
            not hooks["request"]
            and not hooks["response"]
            and client._auth is None
            and not client.follow_redirects
            and not client._cookies.jar._cookies  # type: ignore[attr-defined]
        )
    hooks = client.event_hooks
    return (
        not hooks["request"]
        and not hooks["response"]
        and client.auth is None
        and not client.follow_redirects
        and not client.cookies
    )


def client_headers(client: AsyncClient) -> Headers:
    """``client.headers``: on the fast path the field the property returns."""
    if _fast:
        return client._headers
    return client.headers


def _read_publicly(
    status: int, raw: list[tuple[bytes, bytes]], body: bytes, request: Request
) -> Response:
    response = Response(status, headers=raw, stream=ByteStream(body), request=request)
    response.read()  # httpx's decoders (gzip, br, ...); a ByteStream reads without waiting
    return response


# -- the check at import -----------------------------------------------------------------


def _check_response() -> None:
    """Raise unless the fast path builds what the stock one does, and httpx reads it."""
    raw = [(b"Content-Type", b"application/json"), (b"X-Id", b"a"), (b"x-id", b"b")]
    body = b'{"ok": true}'
    request = Request("GET", "http://check/")
    took = datetime.timedelta(seconds=0.25)
    stock = _read_publicly(200, raw, body, request)
    stock.elapsed = took
    fields = [(name, name.lower(), value) for name, value in raw]
    fast = _build_privately(200, fields, body, request, took)
    assert fast.read() == fast.content == stock.content == body
    assert list(fast.iter_bytes()) == [body]
    assert fast.json() == stock.json() and fast.text == stock.text
    assert fast.headers == stock.headers and fast.headers.raw == stock.headers.raw == raw
    assert vars(fast.headers) == vars(stock.headers), "Headers holds other fields"
    # Every field the stock path sets, with the same value, but the decoder (httpx makes
    # it when it needs it) and the stream (a ByteStream of the same body, spent).
    theirs, ours = vars(stock), vars(fast)
    assert theirs.keys() - {"_decoder"} == ours.keys(), "Response holds other fields"
    differ = [k for k in ours if k not in ("stream", "headers") and ours[k] != theirs[k]]
    assert not differ, f"fields differ: {differ}"
    assert type(fast.stream) is type(stock.stream)
    assert vars(fast.stream) == vars(stock.stream), "ByteStream holds other fields"


def _check_request() -> None:
    """Raise unless the fast copy of a request is what the stock one makes."""
    template = Request("GET", "http://check/a?b=1", headers={"X-Id": "a", "accept": "*/*"})
    extensions = {"meshkit.check": True}
    stock = _copy_publicly(template, extensions)
    fast = _copy_privately(template, extensions)
    assert fast.read() == stock.read() == b""
    assert fast.headers.raw == stock.headers.raw and fast.headers is not template.headers
    assert vars(fast.headers) == vars(stock.headers), "Headers holds other fields"
    assert vars(fast) == vars(stock), "Request holds other fields"
    fast.headers["x-added"] = "1"
    assert "x-added" not in template.headers


def _check_fields() -> None:
    """Raise unless ``header_fields`` and ``plain_client``'s look into the cookie jar read
    what the public API says."""
    headers = Headers([(b"X-Id", b"a"), (b"accept", b"*/*")])
    assert [(name, value) for name, _, value in headers._list] == headers.raw
    assert [(low, value) for _, low, value in headers._list] == list(
        (name.encode(), value.encode()) for name, value in headers.multi_items()
    )
    cookies = Cookies()
    assert not cookies and not cookies.jar._cookies  # type: ignore[attr-defined]
    cookies.set("session", "1", domain="check")
    assert cookies and cookies.jar._cookies  # type: ignore[attr-defined]


def _check_client() -> None:
    """Raise unless the client's fields are what its properties return, as they change."""

    def same(client: AsyncClient) -> bool:
        private = vars(client)
        return (
            private["_event_hooks"] is client.event_hooks
            and private["_auth"] is client.auth
            and private["_cookies"] is client.cookies
            and private["_headers"] is client.headers
        )

    # A transport of its own: a default client would build an SSL context with the
    # CA bundle at every import (~50 ms, ~3 MiB resident).
    client = AsyncClient(transport=AsyncBaseTransport())
    assert same(client)
    client.auth = ("user", "secret")
    client.event_hooks = {"request": [print], "response": []}
    client.cookies = {"session": "1"}
    client.headers = {"x-id": "a"}
    assert same(client) and client.auth is not None and client.cookies


def fast_paths_problem() -> str | None:
    """Why this httpx cannot take the fast path, or None when it can."""
    try:
        _check_response()
        _check_request()
        _check_fields()
        _check_client()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def use_fast_paths(enabled: bool = True) -> bool:
    """Take the fast path (if this httpx passes the check) or the stock one; True if fast.

    Called once at import; tests and benches call it to run the stock path on purpose.
    """
    global _fast
    _fast = False
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
    _fast = True
    return True


use_fast_paths()


def http2_available() -> bool:
    """Whether httpx can speak HTTP/2 here: it needs the optional ``h2`` package."""
    return importlib.util.find_spec("h2") is not None


# -- the peer's certificate before the request is sent -----------------------------------

PeerCheck = Callable[[dict[str, Any] | None], None]
"""Gets the server's verified certificate as ``getpeercert()`` decodes it (or None) after
the handshake; raises to refuse it."""

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
        decoded = ssl_object.getpeercert() if ssl_object is not None else None
        try:
            self._check(decoded)
        except BaseException:
            await stream.aclose()  # httpcore has not taken the stream yet: it is ours to close
            raise
        self.ran = True

    def verify_ran(self) -> None:
        if not self.ran:
            raise LocalProtocolError("the server's certificate was never checked")
