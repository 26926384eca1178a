"""Two small services for an end-to-end idempotency test: ``ledger`` charges once per
Idempotency-Key; ``till`` calls it through the mesh client with a short per-try timeout,
so a slow first attempt is retried while it is still running."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ClientPolicy, ServiceApp
from meshkit.policy import idempotent

executions = 0


@idempotent(ttl=60)
async def charge(request: Request) -> JSONResponse:
    global executions
    amount = (await request.json())["amount"]
    executions += 1
    await anyio.sleep(0.6)  # longer than till's per-try timeout: till retries meanwhile
    return JSONResponse({"charged": amount}, status_code=201)


async def count(request: Request) -> JSONResponse:
    return JSONResponse({"executions": executions})


async def pay(request: Request) -> JSONResponse:
    ledger = request.app.client("ledger")
    response = await ledger.post(
        "/charge", json={"amount": 30}, headers={"Idempotency-Key": request.path_params["key"]}
    )
    executed = (await ledger.get("/count")).json()["executions"]
    return JSONResponse(
        {"status": response.status_code, "body": response.json(), "executions": executed}
    )


ledger = ServiceApp(
    service="ledger", routes=[Route("/charge", charge, methods=["POST"]), Route("/count", count)]
)
till = ServiceApp(
    service="till",
    routes=[Route("/pay/{key}", pay)],
    client_policy=ClientPolicy(per_try_timeout=0.4, backoff_base=0.01),
)
