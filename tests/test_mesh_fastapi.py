"""A plain FastAPI app meshed with ``Mesh(app, ...)`` (examples/orders), served by
``meshkit run`` in a real mesh: mTLS, policy decorators on path operations, the caller
and mesh-client dependencies, telemetry on the admin port, mesh errors as JSON."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from meshkit.testing import Mesh, ServiceProcess, admin_get, context_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def orders(mesh: Mesh) -> ServiceProcess:
    return mesh.start("examples.orders.app:app", "orders")[0]


def _client(mesh: Mesh, process: ServiceProcess, as_: str | None) -> httpx.Client:
    identity = None if as_ is None else mesh.authority.issue(as_)
    context = context_for(identity, mesh.authority.bundle_pem)
    return httpx.Client(base_url=f"https://127.0.0.1:{process.port}", verify=context)


@pytest.fixture
def web(mesh: Mesh, orders: ServiceProcess) -> Iterator[httpx.Client]:
    with _client(mesh, orders, "web") as client:
        yield client


def test_the_caller_dependency_names_the_verified_identity(
    mesh: Mesh, orders: ServiceProcess, web: httpx.Client
) -> None:
    assert web.get("/whoami").json() == {"caller": "spiffe://meshkit.local/ns/default/svc/web"}
    # Strict mTLS: no certificate, no connection at all.
    with _client(mesh, orders, None) as anonymous, pytest.raises(httpx.TransportError):
        anonymous.get("/whoami")


def test_a_mesh_client_dependency_calls_another_service_by_name(
    mesh: Mesh, orders: ServiceProcess, web: httpx.Client
) -> None:
    mesh.start("examples.hello.greeter:app", "greeter")
    response = web.get("/greeting")
    assert response.status_code == 200
    greeting = response.json()["greeter"]
    assert greeting["message"] == "hello, orders"  # greeter saw orders' identity


def test_policy_decorators_on_path_operations(
    mesh: Mesh, orders: ServiceProcess, web: httpx.Client
) -> None:
    with _client(mesh, orders, "cart") as cart:
        assert cart.get("/greeting").status_code == 403  # @allow("web") only
        headers = {"Idempotency-Key": "order-1"}
        first = cart.post("/orders", json={"item": "tea", "quantity": 2}, headers=headers)
        again = cart.post("/orders", json={"item": "tea", "quantity": 2}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()  # @idempotent: ran once
    assert first.json()["by"] == "spiffe://meshkit.local/ns/default/svc/cart"
    assert web.post("/orders", json={"quantity": 1}).status_code == 422  # FastAPI validates
    statuses = [web.post("/orders", json={"item": "x"}).status_code for _ in range(8)]
    assert 429 in statuses  # @rate_limit("5/s", burst=5)


def test_mesh_errors_are_json_and_requests_are_measured(
    orders: ServiceProcess, web: httpx.Client
) -> None:
    response = web.get("/greeting")  # no greeter in this mesh
    assert response.status_code == 503
    assert response.json()["error"] == "no_healthy_instances"
    assert response.json()["destination"] == "greeter"
    status, metrics = admin_get(orders.admin_port, "/metrics")
    assert status == 200
    assert b'http_route="/greeting"' in metrics
    assert b'source_service="web"' in metrics
