"""The routing table in force, kept current from Consul's config entries.

One blocking query per discovery-chain kind (``GET /v1/config/<kind>?index=&wait=``)
answers as soon as an entry of that kind changes; the table is then rebuilt whole and
swapped in one assignment, so a call sees the old chain or the new one, never half of
each, and no call is held up by the change. py-consul's ``config.list`` takes no index,
so the query goes through its own HTTP client (``client.http.get``), as its other
endpoints do. While Consul is unreachable the last table stays in force.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
from consul.callback import CB

from meshkit.errors import RegistryError
from meshkit.registry.consul import ConsulRegistry
from meshkit.registry.routing import KINDS, RoutingTable

logger = logging.getLogger("meshkit.registry")
_RETRY_MAX = 10.0

Entries = Sequence[Mapping[str, Any]]


async def list_entries(
    registry: ConsulRegistry, kind: str, *, index: int = 0, wait: float = 30.0
) -> tuple[int, Entries]:
    """One kind's entries and Consul's index; with ``index``, a blocking query."""
    wait_text = f"{max(1, round(wait * 1000))}ms"

    def query(client: Any) -> tuple[int, Entries]:
        params = [("index", str(index)), ("wait", wait_text)] if index else []
        raw_index, entries = client.http.get(
            CB.json(index=True), f"/v1/config/{kind}", params=params
        )
        return int(raw_index or 0), list(entries or ())

    # A daemon thread even for a plain read: shutting down never waits on the registry.
    return await registry.call(query, long_poll=True)


async def routing_by_service(registry: ConsulRegistry) -> dict[str, dict[str, Any]]:
    """Every discovery-chain entry in force, by the service it applies to, then kind
    (what ``meshkit policy export --routing`` shows)."""
    found: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        _, entries = await list_entries(registry, kind)
        for entry in entries:
            shown = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
            found.setdefault(str(entry.get("Name", "")), {})[kind] = shown
    return dict(sorted(found.items()))


class RoutingSource(Protocol):
    """Where the mesh client reads the chain: ``table`` is replaced whole on a change and
    ``generation`` counts the replacements (read on the request path: no I/O)."""

    @property
    def generation(self) -> int: ...

    @property
    def table(self) -> RoutingTable: ...


class WatchedRouting:
    """A ``RoutingSource`` over Consul (or the dev registry); ``run`` keeps it current."""

    def __init__(self, registry: ConsulRegistry, *, wait: float = 30.0) -> None:
        self._registry = registry
        self._wait = wait
        self._entries: dict[str, Entries] = {kind: [] for kind in KINDS}  # as read: lists
        self.table = RoutingTable()
        self.generation = 0

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            for kind in KINDS:
                group.start_soon(self._watch, kind)

    async def _watch(self, kind: str) -> None:
        index, delay = 0, 0.5
        while True:
            try:
                found, entries = await self._list(kind, index)
            except (RegistryError, ValueError) as exc:  # ValueError: a body that is not JSON
                logger.warning("config entries %s: %s; retrying", kind, exc)
                await anyio.sleep(delay * random.uniform(0.5, 1.0))
                index, delay = 0, min(delay * 2, _RETRY_MAX)
                continue
            delay = 0.5
            # An index that went backwards is a registry that restarted: read afresh.
            index = found if found >= index else 0
            self._apply(kind, entries)

    async def _list(self, kind: str, index: int) -> tuple[int, Entries]:
        return await list_entries(self._registry, kind, index=index, wait=self._wait)

    def _apply(self, kind: str, entries: Entries) -> None:
        if entries == self._entries[kind]:
            return  # a blocking query's timeout, or a change to another entry's index only
        self._entries[kind] = entries
        self.table = RoutingTable(self._entries)
        self.generation += 1
        logger.info(
            "routing: %d %s entr%s in force",
            len(entries),
            kind,
            "y" if len(entries) == 1 else "ies",
        )

    def replace(self, entries: Mapping[str, Entries]) -> None:
        """Put ``entries`` in force at once (tests, and tools that hold entries already)."""
        for kind in KINDS:
            self._apply(kind, list(entries.get(kind, ())))
