"""What the client benches share: an mTLS uvicorn server for a subprocess, and a static
endpoint source for the mesh client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from meshkit.registry.base import Endpoint
from meshkit.tls import TLSContexts, TLSMaterial


def mtls_server(
    app: Any, directory: Path, *, port: int = 0, stem: str = "payments"
) -> uvicorn.Server:
    """uvicorn (uvloop, httptools) serving ``app`` with strict mTLS as ``stem`` (a service
    name), from the ``<stem>*.pem`` and ``bundle.pem`` files in ``directory``."""
    material = TLSMaterial.from_files(
        directory / f"{stem}.pem", directory / f"{stem}-key.pem", directory / "bundle.pem"
    )
    tls = TLSContexts(material)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        ssl_context_factory=lambda _config, _default: tls.listening_context,
    )
    return uvicorn.Server(config)


class StaticSource:
    """An EndpointSource that always lists the same endpoints (``others`` for the services
    it names, ``endpoints`` for any other)."""

    generation = 0

    def __init__(
        self, endpoints: Sequence[Endpoint], others: Mapping[str, Sequence[Endpoint]] | None = None
    ) -> None:
        self._endpoints = endpoints
        self._others = dict(others or {})

    def endpoints(self, service: str) -> Sequence[Endpoint] | None:
        return self._others.get(service, self._endpoints)

    async def prime(self, service: str) -> Sequence[Endpoint]:
        return self._others.get(service, self._endpoints)
