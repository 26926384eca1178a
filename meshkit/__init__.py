"""meshkit: a service mesh without sidecars for Python ASGI services."""

from meshkit.app import ServiceApp
from meshkit.errors import (
    CAError,
    CertificateError,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    IdentityError,
    MeshError,
    NoHealthyInstances,
    Overloaded,
    PeerIdentityMismatch,
    PolicyDenied,
    RegistryError,
    RegistryUnavailable,
    RequestError,
    RetryBudgetExhausted,
)
from meshkit.identity import SpiffeId, peer_identity
from meshkit.settings import MeshSettings
from meshkit.tls import TLSMaterial

__all__ = [
    "CAError",
    "CertificateError",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "IdentityError",
    "MeshError",
    "MeshSettings",
    "NoHealthyInstances",
    "Overloaded",
    "PeerIdentityMismatch",
    "PolicyDenied",
    "RegistryError",
    "RegistryUnavailable",
    "RequestError",
    "RetryBudgetExhausted",
    "ServiceApp",
    "SpiffeId",
    "TLSMaterial",
    "peer_identity",
]
