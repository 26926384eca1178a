"""The Consul KV store: the instances of a service on many hosts share Consul's KV.

Each key's record is one KV entry, ``<prefix>/<service>/keys/<digest>``. A claim reads
it and, when there is none or it has expired, writes the running record with
check-and-set (``?cas=`` the index it read, 0 for none): Consul applies a CAS write
atomically through raft, so of concurrent claims exactly one wins and the others, on
reading again, find it running. The owner's renewals, its completion and its
release are CAS writes too, after checking that the record still names it as owner.
A request waiting for a key held elsewhere blocks on the record (``?index=&wait=``).

Leases and ttls are wall-clock times written by the claimer and read by the others,
so the hosts' clocks must agree within ``clock_skew`` (NTP keeps them within
milliseconds): a record counts as expired only ``clock_skew`` after its end. A lease
rather than a Consul session keeps the claim a single CAS write; the price is that
bound on skew.

Bounded: a record fits Consul's value limit (``max_value_bytes``, Consul's
``kv_max_value_size`` default 512 KiB); a response that does not fit is kept without
its body. Consul has no per-key ttl, so each claim also writes an empty marker
``<prefix>/<service>/expiry/<bucket>/<digest>`` for the period the record should
expire in; each ``sweep`` (after each response) visits a few markers of periods that
have passed, deleting the expired records (CAS) and moving the markers of live ones
on. Sweeping keeps pace with writing, needs no background task, and reads only the
records that are due.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meshkit.errors import ConfigError, RegistryError
from meshkit.policy.idempotency.base import (
    CLAIM_ATTEMPTS,
    Claim,
    Claimed,
    IdempotencyKey,
    IdempotencyStoreError,
    Record,
    Running,
    StoredResponse,
    judge,
    kept_changing,
    new_owner,
)
from meshkit.registry.consul import ConsulRegistry
from meshkit.settings import MeshSettings

logger = logging.getLogger("meshkit.policy")
T = TypeVar("T")
Entry = dict[str, Any]
#: Consul's default ``kv_max_value_size``.
CONSUL_MAX_VALUE = 512 * 1024
#: The longest blocking query: well inside ``ConsulRegistry``'s default 10 s timeout.
_MAX_BLOCK = 5.0
#: Markers visited by each sweep: more than the one each request writes.
_SWEEP_BATCH = 4


@dataclass
class _Sweep:
    """One service's sweeping: the markers still to visit, and when to list again."""

    pending: list[str] = field(default_factory=list)
    next_listing: float = 0.0


