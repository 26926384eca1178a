"""Accepting connections under the connection policy, for every server meshkit runs.

uvicorn listens with ``loop.create_server``, which leaves a server at the mercy of its
clients: TLS handshakes get 60 s, connections are unlimited until the process runs out
of descriptors (then every accept fails, health checks included), and a refused
handshake closes without the TLS alert OpenSSL wrote. Here the server accepts itself:

- past ``max_connections`` the oldest connection that is idle or still handshaking is
  shed for the new one (an attacker's silent connections go first, a client's busy
  ones never);
- the first byte and the handshake must arrive within ``handshake_timeout``;
- a refused handshake sends its alert (certificate_required, unknown_ca,
  certificate_expired...), is logged once per source per minute and reported to
  ``on_refused(reason)`` (a metric);
- plaintext sent to a TLS-only port gets a plaintext 400 that says so;
- every second each connection's deadlines are checked (``MeshHttpToolsProtocol.check``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from meshkit.deadline import now
from meshkit.serving.protocol import error_response
from meshkit.settings import ConnectionLimits
from meshkit.tls import HANDSHAKE_FAILED

logger = logging.getLogger("meshkit.serving")

#: ``tls``: TLS only (the listening context decides whether a client certificate is
#: required); ``permissive``: TLS or plaintext by the first byte; ``plain``: no TLS.
TLSMode = Literal["tls", "permissive", "plain"]
_TLS_HANDSHAKE = 0x16  # the content type of a TLS record that opens a handshake
_SWEEP_SECONDS = 1.0
_ACCEPT_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass
class _Handshake:
    """One connection between accept and a served protocol."""

    peer: str
    started: float
    failure: ssl.SSLError | None = None

    def failed(self, exc: ssl.SSLError) -> None:
        self.failure = exc


def refusal_reason(exc: BaseException) -> str:
    """A short label for why a handshake was refused (a metric label, a log word)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "bad_certificate")
    if isinstance(exc, ssl.SSLError):
        return _SSL_REASONS.get(exc.reason or "", "protocol_error")
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connection_lost"


# OpenSSL's X509_V_ERR_* codes (x509_vfy.h).
_VERIFY_REASONS = {
    9: "certificate_not_yet_valid",
    10: "certificate_expired",
    2: "unknown_ca",
    18: "unknown_ca",
    19: "unknown_ca",
    20: "unknown_ca",
    21: "unknown_ca",
    23: "certificate_revoked",
}
_SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "certificate_required",
    "CERTIFICATE_VERIFY_FAILED": "bad_certificate",
    "WRONG_VERSION_NUMBER": "protocol_error",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
}


@dataclass
class RefusalLog:
    """Logs refused connections once per source per ``interval``, with how many since."""

    interval: float = 60.0
    max_sources: int = 4096
    _seen: dict[str, tuple[float, int]] = field(default_factory=dict)

    def refused(self, peer: str, reason: str, server: str) -> None:
        now = time.monotonic()
        last, count = self._seen.get(peer, (-self.interval, 0))
        if now - last < self.interval:
            self._seen[peer] = (last, count + 1)
            return
        if len(self._seen) >= self.max_sources:
            self._seen.clear()  # bounded, whoever connects
        self._seen[peer] = (now, 0)
        more = f" ({count} more since the last line)" if count else ""
        logger.warning("%s: refused a connection from %s: %s%s", server, peer, reason, more)


