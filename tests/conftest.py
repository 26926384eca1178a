from __future__ import annotations

import importlib.util
from collections.abc import Iterator

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


@pytest.fixture
def registry_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``CONSUL_HTTP_ADDR`` of a dev registry for instances to register in, when this
    meshkit has one (TODO(merge): always, once the dev registry is in main)."""
    if importlib.util.find_spec("meshkit.registry.dev") is None:
        yield {}
        return
    from meshkit._supervisor import Supervisor
    from meshkit.demo import start_registry

    directory = tmp_path_factory.mktemp("registry")
    with Supervisor(directory / "logs") as supervisor:
        yield {"CONSUL_HTTP_ADDR": f"127.0.0.1:{start_registry(supervisor, directory)}"}
