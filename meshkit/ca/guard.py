"""Failed authentication, limited per source address.

A join token is 256 random bits, so guessing one is hopeless; what guessing costs is
the CA's time, its audit log and its operators' attention. After ``failures`` failed
authentications within ``window`` seconds a source is answered 429 with Retry-After,
before any work, until its oldest failure leaves the window; the requests refused that
way are counted and written to the audit log as one line per source per window, not
one line each. Memory is bounded whatever the number of sources.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SOURCES = 65_536


@dataclass
class _Source:
    failures: deque[float] = field(default_factory=deque)
    limited: int = 0  # requests refused as limited since the last audit line
    reported: float = 0.0


class FailedAuthLimiter:
    """Per-source failed-authentication counts and the time a source must wait."""

    def __init__(
        self,
        *,
        failures: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window = window
        self._clock = clock
        self._sources: dict[str, _Source] = {}

    def retry_after(self, source: str) -> float:
        """Seconds ``source`` must wait before it may try again; 0 when it may now."""
        entry = self._sources.get(source)
        if entry is None:
            return 0.0
        now = self._clock()
        self._expire(entry, now)
        if len(entry.failures) < self.failures:
            return 0.0
        return max(0.001, entry.failures[0] + self.window - now)

    def failed(self, source: str) -> None:
        """One failed authentication from ``source``."""
        entry = self._sources.get(source)
        if entry is None:
            if len(self._sources) >= MAX_SOURCES:
                self._forget_idle()
            entry = self._sources[source] = _Source()
        now = self._clock()
        self._expire(entry, now)
        entry.failures.append(now)

    def limited(self, source: str) -> int | None:
        """Note one request refused as limited; the count to audit when a line is due
        (one per source per window), else None."""
        entry = self._sources[source]
        entry.limited += 1
        now = self._clock()
        if now - entry.reported < self.window:
            return None
        count, entry.limited, entry.reported = entry.limited, 0, now
        return count

    def _expire(self, entry: _Source, now: float) -> None:
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()
        while len(entry.failures) > self.failures:
            entry.failures.popleft()

    def _forget_idle(self) -> None:
        now = self._clock()
        for source in [s for s, e in self._sources.items() if self._idle(e, now)]:
            del self._sources[source]
        if len(self._sources) >= MAX_SOURCES:
            self._sources.clear()  # every source busy failing: start over, still bounded

    def _idle(self, entry: _Source, now: float) -> bool:
        self._expire(entry, now)
        return not entry.failures
