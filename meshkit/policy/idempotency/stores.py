"""The store of routes that name none: ``MESHKIT_IDEMPOTENCY_STORE``.

``memory`` (the default): each route keeps its keys in its own process, which does
not dedupe across instances; ``sqlite:PATH``: one database file that the instances
on a host share; ``consul``: the registry's KV store (``CONSUL_HTTP_ADDR``), shared
by every instance anywhere.
"""

from __future__ import annotations

from meshkit.policy.idempotency.consul import ConsulKVStore
from meshkit.policy.idempotency.sqlite import SQLiteStore
from meshkit.settings import MeshSettings

ConfiguredStore = SQLiteStore | ConsulKVStore


def configured_store(settings: MeshSettings) -> ConfiguredStore | None:
    """The store ``settings`` name; None for ``memory`` (a store per route)."""
    spec = settings.idempotency_store
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.removeprefix("sqlite:"))
    if spec == "consul":
        return ConsulKVStore.from_settings(settings)
    return None
