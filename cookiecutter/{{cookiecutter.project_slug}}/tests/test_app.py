"""{{ cookiecutter.service_name }} over real mutual TLS, called with chosen identities."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from meshkit import ServiceApp
from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import Connection, ServiceProcess, admin_get, context_for
from tests.conftest import HAS_REGISTRY, NAMESPACE, SERVICE, start


def _get(service: ServiceProcess, context: ssl.SSLContext, path: str) -> tuple[int, object]:
    connection = Connection(service.port, context)
    try:
        return connection.get(path)
    finally:
        connection.close()


def test_the_allowed_caller_is_answered(service: ServiceProcess, authority: LocalAuthority) -> None:
    caller = authority.issue("{{ cookiecutter.allowed_caller }}", namespace=NAMESPACE)
    status, body = _get(service, context_for(caller, authority.bundle_pem), "/hello")
    assert status == 200
    assert body == {
        "service": "{{ cookiecutter.service_name }}",
        "caller": "{{ cookiecutter.allowed_caller }}",
    }


def test_other_callers_are_refused(service: ServiceProcess, authority: LocalAuthority) -> None:
    stranger = authority.issue("not-{{ cookiecutter.allowed_caller }}", namespace=NAMESPACE)
    status, _ = _get(service, context_for(stranger, authority.bundle_pem), "/hello")
    assert status == 403


def test_callers_without_a_certificate_cannot_connect(
    service: ServiceProcess, authority: LocalAuthority
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(service, context_for(None, authority.bundle_pem), "/hello")


def test_the_admin_port_reports_ready(service: ServiceProcess) -> None:
    assert admin_get(service.admin_port, "/readyz")[0] == 200
    assert admin_get(service.admin_port, "/healthz")[0] == 200


# TODO(meshkit>=0.2): every meshkit has the mesh client; drop this check.
MESH_CLIENT = hasattr(ServiceApp, "client") and HAS_REGISTRY


@pytest.mark.skipif(not MESH_CLIENT, reason="this meshkit has no mesh client yet")
def test_upstream_is_called_through_the_mesh(
    authority: LocalAuthority, tmp_path: Path, registry_env: dict[str, str]
) -> None:
    upstream = "{{ cookiecutter.upstream_service }}"
    stub = start("tests.upstream_stub:app", upstream, authority, tmp_path, registry_env)
    try:
        service = start(
            "{{ cookiecutter.package_name }}.app:app", SERVICE, authority, tmp_path, registry_env
        )
        try:
            caller = authority.issue("{{ cookiecutter.allowed_caller }}", namespace=NAMESPACE)
            context = context_for(caller, authority.bundle_pem)
            # The registry marks a new instance healthy within a few seconds.
            deadline = time.monotonic() + 15
            while (answer := _get(service, context, "/upstream"))[0] != 200:
                assert time.monotonic() < deadline, answer
                time.sleep(0.2)
        finally:
            service.stop()
    finally:
        stub.stop()
    assert answer[1] == {"upstream": {"stub": True, "caller": SERVICE}}
