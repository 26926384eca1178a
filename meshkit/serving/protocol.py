"""The uvicorn HTTP protocol meshkit serves with: peer identity in scope, coalesced writes.

The verified client certificate reaches the application as the ASGI TLS extension
(``scope["extensions"]["tls"]``), built once per connection by a uvicorn protocol
subclass passed as ``Config(http=...)``: uvicorn itself does not provide it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meshkit.identity import PEER_IDENTITY_KEY, identity_from_peercert

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
    """uvicorn's httptools protocol, adding the TLS extension to every request's scope.

    The extension is built once per connection (certificate parsing is the cost);
    each request only gets a reference to it.
    """

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self._tls = tls_extension(ssl_object) if ssl_object is not None else None
        # Flow control (set up above) keeps the real transport; writes go through this.
        self.transport = CoalescingTransport(transport)  # type: ignore[assignment]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]


class CoalescingTransport:
    """A transport whose writes of one event-loop iteration leave in one write.

    uvicorn writes a response's status line and headers, then its body: two writes,
    which over TLS are two records, two encryptions and two ``send`` calls, a large share
    of a small response's CPU. Buffering until the end of the iteration (or a close)
    sends both at once; the order of bytes is unchanged. Everything else is the real
    transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
