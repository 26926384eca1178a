"""Per-route limits as ASGI stages: rate (429), concurrency (503) and time (504).

``build_pipeline`` stacks only the stages a route's policies ask for, outermost first:
rate limits, timeout (so time spent queued for a slot counts), concurrency,
idempotency, then the route's own app. A request refused by a limit never reaches the
idempotency store, so a retry of it runs fresh. ``idempotency`` holds the service's
defaults for ``@idempotent`` routes (its name, its configured store).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshkit.middleware._asgi import caller_key, send_json
from meshkit.middleware.idempotency import IdempotencyDefaults, IdempotencyStage
from meshkit.policy.decorators import Concurrency, RateLimit, RoutePolicies, Timeout

logger = logging.getLogger("meshkit.policy")
Clock = Callable[[], float]


def build_pipeline(
    app: ASGIApp,
    policies: RoutePolicies,
    *,
    route: str,
    idempotency: IdempotencyDefaults | None = None,
    clock: Clock = time.monotonic,
) -> ASGIApp:
    """Wrap ``app`` in the stages ``policies`` ask for; ``app`` itself when none."""
    if policies.idempotent:
        app = IdempotencyStage(
            app, policies.idempotent, route=route, defaults=idempotency, clock=clock
        )
    if policies.concurrency:
        app = ConcurrencyStage(app, policies.concurrency, route=route)
    if policies.timeout:
        app = TimeoutStage(app, policies.timeout, route=route)
    for limit in reversed(policies.rate_limits):
        app = RateLimitStage(app, limit, route=route, clock=clock)
    return app


class TokenBucket:
    """``capacity`` tokens refilled at ``rate`` per second; starts full."""

    __slots__ = ("_capacity", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, capacity: int, now: float) -> None:
        self._rate = rate
        self._capacity = float(capacity)
        self._tokens = float(capacity)
        self._updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RateLimitStage:
    """429 with Retry-After once a caller (or everyone, ``per="global"``) is over the rate."""

    def __init__(
        self,
        app: ASGIApp,
        limit: RateLimit,
        *,
        route: str,
        clock: Clock = time.monotonic,
        max_buckets: int = 10_000,
    ) -> None:
        self.app = app
        self._limit = limit
        self._route = route
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: dict[str, TokenBucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = caller_key(scope) if self._limit.per == "caller" else ""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._new_bucket(key, now)
        wait = bucket.take(now)
        if wait > 0.0:
            retry_after = max(1, math.ceil(wait))  # Retry-After is whole seconds
            payload = {"error": "rate_limited", "route": self._route, "retry_after": retry_after}
            await send_json(send, 429, payload, [("Retry-After", str(retry_after))])
            return
        await self.app(scope, receive, send)

    def _new_bucket(self, key: str, now: float) -> TokenBucket:
        if len(self._buckets) >= self._max_buckets:
            # Bounded memory: forget the oldest caller; it starts again with a full bucket.
            del self._buckets[next(iter(self._buckets))]
        bucket = self._buckets[key] = TokenBucket(self._limit.rate, self._limit.burst, now)
        return bucket


class ConcurrencyStage:
    """Runs at most ``limit`` requests at once and queues ``queue`` more; sheds the rest."""

    def __init__(self, app: ASGIApp, limit: Concurrency, *, route: str) -> None:
        self.app = app
        self._route = route
        self._queue = limit.queue
        self._waiting = 0
        self._slots = anyio.Semaphore(limit.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._slots.value == 0:
            if self._waiting >= self._queue:
                payload = {"error": "overloaded", "route": self._route}
                await send_json(send, 503, payload, [("Retry-After", "1")])
                return
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


class TimeoutStage:
    """Runs the route in a cancel scope; 504 if it expires before the response began."""

    def __init__(self, app: ASGIApp, limit: Timeout, *, route: str) -> None:
        self.app = app
        self._seconds = limit.seconds
        self._route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.move_on_after(self._seconds) as cancel_scope:
            await self.app(scope, receive, tracking_send)
        if not cancel_scope.cancelled_caught:
            return
        if started:
            # Too late for a 504: the client sees a truncated response and a closed socket.
            logger.warning("timeout after %ss on %s mid-response", self._seconds, self._route)
            return
        logger.info("timeout after %ss on %s", self._seconds, self._route)
        payload = {"error": "timeout", "route": self._route, "timeout": self._seconds}
        await send_json(send, 504, payload)
