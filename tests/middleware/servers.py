"""Real uvicorn servers for the middleware tests, each in a thread the fixture stops."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from meshkit.ca.x509 import IssuedIdentity
from meshkit.serving.protocol import MeshHttpToolsProtocol
from meshkit.tls import TLSMaterial, client_context


@contextmanager
def running(
    app: ASGIApp,
    *,
    identity: IssuedIdentity | None = None,
    directory: Path | None = None,
    http: Any = MeshHttpToolsProtocol,
) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 (strict mTLS when ``identity`` is given) with the HTTP
    protocol ``http`` (meshkit's by default); yield the port."""
    options: dict[str, Any] = {}
    if identity is not None:
        assert directory is not None
        cert, key, bundle = identity.write(directory)
        options = {
            "ssl_certfile": str(cert),
            "ssl_keyfile": str(key),
            "ssl_ca_certs": str(bundle),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    config = uvicorn.Config(
        app,
        http=http,
        interface="asgi3",
        loop="uvloop",
        lifespan="off",
        log_level="warning",
        access_log=False,
        **options,
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def connect(port: int, identity: IssuedIdentity | None = None) -> http.client.HTTPConnection:
    """A keep-alive connection; mutual TLS presenting ``identity`` when given."""
    if identity is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    material = TLSMaterial(identity.chain_pem, identity.key_pem, identity.bundle_pem)
    return http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_context(material), timeout=10
    )


def get(
    connection: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
