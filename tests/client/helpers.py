"""Real mTLS servers and a static endpoint source for the mesh client tests; raw TCP
and TLS servers for the other internal HTTP clients' tests (the CA's, the checks')."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream, TaskGroup
from anyio.streams.tls import TLSStream

from meshkit.ca.x509 import LocalAuthority
from meshkit.client import ClientPolicy, MeshClientFactory
from meshkit.client._hooks import BaseClientHooks
from meshkit.identity import SpiffeId
from meshkit.registry.base import Endpoint
from meshkit.serving.protocol import MeshHttpToolsProtocol
from meshkit.settings import MeshSettings
from meshkit.tls import TLSContexts, TLSMaterial


class StaticSource:
    """An EndpointSource over a dict the test edits (``set`` bumps the generation)."""

    def __init__(self, endpoints: dict[str, list[Endpoint]] | None = None) -> None:
        self._endpoints = dict(endpoints or {})
        self.generation = 0

    def set(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints[service] = list(endpoints)
        self.generation += 1

    def endpoints(self, service: str) -> Sequence[Endpoint] | None:
        return self._endpoints.get(service)

    async def prime(self, service: str) -> Sequence[Endpoint]:
        return self._endpoints.get(service, [])


def contexts(
    authority: LocalAuthority, service: str, *, spiffe_id: SpiffeId | None = None
) -> TLSContexts:
    issued = authority.issue(service, spiffe_id=spiffe_id)
    return TLSContexts(TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem))


def endpoint(service: str, port: int, instance: str | None = None) -> Endpoint:
    return Endpoint(instance or f"{service}-{port}", service, "127.0.0.1", port)


@asynccontextmanager
async def serve(app: Any, tls: TLSContexts) -> AsyncIterator[int]:
    """Run ``app`` under uvicorn with strict mTLS on an ephemeral port, the verified caller
    in the scope (meshkit's protocol); yield the port."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=MeshHttpToolsProtocol,
        lifespan="off",
        log_level="warning",
        ssl_context_factory=lambda _config, _default: tls.listening_context,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
                await anyio.sleep(0.01)
        try:
            yield server.servers[0].sockets[0].getsockname()[1]
        finally:
            server.should_exit = True


class Recorder(BaseClientHooks):
    """Keeps every event the client reports."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            events = object.__getattribute__(self, "events")

            def record(event: object) -> None:
                events.append(event)

            return record
        return object.__getattribute__(self, name)

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


def factory(
    authority: LocalAuthority,
    source: StaticSource,
    *,
    caller: str = "caller",
    hooks: Any = None,
    routing: Any = None,
    **policy: Any,
) -> MeshClientFactory:
    settings = MeshSettings(service=caller, trust_domain=authority.trust_domain)
    return MeshClientFactory(
        source,
        contexts(authority, caller),
        settings,
        policy=ClientPolicy(**policy),
        hooks=hooks,
        routing=routing,
    )


Handler = Callable[[ByteStream], Awaitable[None]]
_BROKEN = (anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError, OSError)


@asynccontextmanager
async def raw_server(handle: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Run ``handle`` for each connection on an ephemeral 127.0.0.1 port (after a TLS
    handshake when ``tls`` is given); yield the port. On exit every accepted connection
    is closed, also one whose handler had not started yet."""
    accepted: list[SocketStream] = []

    async def run(stream: SocketStream) -> None:
        with contextlib.suppress(*_BROKEN):
            wrapped: ByteStream = stream
            if tls is not None:
                wrapped = await TLSStream.wrap(
                    stream, server_side=True, ssl_context=tls, standard_compatible=False
                )
            async with wrapped:
                await handle(wrapped)

    async def accept(listener: SocketListener, tasks: TaskGroup) -> None:
        while True:
            stream = await listener.accept()
            accepted.append(stream)
            tasks.start_soon(run, stream)

    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(accept, listener, tasks)
        try:
            yield listener.extra(SocketAttribute.local_port)
        finally:
            # Shielded: awaiting in the cancelled scope would raise a CancelledError that
            # the task group absorbs, and with it whatever the body raised (a test's failure).
            with anyio.CancelScope(shield=True):
                for stream in accepted:
                    await anyio.aclose_forcefully(stream)
            tasks.cancel_scope.cancel()


class SilentPeer:
    """A server that keeps what it receives and never answers."""

    def __init__(self) -> None:
        self.received = bytearray()

    async def handle(self, stream: ByteStream) -> None:
        async for chunk in stream:
            self.received += chunk
