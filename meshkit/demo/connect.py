"""``meshkit demo --consul-native``: the shop as members of a Consul Connect mesh.

No meshkit CA runs. The dev registry plays Consul with Connect enabled and ACLs
defaulting to deny: every meshkit instance gets its leaf and roots from the agent
(``MESHKIT_IDENTITY=consul``) and obeys Consul's intentions, which the demo writes as
``service-intentions`` config entries (one per destination, from the shop's edges).
payments is not a meshkit service here: a plain Starlette app in plaintext behind a
real Envoy sidecar, configured as Consul configures one (its leaf from the agent, RBAC
from payments' intentions) and registered as a ``connect-proxy`` for payments, so cart
finds it through ``/v1/health/connect/payments`` like any Connect-capable instance.
"""

from __future__ import annotations

import functools
import http.client
import os
import ssl
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from meshkit.demo.run import (
    EDGES,
    SHOP,
    answers,
    free_port,
    start_registry,
    with_checkout,
)
from meshkit.errors import MeshError
from meshkit.observe.golden import Edge
from meshkit.testing.envoy import (
    RunningEnvoy,
    connect_sidecar,
    connect_spiffe_id,
    register_sidecar_proxy,
    registry_client,
    server_sidecar_config,
    start_envoy,
)
from meshkit.testing.processes import connect_leaf
from meshkit.testing.supervisor import Supervisor
from meshkit.tls import client_context

INTENTIONS = "service-intentions"
#: Envoy's counters for what the inbound sidecar carried (its listener's stat prefix is
#: "inbound", its cluster to the app "app").
FORWARDED = "cluster.app.upstream_rq_total"
ALLOWED, DENIED = "http.inbound.rbac.allowed", "http.inbound.rbac.denied"


def intentions_by_destination(edges: Iterable[Edge]) -> dict[str, list[str]]:
    """The sources each destination allows: exactly the shop's edges (ACLs deny the rest)."""
    sources: dict[str, list[str]] = {}
    for edge in sorted(edges):
        sources.setdefault(edge.destination, []).append(edge.source)
    return sources


def write_intentions(registry: str, edges: Iterable[Edge]) -> None:
    """One ``service-intentions`` config entry per destination, through py-consul."""
    client = registry_client(registry)
    for destination, sources in intentions_by_destination(edges).items():
        entry = {"Sources": [{"Name": source, "Action": "allow"} for source in sources]}
        if not client.config.set(INTENTIONS, destination, entry):
            raise MeshError(f"the registry did not store the intentions for {destination}")


def allowed_sources(registry: str, service: str) -> list[str]:
    """The sources ``service``'s intentions allow, read back from the registry."""
    entry: Mapping[str, Any] = registry_client(registry).config.get(INTENTIONS, service) or {}
    sources = entry.get("Sources") or ()
    return [str(source["Name"]) for source in sources if source.get("Action") == "allow"]


class ConnectIdentities:
    """Every identity from the registry's Connect CA: the instances' (they ask the agent
    themselves) and demo-user's (a leaf the agent issues for it)."""

    def __init__(self, registry: str) -> None:
        self.registry = registry

    def instance_env(self, service: str, directory: Path) -> dict[str, str]:
        return {"MESHKIT_IDENTITY": "consul"}

    def client_context(self, name: str) -> ssl.SSLContext:
        return client_context(connect_leaf(self.registry, name))


def connect_plane(
    supervisor: Supervisor, directory: Path
) -> tuple[ConnectIdentities, dict[str, str]]:
    """The dev registry alone, Connect's CA in it, ACLs defaulting to deny, the shop's
    intentions written; no meshkit CA."""
    port = start_registry(supervisor, directory, args=("--acl-default-policy", "deny"))
    registry = f"127.0.0.1:{port}"
    write_intentions(registry, EDGES)
    return ConnectIdentities(registry), {"CONSUL_HTTP_ADDR": registry}


