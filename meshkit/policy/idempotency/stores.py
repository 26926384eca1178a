"""The store of routes that name none: ``MESHKIT_IDEMPOTENCY_STORE``.

``memory`` (the default): each route keeps its keys in its own process, which does
not dedupe across instances; ``sqlite:PATH``: one database file that the instances
on a host share; ``consul``: the registry's KV store (``CONSUL_HTTP_ADDR``), shared
by every instance anywhere.

A shared store's module is loaded when the setting names it, from ``SHARED_STORES``
(as ``meshkit COMMAND`` loads only its command's module): a service that keeps its
keys in memory never holds sqlite3 and the Consul KV store (1 MiB resident).
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from meshkit.policy.idempotency.base import IdempotencyStore
from meshkit.settings import MeshSettings

#: The shared stores the setting can name: the module and the class of each.
SHARED_STORES = {
    "sqlite": ("meshkit.policy.idempotency.sqlite", "SQLiteStore"),
    "consul": ("meshkit.policy.idempotency.consul", "ConsulKVStore"),
}


class ConfiguredStore(IdempotencyStore, Protocol):
    """A shared store: built from the settings, closed when the instance stops."""

    async def aclose(self) -> None: ...


class _StoreClass(Protocol):
    def from_settings(self, settings: MeshSettings) -> ConfiguredStore: ...


def configured_store(settings: MeshSettings) -> ConfiguredStore | None:
    """The store ``settings`` name; None for ``memory`` (a store per route)."""
    spec = settings.idempotency_store
    kind = "sqlite" if spec.startswith("sqlite:") else spec
    if kind not in SHARED_STORES:
        return None
    module, name = SHARED_STORES[kind]
    store_class = cast(_StoreClass, getattr(importlib.import_module(module), name))
    return store_class.from_settings(settings)
