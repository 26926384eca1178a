"""Every registered instance with the admin port it published (``admin_port`` metadata).

The same ``Target``/``discover`` as ``meshkit.observe.scrape`` on the dashboard's branch
(kept word for word so the two merge into one); ``check`` and ``tap`` read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.registry.consul import ConsulRegistry, endpoint_from_entry, instance_from_entry


@dataclass(frozen=True, slots=True)
class Target:
    """One registered instance and where its admin port listens (None: not published)."""

    service: str
    instance_id: str
    address: str
    port: int
    admin_port: int | None
    version: str | None
    health: str  # the worst check state: passing, warning or critical
    spiffe_id: str | None = None

    @property
    def admin_host(self) -> str:
        # The admin port binds its own interface; the service address is the best guess.
        return self.address or "127.0.0.1"


def target_from_entry(entry: Mapping[str, Any]) -> Target:
    """A Target from one ``/v1/health/service`` entry."""
    endpoint, health = endpoint_from_entry(entry), instance_from_entry(entry)
    admin = endpoint.meta.get("admin_port", "")
    return Target(
        service=endpoint.service,
        instance_id=endpoint.instance_id,
        address=endpoint.address,
        port=endpoint.port,
        admin_port=int(admin) if admin.isdigit() else None,
        version=endpoint.version,
        health=health.status,
        spiffe_id=endpoint.spiffe_id,
    )


async def discover(registry: ConsulRegistry) -> list[Target]:
    """Every instance of every service in the registry, passing or not, sorted."""

    def listing(client: Any) -> list[Target]:
        _, names = client.catalog.services()
        targets: list[Target] = []
        for name in sorted(names or {}):
            if name == "consul":  # a real Consul lists itself; it has no admin port
                continue
            _, entries = client.health.service(name)
            targets.extend(target_from_entry(entry) for entry in entries or ())
        return sorted(targets, key=lambda t: (t.service, t.instance_id))

    return await registry.call(listing)