def start_plain_member(
    supervisor: Supervisor, directory: Path, registry: str, service: str
) -> RunningEnvoy:
    """``service``'s plain app (``examples.shop.<service>:create_plain_app``) under uvicorn,
    its Envoy sidecar, and both registered; the sidecar once it serves."""
    name = f"{service}-1"
    home = directory / "instances" / name
    app_port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--factory"]
    argv += [f"examples.shop.{service}:create_plain_app", "--host", "127.0.0.1"]
    argv += ["--port", str(app_port), "--log-level", "warning"]
    env = {
        **os.environ,
        "SHOP_DATA_DIR": str(directory / "data"),
        "PYTHONPATH": with_checkout(os.environ.get("PYTHONPATH")),
    }
    app = supervisor.start(name, argv, env=env)
    app.wait_until(functools.partial(answers, app_port, "/healthz"))
    callers = [connect_spiffe_id(registry, source) for source in allowed_sources(registry, service)]
    files = connect_sidecar(registry, service, home / "sidecar")
    config = server_sidecar_config(files, app_port=app_port, allowed_callers=callers)
    envoy = start_envoy(supervisor.start, f"{name}-envoy", config, home)
    register_sidecar_proxy(registry, service, app_port=app_port, proxy_port=envoy.port)
    return envoy


def refused(registry: str, port: int, caller: str) -> int:
    """The status a sidecar on ``port`` answers ``caller`` presenting its Connect leaf."""
    context = client_context(connect_leaf(registry, caller))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def members(registry: str, services: Iterable[str]) -> tuple[Counter[str], Counter[str]]:
    """(Connect-native instances, sidecar proxies) per service, as Consul's catalog has
    them: what ``/v1/health/connect/<service>`` returns, which is what callers dial."""
    native: Counter[str] = Counter()
    sidecar: Counter[str] = Counter()
    client = registry_client(registry)
    for service in services:
        _, entries = client.health.connect(service, passing=True)
        for entry in entries:
            registered = entry["Service"]
            if registered.get("Kind") == "connect-proxy":
                sidecar[service] += 1
            elif (registered.get("Connect") or {}).get("Native"):
                native[service] += 1
    return native, sidecar


def _listed(counts: Counter[str]) -> str:
    return ", ".join(f"{service} x{n}" for service, n in sorted(counts.items())) or "none"


class EnvoySidecars:
    """payments as a plain Starlette app behind an Envoy sidecar (``run.Sidecars``)."""

    services = frozenset({"payments"})
    #: A shop service no intention lets call payments: its sidecar must refuse it.
    OUTSIDER = "web"

    def __init__(self) -> None:
        self.registry = ""
        self.envoys: dict[str, RunningEnvoy] = {}

    def start(self, supervisor: Supervisor, directory: Path, mesh_env: Mapping[str, str]) -> None:
        self.registry = mesh_env["CONSUL_HTTP_ADDR"]
        for service in sorted(self.services):
            self.envoys[service] = start_plain_member(supervisor, directory, self.registry, service)

    def describe(self) -> list[str]:
        native, sidecar = members(self.registry, (service for service, _ in SHOP))
        refusals = [
            f"the {service} sidecar answers {self.OUTSIDER} (no intention allows it): "
            f"{refused(self.registry, envoy.port, self.OUTSIDER)}"
            for service, envoy in sorted(self.envoys.items())
        ]
        return [
            f"Connect-native (meshkit, leaf from Consul's CA): {_listed(native)}",
            f"behind an Envoy sidecar (plain Starlette, connect-proxy): {_listed(sidecar)}"
            " (its edges as its callers count them)",
            *refusals,
        ]

    def report(self) -> list[str]:
        return [self._carried(service, envoy) for service, envoy in sorted(self.envoys.items())]

    @staticmethod
    def _carried(service: str, envoy: RunningEnvoy) -> str:
        if not envoy.child.running:
            return f"the {service} Envoy sidecar exited with {envoy.child.process.returncode}"
        stats = envoy.stats()
        return (
            f"{service} through Envoy: {stats.get(FORWARDED, 0)} requests forwarded to the "
            f"plain app; RBAC from intentions allowed {stats.get(ALLOWED, 0)}, "
            f"denied {stats.get(DENIED, 0)}"
        )
