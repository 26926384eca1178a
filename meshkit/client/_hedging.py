"""Hedged attempts (Finagle's backup requests) and the latency window that times them.

An idempotent call whose attempt has not answered after the destination's recent p95 (or
a fixed delay) gets a second attempt on another endpoint; the first usable answer wins
and the caller stops waiting for the other. ``ClientPolicy.hedge_loser`` says what
becomes of that loser: "finish" (the default) lets it end on its keep-alive connection,
its answer discarded; "abort" closes its connection at once, as Envoy resets a losing
stream. Either way a loser ends by its attempt's deadline (the per-try timeout, never
later than the call's deadline): the pool's timer then aborts the connection and drops
what it had buffered, so a loser never holds a connection or memory past the call's
deadline. A hedge spends the retry budget as a retry does, so under a destination-wide
slowdown hedging stops instead of doubling the load, and it counts as an attempt
against ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import functools
import math

from meshkit import deadline as deadlines
from meshkit._httpx import Request, Response
from meshkit.client._hooks import HedgeStarted
from meshkit.client._transports import (
    CALL_EXTENSION,
    IDEMPOTENT_METHODS,
    AttemptsLayer,
    Call,
    call_of,
)

_WINDOW = 512  # recent latencies kept
_REFRESH = 64  # new samples between two sorts of the window
_MIN_SAMPLES = 32  # fewer say nothing about a tail: no hedging yet

Attempt = asyncio.Future[Response]


class LatencyWindow:
    """The last ``_WINDOW`` attempt latencies of a destination, and their percentiles.

    Sorting on every call would cost more than the attempt; the sorted copy is redone
    every ``_REFRESH`` samples, which follows a change in latency within a few dozen
    calls.
    """

    __slots__ = ("_count", "_next", "_samples", "_sorted", "_unsorted")

    def __init__(self) -> None:
        self._samples = [0.0] * _WINDOW
        self._next = 0
        self._count = 0
        self._sorted: list[float] = []
        self._unsorted = 0  # samples added since the last sort

    def add(self, seconds: float) -> None:
        self._samples[self._next] = seconds
        self._next = (self._next + 1) % _WINDOW
        self._count = min(self._count + 1, _WINDOW)
        self._unsorted += 1

    def percentile(self, percent: float) -> float | None:
        """The ``percent`` percentile (nearest rank), None before enough samples."""
        if self._count < _MIN_SAMPLES:
            return None
        if self._unsorted >= _REFRESH or len(self._sorted) != self._count:
            self._sorted = sorted(self._samples[: self._count])
            self._unsorted = 0
        rank = max(math.ceil(percent / 100 * self._count) - 1, 0)
        return self._sorted[rank]


class HedgeTransport(AttemptsLayer):
    """Between the retry layer and the balancer: one call's attempt, hedged when slow."""

    @functools.cached_property
    def latency(self) -> LatencyWindow:
        """The destination's recent attempt latencies, which time the hedges."""
        return LatencyWindow()

    @functools.cached_property
    def _losers(self) -> set[Attempt]:
        """Attempts that lost a race and are left to finish (held: tasks are weak refs)."""
        return set()

    async def handle_async_request(self, request: Request) -> Response:
        call = call_of(request)
        delay = self._delay()
        if delay is None or not _may_repeat(request, call):
            return await self._attempt(request, call)
        first = asyncio.ensure_future(self._attempt(request, call))
        second: Attempt | None = None
        try:
            remaining = call.deadline - deadlines.now()
            done, _ = await asyncio.wait((first,), timeout=min(delay, remaining))
            if done or not self._may_hedge(request, call, delay):
                return await first
            twin = call.fork()
            call.attempt += 1  # a hedge is an attempt: it counts against max_attempts
            twin.attempt = call.attempt
            second = asyncio.ensure_future(self._attempt(_twin_request(request, twin), twin))
            winner, loser = await _race(first, second, self._policy.retry_status)
            if loser is not None:
                self._settle(loser, call if loser is first else twin)
            return winner.result()
        finally:
            for task in (first, second):
                if task is not None and not task.done() and task not in self._losers:
                    task.cancel()  # the caller gave up

    def _settle(self, loser: Attempt, call: Call) -> None:
        """The attempt that lost the race: aborted, or by default left to finish within
        its attempt's deadline, its answer discarded. Over HTTP/1.1 aborting means
        closing the connection, and the fresh mTLS handshake that replaces it costs more
        CPU than the rest of a call (bench/hedging.py measures both); finishing also
        keeps the endpoint's outstanding count true while it still works on the
        request, so the balancer keeps seeing that endpoint busy."""
        call.lost = True
        if self._policy.hedge_loser == "abort":
            loser.cancel()
            return
        self._losers.add(loser)
        loser.add_done_callback(self._forget)

    def _forget(self, loser: Attempt) -> None:
        self._losers.discard(loser)
        if not loser.cancelled():
            loser.exception()  # retrieved: its failure is nobody's

    def close(self) -> None:
        for loser in list(self._losers):
            loser.cancel()

    def _delay(self) -> float | None:
        policy = self._policy
        if policy.hedge_delay is not None:
            return policy.hedge_delay
        assert policy.hedge_percentile is not None
        observed = self.latency.percentile(policy.hedge_percentile)
        return None if observed is None else max(observed, policy.hedge_min_delay)

    def _may_hedge(self, request: Request, call: Call, delay: float) -> bool:
        """Worth a hedge now: repeatable, attempts and time left, another endpoint, and
        the budget pays for it (checked last: it spends)."""
        now = deadlines.now()
        if call.prefix is None or not _may_repeat(request, call):
            return False  # not serialized yet: the twin would have nothing to send
        if call.attempt >= self._policy.max_attempts or now >= call.deadline:
            return False
        if not self._balancer.has_untried(call.tried) or not self._budget.can_retry(now):
            return False
        if self._hooks is not None:
            self._hooks.on_hedge_started(HedgeStarted(self._destination, request.method, delay))
        return True

    async def _attempt(self, request: Request, call: Call) -> Response:
        """One attempt, its latency kept (a lost race's too: a lower bound of it)."""
        started = deadlines.now()
        try:
            response = await self._inner.handle_async_request(request)
        except asyncio.CancelledError:
            if call.lost:
                self.latency.add(deadlines.now() - started)
            raise
        except Exception:
            self.latency.add(deadlines.now() - started)
            raise
        self.latency.add(deadlines.now() - started)
        return response


