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
    tags: Sequence[str] = ()  # what resolver subset filters may test (Service.Tags)


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
    connect_native: bool = False  # registered as Connect-native (Consul Connect identity)


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


@dataclass(frozen=True, slots=True)
class CheckState:
    """One health check of an instance, as the registry last saw it."""

    name: str
    status: str  # "passing", "warning" or "critical"
    output: str = ""


@dataclass(frozen=True, slots=True)
class InstanceHealth:
    """A registered instance with its check states, healthy or not (for operators)."""

    instance_id: str
    service: str
    address: str
    port: int
    version: str | None = None
    checks: Sequence[CheckState] = ()

    @property
    def status(self) -> str:
        """The worst check state; an instance without checks is passing."""
        order = ("passing", "warning", "critical")
        worst = max((order.index(c.status) for c in self.checks if c.status in order), default=0)
        return order[worst]


@dataclass(frozen=True, slots=True)
class ServiceSummary:
    name: str
    healthy: int
    total: int


class Registry(Protocol):
    """A service registry backend (Consul, or anything speaking its API).

    Every method may raise ``RegistryUnavailable`` (not reachable) or ``RegistryError``
    (reached, but refused).
    """

    async def register(self, instance: InstanceRegistration) -> None:
        """Register (or re-register) the instance with its TTL and HTTP checks, passing."""
        ...

    async def heartbeat(self, instance_id: str) -> bool:
        """Pass the instance's TTL check; False when the registry no longer knows it."""
        ...

    async def deregister(self, instance_id: str) -> None:
        """Remove the instance; removing an unknown instance is not an error."""
        ...

    async def healthy_endpoints(
        self, service: str, *, index: int = 0, wait: float = 30.0
    ) -> tuple[int, Sequence[Endpoint]]:
        """The passing instances and the registry's index for them.

        With ``index`` > 0 this is a blocking query: it answers when the list may have
        changed past ``index``, or after ``wait`` seconds.
        """
        ...

    async def services(self) -> Sequence[ServiceSummary]: ...

    async def instances(self, service: str) -> Sequence[InstanceHealth]: ...
