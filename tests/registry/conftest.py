from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import consul
import pytest

from meshkit.registry.base import InstanceRegistration
from meshkit.registry.dev.agent import DevAgent
from meshkit.registry.dev.connect_api import ConnectRegistryApp
from meshkit.registry.dev.serve import RegistryServer
from meshkit.serving.listen import listen


class ThreadedRegistry:
    """The dev registry served by uvicorn in a thread, on a real 127.0.0.1 socket."""

    def __init__(self, port: int = 0, **agent_options: Any) -> None:
        self.port = port
        self.agent_options = agent_options
        self.agent: DevAgent | None = None
        self._server: RegistryServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ThreadedRegistry:
        sock = listen("127.0.0.1", self.port)
        self.port = sock.getsockname()[1]
        self.agent = DevAgent(**self.agent_options)
        self._server = RegistryServer(ConnectRegistryApp(self.agent))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "dev registry did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def client(self) -> Any:
        return consul.Consul(host="127.0.0.1", port=self.port)


@pytest.fixture
def own_registry() -> Iterator[ThreadedRegistry]:
    """A dev registry for one test (which may stop and restart it)."""
    server = ThreadedRegistry().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_registry() -> Iterator[ThreadedRegistry]:
    server = ThreadedRegistry().start()
    yield server
    server.stop()


@pytest.fixture
def registry(shared_registry: ThreadedRegistry) -> Iterator[ThreadedRegistry]:
    """One dev registry per module, emptied through its own API after each test."""
    yield shared_registry
    client = shared_registry.client()
    for service_id in client.agent.services():
        client.agent.service.deregister(service_id)
    for check_id in client.agent.checks():
        client.agent.check.deregister(check_id)
    assert shared_registry.agent is not None
    for node in client.catalog.nodes()[1]:
        if node["Node"] != shared_registry.agent.node_name:
            client.catalog.deregister(node["Node"])
    client.kv.delete("", recurse=True)
    shared_registry.agent.deregister_minimum = 60.0


@pytest.fixture
def client(registry: ThreadedRegistry) -> Any:
    return registry.client()


class HealthzServer:
    """A plain HTTP server answering /healthz with a status the test controls."""

    def __init__(self) -> None:
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"ok" if owner.status == 200 else b"unhealthy"
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def healthz() -> Iterator[HealthzServer]:
    server = HealthzServer()
    yield server
    server.close()


_admin_port = 9  # set to a live /healthz by the session fixture below


@pytest.fixture(scope="session", autouse=True)
def shared_healthz() -> Iterator[HealthzServer]:
    """A /healthz that stays up, so instances' HTTP checks pass unless a test says not."""
    global _admin_port
    server = HealthzServer()
    _admin_port = server.port
    yield server
    server.close()


def instance(
    service: str = "payments", number: int = 1, *, admin_port: int | None = None, **changes: Any
) -> InstanceRegistration:
    if admin_port is None:
        admin_port = _admin_port
    options: dict[str, Any] = {
        "service": service,
        "instance_id": f"{service}-{number}",
        "address": "127.0.0.1",
        "port": 8000 + number,
        "admin_port": admin_port,
        "spiffe_id": f"spiffe://meshkit.local/ns/default/svc/{service}",
        "version": "1.2.0",
    }
    options.update(changes)
    return InstanceRegistration(**options)


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


async def eventually(predicate: Any, *, within: float = 5.0, in_thread: bool = False) -> None:
    """Poll ``predicate`` (in a worker thread if it blocks) until true, at most ``within`` s."""
    with anyio.fail_after(within):
        # Polling fits here: the state lives in another thread or process.
        while not (await anyio.to_thread.run_sync(predicate) if in_thread else predicate()):  # noqa: ASYNC110
            await anyio.sleep(0.02)
