from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import RegistryProcess


@pytest.fixture(scope="session")
def authority() -> LocalAuthority:
    """An in-memory root + intermediate CA for the trust domain meshkit.local."""
    return LocalAuthority("meshkit.local")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: minutes, not seconds (still run in CI)")


@pytest.fixture
def dev_registry() -> Iterator[RegistryProcess]:
    """``meshkit registry serve`` as a real process, fresh for each test."""
    with RegistryProcess() as registry:
        yield registry


@pytest.fixture
def registry_env(dev_registry: RegistryProcess) -> dict[str, str]:
    """``CONSUL_HTTP_ADDR`` of a dev registry for instances to register in."""
    return {"CONSUL_HTTP_ADDR": dev_registry.address}
