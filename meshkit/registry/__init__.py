"""Service discovery: where the instances of a service are, and which are healthy.

``base`` is the Registry protocol and its value objects; ``consul`` the backend on
py-consul, for a real Consul cluster and the dev registry alike; ``cache`` watches the
registry with blocking queries so the request path never calls it; ``lifecycle``
registers an instance with its health checks and keeps it registered; ``dev`` is the
embedded single-node, Consul-compatible registry (``meshkit registry serve``).
"""

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
