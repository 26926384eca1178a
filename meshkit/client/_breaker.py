"""The per-destination circuit breaker: closed -> open -> half-open -> closed.

It opens when at least ``failure_ratio`` of the calls in the last ``window`` seconds
failed (and there were ``min_calls`` of them); while open every call fails fast with
``CircuitOpen``. After ``open_for`` seconds one probe call is let through (half-open):
its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

from collections.abc import Callable

from meshkit.client._budget import WindowedCounter
from meshkit.client._hooks import BreakerState

#: What ``allow`` answers: refuse the call, let a normal call through, or the one probe.
REFUSED, ADMITTED, PROBE = 0, 1, 2


class CircuitBreaker:
    __slots__ = (
        "_calls",
        "_failure_ratio",
        "_failures",
        "_min_calls",
        "_on_change",
        "_open_for",
        "_opened_at",
        "_probing",
        "state",
    )

    def __init__(
        self,
        *,
        window: float,
        min_calls: int,
        failure_ratio: float,
        open_for: float,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self._calls = WindowedCounter(window)
        self._failures = WindowedCounter(window)
        self._min_calls = min_calls
        self._failure_ratio = failure_ratio
        self._open_for = open_for
        self._on_change = on_change
        self._opened_at = 0.0
        self._probing = False
        self.state: BreakerState = "closed"

    def allow(self, now: float) -> int:
        """May a call start now? In half-open only one probe is in flight."""
        if self.state == "closed":
            return ADMITTED
        if self.state == "open":
            if now - self._opened_at < self._open_for:
                return REFUSED
            self._change("half-open")
        if self._probing:
            return REFUSED
        self._probing = True
        return PROBE

    def record(self, admission: int, ok: bool, now: float) -> None:
        """The outcome of a call ``allow`` admitted."""
        if admission == PROBE:
            self._probing = False
            if ok:
                self._calls.reset()
                self._failures.reset()
                self._change("closed")
            else:
                self._open(now)
            return
        if self.state != "closed":
            return  # a call admitted before the breaker opened says nothing new
        self._calls.add(1, now)
        if ok:
            return
        self._failures.add(1, now)
        calls = self._calls.total(now)
        if calls >= self._min_calls and self._failures.total(now) >= self._failure_ratio * calls:
            self._open(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._change("open")

    def _change(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old != new and self._on_change is not None:
            self._on_change(old, new)
