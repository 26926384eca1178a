"""The service running for real in a test mesh: meshkit's ``mesh`` fixture gives a test
CA, a dev registry and the processes it starts, all stopped after each test."""

from __future__ import annotations

import pytest

from meshkit.testing import Mesh, ServiceProcess

NAMESPACE = "{{ cookiecutter.namespace }}"
SERVICE = "{{ cookiecutter.service_name }}"
APP = "{{ cookiecutter.package_name }}.app:app"


@pytest.fixture
def service(mesh: Mesh) -> ServiceProcess:
    """``meshkit run {{ cookiecutter.package_name }}.app:app``: registered, serving mTLS."""
    (process,) = mesh.start(APP, SERVICE, namespace=NAMESPACE)
    return process
