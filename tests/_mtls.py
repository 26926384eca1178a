"""Test-only: a real uvicorn mTLS server in a thread, with meshkit's protocol class
(the caller's SPIFFE ID in the TLS extension), for testing middleware on its own."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from meshkit.ca.x509 import LocalAuthority
from meshkit.serving.protocol import MeshHttpToolsProtocol
from meshkit.tls import TLSMaterial, client_context, server_context


def material(authority: LocalAuthority, service: str, namespace: str = "default") -> TLSMaterial:
    issued = authority.issue(service, namespace=namespace)
    return TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem)


@contextmanager
def serve(app: ASGIApp, tls: TLSMaterial, *, require_client_cert: bool = True) -> Iterator[str]:
    """Serve ``app`` with mTLS on 127.0.0.1:<ephemeral> in a thread; yields the base URL."""
    context = server_context(tls, require_client_cert=require_client_cert)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="asyncio",
        http=MeshHttpToolsProtocol,
        ssl_context_factory=lambda _config, _default: context,
        log_level="warning",
        lifespan="auto",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def client(base_url: str, tls: TLSMaterial, **kwargs: Any) -> httpx.Client:
    """An httpx client presenting ``tls``'s certificate."""
    return httpx.Client(base_url=base_url, verify=client_context(tls), **kwargs)


def anonymous_client(base_url: str, bundle_pem: str) -> httpx.Client:
    """An httpx client that trusts the mesh but presents no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=bundle_pem)
    return httpx.Client(base_url=base_url, verify=context)
