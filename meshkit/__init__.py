"""meshkit: a service mesh without sidecars for Python ASGI services.

The names here are the public API. The subpackages hold the parts for those who
assemble their own, each a layer of the design (imports only go downwards): ``cli``,
``demo``, ``testing``, ``app`` and ``fastapi`` (FastAPI dependencies, needs fastapi),
``mesh``, ``middleware``, ``telemetry`` and ``policy``, ``client``, ``ca`` and
``registry``, ``serving``, and the core (``errors``, ``settings``, ``identity``,
``tls``, ``deadline``).
"""

from importlib import metadata

# First: requests must be imported through its adapter, before any module below does.
import meshkit._requests  # noqa: F401
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

try:
    __version__ = metadata.version("meshkit")
except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

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
