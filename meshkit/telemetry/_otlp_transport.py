"""The OTLP exporter's HTTP transport over the standard library's ``http.client``.

The exporter posts a batch of spans from one thread, to one collector: a single kept-alive
connection does, without urllib3's pool, retry and header machinery around it. A post of
512 spans costs ~75 µs of CPU this way where urllib3 takes ~170 (and ``requests`` ~450),
on every service, in the process that serves requests. Retries, backoff and timeouts
stay the exporter's own (it calls ``request`` again); TLS comes from the same
``OTEL_EXPORTER_OTLP_*`` settings the stock transports read.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport

from meshkit.errors import ConfigError


class TLSFileError(ConfigError):
    """A CA bundle (``of_ca``) or a client certificate or key that could not be loaded."""

    def __init__(self, message: str, *, of_ca: bool) -> None:
        super().__init__(message)
        self.of_ca = of_ca


class CollectorUnreachable(ConnectionError):
    """No connection to the collector could be made (refused, unresolvable, timed out)."""


@dataclass(frozen=True, slots=True)
class HTTPClientResult(BaseHTTPResult):
    body: bytes = b""
    response_headers: http.client.HTTPMessage | None = None

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        # http.client's headers read as a case-insensitive mapping (get, [], in, items),
        # which is what the exporter asks of them (Retry-After).
        return cast(Mapping[str, str], self.response_headers or {})


class HTTPClientTransport(BaseHTTPTransport):
    """``BaseHTTPTransport`` on one ``http.client`` connection, reopened when it breaks.

    ``verify``: True (the system's trust store), False, or a CA bundle file; ``cert``: a
    client certificate file (with its key), or (certificate, key) files, for a collector
    that asks for mutual TLS. Both are loaded here, so a bad file is a ``TLSFileError``
    at startup, not a failed post later.
    """

    def __init__(
        self, *, verify: bool | str = True, cert: str | tuple[str, str] | None = None
    ) -> None:
        self._tls = _tls_context(verify, cert)
        self._connection: http.client.HTTPConnection | None = None
        self._origin: tuple[str, str, int | None] | None = None
        # The exporter's thread posts; shutdown may close from another thread meanwhile.
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        with self._lock:
            try:
                connection = self._connect(parts.scheme, parts.hostname or "", parts.port, timeout)
                connection.request(method, target, body=data, headers=headers or {})
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                return HTTPClientResult(error=exc)
            if response.will_close:
                self._close()
        return HTTPClientResult(
            status_code=response.status,
            reason=response.reason,
            body=body,
            response_headers=response.headers,
        )

    def is_connection_error(self, exception: Exception | None) -> bool:
        # A refused or failed connect, or a kept-alive connection the collector closed
        # (reset, or closed before answering): the exporter retries those at once.
        return isinstance(exception, CollectorUnreachable | ConnectionError)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _connect(
        self, scheme: str, host: str, port: int | None, timeout: float | None
    ) -> http.client.HTTPConnection:
        origin = (scheme, host, port)
        connection = self._connection
        if connection is not None and connection.sock is not None and origin == self._origin:
            connection.sock.settimeout(timeout)
            return connection
        self._close()
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        elif scheme == "http":
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            raise http.client.InvalidURL(f"not an http(s) URL: {scheme}://{host}")
        try:
            connection.connect()
        except ssl.SSLError:
            raise  # a certificate problem: retrying at once would not help
        except OSError as exc:
            raise CollectorUnreachable(f"{scheme}://{host}:{port}: {exc}") from exc
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection, self._origin = connection, origin
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = self._origin = None


def _tls_context(verify: bool | str, cert: str | tuple[str, str] | None) -> ssl.SSLContext:
    cafile = verify if isinstance(verify, str) else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TLSFileError(f"CA bundle {cafile!r}: {_reason(exc)}", of_ca=True) from exc
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        if isinstance(cert, tuple):
            context.load_cert_chain(*cert)
        elif cert:
            context.load_cert_chain(cert)
    except (OSError, ssl.SSLError) as exc:
        raise TLSFileError(f"client certificate {cert!r}: {_reason(exc)}", of_ca=False) from exc
    return context


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)
