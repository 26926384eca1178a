"""Join tokens: one-time secrets that bind a new workload to one SPIFFE ID.

A token is 256 random bits shown once; the store keeps only its SHA-256 (a hash of a
high-entropy secret needs no slow KDF). Tokens live in a SQLite file in the CA
directory rather than a locked JSON file: ``meshkit ca token create`` and a running
``meshkit ca serve`` (or several CA replicas on one host) write it concurrently, and
SQLite's file locking gives each consumption one atomic conditional ``UPDATE ...
RETURNING``. Of two concurrent uses of a single-use token exactly one sees a row come
back; there is no read-then-write window to race in, across threads or processes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from pathlib import Path

from meshkit.errors import CARefused
from meshkit.identity import SpiffeId

TOKEN_PREFIX = "mkjoin_"
#: What a token may be made for at most, unless the operator raises it: a token is a
#: bearer credential, so it should be short-lived and few-use (kubeadm's last a day).
MAX_TTL = 86400.0
MAX_USES = 100
_KEEP_EXPIRED = 86400.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    uses_left INTEGER NOT NULL,
    created_at REAL NOT NULL
)
"""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Join tokens in one SQLite file, safe to share between processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            # Created 0600 before SQLite opens it: hashes are still worth guarding.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        # Autocommit: every statement below is its own atomic transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def create(
        self,
        spiffe_id: SpiffeId,
        *,
        ttl: float,
        uses: int = 1,
        now: float | None = None,
        max_ttl: float = MAX_TTL,
        max_uses: int = MAX_USES,
    ) -> str:
        """A new token for ``spiffe_id``, valid ``ttl`` seconds for ``uses`` signings;
        ValueError past ``max_ttl`` or ``max_uses``."""
        if uses < 1 or ttl <= 0:
            raise ValueError("a join token needs uses >= 1 and a positive ttl")
        if ttl > max_ttl:
            raise ValueError(f"a join token may live {max_ttl:g} s at most, not {ttl:g}")
        if uses > max_uses:
            raise ValueError(f"a join token may have {max_uses} uses at most, not {uses}")
        now = time.time() if now is None else now
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        # Spent tokens stay a day past expiry so a replay is told "used", not "unknown".
        self._db.execute("DELETE FROM tokens WHERE expires_at <= ?", (now - _KEEP_EXPIRED,))
        self._db.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
            (hash_token(token), str(spiffe_id), now + ttl, uses, now),
        )
        return token

    def check(self, token: str, *, now: float | None = None) -> SpiffeId:
        """The SPIFFE ID ``token`` would sign for, without spending it: a request is
        authenticated before any signature work, and a malformed CSR burns nothing."""
        now = time.time() if now is None else now
        digest = hash_token(token)
        row = self._db.execute(
            "SELECT spiffe_id FROM tokens WHERE hash = ? AND uses_left > 0 AND expires_at > ?",
            (digest, now),
        ).fetchone()
        if row is not None:
            return SpiffeId.parse(row[0])
        raise self._refusal(digest, now)

    def consume(self, token: str, *, now: float | None = None) -> SpiffeId:
        """Spend one use of ``token``; its SPIFFE ID, or ``CARefused`` saying why not."""
        now = time.time() if now is None else now
        digest = hash_token(token)
        row = self._db.execute(
            "UPDATE tokens SET uses_left = uses_left - 1"
            " WHERE hash = ? AND uses_left > 0 AND expires_at > ? RETURNING spiffe_id",
            (digest, now),
        ).fetchone()
        if row is not None:
            return SpiffeId.parse(row[0])
        raise self._refusal(digest, now)

    def _refusal(self, digest: str, now: float) -> CARefused:
        # Only explains a refusal already decided; a race here cannot grant anything.
        row = self._db.execute(
            "SELECT uses_left, expires_at FROM tokens WHERE hash = ?", (digest,)
        ).fetchone()
        if row is None:
            return CARefused("unknown join token", reason="token_invalid")
        if row[1] <= now:
            return CARefused("join token expired", reason="token_expired")
        return CARefused("join token already used", reason="token_used")
