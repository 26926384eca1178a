"""{{ cookiecutter.service_name }} over real mutual TLS, called with chosen identities."""

from __future__ import annotations

import ssl

import pytest

from meshkit.testing import Mesh, ServiceProcess, admin_get
from tests.conftest import {% if cookiecutter.upstream_service %}APP, NAMESPACE, {% endif %}SERVICE

ALLOWED = "{{ cookiecutter.allowed_caller }}"
{%- if cookiecutter.upstream_service %}
UPSTREAM = "{{ cookiecutter.upstream_service }}"
STUB = "tests.upstream_stub:app"
{%- endif %}


def test_the_allowed_caller_is_answered(mesh: Mesh, service: ServiceProcess) -> None:
    status, body = mesh.connect(service, as_=ALLOWED).get("/hello")
    assert (status, body) == (200, {"service": SERVICE, "caller": ALLOWED})


def test_other_callers_are_refused(mesh: Mesh, service: ServiceProcess) -> None:
    assert mesh.connect(service, as_=f"not-{ALLOWED}").get("/hello")[0] == 403


def test_callers_without_a_certificate_cannot_connect(
    mesh: Mesh, service: ServiceProcess
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        mesh.connect(service, as_=None).get("/hello")


def test_the_admin_port_reports_ready(service: ServiceProcess) -> None:
    assert admin_get(service.admin_port, "/readyz")[0] == 200
    assert admin_get(service.admin_port, "/healthz")[0] == 200
{%- if cookiecutter.upstream_service %}


def test_upstream_is_called_through_the_mesh(mesh: Mesh) -> None:
    # A stub stands in for {{ cookiecutter.upstream_service }}; the service finds it by name.
    mesh.start(STUB, UPSTREAM, namespace=NAMESPACE)
    (service,) = mesh.start(APP, SERVICE, namespace=NAMESPACE)
    status, body = mesh.connect(service, as_=ALLOWED).get("/upstream")
    assert (status, body) == (200, {"upstream": {"stub": True, "caller": SERVICE}})


def test_an_upstream_failing_on_every_try_is_reported(mesh: Mesh) -> None:
    # Fault injection: the stub answers 503 to every request; the mesh client retries
    # (the call is a GET), then hands the last answer back.
    mesh.start(STUB, UPSTREAM, namespace=NAMESPACE, faults="abort=503")
    (service,) = mesh.start(APP, SERVICE, namespace=NAMESPACE)
    assert mesh.connect(service, as_=ALLOWED).get("/upstream")[0] == 503
{%- endif %}
