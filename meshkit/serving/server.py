"""Serving a mesh member: uvicorn with strict mTLS on the service port, a plaintext admin port.

Shutdown order on SIGTERM/SIGINT: ``/readyz`` answers 503 and the instance leaves the
registry; after ``deregister_delay`` (time for watchers to drop it) uvicorn stops
accepting and drains in-flight requests for up to ``drain_timeout``; the app's lifespan
closes its resources; the admin port closes last; the process exits 0.

What is served is any ASGI app with a ``MeshMember`` beside it (``ServiceApp`` is one):
this package knows nothing of the app above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Generator
from typing import Any, Protocol

import anyio
import uvicorn
import uvloop
from uvicorn.lifespan.on import LifespanOn

from meshkit.errors import MeshError
from meshkit.identity import SpiffeId
from meshkit.serving.listen import listen, uvicorn_config
from meshkit.settings import MeshSettings

logger = logging.getLogger("meshkit.serving")


class MeshMember(Protocol):
    """What the server needs of the mesh side of the app it serves."""

    settings: MeshSettings
    startup_error: MeshError | None
    port: int
    admin_port: int

    @property
    def spiffe_id(self) -> SpiffeId: ...

    @property
    def listening_context(self) -> ssl.SSLContext: ...

    @property
    def admin_app(self) -> Any: ...

    def check_identity_configured(self) -> None: ...

    def bound(self, port: int, admin_port: int) -> None: ...

    def set_ready(self, ready: bool) -> None: ...

    def leave(self) -> Awaitable[None]: ...


class Servable(Protocol):
    """An ASGI app that is a mesh member (``app.mesh``)."""

    @property
    def mesh(self) -> MeshMember: ...

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class _QuietServer(uvicorn.Server):
    """A uvicorn Server that leaves signal handling to MeshServer, which orders shutdown,
    and tells it when it listens. With ``permissive=True`` it accepts connections itself
    and serves TLS or plaintext on the same port, by the first byte the client sends."""

    def __init__(self, config: uvicorn.Config, *, permissive: bool = False) -> None:
        super().__init__(config)
        self.listening = anyio.Event()
        self._permissive = permissive
        self._accepting: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not self._permissive or not sockets:
            await super().startup(sockets)
        else:
            await super().startup([])  # uvicorn listens on nothing; _accept does
            if self.started:
                self._accepting = asyncio.create_task(self._accept(sockets[0]))
        if self.started:
            self.listening.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                connection, _ = await loop.sock_accept(sock)
                task = asyncio.create_task(self._hand_over(connection))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _hand_over(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(_FIRST_BYTE_TIMEOUT):
                first = await _peek(loop, connection)
            context = self.config.ssl if first == _TLS_HANDSHAKE else None
            await loop.connect_accepted_socket(self._protocol, connection, ssl=context)
        except (OSError, TimeoutError, ssl.SSLError):
            connection.close()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


_TLS_HANDSHAKE = b"\x16"  # the content type of a TLS record that opens a handshake
_FIRST_BYTE_TIMEOUT = 10.0


async def _peek(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket for whoever reads next."""
    readable: asyncio.Future[None] = loop.create_future()
    loop.add_reader(connection.fileno(), readable.set_result, None)
    try:
        await readable
    finally:
        loop.remove_reader(connection.fileno())
    return connection.recv(1, socket.MSG_PEEK)


def _mesh_lifespan(app: Servable) -> type[LifespanOn]:
    class MeshLifespan(LifespanOn):
        """Runs the app's lifespan, then listens with the TLS context it produced."""

        async def startup(self) -> None:
            await super().startup()
            if not (self.startup_failed or self.error_occurred):
                self.config.ssl = app.mesh.listening_context

        async def send(self, message: Any) -> None:
            # A MeshError at startup is reported by MeshServer as one line, not a traceback.
            if message["type"] == "lifespan.startup.failed" and app.mesh.startup_error:
                message = {"type": message["type"], "message": ""}
            await super().send(message)

    return MeshLifespan


class MeshServer:
    """Runs one mesh member: its service port and its admin port."""

    def __init__(self, app: Servable) -> None:
        self.app = app
        self.settings: MeshSettings = app.mesh.settings
        self._stop = anyio.Event()
        self._failure: MeshError | None = None

    def request_stop(self) -> None:
        """Begin graceful shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def serve(self) -> None:
        settings = self.settings
        self.app.mesh.check_identity_configured()
        service_sock = listen(settings.host, settings.port)
        admin_sock = listen(settings.admin_host, settings.admin_port)
        self.app.mesh.bound(service_sock.getsockname()[1], admin_sock.getsockname()[1])
        service = _QuietServer(
            uvicorn_config(
                self.app, lifespan="on", timeout_graceful_shutdown=settings.drain_timeout
            ),
            permissive=settings.tls_mode == "permissive",
        )
        service.config.lifespan_class = _mesh_lifespan(self.app)
        admin = _QuietServer(uvicorn_config(self.app.mesh.admin_app, lifespan="off"))
        with self._signals():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run, admin, admin_sock)
                tg.start_soon(self._run_service, service, service_sock, admin)
                await self._stop.wait()
                if self._failure is None:
                    await self._drain(service)
                else:
                    tg.cancel_scope.cancel()
        if self._failure is not None:
            raise self._failure

    async def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:
            # uvicorn exits this way when the lifespan fails; report the reason instead.
            self._failure = self.app.mesh.startup_error or MeshError("application startup failed")
            self._stop.set()

    async def _run_service(
        self, service: _QuietServer, sock: socket.socket, admin: uvicorn.Server
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run, service, sock)
            await service.listening.wait()
            freeze_startup_objects()
            self.app.mesh.set_ready(True)
            logger.info(
                "%s serving mTLS on %s:%d, admin on %s:%d",
                self.app.mesh.spiffe_id,
                self.settings.host,
                self.app.mesh.port,
                self.settings.admin_host,
                self.app.mesh.admin_port,
            )
        admin.should_exit = True

    async def _drain(self, service: uvicorn.Server) -> None:
        self.app.mesh.set_ready(False)
        await self.app.mesh.leave()
        service.should_exit = True

    @contextlib.contextmanager
    def _signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # embedded in another program's thread: it calls request_stop()
            return
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT)
        for sig in handled:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        logger.info("received %s: draining", signal.Signals(sig).name)
        self._stop.set()


def freeze_startup_objects() -> None:
    """Keep what startup built (modules, the app, the SDK, TLS state: ~65k objects, all
    living as long as the process) out of the cyclic collector's full passes.

    Under load a mesh caller's spans and pooled objects survive long enough to trigger
    full collections, each walking every object of the process: ~25 ms with the event
    loop stopped, several per second: a latency tail and ~8 µs of CPU per request.
    Frozen, those passes walk only what was made since (what CPython's docs advise
    for pre-fork servers, here after startup instead).
    """
    gc.collect()
    gc.freeze()


def serve(app: Servable) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, on uvloop."""
    uvloop.run(MeshServer(app).serve())
