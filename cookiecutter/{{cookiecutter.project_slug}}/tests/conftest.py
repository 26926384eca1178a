"""Fixtures: a test certificate authority and the service running for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import ServiceProcess

NAMESPACE = "{{ cookiecutter.namespace }}"


@pytest.fixture(scope="session")
def authority() -> LocalAuthority:
    """A throwaway CA: every certificate in these tests comes from it."""
    return LocalAuthority("meshkit.local")


@pytest.fixture
def service(authority: LocalAuthority, tmp_path: Path) -> Iterator[ServiceProcess]:
    """``meshkit run {{ cookiecutter.package_name }}.app:app`` on ephemeral ports, stopped afterwards."""
    process = ServiceProcess(
        "{{ cookiecutter.package_name }}.app:app",
        service="{{ cookiecutter.service_name }}",
        identity=authority.issue("{{ cookiecutter.service_name }}", namespace=NAMESPACE),
        identity_dir=tmp_path,
        env={"MESHKIT_NAMESPACE": NAMESPACE, "MESHKIT_DEREGISTER_DELAY": "0"},
    )
    with process:
        yield process
