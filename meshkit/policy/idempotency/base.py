"""The idempotency store protocol: what ``@idempotent`` needs from a database.

A store keeps one record per key, and every instance of a service that shares the
store sees the same records, so a retry that lands on another instance finds the
first attempt's claim or its answer. A record lives like this::

    claim ──> running (owner, lease) ──complete──> done (response, until ttl)
                 │  release, or the lease lapses (the owner crashed or froze)
                 v
              gone: the next claim runs the handler again

The guarantee a store gives: while a record is running and its lease holds, or done
and its ttl holds, no other ``claim`` of its key returns ``Claimed``; and only the
owner's ``renew``, ``complete`` and ``release`` act on it. A lease is a time bound
so that an owner that died cannot hold a key for ever; the middleware renews it
every third of ``lease`` while the handler runs.

The middleware does the HTTP side (reading the key, fingerprinting the request,
recording and replaying responses); a store only stores. To plug another database,
implement ``IdempotencyStore`` (six async methods and ``lease``) and raise
``IdempotencyStoreError`` when the database cannot answer.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Protocol

from meshkit.errors import MeshError

#: A shared store's claim that meets its record changing under it (a race lost to
#: another instance, a record expiring as it was read) looks again this often, then
#: gives up with ``kept_changing``.
CLAIM_ATTEMPTS = 5


class IdempotencyStoreError(MeshError):
    """The store could not answer; the request is refused (503) rather than run unguarded."""


def kept_changing(store: object) -> IdempotencyStoreError:
    """The error of a claim that met a changing record ``CLAIM_ATTEMPTS`` times."""
    return IdempotencyStoreError(f"{store!r}: the record of a key kept changing")


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """Where a key belongs: one service, one caller identity, the client's key."""

    service: str
    caller: str
    key: str

    @property
    def digest(self) -> str:
        """A fixed-size record name: the parts are client input of any length and bytes."""
        joined = "\0".join((self.service, self.caller, self.key)).encode("utf-8", "replace")
        return hashlib.sha256(joined).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A finished response; ``body_kept`` is False when it was too large to keep."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    body_kept: bool = True

    def encode(self) -> bytes:
        """One JSON line (status, headers) and the raw body: compact for any database."""
        head = {
            "status": self.status,
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")] for name, value in self.headers
            ],
            "body_kept": self.body_kept,
        }
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        line, _, body = data.partition(b"\n")
        head = json.loads(line)
        headers = tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in head["headers"])
        return cls(int(head["status"]), headers, body, bool(head["body_kept"]))


@dataclass(frozen=True, slots=True)
class Record:
    """One key's record: running while ``owner`` is set, done once ``response`` is.

    ``expires_at`` is the end of the lease while running and the end of the ttl once
    done (store clock seconds): past it the record counts as gone.
    """

    fingerprint: str
    expires_at: float
    owner: str | None = None
    response: StoredResponse | None = None

    def encode(self) -> bytes:
        head = {"fingerprint": self.fingerprint, "expires_at": self.expires_at, "owner": self.owner}
        rest = b"" if self.response is None else self.response.encode()
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + rest

    @classmethod
    def decode(cls, data: bytes) -> Record:
        line, _, rest = data.partition(b"\n")
        head = json.loads(line)
        response = StoredResponse.decode(rest) if rest else None
        return cls(str(head["fingerprint"]), float(head["expires_at"]), head["owner"], response)


@dataclass(frozen=True, slots=True)
class Claimed:
    """This request holds the key: run the handler, then ``complete`` or ``release``."""

    key: IdempotencyKey
    owner: str


@dataclass(frozen=True, slots=True)
class Replay:
    """The key's request ran to the end before: answer with its response."""

    response: StoredResponse


@dataclass(frozen=True, slots=True)
class Running:
    """Another request holds the key. ``version`` is the store's version of the record,
    for ``wait`` to block until it changes (Consul's index; 0 where unused)."""

    key: IdempotencyKey
    version: int = 0


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was used for another request (method, path or body differ): 422."""


Claim = Claimed | Replay | Running | Mismatch


class IdempotencyStore(Protocol):
    """Records of idempotency keys, shared by the instances that should dedupe together.

    ``claim`` must be atomic: of concurrent claims of a key with no live record, one
    gets ``Claimed``. ``renew``, ``complete`` and ``release`` act only while the record
    is still ``claimed.owner``'s, and say so (a lapsed lease may have been taken over).
    """

    @property
    def lease(self) -> float:
        """Seconds a claim holds without renewal; ``math.inf``: it never lapses."""
        ...

    async def claim(self, key: IdempotencyKey, fingerprint: str, *, ttl: float) -> Claim:
        """Take the key for this request, or say who has it. ``ttl``: how long the
        finished record will be kept (a hint for stores that expire rows by themselves)."""
        ...

    async def renew(self, claimed: Claimed) -> bool:
        """Extend the lease by ``lease`` from now; False when the claim was lost."""
        ...

    async def complete(self, claimed: Claimed, response: StoredResponse, *, ttl: float) -> bool:
        """Keep ``response`` for ``ttl`` seconds; False when the claim was lost."""
        ...

    async def release(self, claimed: Claimed) -> None:
        """Forget the claim (a 5xx, a crash, a cancellation): a retry runs again."""
        ...

    async def wait(self, running: Running, *, within: float) -> None:
        """Return once the record may have changed, or after ``within`` seconds; then the
        caller claims again."""
        ...

    async def sweep(self) -> None:
        """Delete some expired records, a bounded amount of work: the store must not grow
        for ever. Called after a response has gone out, so it delays no caller."""
        ...


def judge(key: IdempotencyKey, record: Record, fingerprint: str, version: int = 0) -> Claim:
    """What a claim meets in a live record someone else holds or finished."""
    if record.fingerprint != fingerprint:
        return Mismatch()
    if record.response is not None:
        return Replay(record.response)
    return Running(key, version)


def new_owner() -> str:
    """A claim's owner token: random, so that no two claims anywhere share one."""
    return secrets.token_hex(16)
