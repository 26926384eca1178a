"""Service discovery: the Registry protocol, the Consul backend, the watched cache and the
embedded Consul-compatible dev registry."""

from meshkit.registry.base import (
    CheckState,
    Endpoint,
    EndpointSource,
    InstanceHealth,
    InstanceRegistration,
    Registry,
    ServiceSummary,
)
from meshkit.registry.cache import WatchedCache
from meshkit.registry.consul import ConsulRegistry
from meshkit.registry.lifecycle import ServiceRegistration

__all__ = [
    "CheckState",
    "ConsulRegistry",
    "Endpoint",
    "EndpointSource",
    "InstanceHealth",
    "InstanceRegistration",
    "Registry",
    "ServiceRegistration",
    "ServiceSummary",
    "WatchedCache",
]
