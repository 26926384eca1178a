"""The SQLite store: the instances of a service on one host share one database file.

SQLite serializes writers across processes with its file locks, and one statement is
one transaction, so a claim is a single ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
expired RETURNING``: it creates the record, or takes over one whose lease or ttl has
run out, or changes nothing. The database runs in WAL mode (readers never wait for
the writer) with ``synchronous=NORMAL``: a committed claim survives a process crash,
which is the failure that matters here (a power cut may lose the last moments).

Leases and ttls are wall-clock times (``time.time``), the one clock every process on
the host shares. Expired records are deleted at most every ``sweep_interval``, and the
oldest finished ones past ``max_entries``, so the file stops growing. Calls run in
worker threads, one at a time per store (one connection; SQLite serializes them
anyway).
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from meshkit.errors import ConfigError
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
from meshkit.settings import MeshSettings

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshkit_idempotency (
    digest TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    owner TEXT,
    expires_at REAL NOT NULL,
    response BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS meshkit_idempotency_expiry ON meshkit_idempotency (expires_at);
"""
# In DO UPDATE, bare column names are the existing row's and ``excluded.`` the new one's.
_CLAIM = """
INSERT INTO meshkit_idempotency (digest, fingerprint, owner, expires_at, response)
VALUES (:digest, :fingerprint, :owner, :lease_end, NULL)
ON CONFLICT (digest) DO UPDATE SET
    fingerprint = excluded.fingerprint, owner = excluded.owner,
    expires_at = excluded.expires_at, response = NULL
WHERE expires_at <= :now
RETURNING owner
"""
_READ = "SELECT fingerprint, expires_at, owner, response FROM meshkit_idempotency WHERE digest = ?"
_RENEW = """
UPDATE meshkit_idempotency SET expires_at = :lease_end
WHERE digest = :digest AND owner = :owner
"""
_COMPLETE = """
UPDATE meshkit_idempotency SET owner = NULL, expires_at = :expires_at, response = :response
WHERE digest = :digest AND owner = :owner
"""
_RELEASE = "DELETE FROM meshkit_idempotency WHERE digest = :digest AND owner = :owner"
_SWEEP = "DELETE FROM meshkit_idempotency WHERE expires_at <= ?"
_TRIM = """
DELETE FROM meshkit_idempotency WHERE digest IN (
    SELECT digest FROM meshkit_idempotency WHERE owner IS NULL ORDER BY expires_at
    LIMIT max(0, (SELECT count(*) FROM meshkit_idempotency) - :max_entries)
)
"""
#: How often a connection opening a new file looks again for its turn to switch to WAL.
_WAL_RETRY = 0.01


class SQLiteStore:
    """Idempotency records in the SQLite database at ``path`` (created if missing).

    ``lease``: how long a claim holds without renewal, so the claim of a crashed
    instance lapses that long after its last renewal. ``poll_interval``: how often a
    request waiting for a key held elsewhere looks again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease: float = 10.0,
        max_entries: int = 1_000_000,
        sweep_interval: float = 60.0,
        poll_interval: float = 0.05,
        busy_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lease < math.inf or max_entries < 1:
            raise ConfigError("SQLiteStore needs a finite lease > 0 and max_entries >= 1")
        self.path = Path(path)
        self._lease = lease
        self._max_entries = max_entries
        self._sweep_interval = sweep_interval
        self._poll_interval = poll_interval
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._next_sweep = 0.0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @classmethod
    def from_settings(cls, settings: MeshSettings, **options: Any) -> SQLiteStore:
        """The store ``MESHKIT_IDEMPOTENCY_STORE=sqlite:PATH`` names."""
        return cls(settings.idempotency_store.removeprefix("sqlite:"), **options)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @property
    def lease(self) -> float:
        return self._lease

    async def claim(self, key: IdempotencyKey, fingerprint: str, *, ttl: float) -> Claim:
        return await self._run(self._claim, key, fingerprint)

    async def renew(self, claimed: Claimed) -> bool:
        lease_end = self._clock() + self._lease
        return await self._run(self._change, _RENEW, claimed, {"lease_end": lease_end})

    async def complete(self, claimed: Claimed, response: StoredResponse, *, ttl: float) -> bool:
        values = {"expires_at": self._clock() + ttl, "response": response.encode()}
        return await self._run(self._change, _COMPLETE, claimed, values)

    async def release(self, claimed: Claimed) -> None:
        await self._run(self._change, _RELEASE, claimed, {})

    async def wait(self, running: Running, *, within: float) -> None:
        # Other processes cannot wake us: look again soon.
        await anyio.sleep(min(within, self._poll_interval))

    async def sweep(self) -> None:
        """Delete expired records and the oldest finished past ``max_entries``, at most
        once per ``sweep_interval``."""
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval
            await self._run(self._sweep, now)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    # -- in a worker thread, under the lock ----------------------------------------------

    def _claim(self, db: sqlite3.Connection, key: IdempotencyKey, fingerprint: str) -> Claim:
        now = self._clock()
        owner = new_owner()
        values = {
            "digest": key.digest,
            "fingerprint": fingerprint,
            "owner": owner,
            "lease_end": now + self._lease,
            "now": now,
        }
        for _ in range(CLAIM_ATTEMPTS):
            if db.execute(_CLAIM, values).fetchall():
                return Claimed(key, owner)
            row = db.execute(_READ, (key.digest,)).fetchone()
            if row is not None:  # else it expired and was swept between the two: again
                return judge(key, _record(row), fingerprint)
        raise kept_changing(self)

    def _change(
        self, db: sqlite3.Connection, statement: str, claimed: Claimed, values: dict[str, Any]
    ) -> bool:
        cursor = db.execute(
            statement, {"digest": claimed.key.digest, "owner": claimed.owner, **values}
        )
        return cursor.rowcount == 1

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        db.execute(_SWEEP, (now,))
        db.execute(_TRIM, {"max_entries": self._max_entries})

    def _locked(self, operation: Callable[..., T], *args: Any) -> T:
        with self._lock:
            try:
                return operation(self._connection(), *args)
            except sqlite3.Error as exc:
                raise IdempotencyStoreError(f"{self!r}: {exc}") from exc

    async def _run(self, operation: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(self._locked, operation, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit: each statement is its own transaction
                check_same_thread=False,  # worker threads take turns, under the lock
            )
            try:
                self._switch_to_wal(db)
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _switch_to_wal(self, db: sqlite3.Connection) -> None:
        """WAL mode, waiting up to ``busy_timeout`` for it. The switch needs the file to
        itself, and SQLite refuses it at once, without its busy handler, while another
        process opening the new file holds it: the first processes to start would race."""
        give_up = time.monotonic() + self._busy_timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # extended codes too
                if not busy or time.monotonic() >= give_up:
                    raise
                time.sleep(_WAL_RETRY)

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _record(row: tuple[Any, ...]) -> Record:
    fingerprint, expires_at, owner, response = row
    stored = None if response is None else StoredResponse.decode(bytes(response))
    return Record(fingerprint, expires_at, owner, stored)
