"""TapRing: the last requests an instance served, for ``meshkit tap`` to read.

The telemetry middleware adds one entry per request, after the answer: when it started,
the caller's verified identity, method, route template, status, duration and trace ID.
Never headers, bodies, query strings or raw paths: what a tap shows is what the metrics
already label, per request. The ring is bounded (old entries fall off), so a tap that
nobody reads costs a tuple and an append per request, no more.

Entries are numbered; a reader asks for those after the last number it saw
(``since``), so polling the admin port's ``/tap`` loses nothing unless the ring wrapped
in between, which the answer says (``dropped``).
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Scope

from meshkit.identity import SpiffeId

#: The default number of requests kept (MESHKIT_TAP_SIZE).
DEFAULT_SIZE = 1024
#: The most entries one read returns.
MAX_READ = 1000

# (sequence, start on the perf_counter clock, caller, method, route, status, seconds,
# trace ID as an int: 0 when none)
_Entry = tuple[int, float, SpiffeId | None, str, str, int, float, int]


@dataclass(frozen=True, slots=True)
class TapFilter:
    """Which entries a reader wants: a route template, a caller (its service name or
    its SPIFFE ID); empty means any."""

    route: str = ""
    caller: str = ""

    def matches(self, caller: SpiffeId | None, route: str) -> bool:
        if self.route and route != self.route:
            return False
        if self.caller:
            if caller is None:
                return self.caller == "unknown"
            return self.caller in (caller.uri, caller.service)
        return True


class TapRing:
    """The last ``size`` requests (``size`` 0: none recorded)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._entries: deque[_Entry] = deque(maxlen=max(size, 1))
        self._numbers = itertools.count(1)
        # Start times come from the perf_counter clock the middleware already read; the
        # wall clock is derived when an entry is read, not paid per request.
        self._wall_offset = time.time() - time.perf_counter()

    def record(
        self,
        start: float,
        caller: SpiffeId | None,
        method: str,
        route: str,
        status: int,
        seconds: float,
        trace_id: int,
    ) -> None:
        """One request (``start`` from ``time.perf_counter``); on the event loop only."""
        if self.size:
            entry = (next(self._numbers), start, caller, method, route, status, seconds, trace_id)
            self._entries.append(entry)

    @property
    def last(self) -> int:
        """The number of the newest entry (0 before any)."""
        entries = self._entries
        return entries[-1][0] if entries else 0

    def read(
        self, since: int = 0, *, limit: int = MAX_READ, only: TapFilter | None = None
    ) -> dict[str, Any]:
        """Entries numbered after ``since`` (oldest first, at most ``limit``), as JSON-ready
        dicts; ``next`` is the ``since`` of the following read, ``dropped`` how many
        entries after ``since`` had already fallen off the ring. A ``since`` past the
        newest entry reads as the newest: a tap starting from now."""
        limit = max(1, min(limit, MAX_READ))
        # A reader ahead of the ring (its first read, or the instance restarted and
        # numbers from 1 again) starts from now.
        since = min(since, self.last)
        entries = list(self._entries)  # a copy: requests may append while we read
        if not self.size or not entries:
            return {"next": max(since, self.last), "dropped": 0, "records": []}
        oldest = entries[0][0]
        # Numbers are consecutive: the entry after ``since`` sits at a known index.
        newer = entries[max(0, since - oldest + 1) :]
        records: list[dict[str, Any]] = []
        cursor = max(since, entries[-1][0])
        for entry in newer:
            if only is None or only.matches(entry[2], entry[4]):
                records.append(self._as_json(entry))
                if len(records) == limit:
                    cursor = entry[0]
                    break
        return {"next": cursor, "dropped": max(0, oldest - since - 1), "records": records}

    def _as_json(self, entry: _Entry) -> dict[str, Any]:
        sequence, start, caller, method, route, status, seconds, trace_id = entry
        return {
            "seq": sequence,
            "time": rfc3339(start + self._wall_offset),
            "caller": caller.uri if caller is not None else None,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "trace_id": f"{trace_id:032x}" if trace_id else None,
        }


def rfc3339(timestamp: float) -> str:
    """Unix seconds as ``2026-12-05T21:50:01.123Z``."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp % 1 * 1000):03d}Z"


def tap_answer(ring: TapRing, scope: Scope, remote_allowed: bool) -> tuple[int, dict[str, Any]]:
    """The admin port's ``GET /tap?since=N&limit=N&route=R&caller=C``: status and body.

    Only loopback callers unless ``remote_allowed`` (MESHKIT_TAP_REMOTE): the entries
    name who called whom, which the admin port's other answers do not.
    """
    client = scope.get("client")
    if not remote_allowed and client and not _is_loopback(client[0]):
        return 403, {"error": "tap is for loopback callers only (MESHKIT_TAP_REMOTE=true opens it)"}
    if not ring.size:
        return 404, {"error": "tap is off (MESHKIT_TAP_SIZE=0)"}
    try:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=8)
        since = _whole(query, "since", 0)
        limit = _whole(query, "limit", MAX_READ)
    except ValueError as exc:
        return 400, {"error": str(exc)}
    only = TapFilter(route=_text(query, "route"), caller=_text(query, "caller"))
    return 200, ring.read(since, limit=limit, only=only)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, not an address: not provably local


def _whole(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    if not values[-1].isdigit() or len(values[-1]) > 18:
        raise ValueError(f"{name} must be a whole number, got {values[-1][:40]!r}")
    return int(values[-1])


def _text(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[-1][:512] if values else ""
