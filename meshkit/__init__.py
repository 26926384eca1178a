"""meshkit: a service mesh without sidecars for Python ASGI services.

The names here are the public API. The subpackages hold the parts for those who
assemble their own, each a layer of the design (imports only go downwards): ``cli``,
``demo``, ``testing``, ``app`` and ``fastapi`` (FastAPI dependencies, needs fastapi),
``mesh``, ``middleware``, ``telemetry`` and ``policy``, ``client``, ``ca`` and
``registry``, ``serving``, and the core (``errors``, ``settings``, ``identity``,
``tls``, ``deadline``).
"""

import importlib
import typing
from importlib import metadata

# First: requests must be imported through its adapter, before any module below does.
import meshkit._requests  # noqa: F401

if typing.TYPE_CHECKING:
    from meshkit.app import ServiceApp
    from meshkit.client import (
        CircuitOpen,
        ClientPolicy,
        DeadlineExceeded,
        MeshCallError,
        MeshClient,
        NoHealthyInstances,
        OutsideClient,
        Overloaded,
        PeerIdentityMismatch,
        RetryBudgetExhausted,
        UpstreamFailed,
    )
    from meshkit.errors import (
        CAError,
        CARefused,
        CertificateError,
        ConfigError,
        IdentityError,
        MeshError,
        PolicyDenied,
        RegistryError,
        RegistryUnavailable,
    )
    from meshkit.identity import SpiffeId, peer_identity
    from meshkit.mesh import Mesh
    from meshkit.policy import allow, concurrency, deny, idempotent, rate_limit, timeout
    from meshkit.settings import Faults, MeshSettings
    from meshkit.tls import TLSMaterial

#: Where each public name lives. They load on first use: ``import meshkit.<module>``
#: alone (the certificate helper ``python -m meshkit.ca.keygen``, a CLI command other
#: than ``run``) then pays for what that module needs, not for the whole mesh.
_PUBLIC: dict[str, str] = {
    "CAError": "meshkit.errors",
    "CARefused": "meshkit.errors",
    "CertificateError": "meshkit.errors",
    "CircuitOpen": "meshkit.client",
    "ClientPolicy": "meshkit.client",
    "ConfigError": "meshkit.errors",
    "DeadlineExceeded": "meshkit.client",
    "Faults": "meshkit.settings",
    "IdentityError": "meshkit.errors",
    "Mesh": "meshkit.mesh",
    "MeshCallError": "meshkit.client",
    "MeshClient": "meshkit.client",
    "MeshError": "meshkit.errors",
    "MeshSettings": "meshkit.settings",
    "NoHealthyInstances": "meshkit.client",
    "OutsideClient": "meshkit.client",
    "Overloaded": "meshkit.client",
    "PeerIdentityMismatch": "meshkit.client",
    "PolicyDenied": "meshkit.errors",
    "RegistryError": "meshkit.errors",
    "RegistryUnavailable": "meshkit.errors",
    "RetryBudgetExhausted": "meshkit.client",
    "ServiceApp": "meshkit.app",
    "SpiffeId": "meshkit.identity",
    "TLSMaterial": "meshkit.tls",
    "UpstreamFailed": "meshkit.client",
    "allow": "meshkit.policy",
    "concurrency": "meshkit.policy",
    "deny": "meshkit.policy",
    "idempotent": "meshkit.policy",
    "peer_identity": "meshkit.identity",
    "rate_limit": "meshkit.policy",
    "timeout": "meshkit.policy",
}

try:
    __version__ = metadata.version("meshkit")
except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> typing.Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'meshkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__all__ = [
    "CAError",
    "CARefused",
    "CertificateError",
    "CircuitOpen",
    "ClientPolicy",
    "ConfigError",
    "DeadlineExceeded",
    "Faults",
    "IdentityError",
    "Mesh",
    "MeshCallError",
    "MeshClient",
    "MeshError",
    "MeshSettings",
    "NoHealthyInstances",
    "OutsideClient",
    "Overloaded",
    "PeerIdentityMismatch",
    "PolicyDenied",
    "RegistryError",
    "RegistryUnavailable",
    "RetryBudgetExhausted",
    "ServiceApp",
    "SpiffeId",
    "TLSMaterial",
    "UpstreamFailed",
    "allow",
    "concurrency",
    "deny",
    "idempotent",
    "peer_identity",
    "rate_limit",
    "timeout",
]
