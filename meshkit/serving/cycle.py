"""The request-response cycle meshkit's protocol runs a request in: uvicorn's, made and
sending for less. The one module that relies on uvicorn's inner shapes.

A meshed server runs ~3,000 bytecodes a request, and a tenth of them are uvicorn's
cycle: its constructor takes eleven keyword arguments, and its ``send`` searches each
response header with two regular expressions and builds the head through two list
copies and a list per header. Here ``start_request`` is uvicorn's
``on_headers_complete`` making a ``MeshCycle`` from the protocol in one call, and
``MeshCycle.send`` keeps the header lines of each response shape it has seen (its
headers, the Date header's value included, so a second's responses share one entry;
at most ``_HEADS_LIMIT``) with what they say of the framing. What it writes, and what
it raises on, are uvicorn's: tests/test_serving_cycle.py sends the same requests to
stock uvicorn and to meshkit's protocol and compares the bytes that come back.
``receive`` and ``run_asgi`` are uvicorn's own. Together: -16k instructions a request
(M's callee served in process, /hello).

Its writes go through ``CoalescingTransport``, which sends what one loop iteration wrote
in one TLS record. A head followed by a body of known length, and a response's last
bytes, are held rather than written (``hold``): completing the response flushes them,
so a small response leaves in one write with no callback arranged: -5k more.

As the app sends, the cycle notes the response's status and body bytes in a ``Sent``
record the scope holds (``RESPONSE_KEY``): the mesh middleware reads it instead of
wrapping ``send`` to learn them.

Used only while uvicorn's cycle and protocol have the shapes this module knows
(``LEAN_CYCLE``, checked at import); otherwise the protocol runs uvicorn's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

#: The fields uvicorn's cycle has, all set by ``MeshCycle.__init__``.
FIELDS = frozenset(
    {
        "scope",
        "transport",
        "flow",
        "logger",
        "access_logger",
        "access_log",
        "default_headers",
        "message_event",
        "on_response",
        "disconnected",
        "keep_alive",
        "waiting_for_100_continue",
        "body",
        "more_body",
        "response_started",
        "response_complete",
        "chunked_encoding",
        "expected_content_length",
    }
)
_CRLF = b"\r\n"
#: The scope key of the request's ``Sent``: what the cycle noted of the response as the
#: app sent it, so the mesh middleware need not wrap ``send`` to learn it.
RESPONSE_KEY = "meshkit.response"


class Sent:
    """What of a response the app has sent: its status (0 until it started) and its body
    bytes. Not the cycle itself: the scope holds it, and a cycle holding its scope would
    make every request's objects garbage for the collector instead of freed at once."""

    __slots__ = ("sent", "status")

    def __init__(self) -> None:
        self.status = 0
        self.sent = 0


def _fields_known() -> bool:
    """uvicorn's cycle has exactly the fields ``MeshCycle`` sets (else uvicorn's is used)."""
    try:
        probe = RequestResponseCycle(
            scope={},  # type: ignore[typeddict-item]
            transport=None,  # type: ignore[arg-type]
            flow=None,  # type: ignore[arg-type]
            logger=None,  # type: ignore[arg-type]
            access_logger=None,  # type: ignore[arg-type]
            access_log=False,
            default_headers=[],
            message_event=None,  # type: ignore[arg-type]
            expect_100_continue=False,
            keep_alive=True,
            on_response=_nothing,
        )
    except TypeError:  # pragma: no cover - another uvicorn
        return False
    protocol_known = all(
        callable(getattr(HttpToolsProtocol, name, None))
        for name in ("_should_upgrade", "_start_asgi_task", "on_response_complete")
    )
    return protocol_known and set(vars(probe)) == FIELDS


def _nothing() -> None:
    pass


LEAN_CYCLE = _fields_known()
if not LEAN_CYCLE:  # pragma: no cover - a uvicorn this module does not know
    warnings.warn(
        "meshkit: this uvicorn's request cycle is not as meshkit knows it; requests use "
        "uvicorn's own (correct, more CPU per request)",
        RuntimeWarning,
        stacklevel=2,
    )


#: A response head's header lines and framing, by its headers (the Date header's value
#: included: a second's responses share it): (lines, expected content length, chunked
#: or not or undecided, whether a Connection header says close).
_Head = tuple[bytes, int, "bool | None", bool]
_HEADS: dict[tuple[tuple[bytes, bytes], ...], _Head] = {}
_HEADS_LIMIT = 256


def _header_block(fields: tuple[tuple[bytes, bytes], ...]) -> _Head:
    """The header lines of ``fields`` and what they say of the framing, worked out as
    uvicorn's ``send`` does, header by header; RuntimeError for an invalid name or value."""
    lines: list[bytes] = []
    length, chunked, has_close = 0, None, False
    for name, value in fields:
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
        name = name.lower()
        if name == b"content-length" and chunked is None:
            length, chunked = int(value.decode()), False
        elif name == b"transfer-encoding" and value.lower() == b"chunked":
            length, chunked = 0, True
        elif name == b"connection" and _says_close(value):
            has_close = True
        lines += (name, b": ", value, _CRLF)
    return b"".join(lines), length, chunked, has_close


def _says_close(connection: bytes) -> bool:
    return b"close" in [token.lower().strip() for token in connection.split(b",")]


