"""Idempotency stores: where ``@idempotent`` keeps its keys and finished responses.

``base`` is the protocol a store implements (``IdempotencyStore``) and the values it
deals in; ``memory`` the per-process default; ``sqlite`` a database file shared by
the instances on one host; ``consul`` Consul's KV, shared by instances on many hosts;
``stores`` the store ``MESHKIT_IDEMPOTENCY_STORE`` names.
"""

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
from meshkit.policy.idempotency.consul import ConsulKVStore
from meshkit.policy.idempotency.memory import MemoryStore
from meshkit.policy.idempotency.sqlite import SQLiteStore
from meshkit.policy.idempotency.stores import configured_store

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
