"""The mesh client's layers: httpx transports, each wrapping the next.

    MeshTransport        a destination's calls: deadline, call hooks; other hosts pass through
    └ LimitTransport     concurrent and pending calls per destination -> Overloaded
      └ BreakerTransport per-destination circuit breaker -> CircuitOpen
        └ RetryTransport attempts, classification, backoff, retry budget
          └ BalancerTransport   discovery + P2C pick + outlier ejection, attempt hooks,
                                the attempt sent by a PoolSender: per-try timeout,
                                deadline header, our HTTP/1.1 pool

What one call carries through the layers lives in a ``Call`` object in the request's
``extensions`` (httpx's seam for transport data). Transport errors of an attempt stay
``AttemptFailed`` until ``RetryTransport``, the one boundary that turns them into
``meshkit.errors`` (``raise ... from exc``).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import ssl
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from meshkit import deadline as deadlines
from meshkit._httpx import (
    AsyncBaseTransport,
    LocalProtocolError,
    Request,
    RequestNotRead,
    Response,
    complete_response,
    header_fields,
)
from meshkit.client._balancer import Balancer, EndpointState
from meshkit.client._breaker import PROBE, REFUSED, CircuitBreaker
from meshkit.client._budget import RetryBudget
from meshkit.client._errors import (
    CircuitOpen,
    DeadlineExceeded,
    MeshCallError,
    Overloaded,
    PeerIdentityMismatch,
    RetryBudgetExhausted,
    UpstreamFailed,
)
from meshkit.client._hooks import CallRecorder, ClientHooks, RetryBudgetSpent, RetryScheduled
from meshkit.client._policy import ClientPolicy
from meshkit.client._pool import AttemptFailed, AttemptTimedOut, EndpointPool, Message
from meshkit.registry.base import Endpoint

CALL_EXTENSION = "meshkit.call"
#: A per-call timeout in seconds (what ``client.get(..., timeout=)`` becomes).
TIMEOUT_EXTENSION = "meshkit.timeout"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_DEFAULT_BUSY = 1.0  # how long a 429 without Retry-After makes its endpoint less chosen
_CRLF = b"\r\n"
_HEAD_CACHE_SIZE = 1024
_START_PREFIX = deadlines.START_HEADER_BYTES + b": "
_UNREPORTED = object()  # an attempt whose start the recorder has not taken (it raised)


class Call:
    """One call's state, shared by the layers through ``request.extensions``."""

    __slots__ = (
        "attempt",
        "body",
        "budget_spent",
        "deadline",
        "destination",
        "extra_headers",
        "keyed",
        "lost",
        "pool",
        "prefix",
        "recorded",
        "send_deadline",
        "started",
        "subset",
        "tried",
    )

    def __init__(
        self,
        destination: str,
        started: float,
        deadline: float,
        *,
        send_deadline: bool,
        subset: str = "",
    ) -> None:
        self.destination = destination
        self.subset = subset  # the resolver subset the chain chose ("": none), for hooks
        # When the call began, or got a slot after waiting for one: what the breaker and
        # the retry budget count it at (deadlines.now()'s clock, read once for both).
        self.started = started
        self.deadline = deadline  # absolute, on deadlines.now()'s clock
        self.send_deadline = send_deadline
        self.attempt = 0
        self.budget_spent = False
        self.tried: list[EndpointState] = []
        self.pool: EndpointPool | None = None
        self.extra_headers: list[tuple[str, str]] = []
        self.prefix: bytes | None = None  # request line + headers, serialized once
        self.body = b""
        # Whether the request carries an Idempotency-Key: found while serializing, which
        # happens before the first attempt sends anything, so before any retry decision.
        self.keyed = False
        self.lost = False  # cancelled because another (hedged) attempt answered first
        self.recorded: object = None  # what the recorder's call_started returned

    def fork(self) -> Call:
        """A Call for an attempt running beside this call's own (a hedge): the same
        deadline, serialized request and tried endpoints; its own pool and headers."""
        twin = Call(
            self.destination,
            self.started,
            self.deadline,
            send_deadline=self.send_deadline,
            subset=self.subset,
        )
        twin.attempt = self.attempt
        twin.tried = self.tried  # shared: concurrent attempts pick different endpoints
        twin.prefix, twin.body, twin.keyed = self.prefix, self.body, self.keyed
        twin.recorded = self.recorded
        return twin


def call_of(request: Request) -> Call:
    return request.extensions[CALL_EXTENSION]  # type: ignore[no-any-return]


