"""A ServiceApp in a real mesh: registered on startup, found by name, deregistered on
SIGTERM — dev registry and services as real processes, py-consul as the observer."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import consul
import pytest

from meshkit.ca.store import init_ca
from meshkit.ca.tokens import TokenStore
from meshkit.ca.x509 import LocalAuthority
from meshkit.identity import SpiffeId
from meshkit.testing import (
    CAProcess,
    Connection,
    RegistryProcess,
    ServiceProcess,
    admin_get,
    context_for,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def registry() -> Iterator[RegistryProcess]:
    with RegistryProcess() as process:
        yield process


def _consul(registry: RegistryProcess) -> Any:
    host, port = registry.address.split(":")
    return consul.Consul(host=host, port=int(port))


def _eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _service(
    name: str, authority: LocalAuthority, tmp_path: Path, registry: RegistryProcess
) -> ServiceProcess:
    return ServiceProcess(
        f"examples.hello.{name}:app",
        service=name,
        identity=authority.issue(name),
        identity_dir=tmp_path,
        registry=registry.address,
        env={"MESHKIT_DEREGISTER_DELAY": "0.2", "MESHKIT_VERSION": "1.2.3"},
    )


def test_instance_registers_healthy_and_leaves_on_sigterm(
    registry: RegistryProcess, authority: LocalAuthority, tmp_path: Path
) -> None:
    client = _consul(registry)
    with _service("greeter", authority, tmp_path, registry) as greeter:

        def passing() -> list[Any]:
            return list(client.health.service("greeter", passing=True)[1])

        _eventually(lambda: len(passing()) == 1)
        entry = passing()[0]["Service"]
        assert entry["Port"] == greeter.port
        assert entry["Address"] == "127.0.0.1"
        assert entry["Meta"]["spiffe_id"] == "spiffe://meshkit.local/ns/default/svc/greeter"
        assert entry["Meta"]["admin_port"] == str(greeter.admin_port)
        assert "version=1.2.3" in entry["Tags"]
        assert greeter.stop() == 0
    assert client.health.service("greeter")[1] == []


def test_services_call_each_other_by_name(
    registry: RegistryProcess, authority: LocalAuthority, tmp_path: Path
) -> None:
    with (
        _service("greeter", authority, tmp_path, registry) as greeter,
        _service("frontend", authority, tmp_path, registry) as frontend,
    ):
        user = authority.issue("demo-user")
        connection = Connection(frontend.port, context_for(user, authority.bundle_pem))
        status, body = connection.get("/")
        connection.close()
        metrics = admin_get(greeter.admin_port, "/metrics")[1].decode()
    assert (status, body) == (200, {"frontend": "ok", "greeter said": "hello, frontend"})
    # The callee measured the call, labelled by the caller's verified identity and route.
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("http_server_request_duration_seconds_count")
    ]
    assert any('source_service="frontend"' in line and '"/hello"' in line for line in served)


def test_services_with_ca_issued_identities(registry: RegistryProcess, tmp_path: Path) -> None:
    store = init_ca(tmp_path / "ca", "meshkit.local")
    tokens = TokenStore(store.tokens_path)
    with CAProcess(store.directory) as ca:
        services = [
            ServiceProcess(
                f"examples.hello.{name}:app",
                service=name,
                registry=registry.address,
                env={
                    "MESHKIT_CA_URL": ca.url,
                    "MESHKIT_CA_FINGERPRINT": store.root_fingerprint,
                    "MESHKIT_JOIN_TOKEN": tokens.create(
                        SpiffeId.for_service("meshkit.local", "default", name), ttl=60, uses=1
                    ),
                    "MESHKIT_DATA_DIR": str(tmp_path / name),
                },
            )
            for name in ("greeter", "frontend")
        ]
        with services[0], services[1] as frontend:
            ca.stop()  # the services keep serving with the certificates they hold
            signer = (store.intermediate, store.intermediate_key, store.bundle_pem)
            user = LocalAuthority("meshkit.local", signer=signer).issue("demo-user")
            connection = Connection(frontend.port, context_for(user, store.bundle_pem))
            assert connection.get("/") == (
                200,
                {"frontend": "ok", "greeter said": "hello, frontend"},
            )
            connection.close()
            stranger = LocalAuthority("meshkit.local").issue("demo-user")
            refused = Connection(frontend.port, context_for(stranger, store.bundle_pem))
            with pytest.raises((ssl.SSLError, ConnectionError)):
                refused.get("/")  # a certificate from outside this CA is not a mesh identity
            refused.close()
            assert oct((tmp_path / "frontend" / "svid-key.pem").stat().st_mode & 0o777) == "0o600"
    tokens.close()


def test_a_post_retried_by_the_mesh_client_runs_the_handler_once(
    registry: RegistryProcess, authority: LocalAuthority, tmp_path: Path
) -> None:
    def service(target: str, name: str) -> ServiceProcess:
        return ServiceProcess(
            target,
            service=name,
            identity=authority.issue(name),
            identity_dir=tmp_path,
            registry=registry.address,
        )

    with (
        service("tests.apps.ledger:ledger", "ledger"),
        service("tests.apps.ledger:till", "till") as till,
    ):
        user = authority.issue("demo-user")
        connection = Connection(till.port, context_for(user, authority.bundle_pem))
        status, body = connection.get("/pay/order-17")
        connection.close()
    assert status == 200, body
    # The first attempt timed out after 0.4 s and was retried with the same key; the
    # retry waited for the first execution and got its stored 201.
    assert body == {"status": 201, "body": {"charged": 30}, "executions": 1}
