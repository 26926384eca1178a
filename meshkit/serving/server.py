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
import contextvars
import gc
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

import anyio
import uvicorn
import uvloop
from uvicorn.lifespan.on import LifespanOn

from meshkit.errors import MeshError
from meshkit.identity import SpiffeId
from meshkit.serving.connections import Acceptor, TLSMode, raise_descriptor_limit
from meshkit.serving.listen import listen, uvicorn_config
from meshkit.settings import ADMIN_LIMITS, ConnectionLimits, MeshSettings

logger = logging.getLogger("meshkit.serving")
#: Descriptors kept for what is not a served connection: the mesh client's pooled
#: connections, the registry's, the CA's, log and state files.
_RESERVED_DESCRIPTORS = 256
#: Set in the admin server's task: its uvicorn lifecycle lines ("Started server process",
#: "Shutting down", ...) would repeat the service port's word for word (one process, one
#: uvicorn logger), and meshkit's own "serving ... admin on ..." line tells of it.
_ADMIN_TASK: contextvars.ContextVar[bool] = contextvars.ContextVar("meshkit_admin", default=False)
_TLS_MODES: dict[TLSMode, str] = {
    "tls": "mTLS",
    "permissive": "mTLS and plaintext (permissive)",
    "plain": "plaintext only (permissive, no identity)",
}


class _OneLifecycle(logging.Filter):
    """Drops uvicorn's INFO lines emitted by the admin server; warnings still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _ADMIN_TASK.get()


_UVICORN_LOGGER = logging.getLogger("uvicorn.error")
if not any(isinstance(f, _OneLifecycle) for f in _UVICORN_LOGGER.filters):
    _UVICORN_LOGGER.addFilter(_OneLifecycle())


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
    def serving_mode(self) -> TLSMode: ...

    @property
    def admin_app(self) -> Any: ...

    def check_identity_configured(self) -> None: ...

    def bound(self, port: int, admin_port: int) -> None: ...

    def set_ready(self, ready: bool) -> None: ...

    def leave(self) -> Awaitable[None]: ...

    def connection_refused(self, reason: str) -> None: ...


class Server(uvicorn.Server):
    """uvicorn serving ``app`` under ``limits``, accepting through an ``Acceptor``
    (meshkit's connection policy) instead of ``loop.create_server``; ``listening`` is set
    once it accepts. ``options`` are uvicorn's (``uvicorn_config``). With
    ``handle_signals=False`` the owner (MeshServer) orders shutdown itself."""

    def __init__(
        self,
        app: Any,
        *,
        name: str,
        limits: ConnectionLimits,
        mode: TLSMode,
        tls: Callable[[], ssl.SSLContext | None] = lambda: None,
        on_refused: Callable[[str], None] | None = None,
        handle_signals: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(uvicorn_config(app, limits, **options))
        self.listening = anyio.Event()
        self.acceptor = Acceptor(
            name=name,
            limits=limits,
            protocol=self._protocol,
            connections=self.server_state.connections,
            mode=mode,
            tls=tls,
            on_refused=on_refused,
        )
        self._handle_signals = handle_signals
        self._accepting: list[asyncio.Task[None]] = []

    def hold_within_descriptors(self, *, reserve: int = 0) -> None:
        """Raise the process's soft ``nofile`` to its hard limit, and hold no more
        connections than it leaves after ``reserve`` (another server's budget) and what
        clients and files need."""
        descriptors = raise_descriptor_limit()
        self.acceptor.cap_to(descriptors - reserve - _RESERVED_DESCRIPTORS)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup([])  # uvicorn listens on nothing: the acceptor does
        if self.started:
            loop = asyncio.get_running_loop()
            for sock in sockets or ():
                self._accepting.append(loop.create_task(self.acceptor.serve(sock)))
            self.listening.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in self._accepting:
            task.cancel()
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self._handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


def _mesh_lifespan(mesh: MeshMember) -> type[LifespanOn]:
    class MeshLifespan(LifespanOn):
        """Runs the app's lifespan; a MeshError at startup is told as one line."""

        async def send(self, message: Any) -> None:
            # A MeshError at startup is reported by MeshServer as one line, not a traceback.
            if message["type"] == "lifespan.startup.failed" and mesh.startup_error:
                message = {"type": message["type"], "message": ""}
            await super().send(message)

    return MeshLifespan


class MeshServer:
    """Runs one mesh member: ``app`` on its service port, ``mesh`` beside it (readiness,
    identity, the admin app on the admin port)."""

    def __init__(self, app: Any, mesh: MeshMember) -> None:
        self.app = app
        self.mesh = mesh
        self.settings: MeshSettings = mesh.settings
        self._stop = anyio.Event()
        self._failure: MeshError | None = None

    def request_stop(self) -> None:
        """Begin graceful shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def serve(self) -> None:
        settings = self.settings
        self.mesh.check_identity_configured()
        service_sock = listen(settings.host, settings.port)
        admin_sock = listen(settings.admin_host, settings.admin_port)
        self.mesh.bound(service_sock.getsockname()[1], admin_sock.getsockname()[1])
        service, admin = self._servers()
        with self._signals():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run_admin, admin, admin_sock)
                tg.start_soon(self._run_service, service, service_sock, admin)
                await self._stop.wait()
                if self._failure is None:
                    await self._drain(service)
                else:
                    tg.cancel_scope.cancel()
        if self._failure is not None:
            raise self._failure

    def _servers(self) -> tuple[Server, Server]:
        """The service port's server and the admin port's, each with its own budget of
        connections within this process's descriptors."""
        settings, mesh = self.settings, self.mesh
        service = Server(
            self.app,
            name=settings.service,
            limits=settings.connection_limits,
            mode=mesh.serving_mode,
            tls=lambda: mesh.listening_context,
            on_refused=mesh.connection_refused,
            handle_signals=False,
            lifespan="on",
            timeout_graceful_shutdown=settings.drain_timeout,
        )
        service.config.lifespan_class = _mesh_lifespan(mesh)
        admin = Server(
            mesh.admin_app,
            name=f"{settings.service} admin",
            limits=ADMIN_LIMITS,
            mode="plain",
            handle_signals=False,
            lifespan="off",
        )
        service.hold_within_descriptors(reserve=ADMIN_LIMITS.max_connections)
        return service, admin

    async def _run_admin(self, server: uvicorn.Server, sock: socket.socket) -> None:
        _ADMIN_TASK.set(True)  # this task's context only (anyio copies it per task)
        await self._run(server, sock)

    async def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:
            # uvicorn exits this way when the lifespan fails; report the reason instead.
            self._failure = self.mesh.startup_error or MeshError("application startup failed")
            self._stop.set()

    async def _run_service(
        self, service: Server, sock: socket.socket, admin: uvicorn.Server
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run, service, sock)
            await service.listening.wait()
            freeze_startup_objects()
            self.mesh.set_ready(True)
            logger.info(
                "%s serving %s on %s:%d, admin on %s:%d",
                self.mesh.spiffe_id,
                _TLS_MODES[self.mesh.serving_mode],
                self.settings.host,
                self.mesh.port,
                self.settings.admin_host,
                self.mesh.admin_port,
            )
        admin.should_exit = True

    async def _drain(self, service: uvicorn.Server) -> None:
        self.mesh.set_ready(False)
        await self.mesh.leave()
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


def serve(app: Any, mesh: MeshMember) -> None:
    """Serve ``app``, a member of the mesh through ``mesh``, until SIGTERM/SIGINT, on uvloop."""
    uvloop.run(MeshServer(app, mesh).serve())
