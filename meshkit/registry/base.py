"""What the mesh needs from a service registry, independent of the backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One healthy instance of a service, as callers see it."""

    instance_id: str
    service: str
    address: str
    port: int
    spiffe_id: str | None = None  # from the instance's Meta; what its certificate must hold
    version: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceRegistration:
    """What a service instance publishes about itself."""

    service: str
    instance_id: str
    address: str
    port: int
    admin_port: int
    spiffe_id: str
    version: str = "0.0.0"
    tags: Sequence[str] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    ttl: float = 10.0  # the TTL check the instance heartbeats
    check_interval: float = 5.0  # the registry's HTTP check on the admin /healthz
    deregister_critical_after: float = 60.0


class EndpointSource(Protocol):
    """Where the mesh client finds a destination's healthy endpoints.

    ``endpoints`` is on the request path: it never blocks or does I/O. It returns None
    for a service not watched yet; ``prime`` starts watching and waits (bounded) for
    the first answer. ``generation`` changes whenever any endpoint list changes, so
    balancers can rebuild their state only then.
    """

    @property
    def generation(self) -> int: ...

    def endpoints(self, service: str) -> Sequence[Endpoint] | None: ...

    async def prime(self, service: str) -> Sequence[Endpoint]: ...