class MeshTransport(AsyncBaseTransport):
    """The outermost layer of a destination's client."""

    def __init__(
        self,
        destination: str,
        inner: AsyncBaseTransport,
        *,
        passthrough: AsyncBaseTransport,
        policy: ClientPolicy,
        recorder: CallRecorder | None,
        subset: str = "",
    ) -> None:
        self._destination = destination
        self._inner = inner
        self._passthrough = passthrough
        self._timeout = policy.timeout
        self._recorder = recorder
        self._subset = subset  # a routed target's stack reports its calls by subset

    def handle_async_request(self, request: Request) -> Coroutine[Any, Any, Response]:
        # Not a coroutine itself: it hands the caller the one that does the work, one
        # frame fewer on every call (a layer's "async def" would only await it).
        if request.url.host != self._destination:
            return self._passthrough.handle_async_request(request)
        return run_call(
            request,
            self._inner,
            self._destination,
            self._timeout,
            self._recorder,
            send_deadline=True,
            subset=self._subset,
        )


async def run_call(
    request: Request,
    inner: AsyncBaseTransport,
    destination: str,
    timeout: float,  # noqa: ASYNC109 (a default, not how we wait)
    recorder: CallRecorder | None,
    *,
    send_deadline: bool,
    subset: str = "",
    one_attempt: bool = False,
) -> Response:
    """Bound the call by min(its timeout, the incoming deadline) and report it to the
    recorder, and its attempt too for a call of ``one_attempt`` (a pass-through). A
    ``MeshCallError`` leaves with ``request`` set, as httpx's ``send()`` sets it."""
    now = deadlines.now()
    deadline = now + request.extensions.get(TIMEOUT_EXTENSION, timeout)
    incoming = deadlines.current_deadline()
    if incoming is not None and incoming < deadline:
        deadline = incoming
    if deadline <= now:
        late = DeadlineExceeded(
            "no time left: the incoming deadline has passed", destination=destination
        )
        late.request = request
        raise late
    call = request.extensions[CALL_EXTENSION] = Call(
        destination, now, deadline, send_deadline=send_deadline, subset=subset
    )
    if recorder is None:
        try:
            return await inner.handle_async_request(request)
        except MeshCallError as exc:
            exc.request = request  # as httpx's send() does for its transport's errors
            raise
    state = call.recorded = recorder.call_started(destination, request.method, request.url, subset)
    attempt: object = _UNREPORTED
    status: int | None = None
    error: BaseException | None = None
    try:
        if one_attempt:
            call.attempt = 1
            attempt = start_attempt(recorder, call, None)
        response = await inner.handle_async_request(request)
        status = response.status_code
        return response
    except BaseException as exc:
        error = exc
        if isinstance(exc, MeshCallError):
            exc.request = request
        raise
    finally:
        took = deadlines.now() - now
        if attempt is not _UNREPORTED:
            recorder.attempt_ended(attempt, status, took, error)
        recorder.call_ended(state, status, took, call.attempt, error)


class LimitTransport(AsyncBaseTransport):
    """At most ``max_concurrent`` calls in flight and ``max_pending`` waiting."""

    def __init__(self, destination: str, inner: AsyncBaseTransport, policy: ClientPolicy) -> None:
        self._destination = destination
        self._inner = inner
        self._max_concurrent = policy.max_concurrent
        self._max_pending = policy.max_pending
        self._active = 0
        self._pending: deque[asyncio.Future[None]] = deque()

    async def handle_async_request(self, request: Request) -> Response:
        if self._active < self._max_concurrent:
            self._active += 1
        else:
            call = call_of(request)
            await self._wait(call.deadline)
            call.started = deadlines.now()
        try:
            return await self._inner.handle_async_request(request)
        finally:
            self._release()

    async def _wait(self, deadline: float) -> None:
        if len(self._pending) >= self._max_pending:
            raise Overloaded(
                f"{self._active} calls in flight and {len(self._pending)} waiting",
                destination=self._destination,
            )
        waiter = asyncio.get_running_loop().create_future()
        self._pending.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter  # the releasing call hands its slot over: _active unchanged
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    "deadline passed waiting for a free slot", destination=self._destination
                ) from None
            raise

    def _release(self) -> None:
        while self._pending:
            waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1


