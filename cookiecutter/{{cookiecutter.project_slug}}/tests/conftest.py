"""Fixtures: a test certificate authority, a dev registry, and the service running for real."""

from __future__ import annotations

import http.client
import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import ServiceProcess

NAMESPACE = "{{ cookiecutter.namespace }}"
SERVICE = "{{ cookiecutter.service_name }}"
# TODO(meshkit>=0.2): every meshkit has the dev registry; drop this check.
HAS_REGISTRY = importlib.util.find_spec("meshkit.registry.dev") is not None


@pytest.fixture(scope="session")
def authority() -> LocalAuthority:
    """A throwaway CA: every certificate in these tests comes from it."""
    return LocalAuthority("meshkit.local")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@pytest.fixture(scope="session")
def registry_env() -> Iterator[dict[str, str]]:
    """``CONSUL_HTTP_ADDR`` of a dev registry (``meshkit registry serve``) for these tests."""
    if not HAS_REGISTRY:
        yield {}
        return
    port = _free_port()
    argv = [sys.executable, "-m", "meshkit", "registry", "serve", "--port", str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not _answers(port, "/v1/status/leader"):
            assert process.poll() is None and time.monotonic() < deadline, "no registry"
            time.sleep(0.05)
        yield {"CONSUL_HTTP_ADDR": f"127.0.0.1:{port}"}
    finally:
        process.terminate()
        process.wait(10)


def start(
    target: str,
    service: str,
    authority: LocalAuthority,
    directory: Path,
    registry_env: dict[str, str],
) -> ServiceProcess:
    """``meshkit run target`` as ``service``, on ephemeral ports, with a test certificate."""
    return ServiceProcess(
        target,
        service=service,
        identity=authority.issue(service, namespace=NAMESPACE),
        identity_dir=directory,
        env={"MESHKIT_NAMESPACE": NAMESPACE, "MESHKIT_DEREGISTER_DELAY": "0", **registry_env},
    ).start()


@pytest.fixture
def service(
    authority: LocalAuthority, tmp_path: Path, registry_env: dict[str, str]
) -> Iterator[ServiceProcess]:
    """``meshkit run {{ cookiecutter.package_name }}.app:app``, stopped afterwards."""
    process = start(
        "{{ cookiecutter.package_name }}.app:app", SERVICE, authority, tmp_path, registry_env
    )
    try:
        yield process
    finally:
        process.stop()
