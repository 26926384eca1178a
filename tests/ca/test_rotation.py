"""Two workloads with CA-issued identities talk mTLS while both rotate every few seconds."""

from __future__ import annotations

import functools
import http.client
import socket
from pathlib import Path

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshkit.ca.client import CAIdentity, _exchange
from meshkit.ca.store import CAStore, init_ca
from meshkit.identity import peer_identity
from meshkit.serving.protocol import MeshHttpToolsProtocol
from meshkit.settings import MeshSettings
from meshkit.testing import CAProcess
from meshkit.tls import TLSContexts
from tests.ca.conftest import make_token

pytestmark = pytest.mark.anyio


async def _whoami(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(peer_identity(request)))


def _identity(ca: CAProcess, store: CAStore, directory: Path, service: str) -> CAIdentity:
    settings = MeshSettings(
        service=service,
        trust_domain=store.trust_domain,
        ca_url=ca.url,
        ca_fingerprint=store.root_fingerprint,
        join_token=make_token(store, service),
        data_dir=directory / service,
    )
    return CAIdentity(settings)


async def test_rotation_under_traffic_drops_nothing(tmp_path: Path) -> None:
    store = init_ca(tmp_path / "ca", "example.org")
    ca = CAProcess(store.directory, "--leaf-ttl", "3s").start()
    try:
        server_identity = _identity(ca, store, tmp_path, "server")
        client_identity = _identity(ca, store, tmp_path, "client")
        server_tls = TLSContexts(await server_identity.obtain())
        client_tls = TLSContexts(await client_identity.obtain())
        sock = socket.create_server(("127.0.0.1", 0))  # listening: early clients queue
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            Starlette(routes=[Route("/", _whoami)]),
            http=MeshHttpToolsProtocol,
            ssl_context_factory=lambda _config, _default: server_tls.listening_context,
            lifespan="off",
            log_level="warning",
        )
        server = uvicorn.Server(config)
        rotations = {"server": 0, "client": 0}
        server_tls.on_update(lambda _m: rotations.__setitem__("server", rotations["server"] + 1))
        client_tls.on_update(lambda _m: rotations.__setitem__("client", rotations["client"] + 1))
        answers: list[str] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(functools.partial(server.serve, sockets=[sock]))
            tasks.start_soon(server_identity.renew_forever, server_tls)
            tasks.start_soon(client_identity.renew_forever, client_tls)
            kept = http.client.HTTPSConnection("127.0.0.1", port, context=client_tls.client)
            await anyio.to_thread.run_sync(kept.request, "GET", "/")
            (await anyio.to_thread.run_sync(kept.getresponse)).read()
            with anyio.move_on_after(20):
                while min(rotations.values()) < 2:
                    # A fresh connection (and handshake) per request: each sees the newest
                    # certificates on both sides. Any failure raises and fails the test.
                    status, body = await _exchange(
                        f"https://127.0.0.1:{port}",
                        "GET",
                        "/",
                        client_tls.client,
                        expect_peer=server_tls.material.spiffe_id,
                    )
                    assert status == 200
                    answers.append(body.decode())
            # The connection opened before any rotation still works.
            await anyio.to_thread.run_sync(kept.request, "GET", "/")
            assert (await anyio.to_thread.run_sync(kept.getresponse)).status == 200
            kept.close()
            server.should_exit = True
            tasks.cancel_scope.cancel()
        assert min(rotations.values()) >= 2 and len(answers) > 10
        assert set(answers) == {"spiffe://example.org/ns/default/svc/client"}
    finally:
        ca.stop()