class BreakerTransport(AsyncBaseTransport):
    """Fail fast while the destination's breaker is open."""

    def __init__(
        self, destination: str, inner: AsyncBaseTransport, breaker: CircuitBreaker
    ) -> None:
        self._destination = destination
        self._inner = inner
        self._breaker = breaker

    async def handle_async_request(self, request: Request) -> Response:
        breaker = self._breaker
        admission = breaker.allow(request.extensions[CALL_EXTENSION].started)
        if admission == REFUSED:
            raise CircuitOpen(
                "circuit breaker is open: the destination is failing", destination=self._destination
            )
        try:
            response = await self._inner.handle_async_request(request)
        except asyncio.CancelledError:
            if admission == PROBE:
                breaker.record(admission, False, deadlines.now())
            raise
        except Exception:
            breaker.record(admission, False, deadlines.now())
            raise
        breaker.record(admission, response.status_code < 500, deadlines.now())
        return response


class AttemptsLayer(AsyncBaseTransport):
    """A layer that may make more than one attempt of a call (retries, hedges): it knows
    the destination's balancer (which endpoints are left), retry budget and policy."""

    def __init__(
        self,
        destination: str,
        inner: AsyncBaseTransport,
        *,
        balancer: Balancer,
        budget: RetryBudget,
        policy: ClientPolicy,
        hooks: ClientHooks | None,
    ) -> None:
        self._destination = destination
        self._inner = inner
        self._balancer = balancer
        self._budget = budget
        self._policy = policy
        self._hooks = hooks


class RetryTransport(AttemptsLayer):
    """Repeat a failed attempt when it is safe, within attempts, budget and deadline.

    Safe: an attempt that sent nothing (connect failure, identity refused) is always
    repeatable on another instance; a 502/503/504 or a failure after sending only for
    idempotent methods or requests with an ``Idempotency-Key``.
    """

    async def handle_async_request(self, request: Request) -> Response:
        call = call_of(request)
        self._budget.deposit(call.started)
        safe_method = request.method in IDEMPOTENT_METHODS
        while True:
            call.attempt += 1
            try:
                response = await self._inner.handle_async_request(request)
            except (PeerIdentityMismatch, AttemptFailed) as exc:
                delay = None
                if self._repeatable(exc, call, safe_method or call.keyed):
                    delay = self._next_delay(request, call, None, _reason(exc))
                if delay is None:
                    if isinstance(exc, PeerIdentityMismatch):
                        raise
                    raise self._translate(exc, call) from exc
            else:
                retryable = response.status_code in self._policy.retry_status
                if not retryable or not (safe_method or call.keyed):
                    return response
                delay = self._next_delay(request, call, response, f"status {response.status_code}")
                if delay is None:
                    return response  # retries are over: the caller sees the last answer
            await asyncio.sleep(delay)

    def _repeatable(self, exc: Exception, call: Call, idempotent: bool) -> bool:
        if isinstance(exc, PeerIdentityMismatch):
            # Nothing was sent; another instance may be genuine, this one will not change.
            return self._balancer.has_untried(call.tried)
        assert isinstance(exc, AttemptFailed)
        return idempotent or not exc.sent

    def _next_delay(
        self, request: Request, call: Call, response: Response | None, reason: str
    ) -> float | None:
        """How long to wait before the next attempt; None when there is none."""
        if call.attempt >= self._policy.max_attempts:
            return None
        now = deadlines.now()
        delay = self._delay(call.attempt, response)
        if delay is None or now + delay >= call.deadline:
            return None
        if not self._budget.can_retry(now):
            call.budget_spent = True
            if self._hooks is not None:
                event = RetryBudgetSpent(self._destination, request.method, reason)
                self._hooks.on_retry_budget_spent(event)
            return None
        if self._hooks is not None:
            scheduled = RetryScheduled(
                self._destination, request.method, call.attempt, delay, reason
            )
            self._hooks.on_retry_scheduled(scheduled)
        return delay

    def _delay(self, attempt: int, response: Response | None) -> float | None:
        """Full-jitter exponential backoff, or the server's Retry-After when it sent one."""
        if response is not None:
            retry_after = _retry_after(response.headers.get("retry-after"))
            if retry_after is not None:
                return retry_after if retry_after <= self._policy.max_retry_after else None
        ceiling = min(self._policy.backoff_cap, self._policy.backoff_base * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)

    def _translate(self, error: AttemptFailed, call: Call) -> Exception:
        if call.budget_spent:
            return RetryBudgetExhausted(
                f"retry budget spent; last attempt: {error}", destination=self._destination
            )
        if isinstance(error, AttemptTimedOut) and deadlines.now() >= call.deadline:
            return DeadlineExceeded(
                f"deadline passed after {call.attempt} attempt(s): {error}",
                destination=self._destination,
            )
        return UpstreamFailed(
            f"{error} (attempt {call.attempt} of at most {self._policy.max_attempts})",
            destination=self._destination,
        )


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, AttemptFailed) else "identity"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class BalancerTransport(AsyncBaseTransport):
    """Pick the attempt's endpoint, send the attempt there and feed its outcome back to
    the balancer."""

    def __init__(
        self, sender: PoolSender, balancer: Balancer, recorder: CallRecorder | None
    ) -> None:
        self._sender = sender
        self._balancer = balancer
        self._recorder = recorder

    async def handle_async_request(self, request: Request) -> Response:
        call = call_of(request)
        balancer = self._balancer
        if balancer.stale:
            await balancer.refresh()
        started = deadlines.now()
        state = balancer.pick(started, call.tried)
        call.tried.append(state)
        call.pool = state.pool
        recorder = self._recorder
        token: object = _UNREPORTED
        ok: bool | None = False
        status: int | None = None
        error: BaseException | None = None
        try:
            if recorder is not None:  # in the try: the balancer hears of every pick
                token = start_attempt(recorder, call, state.endpoint)
            # The pool's coroutine awaited here: the attempt has no frame of the sender's.
            status, headers, body = await self._sender.send(request, call, started)
            response = complete_response(status, headers, body, request, deadlines.now() - started)
            ok = status < 500
            if status == 429 or status == 503:
                pause = busy_for(status, response)
                if pause is not None:
                    balancer.busy(state, status, pause, deadlines.now())
                    ok = True  # alive, and asking for less traffic: not a failure to eject on
            return response
        except asyncio.CancelledError as exc:
            ok = None  # the caller gave up: says nothing about the endpoint
            error = exc
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            ended = deadlines.now()
            if recorder is not None and token is not _UNREPORTED:
                recorder.attempt_ended(token, status, ended - started, error)
            if ok is None and call.lost:
                balancer.record_lost(state, ended - started, ended)
            else:
                balancer.record(state, ok, ended - started, ended)


