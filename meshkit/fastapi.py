"""FastAPI dependencies for a meshed app (``Mesh(app, ...)``); needs ``fastapi`` installed.

    app = FastAPI()
    mesh = Mesh(app, service="orders")
    Payments = Annotated[MeshClient, Depends(mesh_client("payments"))]

    @app.post("/orders")
    @allow("web")                       # meshkit's policies decorate path operations
    async def create(caller: Caller, payments: Payments) -> dict[str, str]:
        charge = await payments.post("/charge", json={"by": str(caller)})
        ...

``Caller`` is the verified caller's SPIFFE ID (None for an anonymous caller, which
only ``@allow(anonymous=True)`` lets in); ``mesh_client(name)`` the mesh client bound
to a service; ``Outside`` the client for URLs outside the mesh (``Mesh.outside``);
``CurrentMesh`` the app's ``Mesh``. Each reads what the mesh put in the
request, so they cost a lookup, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from meshkit.client import MeshClient, OutsideClient
from meshkit.identity import SpiffeId, peer_identity
from meshkit.mesh import Mesh, mesh_of

__all__ = [
    "Caller",
    "CurrentMesh",
    "Outside",
    "caller_identity",
    "current_mesh",
    "mesh_client",
    "outside_client",
]


def current_mesh(connection: HTTPConnection) -> Mesh:
    """The ``Mesh`` of the app serving this request."""
    return mesh_of(connection.app)


def caller_identity(connection: HTTPConnection) -> SpiffeId | None:
    """The caller's SPIFFE ID from its verified client certificate, or None."""
    return peer_identity(connection)


def outside_client(connection: HTTPConnection) -> OutsideClient:
    """The client for URLs outside the mesh: trace context and metrics, no identity."""
    return mesh_of(connection.app).outside


def mesh_client(service: str) -> Callable[[HTTPConnection], MeshClient]:
    """A dependency giving the mesh client bound to ``service``."""

    def dependency(connection: HTTPConnection) -> MeshClient:
        return mesh_of(connection.app).client(service)

    dependency.__name__ = f"mesh_client_{service.replace('-', '_')}"
    return dependency


Caller = Annotated[SpiffeId | None, Depends(caller_identity)]
CurrentMesh = Annotated[Mesh, Depends(current_mesh)]
Outside = Annotated[OutsideClient, Depends(outside_client)]
