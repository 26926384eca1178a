"""A lean HTTP/1.1 connection pool: asyncio protocols, TLS, httptools parsing.

Why not httpcore: its pool scans every connection under a lock on each request, and
its per-request work is ~15x aiohttp's CPU (DESIGN.md, measured). Here one endpoint
has a LIFO stack of idle keep-alive connections (the most recently used first, so the
others age out) and a FIFO of callers waiting for one; a request is one ``write``
and one future completed by the parser callbacks; its deadline is one timer.

A pool for a mesh endpoint checks, right after the TLS handshake and before any
request byte is written, that the server's certificate holds the SPIFFE ID the
registry published for it. The client SSLContext is fetched at connect time, so a
rotated certificate is used by every connection opened after the rotation.

Failures are ``AttemptFailed`` with ``sent`` saying whether request bytes may have
reached the server: the retry layer decides from that alone what is safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable

import httptools

from meshkit.client._errors import PeerIdentityMismatch
from meshkit.deadline import now
from meshkit.identity import SpiffeId, identity_from_peercert

#: A response's headers as (name as received, name lowercased, value): lowercased once
#: here, where each header is seen anyway, in the form the client's responses keep.
HeaderFields = list[tuple[bytes, bytes, bytes]]
Message = tuple[int, HeaderFields, bytes]


class AttemptFailed(Exception):
    """One attempt failed below HTTP; ``sent``: request bytes may have reached the server."""

    reason = "transport"

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectFailed(AttemptFailed):
    reason = "connect"

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class ConnectionLost(AttemptFailed):
    reason = "connection lost"


class AttemptTimedOut(AttemptFailed):
    reason = "timeout"


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time (no pipelining)."""

    def __init__(self, pool: EndpointPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, HeaderFields, bytes, bool]] | None = None
        self._headers: HeaderFields = []
        self._body: list[bytes] = []
        self._head = False
        self._deadline: float | None = None  # of the request in flight
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the timer fires, on now()'s clock
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport does not subclass asyncio.Transport, but has its API.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"malformed response: {exc}", sent=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost("connection closed before the response", sent=True))
        self._disarm()
        # The TLS state (OpenSSL's, and uvloop's 256 KiB read buffer) goes with the socket:
        # this object may live on until the cyclic GC's next pass (its parser's callbacks
        # and a failed attempt's traceback hold it in cycles).
        self._transport = None
        if not self.closed:
            self.closed = True
            self._pool._forget(self)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._head:  # a HEAD response has no body, whatever Content-Length says
            self._complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._head:
            self._complete()

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        headers, self._headers = self._headers, []
        body = b"".join(self._body)
        self._body = []
        if waiter is None or waiter.done():
            self.close()  # an unsolicited or late response: the stream is out of step
            return
        # The parser cannot skip a HEAD response's body, so such a connection is not reused.
        keep_alive = not self._head and self._parser.should_keep_alive()
        waiter.set_result((self._parser.get_status_code(), headers, body, keep_alive))

    def _fail(self, exc: AttemptFailed) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(
        self, data: bytes, *, head: bool, deadline: float | None
    ) -> asyncio.Future[tuple[int, HeaderFields, bytes, bool]]:
        """Write one request; the future gets its response (status, headers, body,
        whether the connection stays open) or the attempt's failure."""
        assert self._transport is not None
        waiter = self._waiter = self._pool.loop.create_future()
        self._head = head
        self._deadline = deadline
        self._transport.write(data)
        if deadline is not None:
            self._arm(deadline)
        return waiter

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires by ``deadline``.

        A timer per request costs ~1.5 µs to set and cancel. A connection keeps one
        instead: a request leaves it armed, and the next request's deadline (its start
        plus the same per-try timeout, usually) is later, so the timer already fires
        in time; when it fires, ``_expire`` times out the request then in flight if
        its deadline passed, else sets itself again for that deadline.
        """
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer = self._pool.loop.call_later(deadline - now(), self._expire)
        self._timer_at = deadline

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if self._waiter is None or deadline is None:
            return  # idle, or a request without a deadline: the next one arms its own
        if now() < deadline:  # a later request's deadline, or the loop's clock ran ahead
            self._arm(deadline)
            return
        self._fail(AttemptTimedOut("no response before the deadline", sent=True))
        self.close(abort=True)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, *, abort: bool = False) -> None:
        """Close, gracefully or, for a request abandoned in flight, at once (``abort``).

        A graceful TLS close sends close_notify and keeps the socket and its TLS state
        until the peer answers with its own: a peer stuck in the abandoned request
        answers when it is done, or never (then the loop waits 30 s). Under an
        instance slower than the per-try timeout that held hundreds of connections.
        """
        if self.closed:
            return
        self.closed = True
        self._disarm()
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()
        self._pool._forget(self)

    @property
    def peercert(self) -> object:
        assert self._transport is not None
        return self._transport.get_extra_info("peercert")


class EndpointPool:
    """Keep-alive connections to one address, at most ``max_connections`` of them."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        destination: str,
        ssl_context: Callable[[], ssl.SSLContext] | None,
        server_hostname: str | None = None,
        expected_identity: SpiffeId | None = None,
        max_connections: int = 64,
        connect_timeout: float = 2.0,
        idle_timeout: float = 4.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.address = address
        self.port = port
        self.destination = destination
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self.expected_identity = expected_identity
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._retired = False

    async def request(self, data: bytes, *, head: bool, deadline: float | None) -> Message:
        """Send one serialized request and read its response."""
        # An idle connection taken and the response awaited right here: no coroutine
        # of their own for the usual request.
        connection = self._pop_idle()
        if connection is None:
            connection = await self._acquire(deadline)
        try:
            status, headers, body, keep_alive = await connection.send(
                data, head=head, deadline=deadline
            )
        except BaseException:
            # Abandoned (a timeout, a cancellation, a failure): the response may still
            # arrive, so this stream is unusable.
            connection.close(abort=True)
            raise
        self._release(connection, keep_alive)
        return status, headers, body

    async def _acquire(self, deadline: float | None) -> _Connection:
        while True:
            connection = self._pop_idle()
            if connection is not None:
                return connection
            if len(self._all) + self._opening < self._max_connections:
                return await self._connect(deadline)
            connection = await self._wait(deadline)
            if connection is not None:
                return connection

    def _pop_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if now() - connection.idle_since < self._idle_timeout:
                return connection
            connection.close()  # the server may be closing it right now: do not race it
        return None

    async def _wait(self, deadline: float | None) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if deadline is not None:
            timer = self.loop.call_later(deadline - now(), _expire_waiter, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is not None:
                    self._release(handed, True)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _connect(self, deadline: float | None) -> _Connection:
        self._opening += 1
        try:
            connection = await self._open(deadline)
        finally:
            self._opening -= 1
        if connection.closed:  # the server hung up right after the handshake
            raise ConnectFailed(f"{self.address}:{self.port} closed the connection at once")
        self._all.add(connection)
        try:
            self._check_identity(connection)
        except PeerIdentityMismatch:
            connection.close()
            raise
        return connection

    async def _open(self, deadline: float | None) -> _Connection:
        timeout = self._connect_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - now())
        context = self._ssl_context() if self._ssl_context is not None else None
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                _, protocol = await self.loop.create_connection(
                    lambda: _Connection(self),
                    self.address,
                    self.port,
                    ssl=context,
                    server_hostname=self._server_hostname if context is not None else None,
                )
        except TimeoutError as exc:
            self._wake_one()
            raise ConnectFailed(f"connect to {self.address}:{self.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            self._wake_one()
            raise ConnectFailed(f"connect to {self.address}:{self.port} failed: {exc}") from exc
        return protocol

    def _check_identity(self, connection: _Connection) -> None:
        """Refuse the server before sending anything unless it holds the identity the
        destination names (the whole SPIFFE ID: trust domain, namespace, service; in
        meshkit's form or Consul's)."""
        if self.expected_identity is None:
            return
        identity = identity_from_peercert(connection.peercert)  # type: ignore[arg-type]
        if not self.expected_identity.same_workload(identity):
            raise PeerIdentityMismatch(
                f"{self.address}:{self.port} presented {identity or 'no SPIFFE ID'}, "
                f"expected {self.expected_identity}",
                destination=self.destination,
            )

    def _release(self, connection: _Connection, keep_alive: bool) -> None:
        if not keep_alive or self._retired or connection.closed:
            connection.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = now()
        self._idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        """A connection closed: free its slot for a waiting caller."""
        self._all.discard(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # "a slot is free: open your own connection"
                return

    def retire(self) -> None:
        """The endpoint left the registry: close idle connections, and busy ones when done."""
        self._retired = True
        for connection in list(self._idle):
            connection.close()

    def close(self) -> None:
        self._retired = True
        for connection in list(self._all):
            connection.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed("connection pool closed"))

    @property
    def connections(self) -> int:
        return len(self._all)


def _expire_waiter(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(AttemptTimedOut("no connection before the deadline", sent=False))
