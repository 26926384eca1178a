"""The in-memory store: one process's keys, the default when no store is configured.

It dedupes only requests that reach the same process: a retry sent to another
instance runs the handler again. Its claims never lapse (``lease`` is infinite):
the process that holds a claim is the one running the handler, and if it dies the
records die with it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import anyio

from meshkit.policy.idempotency.base import (
    Claim,
    Claimed,
    IdempotencyKey,
    Record,
    Running,
    StoredResponse,
    judge,
    new_owner,
)

#: Records looked at by each sweep: more than the one each request adds.
_SWEEP_BATCH = 4


class MemoryStore:
    """Records in a dict, at most ``max_entries`` (the oldest finished ones go first)."""

    lease = math.inf

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._changed: dict[str, anyio.Event] = {}

    async def claim(self, key: IdempotencyKey, fingerprint: str, *, ttl: float) -> Claim:
        digest = key.digest
        record = self._live(digest)
        if record is not None:
            return judge(key, record, fingerprint)
        owner = new_owner()
        self._records[digest] = Record(fingerprint, math.inf, owner)
        self._evict()
        return Claimed(key, owner)

    async def renew(self, claimed: Claimed) -> bool:
        return self._held(claimed) is not None

    async def complete(self, claimed: Claimed, response: StoredResponse, *, ttl: float) -> bool:
        record = self._held(claimed)
        if record is None:
            return False
        digest = claimed.key.digest
        self._records[digest] = Record(record.fingerprint, self._clock() + ttl, None, response)
        self._records.move_to_end(digest)  # eviction order is completion order
        self._notify(digest)
        return True

    async def release(self, claimed: Claimed) -> None:
        if self._held(claimed) is not None:
            del self._records[claimed.key.digest]
            self._notify(claimed.key.digest)

    async def wait(self, running: Running, *, within: float) -> None:
        event = self._changed.setdefault(running.key.digest, anyio.Event())
        with anyio.move_on_after(within):
            await event.wait()

    async def sweep(self) -> None:
        """Drop the expired among the oldest few records (``max_entries`` bounds the rest)."""
        now = self._clock()
        oldest = list(itertools.islice(self._records.items(), _SWEEP_BATCH))
        for digest, record in oldest:
            if record.expires_at <= now:
                del self._records[digest]

    def _live(self, digest: str) -> Record | None:
        record = self._records.get(digest)
        if record is not None and record.expires_at <= self._clock():
            del self._records[digest]
            return None
        return record

    def _held(self, claimed: Claimed) -> Record | None:
        record = self._records.get(claimed.key.digest)
        return record if record is not None and record.owner == claimed.owner else None

    def _notify(self, digest: str) -> None:
        event = self._changed.pop(digest, None)
        if event is not None:
            event.set()

    def _evict(self) -> None:
        """Drop the oldest finished records past ``max_entries``; running ones stay."""
        excess = len(self._records) - self._max_entries
        if excess <= 0:
            return
        finished = (d for d, r in self._records.items() if r.owner is None)
        for digest in list(itertools.islice(finished, excess)):
            del self._records[digest]