class MeshCycle(RequestResponseCycle):
    """uvicorn's ``RequestResponseCycle`` for one request of ``protocol``, made and
    sending responses with less work."""

    def __init__(
        self,
        protocol: HttpToolsProtocol,
        writes: CoalescingTransport,
        keep_alive: bool,
        on_response: Callable[[], None],
    ) -> None:
        # uvicorn's constructor, its arguments read from the protocol here.
        self.scope = protocol.scope
        self.transport = protocol.transport
        self._writes = writes  # the transport, as what it is
        self.flow = protocol.flow
        self.logger = protocol.logger
        self.access_logger = protocol.access_logger
        self.access_log = protocol.access_log
        self.default_headers = protocol.server_state.default_headers
        self.message_event = asyncio.Event()
        self.on_response = on_response
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = protocol.expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        # What the app sent, as the mesh middleware's ObservedSend would note it.
        self.response = Sent()

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.response.status = message["status"]
        else:
            self.response.sent += len(message.get("body", b""))
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if self.response_started:
            self._send_body(message)
            return
        if message["type"] != "http.response.start":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
            )
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        if self.access_log:
            self._log_access(status)
        head = self._head(status, message.get("headers", ()))
        if self.chunked_encoding:
            self.transport.write(head)  # a stream's head leaves at once
        else:
            self._writes.hold(head)  # a body of known length follows: they leave together

    def _head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers, as uvicorn writes them (names lowercased, then
        Connection and Transfer-Encoding when it adds them); the framing noted."""
        fields = (*self.default_headers, *headers)
        try:
            known = _HEADS.get(fields)
        except TypeError:  # a header given as a list: unhashable, worked out every time
            known = None
        if known is None:
            known = _header_block(fields)
            if len(_HEADS) >= _HEADS_LIMIT:
                _HEADS.clear()  # bounded, whatever headers come
            with contextlib.suppress(TypeError):
                _HEADS[fields] = known
        block, self.expected_content_length, self.chunked_encoding, has_close = known
        content = [STATUS_LINE[status], block]
        if has_close:
            self.keep_alive = False
        elif not self.keep_alive:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True  # neither Content-Length nor Transfer-Encoding
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(_CRLF)
        return b"".join(content)

    def _send_body(self, message: Any) -> None:
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
            )
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, _CRLF] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            self._write(b"".join(content), more_body)
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self._write(body, more_body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _write(self, data: bytes, more: bool) -> None:
        if more:
            self.transport.write(data)
        else:  # the last: on_response() flushes it below, or close() on any error
            self._writes.hold(data)

    def _log_access(self, status: int) -> None:
        self.access_logger.info(
            '%s - "%s %s HTTP/%s" %d',
            get_client_addr(self.scope),
            self.scope["method"],
            get_path_with_query_string(self.scope),
            self.scope["http_version"],
            status,
        )


def start_request(protocol: HttpToolsProtocol, writes: CoalescingTransport) -> None:
    """uvicorn's ``on_headers_complete`` for ``protocol`` (whose transport is ``writes``),
    its request in a ``MeshCycle``."""
    parser = protocol.parser
    scope = protocol.scope
    http_version = parser.get_http_version()
    scope["method"] = parser.get_method().decode("ascii")
    if http_version != "1.1":
        scope["http_version"] = http_version
    if parser.should_upgrade() and protocol._should_upgrade():
        return
    url = httptools.parse_url(protocol.url)
    raw_path = url.path
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    scope["path"] = protocol.root_path + path
    scope["raw_path"] = protocol.root_path.encode("ascii") + raw_path
    scope["query_string"] = url.query or b""
    app = protocol.app
    limit = protocol.limit_concurrency
    if limit is not None and (len(protocol.connections) >= limit or len(protocol.tasks) >= limit):
        app = service_unavailable
        protocol.logger.warning("Exceeded concurrency limit.")
    keep_alive = http_version != "1.0" and parser.should_keep_alive()
    existing = protocol.cycle
    protocol.cycle = cycle = MeshCycle(protocol, writes, keep_alive, protocol.on_response_complete)
    scope[RESPONSE_KEY] = cycle.response  # type: ignore[literal-required]
    if existing is None or existing.response_complete:
        protocol._start_asgi_task(protocol.cycle, app)
    else:  # pipelined: queued until the one before has answered
        protocol.flow.pause_reading()
        protocol.pipeline.appendleft((protocol.cycle, app))


class CoalescingTransport:
    """A transport whose writes of one event-loop iteration leave in one write.

    uvicorn writes a response's status line and headers, then its body: two writes,
    which over TLS are two records, two encryptions and two ``send`` calls, a large share
    of a small response's CPU. Buffering until ``flush()`` (the protocol calls it when a
    response is complete), the end of the iteration or a close sends both at once; the
    order of bytes is unchanged. Everything else is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._flush_due = False  # a flush is arranged for the end of this iteration

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def hold(self, data: bytes) -> None:
        """Buffer ``data`` without arranging a flush: for bytes that more of the same
        response certainly follows (the next ``write``, ``flush`` or ``close`` sends them),
        so a response written whole costs no callback at all."""
        self._pending.append(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is buffered now."""
        self._flush_due = False
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def is_closing(self) -> bool:
        # uvicorn asks twice per request: spelled out, not found through __getattr__.
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


__all__ = [
    "LEAN_CYCLE",
    "RESPONSE_KEY",
    "CoalescingTransport",
    "MeshCycle",
    "Sent",
    "start_request",
]
