"""Idempotency stores: where ``@idempotent`` keeps its keys and finished responses.

``base`` is the protocol a store implements (``IdempotencyStore``) and the values it
deals in; ``memory`` the per-process default; ``sqlite`` a database file shared by
the instances on one host; ``consul`` Consul's KV, shared by instances on many hosts;
``stores`` the store ``MESHKIT_IDEMPOTENCY_STORE`` names. The shared stores are
imported when first named here or in the setting, so the serving path, which imports
this package, holds neither sqlite3 nor the Consul KV store unless it uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from meshkit.policy.idempotency.base import (
    Claim,
    Claimed,
    IdempotencyKey,
    IdempotencyStore,
    IdempotencyStoreError,
    Mismatch,
    Record,
    Replay,
    Running,
    StoredResponse,
)
from meshkit.policy.idempotency.memory import MemoryStore
from meshkit.policy.idempotency.stores import SHARED_STORES, configured_store

if TYPE_CHECKING:
    from meshkit.policy.idempotency.consul import ConsulKVStore
    from meshkit.policy.idempotency.sqlite import SQLiteStore

__all__ = [
    "Claim",
    "Claimed",
    "ConsulKVStore",
    "IdempotencyKey",
    "IdempotencyStore",
    "IdempotencyStoreError",
    "MemoryStore",
    "Mismatch",
    "Record",
    "Replay",
    "Running",
    "SQLiteStore",
    "StoredResponse",
    "configured_store",
]

_SHARED_MODULES = {name: module for module, name in SHARED_STORES.values()}


def __getattr__(name: str) -> Any:
    # PEP 562: ``from meshkit.policy.idempotency import SQLiteStore`` loads its module.
    if name in _SHARED_MODULES:
        return getattr(importlib.import_module(_SHARED_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