class ConsulKVStore:
    """Idempotency records in the KV store of ``registry`` (a Consul cluster or
    ``meshkit registry serve``), under ``prefix``."""

    def __init__(
        self,
        registry: ConsulRegistry,
        *,
        prefix: str = "meshkit/idempotency",
        lease: float = 10.0,
        clock_skew: float = 2.0,
        max_value_bytes: int = CONSUL_MAX_VALUE,
        sweep_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lease < math.inf or clock_skew < 0 or sweep_interval <= 0:
            raise ConfigError("ConsulKVStore needs lease > 0, clock_skew >= 0, sweep_interval > 0")
        if not prefix or prefix.startswith("/") or prefix.endswith("/"):
            raise ConfigError(f"ConsulKVStore prefix must not start or end with '/': {prefix!r}")
        self.registry = registry
        self.prefix = prefix
        self._lease = lease
        self._skew = clock_skew
        self._max_value = max_value_bytes
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._sweeps: dict[str, _Sweep] = {}

    @classmethod
    def from_settings(cls, settings: MeshSettings, **options: Any) -> ConsulKVStore:
        if not settings.consul_http_addr:
            raise ConfigError("idempotency_store: 'consul' needs a registry (set CONSUL_HTTP_ADDR)")
        return cls(ConsulRegistry.from_settings(settings), **options)

    def __repr__(self) -> str:
        return f"ConsulKVStore({self.registry.address!r}, prefix={self.prefix!r})"

    @property
    def lease(self) -> float:
        return self._lease

    async def claim(self, key: IdempotencyKey, fingerprint: str, *, ttl: float) -> Claim:
        path = self._record_path(key.service, key.digest)
        for _ in range(CLAIM_ATTEMPTS):
            index, entry = await self._get(path)
            now = self._clock()
            record = _decoded(entry)
            if record is not None and not self._expired(record, now):
                return judge(key, record, fingerprint, index)
            # The marker first: a crash right after the claim leaves nothing unswept.
            await self._mark(key.service, key.digest, now + ttl)
            owner = new_owner()
            running = Record(fingerprint, now + self._lease, owner)
            if await self._put(path, running.encode(), _index_of(entry)):
                return Claimed(key, owner)
        raise kept_changing(self)

    async def renew(self, claimed: Claimed) -> bool:
        owned = await self._owned(claimed)
        if owned is None:
            return False
        record, index = owned
        renewed = Record(record.fingerprint, self._clock() + self._lease, claimed.owner)
        return await self._put(self._path_of(claimed), renewed.encode(), index)

    async def complete(self, claimed: Claimed, response: StoredResponse, *, ttl: float) -> bool:
        owned = await self._owned(claimed)
        if owned is None:
            return False
        record, index = owned
        done = self._fitted(Record(record.fingerprint, self._clock() + ttl, None, response))
        self._sweeps.setdefault(claimed.key.service, _Sweep())  # its records: ours to sweep
        return await self._put(self._path_of(claimed), done.encode(), index)

    async def release(self, claimed: Claimed) -> None:
        owned = await self._owned(claimed)
        if owned is not None:
            path = self._path_of(claimed)
            await self._consul(lambda client: client.kv.delete(path, cas=owned[1]))

    async def wait(self, running: Running, *, within: float) -> None:
        if within <= 0:
            return
        path = self._path_of(running)
        # Within the registry client's read timeout (Consul adds up to wait/16 of jitter);
        # a longer wait is several blocking queries, the caller claiming between them.
        wait = f"{max(1, int(min(within, _MAX_BLOCK) * 1000))}ms"
        await self._consul(
            lambda client: client.kv.get(path, index=running.version, wait=wait), long_poll=True
        )

    async def sweep(self) -> None:
        """Visit a few due markers of each service this store wrote records for."""
        for service in list(self._sweeps):
            await self._sweep_some(service)

    async def aclose(self) -> None:
        """Nothing to close: the registry's pooled clients end with the process."""

    # -- records -------------------------------------------------------------------------

    def _record_path(self, service: str, digest: str) -> str:
        return f"{self.prefix}/{service}/keys/{digest}"

    def _path_of(self, held: Claimed | Running) -> str:
        return self._record_path(held.key.service, held.key.digest)

    def _expired(self, record: Record, now: float) -> bool:
        return record.expires_at + self._skew <= now

    def _fitted(self, record: Record) -> Record:
        """``record``, without its response body if it would not fit in one value."""
        response = record.response
        if response is None or len(record.encode()) <= self._max_value:
            return record
        kept = StoredResponse(response.status, response.headers, b"", body_kept=False)
        return Record(record.fingerprint, record.expires_at, None, kept)

    async def _owned(self, claimed: Claimed) -> tuple[Record, int] | None:
        """The record and its index while ``claimed`` still owns it."""
        _, entry = await self._get(self._path_of(claimed))
        record = _decoded(entry)
        if record is None or record.owner != claimed.owner:
            return None
        return record, _index_of(entry)

    # -- sweeping ------------------------------------------------------------------------

    def _marker(self, service: str, digest: str, at: float) -> str:
        return f"{self.prefix}/{service}/expiry/{int(at // self._sweep_interval)}/{digest}"

    async def _mark(self, service: str, digest: str, at: float) -> None:
        marker = self._marker(service, digest, at)
        await self._consul(lambda client: client.kv.put(marker, b""))

    async def _sweep_some(self, service: str) -> None:
        """Visit a few due markers; a failure here costs nothing but a later visit."""
        sweep = self._sweeps[service]
        now = self._clock()
        try:
            if not sweep.pending and now >= sweep.next_listing:
                sweep.next_listing = now + self._sweep_interval
                sweep.pending = await self._due_markers(service, now)
            for _ in range(min(_SWEEP_BATCH, len(sweep.pending))):
                await self._visit(service, sweep.pending.pop(), now)
        except IdempotencyStoreError as exc:
            logger.debug("idempotency sweep of %s: %s (the next one goes on)", service, exc)

    async def _due_markers(self, service: str, now: float) -> list[str]:
        """The markers of every period that has passed (clock skew included), shuffled so
        that instances sweeping at once mostly visit different ones."""
        base = f"{self.prefix}/{service}/expiry/"
        _, folders = await self._consul(lambda c: c.kv.get(base, keys=True, separator="/"))
        markers: list[str] = []
        for folder in folders or ():
            period = folder[len(base) :].rstrip("/")
            if period.isdigit() and (int(period) + 1) * self._sweep_interval + self._skew <= now:
                markers.extend(await self._keys(folder))
        random.shuffle(markers)
        return markers

    async def _visit(self, service: str, marker: str, now: float) -> None:
        """Delete the marker's record if it expired, else mark it for when it will."""
        digest = marker.rpartition("/")[2]
        path = self._record_path(service, digest)
        _, entry = await self._get(path)
        record = _decoded(entry, strict=False)
        if record is not None and self._expired(record, now):
            await self._consul(lambda client: client.kv.delete(path, cas=_index_of(entry)))
        elif record is not None:
            await self._mark(service, digest, record.expires_at)
        await self._consul(lambda client: client.kv.delete(marker))

    # -- py-consul -----------------------------------------------------------------------

    async def _get(self, path: str) -> tuple[int, Entry | None]:
        index, entry = await self._consul(lambda client: client.kv.get(path))
        return int(index or 0), entry

    async def _keys(self, prefix: str) -> list[str]:
        _, keys = await self._consul(lambda client: client.kv.get(prefix, keys=True))
        return list(keys or ())

    async def _put(self, path: str, value: bytes, cas: int) -> bool:
        return bool(await self._consul(lambda client: client.kv.put(path, value, cas=cas)))

    async def _consul(self, operation: Callable[[Any], T], *, long_poll: bool = False) -> T:
        try:
            return await self.registry.call(operation, long_poll=long_poll)
        except RegistryError as exc:
            raise IdempotencyStoreError(f"{self!r}: {exc}") from exc


def _index_of(entry: Entry | None) -> int:
    return 0 if entry is None else int(entry["ModifyIndex"])


def _decoded(entry: Entry | None, *, strict: bool = True) -> Record | None:
    """The record in a KV entry; a value that is not one is an error (or, when sweeping,
    not ours to touch)."""
    if entry is None:
        return None
    try:
        return Record.decode(entry.get("Value") or b"")
    except (ValueError, KeyError, TypeError) as exc:
        if not strict:
            return None
        raise IdempotencyStoreError(
            f"{entry.get('Key')!r} does not hold an idempotency record"
        ) from exc
