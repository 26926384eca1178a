"""The retry budget of one destination (Finagle's RetryBudget, Linkerd's defaults).

Retries may add at most ``ratio`` of the requests seen over the last ``ttl`` seconds,
plus ``min_per_second`` as a reserve, so a destination failing everything sees at
most ~1.2x its normal load instead of ``max_attempts`` x. Counts are kept in one
slot per second; deposits and withdrawals expire with their slot.
"""

from __future__ import annotations

import math


class WindowedCounter:
    """A sum over the last ``seconds`` seconds, kept in one-second slots."""

    __slots__ = ("_current", "_index", "_next", "_size", "_slots", "_total")

    def __init__(self, seconds: float) -> None:
        self._size = max(math.ceil(seconds), 1)
        self._slots = [0] * self._size
        self._current = 0  # the whole second the newest slot belongs to
        self._index = 0  # that slot's
        self._next = 1.0  # when the next second begins
        self._total = 0

    def add(self, amount: int, now: float) -> None:
        # Every call adds (the budget's deposit, the breaker's count): a time within the
        # current second, the common case, is told by one comparison of floats.
        if now >= self._next:
            self._advance(int(now))
        self._slots[self._index] += amount
        self._total += amount

    def total(self, now: float) -> int:
        self._advance(int(now))
        return self._total

    def reset(self) -> None:
        self._slots = [0] * len(self._slots)
        self._total = 0

    def _advance(self, second: int) -> None:
        if second <= self._current:
            return  # this second's, or an earlier time read before the newest add
        size = self._size
        if second - self._current >= size:
            self.reset()
        else:
            for stale in range(self._current + 1, second + 1):
                index = stale % size
                self._total -= self._slots[index]
                self._slots[index] = 0
        self._current = second
        self._index = second % size
        self._next = second + 1.0


class RetryBudget:
    """``can_retry`` spends one retry if the budget allows it."""

    __slots__ = ("_balance", "_cost", "_reserve")

    def __init__(self, *, ratio: float, min_per_second: float, ttl: float) -> None:
        # Integer arithmetic, as Finagle: a request deposits 1, a retry costs 1/ratio.
        self._cost = int(1 / ratio) if ratio > 0 else 0
        self._reserve = int(min_per_second * ttl * self._cost) if ratio > 0 else 0
        self._balance = WindowedCounter(ttl)

    def deposit(self, now: float) -> None:
        self._balance.add(1, now)

    def can_retry(self, now: float) -> bool:
        if self._cost == 0:
            return False
        if self._reserve + self._balance.total(now) < self._cost:
            return False
        self._balance.add(-self._cost, now)
        return True
