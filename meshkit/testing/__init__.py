"""Testing a mesh: real registry, CA and service processes, owned by a fixture.

``Mesh`` starts ``meshkit registry serve``, ``meshkit ca serve`` and services under
``meshkit run`` as real processes on 127.0.0.1 with ephemeral ports, and stops every
one of them (``supervisor`` kills whole process groups, so nothing outlives a test).
The pytest plugin (``pytest_plugin``) offers it as the ``mesh`` fixture; ``envoy`` runs
Envoy sidecars configured as Consul configures them, for interop with sidecar meshes.
"""

from meshkit.testing.processes import (
    CAProcess,
    Connection,
    Mesh,
    MeshProcess,
    RegistryProcess,
    ServiceProcess,
    admin_get,
    context_for,
)

__all__ = [
    "CAProcess",
    "Connection",
    "Mesh",
    "MeshProcess",
    "RegistryProcess",
    "ServiceProcess",
    "admin_get",
    "context_for",
]
