"""Serving a ServiceApp: uvicorn with strict mTLS on the service port, a plaintext admin port.

The verified client certificate reaches the application as the ASGI TLS extension
(``scope["extensions"]["tls"]``), built once per connection by a uvicorn protocol
subclass passed as ``Config(http=...)``: uvicorn itself does not provide it.

Shutdown order on SIGTERM/SIGINT: ``/readyz`` answers 503 and the instance leaves the
registry; after ``deregister_delay`` (time for watchers to drop it) uvicorn stops
accepting and drains in-flight requests for up to ``drain_timeout``; the app's lifespan
closes its resources; the admin port closes last; the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from opentelemetry import trace
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meshkit.errors import ConfigError, MeshError
from meshkit.identity import PEER_IDENTITY_KEY, identity_from_peercert
from meshkit.settings import MeshSettings
from meshkit.tracing import configure_tracing_from_env

if TYPE_CHECKING:
    from meshkit.app import ServiceApp

logger = logging.getLogger("meshkit.server")

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


def _mesh_lifespan(app: ServiceApp) -> type[LifespanOn]:
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


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    # Accepted sockets inherit it; without it plain asyncio delays small answers ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, **options: Any) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        loop="none",
        http=MeshHttpToolsProtocol,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        **options,
    )
    config.load()
    return config


class MeshServer:
    """Runs one ServiceApp instance: its service port and its admin port."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        self.settings: MeshSettings = app.settings
        self._stop = anyio.Event()
        self._failure: MeshError | None = None

    def request_stop(self) -> None:
        """Begin graceful shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def serve(self) -> None:
        settings = self.settings
        self.app.mesh.check_identity_configured()
        service_sock = _listen(settings.host, settings.port)
        admin_sock = _listen(settings.admin_host, settings.admin_port)
        self.app.mesh.bound(service_sock.getsockname()[1], admin_sock.getsockname()[1])
        service = _QuietServer(
            _uvicorn_config(
                self.app, lifespan="on", timeout_graceful_shutdown=settings.drain_timeout
            ),
            permissive=settings.tls_mode == "permissive",
        )
        service.config.lifespan_class = _mesh_lifespan(self.app)
        admin = _QuietServer(_uvicorn_config(self.app.mesh.admin_app, lifespan="off"))
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


def serve(app: ServiceApp) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, on uvloop."""
    import uvloop

    uvloop.run(MeshServer(app).serve())


# -- the `meshkit run` command ----------------------------------------------------------

_RUN_FLAGS: Mapping[str, str] = {
    "service": "MESHKIT_SERVICE",
    "host": "MESHKIT_HOST",
    "port": "MESHKIT_PORT",
    "admin_host": "MESHKIT_ADMIN_HOST",
    "admin_port": "MESHKIT_ADMIN_PORT",
}


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    run = subparsers.add_parser(
        "run",
        help="serve a ServiceApp with mTLS, registration and telemetry",
        description="Serve MODULE:APP. Flags override MESHKIT_* variables.",
    )
    run.add_argument("target", metavar="MODULE:APP", help="e.g. payments.app:app")
    for name in _RUN_FLAGS:
        run.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    # Flags become environment before the app module is imported, since a ServiceApp
    # reads its settings when it is constructed.
    for name, variable in _RUN_FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            os.environ[variable] = str(value)
    configure_logging(args.log_level)
    app = load_app(args.target)
    with _tracing_from_env(app):
        serve(app)
    return 0


@contextlib.contextmanager
def _tracing_from_env(app: ServiceApp) -> Generator[None, None, None]:
    """The OpenTelemetry SDK as the standard OTEL_* variables say, unless the app brought
    its own provider or one is installed already; flushed at exit."""
    provider = None
    if app.tracer_provider is None:
        provider = configure_tracing_from_env(app.settings.service, os.environ)
    if provider is not None:
        trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        if provider is not None:
            provider.shutdown()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Access log lines are JSON already: one per line on stdout, nothing around them.
    access = logging.getLogger("meshkit.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def load_app(target: str) -> ServiceApp:
    """Import ``module:attribute`` and check that it is a ServiceApp."""
    from meshkit.app import ServiceApp

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"expected MODULE:APP, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, ServiceApp):
        raise ConfigError(f"{target} is not a meshkit ServiceApp")
    return app