class Acceptor:
    """Accepts connections for one server under ``limits`` and hands them to
    ``protocol()``; ``connections`` is the server's set of live protocols."""

    def __init__(
        self,
        *,
        name: str,
        limits: ConnectionLimits,
        protocol: Callable[[], asyncio.Protocol],
        connections: Collection[Any],
        mode: TLSMode,
        tls: Callable[[], ssl.SSLContext | None] = lambda: None,
        on_refused: Callable[[str], None] | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self._protocol = protocol
        self._connections = connections
        self._mode = mode
        self._tls = tls
        self._on_refused = on_refused
        self._refusals = refusals or RefusalLog()
        self._pending: dict[asyncio.Task[None], _Handshake] = {}
        self._cap = limits.max_connections

    def cap_to(self, descriptors: int) -> None:
        """Hold no more connections than ``descriptors`` allows."""
        self._cap = max(1, min(self.limits.max_connections, descriptors))

    async def serve(self, sock: socket.socket) -> None:
        """Accept on ``sock`` until cancelled; the connections accepted outlive it."""
        sock.setblocking(False)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._sweep)
            try:
                await self._accept(sock)
            finally:
                for task in list(self._pending):
                    task.cancel()
                tasks.cancel_scope.cancel()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRORS:
                    raise
                # Out of descriptors: make room, and let the backlog hold the rest.
                if not self._shed_one():
                    await asyncio.sleep(0.05)
                continue
            if self._held() >= self._cap and not self._shed_one():
                connection.close()
                self._refused(_peer(address), "over_capacity")
                continue
            self._start(connection, _peer(address))

    def _held(self) -> int:
        return len(self._pending) + len(self._connections)

    def _start(self, connection: socket.socket, peer: str) -> None:
        handshake = _Handshake(peer, now())
        task = asyncio.get_running_loop().create_task(self._hand_over(connection, handshake))
        self._pending[task] = handshake
        task.add_done_callback(self._pending.pop)

    async def _hand_over(self, connection: socket.socket, handshake: _Handshake) -> None:
        # The transport reports a refused handshake as a lost connection; the TLS
        # object tells the reason here (see ``meshkit.tls.AlertingSSLObject``).
        HANDSHAKE_FAILED.set(handshake.failed)
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self.limits.handshake_timeout):
                context = await self._context_for(loop, connection, handshake.peer)
                if context is False:
                    return
                await loop.connect_accepted_socket(
                    self._protocol,
                    connection,
                    ssl=context,
                    ssl_handshake_timeout=self.limits.handshake_timeout if context else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            connection.close()
            if handshake.failure is not None or isinstance(exc, TimeoutError | ssl.SSLError):
                self._refused(handshake.peer, refusal_reason(handshake.failure or exc))
        except asyncio.CancelledError:
            connection.close()  # shed, or the server stops
            raise

    async def _context_for(
        self, loop: asyncio.AbstractEventLoop, connection: socket.socket, peer: str
    ) -> ssl.SSLContext | Literal[False] | None:
        """The TLS context for this connection, None for plaintext, False when refused."""
        if self._mode == "plain":
            return None
        first = await _peek(loop, connection)
        if first == _TLS_HANDSHAKE:
            return self._tls()
        if self._mode == "permissive":
            return None
        if first is not None:  # plaintext on a TLS-only port: say so, in plaintext
            with contextlib.suppress(OSError):
                connection.send(error_response(400, "tls_required"))
            self._refused(peer, "plaintext")
        connection.close()
        return False

    def _shed_one(self) -> bool:
        """Close the connection idle or handshaking the longest; False if none is."""
        oldest: float | None = None
        victim: Callable[[], object] | None = None
        for task, handshake in self._pending.items():
            if oldest is None or handshake.started < oldest:
                oldest, victim = handshake.started, task.cancel
        for connection in self._connections:
            since = getattr(connection, "idle_since", None)
            if since is not None and (oldest is None or since < oldest):
                oldest, victim = since, connection.transport.close
        if victim is None:
            return False
        victim()
        return True

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            checked_at = now()
            for connection in list(self._connections):
                check = getattr(connection, "check", None)
                if check is not None:
                    check(checked_at)

    def _refused(self, peer: str, reason: str) -> None:
        self._refusals.refused(peer, reason, self.name)
        if self._on_refused is not None:
            self._on_refused(reason)


def _peer(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


async def _peek(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> int | None:
    """The first byte the client sent (left in the socket for whoever reads next), or
    None when it closed without sending any."""
    readable: asyncio.Future[None] = loop.create_future()
    loop.add_reader(connection.fileno(), readable.set_result, None)
    try:
        await readable
    finally:
        loop.remove_reader(connection.fileno())
    first = connection.recv(1, socket.MSG_PEEK)
    return first[0] if first else None


def raise_descriptor_limit() -> int:
    """Raise this process's soft ``nofile`` limit to its hard limit; return the soft one.

    The soft limit is often 1,024 while the hard one allows far more: a server that
    keeps the soft one runs out of descriptors under a few hundred slow clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft
