"""Idempotency keys: a request carrying ``Idempotency-Key`` runs once, across instances.

A key belongs to (service, caller identity, key), and is bound to the request it came
with by a fingerprint of its method, path, query and body. The stage claims the key in
the route's store (``meshkit.policy.idempotency``), runs the handler while renewing
the claim, and stores the response for the policy's ``ttl``. What other requests
with the key get, as the IETF draft "The Idempotency-Key HTTP Header Field" says:

- the stored response, with ``Idempotent-Replayed: true``;
- ``422`` when the key was used for another request (another fingerprint);
- while the key runs elsewhere: that run's result once it finishes (``in_flight=
  "wait"``, for at most ``wait_timeout``), else ``409`` with Retry-After;
- ``409`` too when the response was too large to keep (``max_body_bytes``): the
  handler ran, and running it again is what the key forbids.

Only complete responses below 500 are kept: after a 5xx, a crash or a cancellation
the key is released, so a retry runs the handler again. A malformed key gets 400, and
a store that cannot answer 503: running the handler unguarded could run it twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshkit import deadline as deadlines
from meshkit.middleware._asgi import caller_key, send_json
from meshkit.policy.decorators import Idempotent
from meshkit.policy.idempotency.base import (
    Claim,
    Claimed,
    IdempotencyKey,
    IdempotencyStore,
    IdempotencyStoreError,
    Mismatch,
    Replay,
    Running,
    StoredResponse,
)
from meshkit.policy.idempotency.memory import MemoryStore
from meshkit.settings import InFlight

logger = logging.getLogger("meshkit.policy")

HEADER = b"idempotency-key"
REPLAYED_HEADER = (b"idempotent-replayed", b"true")
MAX_KEY_LENGTH = 255
#: A key is printable ASCII, bare or as a Structured Fields string (``"..."``).
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
#: Settling a claim (complete or release) runs even when the request was cancelled,
#: for at most this long.
SETTLE_TIMEOUT = 5.0
RETRY_AFTER = "1"


@dataclass(frozen=True, slots=True)
class IdempotencyDefaults:
    """What ``@idempotent`` routes use when the decorator does not say: the service's
    name (part of every key), its configured store (None: one in memory per route)
    and its ``in_flight`` behaviour."""

    service: str = "service"
    store: IdempotencyStore | None = None
    in_flight: InFlight = "wait"


class _Recorder:
    """Passes the response through while keeping a copy, up to a size limit, and
    settles the claim before the last chunk goes out: once a client has the whole
    answer, a retry finds it stored (or, after a 5xx, the key free), never running."""

    def __init__(
        self,
        send: Send,
        max_body: int,
        settle: Callable[[StoredResponse | None], Awaitable[None]],
    ) -> None:
        self._send = send
        self._max_body = max_body
        self._settle = settle
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body" and not self.finished:
            body = message.get("body", b"")
            self.size += len(body)
            if self.size <= self._max_body:
                self.chunks.append(body)
            if not message.get("more_body", False):
                self.finished = True
                await self._settle(self._stored())
        await self._send(message)

    def _stored(self) -> StoredResponse | None:
        """The finished response to keep: None after a 5xx."""
        if self.status >= 500:
            return None
        kept = self.size <= self._max_body
        body = b"".join(self.chunks) if kept else b""
        return StoredResponse(self.status, tuple(self.headers), body, kept)


@dataclass
class _Hold:
    """A claim while its handler runs. Renewals and the settling take turns under
    ``lock``: a renewal racing the completion could make the completion fail (a CAS on
    a version the renewal replaced) and lose the response."""

    claimed: Claimed
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    settled: bool = False


class IdempotencyStage:
    """Runs each (service, caller, Idempotency-Key) once; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        policy: Idempotent,
        *,
        route: str,
        defaults: IdempotencyDefaults | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        defaults = defaults or IdempotencyDefaults()
        self.app = app
        self._policy = policy
        self._route = route
        self._service = defaults.service
        store = policy.store if policy.store is not None else defaults.store
        if store is None:
            store = MemoryStore(max_entries=policy.max_entries, clock=clock)
        self.store: IdempotencyStore = store
        self._in_flight = policy.in_flight or defaults.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        values = [value for name, value in scope["headers"] if name == HEADER]
        if not values:
            await self.app(scope, receive, send)
            return
        key = _parse_key(values)
        if key is None:
            await self._refuse(send, 400, {"error": "invalid_idempotency_key"})
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before sending its whole request
        store_key = IdempotencyKey(self._service, caller_key(scope), key)
        try:
            claim = await self._claim(store_key, _fingerprint(scope, body))
        except IdempotencyStoreError as exc:
            logger.error("idempotency store failed on %s: %s", self._route, exc)
            headers = [("Retry-After", RETRY_AFTER)]
            await self._refuse(send, 503, {"error": "idempotency_store_unavailable"}, headers)
            return
        if isinstance(claim, Claimed):
            await self._run(claim, scope, _replaying(body, receive), send)
        else:
            await self._answer(claim, send)

    async def _claim(self, key: IdempotencyKey, fingerprint: str) -> Claim:
        """Claim the key; while it runs elsewhere, wait for that (when configured to)."""
        give_up = deadlines.now() + (self._policy.wait_timeout if self._in_flight == "wait" else 0)
        while True:
            claim = await self.store.claim(key, fingerprint, ttl=self._policy.ttl)
            left = give_up - deadlines.now()
            if not isinstance(claim, Running) or left <= 0:
                return claim
            await self.store.wait(claim, within=left)

    async def _answer(self, claim: Replay | Running | Mismatch, send: Send) -> None:
        if isinstance(claim, Mismatch):
            await self._refuse(send, 422, {"error": "idempotency_key_reused"})
        elif isinstance(claim, Running):
            headers = [("Retry-After", RETRY_AFTER)]
            await self._refuse(send, 409, {"error": "idempotency_key_in_flight"}, headers)
        elif not claim.response.body_kept:
            payload = {"error": "idempotent_response_not_kept", "status": claim.response.status}
            await self._refuse(send, 409, payload)
        else:
            await _replay(claim.response, send)

    async def _refuse(
        self,
        send: Send,
        status: int,
        payload: dict[str, Any],
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        await send_json(send, status, {**payload, "route": self._route}, headers)

    async def _run(self, claimed: Claimed, scope: Scope, receive: Receive, send: Send) -> None:
        hold = _Hold(claimed)

        async def settle(response: StoredResponse | None) -> None:
            # Shielded: a cancelled request (deadline, timeout) must still let go of its key.
            with anyio.move_on_after(SETTLE_TIMEOUT, shield=True):
                async with hold.lock:
                    if not hold.settled:
                        hold.settled = True
                        await self._settle(claimed, response)

        recorder = _Recorder(send, self._policy.max_body_bytes, settle)
        try:
            await self._holding(hold, scope, receive, recorder.send)
        finally:
            await settle(None)  # no whole response (a crash, a cancellation): release
        await self._sweep()

    async def _sweep(self) -> None:
        """The store's housekeeping, now that the caller has its answer."""
        try:
            await self.store.sweep()
        except IdempotencyStoreError as exc:
            logger.warning("idempotency store sweep failed on %s: %s", self._route, exc)

    async def _holding(self, hold: _Hold, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the handler, renewing the claim meanwhile if the store's lease can lapse."""
        lease = self.store.lease
        if math.isinf(lease):
            await self.app(scope, receive, send)
            return
        failure: list[Exception] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._renew_forever, hold, lease / 3)
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                # Raised after the group, not from it: a task group would wrap it in an
                # ExceptionGroup, which the app's exception handlers do not recognise.
                failure.append(exc)
            tasks.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _renew_forever(self, hold: _Hold, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            async with hold.lock:
                if hold.settled:
                    return
                held = await self._renew(hold.claimed)
            if not held:
                logger.warning(
                    "lost the claim of an Idempotency-Key on %s (lease lapsed): "
                    "another instance may run the same request",
                    self._route,
                )
                return

    async def _renew(self, claimed: Claimed) -> bool:
        """Renew the lease; True while it may still be ours (a failed call may be passing)."""
        try:
            return await self.store.renew(claimed)
        except IdempotencyStoreError as exc:
            logger.warning("could not renew an idempotency claim on %s: %s", self._route, exc)
            return True

    async def _settle(self, claimed: Claimed, response: StoredResponse | None) -> None:
        try:
            if response is None:
                await self.store.release(claimed)
            elif not await self.store.complete(claimed, response, ttl=self._policy.ttl):
                logger.warning(
                    "the response of an Idempotency-Key on %s was not stored: its claim "
                    "lapsed while the handler ran",
                    self._route,
                )
        except IdempotencyStoreError as exc:
            logger.error("could not settle an idempotency claim on %s: %s", self._route, exc)


def _parse_key(values: list[bytes]) -> str | None:
    """The key of the one ``Idempotency-Key`` header, bare or a Structured Fields
    string; None when malformed or repeated (clients must send one)."""
    if len(values) != 1:
        return None
    text = values[0].decode("latin-1").strip(" \t")
    quoted = _SF_STRING.fullmatch(text)
    if quoted is not None:
        text = re.sub(r"\\(.)", r"\1", quoted[1])
    return text if _KEY.fullmatch(text) else None


def _fingerprint(scope: Scope, body: bytes) -> str:
    """What makes two requests the same request: method, path, query and body."""
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b"")):
        digest.update(part)
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (the server's body limit bounds it), or None on disconnect."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the handler the body read already, then the real channel."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _replay(response: StoredResponse, send: Send) -> None:
    headers = [*response.headers, REPLAYED_HEADER]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