def busy_for(status: int, response: Response) -> float | None:
    """How long an endpoint asked to be spared: its Retry-After; a 429 without one, a
    second; a 503 without one is a failure, not a request for less traffic."""
    retry_after = _retry_after(response.headers.get("retry-after"))
    if retry_after is None and status == 429:
        return _DEFAULT_BUSY
    return retry_after


def start_attempt(recorder: CallRecorder, call: Call, endpoint: Endpoint | None) -> object:
    """Report an attempt's start (the headers the recorder adds go with this attempt);
    returns the recorder's state for its ``attempt_ended``."""
    headers: list[tuple[str, str]] = []
    state = recorder.attempt_started(call.recorded, call.attempt, endpoint, headers)
    call.extra_headers = headers
    return state


class PoolSender:
    """Send one attempt over the pool the balancer chose, bounded by the per-try timeout.

    Not a transport: ``send`` serializes the attempt and hands back the pool's coroutine
    for the caller to await, so an attempt passes through no frame of its own here.

    A destination's calls mostly repeat a few request heads (the client's headers on a
    few paths): each distinct head is serialized and checked once, then looked up by its
    parts (~0.5 µs where serializing costs ~3). Heads with a value of their own per call
    (a request id) gain nothing: the bounded cache is emptied when full.
    """

    def __init__(self, per_try_timeout: float | None) -> None:
        self._per_try = per_try_timeout
        self._heads: dict[tuple[object, ...], tuple[bytes, bool]] = {}

    def send(self, request: Request, call: Call, started: float) -> Coroutine[Any, Any, Message]:
        """The attempt's exchange (status, raw headers, body), the attempt having
        ``started`` (on ``deadlines.now()``'s clock) over ``call.pool``."""
        if call.prefix is None:
            try:
                body = request.content
            except RequestNotRead:
                return self._send_streamed(request, call, started)
            call.body = body
            call.prefix, call.keyed = self._head(request, len(body))
        deadline = sent_deadline = call.deadline
        if self._per_try is not None and started + self._per_try < deadline:
            deadline = started + self._per_try
            # Work behind an Idempotency-Key outlives the attempt: the server may finish
            # it, and the retry then gets its stored result instead of running it again.
            # It may not start after the attempt's deadline, though (the start header).
            if not call.keyed:
                sent_deadline = deadline
        parts = [call.prefix]
        if call.send_deadline:
            parts.append(deadline_headers(started, deadline, sent_deadline))
        for name, value in call.extra_headers:
            parts.append(_header_line(name, value))
        parts += [_CRLF, call.body]
        assert call.pool is not None
        return call.pool.request(b"".join(parts), head=request.method == "HEAD", deadline=deadline)

    async def _send_streamed(self, request: Request, call: Call, started: float) -> Message:
        """A request whose body is a stream not read yet: read once, then sent."""
        await request.aread()
        return await self.send(request, call, started)

    def _head(self, request: Request, body_length: int) -> tuple[bytes, bool]:
        raw_path, fields = request.url.raw_path, header_fields(request.headers)
        key = (request.method, raw_path, body_length, *fields)
        head = self._heads.get(key)
        if head is None:
            raw_headers = [(name, value) for name, _, value in fields]
            head = serialize_head(request.method, raw_path, raw_headers, body_length)
            if len(self._heads) >= _HEAD_CACHE_SIZE:
                self._heads.clear()  # what repeats now comes back at once; one-offs go
            self._heads[key] = head
        return head


