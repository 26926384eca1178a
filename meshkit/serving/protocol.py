"""The uvicorn HTTP protocol meshkit serves with: peer identity in scope, coalesced writes.

The verified client certificate reaches the application as the ASGI TLS extension
(``scope["extensions"]["tls"]``), built once per connection by a uvicorn protocol
subclass passed as ``Config(http=...)``: uvicorn itself does not provide it.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meshkit.deadline import (
    ARRIVED_KEY,
    DEADLINE_HEADER_BYTES,
    SENT_HEADER_BYTES,
    START_HEADER_BYTES,
)
from meshkit.deadline import now as _now
from meshkit.identity import PEER_IDENTITY_KEY, identity_from_peercert
from meshkit.serving.cycle import LEAN_CYCLE, CoalescingTransport, start_request
from meshkit.settings import ConnectionLimits

#: The scope key of the request's headers that the mesh reads, in the order they came:
#: W3C trace context and baggage, meshkit's deadline headers. Noted by the protocol as
#: headers arrive, so the middleware reads these few instead of scanning them all;
#: absent when the server is not meshkit's.
NOTED_HEADERS_KEY = "meshkit.noted_headers"
_NOTED = frozenset(
    {
        b"traceparent",
        b"tracestate",
        b"baggage",
        DEADLINE_HEADER_BYTES,
        SENT_HEADER_BYTES,
        START_HEADER_BYTES,
    }
)
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_cipher_ids: dict[str, int] = {}


def _cipher_id(name: str) -> int | None:
    if not _cipher_ids:
        for cipher in ssl.create_default_context().get_ciphers():
            _cipher_ids[cipher["name"]] = cipher["id"] & 0xFFFF
    return _cipher_ids.get(name)


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension for one connection, plus the caller's SPIFFE ID."""
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_id(cipher[0]) if cipher else None,
        PEER_IDENTITY_KEY: identity_from_peercert(ssl_object.getpeercert()),
    }


class MeshHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with meshkit's connection policy and peer identity.

    - The ASGI TLS extension (the caller's verified certificate and SPIFFE ID) is built
      once per connection (certificate parsing is the cost); each request gets a
      reference to it.
    - ``limits`` bound what a client can make the server hold: the request head's size
      (431, counted as it arrives, before the parser has it all) and the body's size
      (413, from Content-Length before the app runs, and while it streams). Deadlines
      (a head within ``header_timeout``, a body within ``body_timeout``, a caller's
      certificate still valid) are checked by ``check(now)``, which the server calls
      for every connection about once a second: no timer is armed per request. That
      includes the keep-alive timeout, which uvicorn enforces with a timer armed after
      every response and cancelled by the next request: a kept-alive connection idle
      for ``keepalive_timeout`` is closed by ``check`` (within a second after it).
    - ``idle_since`` (None while a request is active) lets the server shed the oldest
      idle connection when it is full. Times are ``meshkit.deadline.now()``'s, as are
      the server's ``check(now)`` calls and the arrival time the deadline middleware
      reads (uvloop's ``loop.time()`` is the loop iteration's start, in whole ms).
    - Each request runs in a ``MeshCycle`` (``meshkit.serving.cycle``): uvicorn's cycle,
      made and sending for less; the request line and headers are read as uvicorn reads
      them, the Content-Length noted on the way for the body limit.

    uvicorn constructs it with ``config``, ``server_state`` and ``app_state``;
    ``uvicorn_config`` makes a subclass per server with that server's ``limits``.
    """

    limits: ConnectionLimits = ConnectionLimits()
    _tls: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        now = _now()
        self.idle_since: float | None = now
        self._phase = _HEAD
        self._since = now
        self._head_bytes = 0
        self._body_bytes = 0
        self._length: bytes | None = None  # the request's Content-Length, as it came
        self._peer_deadline = math.inf  # when the caller's certificate expires (now())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls = tls_extension(ssl_object)
            remaining = _not_after(ssl_object) - time.time()
            self._peer_deadline = _now() + remaining
        # Flow control (set up above) keeps the real transport; writes go through this.
        self._writes = CoalescingTransport(transport)
        self.transport = self._writes  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._phase == _HEAD:
            self._head_bytes += len(data)  # reset when the message ends in this data
        super().data_received(data)
        too_long = self._phase == _HEAD and self._head_bytes > self.limits.max_header_bytes
        if too_long and not self.transport.is_closing():
            self._refuse(431, "request_header_fields_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._length = None
        arrived = _now()
        scope = self.scope
        # The caller's deadline counts from here, not from when the handler gets to run.
        scope[ARRIVED_KEY] = arrived  # type: ignore[literal-required]
        if LEAN_CYCLE:  # the headers come through _on_header
            self._noted: list[tuple[bytes, bytes]] = []
            scope[NOTED_HEADERS_KEY] = self._noted  # type: ignore[literal-required]
        if self.idle_since is not None:
            self.idle_since = None
            self._since = arrived
        if self._tls is not None:
            scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._since = _now()
        self._body_bytes = 0
        if self._since >= self._peer_deadline:
            self._refuse(401, "peer_certificate_expired")
            return
        length = self._length if LEAN_CYCLE else _content_length(self.headers)
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            self._refuse(413, "request_body_too_large")
            return
        if LEAN_CYCLE:
            start_request(self, self._writes)
        else:  # pragma: no cover - a uvicorn whose cycle meshkit does not know
            super().on_headers_complete()

    def _on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's on_header, noting the Content-Length and the mesh's own headers (no
        # scan of the list later).
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 (5.5) excludes from the value.
        value = value.rstrip(b" \t")
        field = (name, value)
        self.headers.append(field)
        if name in _NOTED:
            self._noted.append(field)
        elif name == b"content-length":
            if self._length is None:
                self._length = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True

    if LEAN_CYCLE:
        on_header = _on_header

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            self._body_too_large()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _HEAD
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The response leaves now, not after what the app does once it has answered
        # (telemetry ending its span, a task's teardown) and another loop pass.
        self._writes.flush()
        if self.pipeline or self.transport.is_closing():
            super().on_response_complete()  # uvicorn's: starts the next pipelined request
            return
        # uvicorn's, without arming its keep-alive timer (check() enforces the timeout).
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        self.idle_since = self._since = _now()

    def check(self, now: float) -> None:
        """Enforce the deadlines: a late head (408, or a silent close when nothing came),
        a late body (408), an expired caller certificate (closed when idle, else after
        the request in flight), a kept-alive connection idle too long (closed)."""
        if self.transport is None or self.transport.is_closing():
            return
        if now >= self._peer_deadline:
            if self.idle_since is not None:
                self.transport.close()
                return
            if self.cycle is not None:
                self.cycle.keep_alive = False
        answered = self.cycle is None or self.cycle.response_complete
        if self._idle_too_long(now):
            self.transport.close()
            return
        if self._phase == _HEAD and answered and now - self._since > self.limits.header_timeout:
            if self._head_bytes:
                self._refuse(408, "request_header_timeout")
            elif self.idle_since is not None:
                self.transport.close()  # connected or kept alive, and silent
        elif self._phase == _BODY and now - self._since > self.limits.body_timeout:
            if self.cycle is not None and not self.cycle.response_started:
                self._abandon_request()
                self._refuse(408, "request_body_timeout")
            elif self.cycle is not None and not self.cycle.response_complete:
                self._abandon_request()
                self.transport.close()

    def _idle_too_long(self, now: float) -> bool:
        """Kept alive after a response (a connection that never sent one has the header
        timeout) and idle for longer than the keep-alive timeout."""
        idle_since = self.idle_since
        if idle_since is None or self.cycle is None:
            return False
        return now - idle_since > self.limits.keepalive_timeout

    def _body_too_large(self) -> None:
        started = self.cycle is not None and self.cycle.response_started
        self._abandon_request()
        if started:
            self.transport.close()
        else:
            self._refuse(413, "request_body_too_large")

    def _abandon_request(self) -> None:
        """The app sees the client gone: its ``receive()`` returns ``http.disconnect``."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()

    def _refuse(self, status: int, error: str) -> None:
        """Answer ``status`` with a JSON body and close: the request never reaches the app."""
        self.transport.write(error_response(status, error))
        self.transport.close()


_HEAD, _BODY = 0, 1
_DETAILS = {
    "request_header_fields_too_large": "the request line and headers are over the limit",
    "request_header_timeout": "the request line and headers did not arrive in time",
    "request_body_too_large": "the request body is over the limit",
    "request_body_timeout": "the request body did not arrive in time",
    "peer_certificate_expired": "the client certificate of this connection has expired",
    "tls_required": "this port speaks TLS only (mutual TLS: present a client certificate)",
}


def error_response(status: int, error: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with a JSON error body
    (``error`` a code, ``detail`` what a person reads)."""
    body = json.dumps({"error": error, "detail": _DETAILS[error]}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def _content_length(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"content-length":
            return value
    return None


def _not_after(ssl_object: ssl.SSLObject) -> float:
    """When the peer's certificate expires (epoch seconds), or never without one."""
    peercert = ssl_object.getpeercert()
    not_after = peercert.get("notAfter") if peercert else None
    return ssl.cert_time_to_seconds(not_after) if isinstance(not_after, str) else math.inf