def _may_repeat(request: Request, call: Call) -> bool:
    """Idempotent, or keyed (``call.keyed`` is known once the head is serialized)."""
    if request.method in IDEMPOTENT_METHODS or call.keyed:
        return True
    return call.prefix is None and "idempotency-key" in request.headers


def _twin_request(request: Request, twin: Call) -> Request:
    """The hedge's request: the call's serialized head and body travel in ``twin``,
    so the request needs no headers or body of its own."""
    extensions = dict(request.extensions)
    extensions[CALL_EXTENSION] = twin
    return Request(request.method, request.url, extensions=extensions)


async def _race(
    first: Attempt, second: Attempt, retryable: frozenset[int]
) -> tuple[Attempt, Attempt | None]:
    """The attempt with the first usable answer (not an error, not a status the retry
    layer would retry), and the other if still running. When both fail, the later
    failure is the call's (the retry layer then decides)."""
    pending = {first, second}
    while True:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        winner = next((task for task in done if _usable(task, retryable)), None)
        if winner is None and not pending:
            winner = done.pop()
        if winner is not None:
            return winner, next(iter(pending), None)


def _usable(task: Attempt, retryable: frozenset[int]) -> bool:
    if task.cancelled() or task.exception() is not None:
        return False
    return task.result().status_code not in retryable
