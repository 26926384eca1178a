"""orders: a plain FastAPI app, meshed.

``Mesh(app, ...)`` gives it what a ``ServiceApp`` has: mTLS with a workload identity,
registration, telemetry, deadlines and authorization. meshkit's policy decorators sit
on the path operations, and FastAPI dependencies hand handlers the verified caller and
mesh clients. Serve it with ``meshkit run examples.orders.app:app``; it calls the
``greeter`` of ``examples.hello``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from meshkit import Mesh, MeshClient, allow, idempotent, rate_limit
from meshkit.fastapi import Caller, mesh_client

app = FastAPI(title="orders")
mesh = Mesh(app, service="orders")

Greeter = Annotated[MeshClient, Depends(mesh_client("greeter"))]
placed: list[dict[str, object]] = []


class Order(BaseModel):
    item: str
    quantity: int = 1


@app.get("/whoami")
@allow(anonymous=True, mesh=True)
async def whoami(caller: Caller) -> dict[str, str | None]:
    """Who the mesh says is calling (None for a caller without a certificate)."""
    return {"caller": None if caller is None else str(caller)}


@app.get("/greeting")
@allow("web")
async def greeting(greeter: Greeter) -> dict[str, object]:
    """A mesh call by name, through the client the dependency gives."""
    response = await greeter.get("/hello")
    return {"status": response.status_code, "greeter": response.json()}


@app.post("/orders", status_code=201)
@allow("web", "cart")
@rate_limit("5/s", burst=5)
@idempotent(ttl=60)
async def place(order: Order, caller: Caller) -> dict[str, object]:
    placed.append({"by": str(caller), **order.model_dump()})
    return {"order": len(placed), "by": str(caller), "item": order.item}