def deadline_headers(started: float, attempt_deadline: float, work_deadline: float) -> bytes:
    """An attempt's deadline header lines (``meshkit.deadline`` says why each): the work's
    budget, when it was sent, and how long the caller waits for this attempt when that
    is less (a keyed request's work may outlive its attempt; it may not start later)."""
    lines = deadlines.format_lines(work_deadline - started, deadlines.wall())
    if attempt_deadline < work_deadline:
        lines += b"%s%s\r\n" % (_START_PREFIX, deadlines.format_header(attempt_deadline - started))
    return lines


async def read_body(request: Request) -> bytes:
    """The whole body, read once so every attempt can replay it."""
    try:
        return request.content
    except RequestNotRead:
        return await request.aread()


def serialize_head(
    method: str, raw_path: bytes, raw_headers: list[tuple[bytes, bytes]], body_length: int
) -> tuple[bytes, bool]:
    """Request line and headers, and whether they hold an Idempotency-Key. The body is
    sent whole, so a chunked one goes with a Content-Length instead."""
    lines = [method.encode("ascii"), b" ", raw_path, b" HTTP/1.1\r\n"]
    chunked = keyed = False
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            chunked = True
            continue
        keyed = keyed or lowered == b"idempotency-key"
        lines.append(_raw_header_line(name, value))
    if chunked:
        lines.append(b"Content-Length: %d\r\n" % body_length)
    return b"".join(lines), keyed


def _raw_header_line(name: bytes, value: bytes) -> bytes:
    # Cold: a head is serialized once, then cached (PoolSender._head).
    return _header_line(name.decode("latin-1"), value.decode("latin-1"))


def _header_line(name: str, value: str) -> bytes:
    # A CR or LF inside a header would let a caller smuggle a second request. Searched
    # in the str a hook gives (traceparent, on every attempt), then encoded once.
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
        raise LocalProtocolError(f"header {name!r} holds a line break")
    return f"{name}: {value}\r\n".encode("latin-1")


class PassthroughTransport(AsyncBaseTransport):
    """Absolute URLs outside the mesh: one attempt, normal TLS verification, no mesh
    identity or deadline header, still reported to the hooks (trace headers)."""

    def __init__(self, *, policy: ClientPolicy, recorder: CallRecorder | None) -> None:
        self._policy = policy
        self._recorder = recorder
        self._sender = PoolSender(None)
        self._attempt = _PassthroughAttempt(self)
        self._pools: dict[tuple[str, str, int], EndpointPool] = {}

    async def handle_async_request(self, request: Request) -> Response:
        host = request.url.host
        return await run_call(
            request,
            self._attempt,
            host,
            self._policy.timeout,
            self._recorder,
            send_deadline=False,
            one_attempt=True,
        )

    def pool_for(self, request: Request) -> EndpointPool:
        url = request.url
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = EndpointPool(
                url.host,
                port,
                destination=url.host,
                ssl_context=_default_tls if scheme == "https" else None,
                server_hostname=url.host,
                max_connections=self._policy.max_connections,
                connect_timeout=self._policy.connect_timeout,
                idle_timeout=self._policy.idle_timeout,
            )
        return pool

    async def attempt(self, request: Request) -> Response:
        call = call_of(request)
        call.attempt = 1
        call.pool = self.pool_for(request)
        started = deadlines.now()
        try:
            status, headers, body = await self._sender.send(request, call, started)
        except AttemptTimedOut as exc:
            raise DeadlineExceeded(str(exc), destination=call.destination) from exc
        except AttemptFailed as exc:
            raise UpstreamFailed(str(exc), destination=call.destination) from exc
        return complete_response(status, headers, body, request, deadlines.now() - started)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


class _PassthroughAttempt(AsyncBaseTransport):
    def __init__(self, owner: PassthroughTransport) -> None:
        self._owner = owner

    async def handle_async_request(self, request: Request) -> Response:
        return await self._owner.attempt(request)


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """The system trust store with hostname checks, built once."""
    return ssl.create_default_context()
