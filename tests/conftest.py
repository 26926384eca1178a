from __future__ import annotations

import pytest

from meshkit.ca.x509 import LocalAuthority


@pytest.fixture(scope="session")
def authority() -> LocalAuthority:
    """An in-memory root + intermediate CA for the trust domain meshkit.local."""
    return LocalAuthority("meshkit.local")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: minutes, not seconds (still run in CI)")
