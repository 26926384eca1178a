"""Idempotency across instances, over real processes: a keyed POST runs once.

The finding (#16): ``@idempotent`` kept its keys per process, so a retry that reached
another instance ran the handler again. Here two ``orders`` instances share a store
(one SQLite file on this host, or the dev registry's KV as Consul's); the same keyed
POST goes to both at once, then again as a retry would: the handler, which appends a
line to a file before answering, must have run once, and every caller must hold the
same answer. Then through the mesh client: a ``till`` whose per-try timeout is shorter
than the handler, so each call is retried while its first attempt still runs.

This module is also the services' code (``meshkit run tests.chaos.test_idempotency:orders``).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ClientPolicy, ServiceApp
from meshkit.policy import idempotent
from meshkit.testing import Connection, Mesh, ServiceProcess, admin_get

EXECUTIONS = "CHAOS_EXECUTIONS"  # the file each execution of the handler is appended to
HANDLER_SECONDS = 0.6  # the duplicate arrives while it runs; a retry, before its own timeout
PER_TRY_TIMEOUT = 0.5

# -- the services ----------------------------------------------------------------------


def execute(order: int) -> None:
    """The side effect: one line per execution (a short append, atomic in O_APPEND)."""
    with Path(os.environ[EXECUTIONS]).open("a") as executions:
        executions.write(f"{order} {os.getpid()}\n")


@idempotent(ttl=600)
async def charge(request: Request) -> JSONResponse:
    order = (await request.json())["order"]
    execute(order)  # first, whatever happens next
    await anyio.sleep(HANDLER_SECONDS)
    return JSONResponse({"order": order, "pid": os.getpid()}, status_code=201)


orders = ServiceApp(service="orders", routes=[Route("/charge", charge, methods=["POST"])])


async def pay(request: Request) -> JSONResponse:
    order = request.path_params["order"]
    response = await request.app.client("orders").post(
        "/charge", json={"order": order}, headers={"Idempotency-Key": f"pay-{order}"}
    )
    return JSONResponse({"status": response.status_code, "body": response.json()})


till = ServiceApp(
    service="till",
    routes=[Route("/pay/{order}", pay, methods=["POST"])],
    # The first attempt gives up while the handler still runs: the call is retried.
    client_policy=ClientPolicy(per_try_timeout=PER_TRY_TIMEOUT, backoff_base=0.01),
)

# -- the tests -------------------------------------------------------------------------

ORDERS = "tests.chaos.test_idempotency:orders"
TILL = "tests.chaos.test_idempotency:till"


def _store(kind: str, tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'idempotency.db'}" if kind == "sqlite" else "consul"


def _executions(log: Path) -> list[str]:
    return log.read_text().split("\n")[:-1] if log.exists() else []


def _post(
    connection: Connection, path: str, body: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["idempotency-key"] = key
    connection.http.request("POST", path, body=json.dumps(body), headers=headers)
    response = connection.http.getresponse()
    return response.status, dict(response.getheaders()), json.loads(response.read())


@pytest.mark.parametrize(
    ("store", "in_flight"), [("sqlite", "wait"), ("consul", "wait"), ("sqlite", "reject")]
)
def test_a_keyed_post_to_two_instances_runs_once(
    mesh: Mesh, tmp_path: Path, store: str, in_flight: str
) -> None:
    log = tmp_path / "executions"
    env = {
        EXECUTIONS: str(log),
        "MESHKIT_IDEMPOTENCY_STORE": _store(store, tmp_path),
        "MESHKIT_IDEMPOTENCY_IN_FLIGHT": in_flight,
    }
    instances = mesh.start(ORDERS, "orders", instances=2, env=env)
    first, second = (mesh.connect(instance, as_="web") for instance in instances)

    def send(connection: Connection) -> tuple[int, dict[str, str], Any]:
        return _post(connection, "/charge", {"order": 7}, key="order-7")

    with ThreadPoolExecutor(2) as pool:
        concurrent = list(pool.map(send, [first, second]))
    retries = [send(second), send(first)]

    assert len(_executions(log)) == 1
    answers = concurrent + retries
    ran = next(a for a in answers if a[0] == 201 and "idempotent-replayed" not in a[1])
    if in_flight == "wait":
        assert [a[0] for a in answers] == [201] * 4
    else:  # the duplicate was refused while the first ran: its retry gets the result
        assert sorted(a[0] for a in concurrent) == [201, 409]
        assert [a[0] for a in retries] == [201, 201]
    assert all(a[2] == ran[2] for a in answers if a[0] == 201)
    # The same key with another body is another request: refused, not run, not replayed.
    assert _post(first, "/charge", {"order": 8}, key="order-7")[0] == 422
    assert len(_executions(log)) == 1


@pytest.mark.parametrize("store", ["sqlite", "consul"])
def test_retries_through_the_mesh_client_run_each_call_once(
    mesh: Mesh, tmp_path: Path, store: str
) -> None:
    log = tmp_path / "executions"
    env = {EXECUTIONS: str(log), "MESHKIT_IDEMPOTENCY_STORE": _store(store, tmp_path)}
    instances = mesh.start(ORDERS, "orders", instances=2, env=env)
    (cashier,) = mesh.start(TILL, "till")
    connections = [mesh.connect(cashier, as_="web") for _ in range(8)]

    def pay(order: int) -> tuple[int, dict[str, str], Any]:
        return _post(connections[order], f"/pay/{order}", {})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(pay, range(8)))

    executed = _executions(log)
    assert [a[0] for a in answers] == [200] * 8
    assert [a[2]["status"] for a in answers] == [201] * 8
    assert sorted(int(line.split()[0]) for line in executed) == list(range(8))
    # The answers came from the instance that ran each call, whichever the retry reached.
    ran_on = {int(line.split()[0]): int(line.split()[1]) for line in executed}
    assert all(a[2]["body"]["pid"] == ran_on[int(a[2]["body"]["order"])] for a in answers)
    assert {p.process.pid for p in instances} >= set(ran_on.values())
    assert _retried(cashier) > 0


def _retried(process: ServiceProcess) -> float:
    status, body = admin_get(process.admin_port, "/metrics")
    assert status == 200
    return sum(
        float(line.rpartition(" ")[2])
        for line in body.decode().splitlines()
        if line.startswith("meshkit_retries_total{")
    )
