"""The deadline of the request being handled: a contextvar, and the headers that carry it.

A mesh call sends with each attempt::

    x-meshkit-deadline-ms: 2500           budget: the caller's remaining time, whole ms
    x-meshkit-sent-ms: 1796904000123      the caller's wall clock at sending, Unix ms
    x-meshkit-start-ms: 300               only when shorter than the budget: see below

Why a budget *and* a timestamp. A budget alone (gRPC's ``grpc-timeout``, Envoy's
``x-envoy-expected-rq-timeout-ms``) starts counting when the server reads the request,
so time spent unread does not count: a request that waited 17 s in the socket buffer
of a paused (SIGSTOP) or stalled process still gets its whole budget, and runs for a
caller that gave up long ago and may have retried elsewhere. An absolute deadline
alone (Finagle's) makes every host's clock part of every request. meshkit counts the
budget from when the request's head arrived (the serving protocol notes it in the
scope, ``ARRIVED_KEY``), less whatever the timestamp shows the request waited beyond
``max_clock_skew`` (``MeshSettings.max_clock_skew``, ``MESHKIT_MAX_CLOCK_SKEW``)::

    deadline = arrival + budget - max(0, arrival_wall_clock - sent - max_clock_skew)

The timestamp can only shorten the budget, never extend it: a caller whose clock runs
ahead changes nothing, clocks that disagree by up to ``max_clock_skew`` change
nothing, and a server whose clock runs ahead by more loses only the excess. The price
is that a request unread for less than the allowance still runs. The default, 0.25 s,
is well above what NTP keeps hosts apart by (milliseconds; Finagle's deadline filter
allows 170 ms, its measured worst) and below usual per-try timeouts; widen it for
hosts without synchronized clocks, or set it very large to trust budgets alone.

Start and finish. An attempt with an ``Idempotency-Key`` sends the call's whole budget
(the server may finish work the caller stopped waiting for, and the retry then gets
its stored result) but the caller waits for that attempt only its per-try timeout,
sent as ``x-meshkit-start-ms``. Work not started by then would run for nobody, maybe
a second time beside the retry: the server answers 504 without starting it.

In the process, deadlines are ``now()`` values (``time.monotonic()`` seconds): the
server's middleware stores the incoming one here, and every mesh call made while
handling the request is bounded by it and passes on what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from math import floor

#: The header carrying the remaining budget in whole milliseconds.
DEADLINE_HEADER = "x-meshkit-deadline-ms"
DEADLINE_HEADER_BYTES = DEADLINE_HEADER.encode()
#: The header carrying the caller's wall clock when it sent the request, Unix ms.
SENT_HEADER = "x-meshkit-sent-ms"
SENT_HEADER_BYTES = SENT_HEADER.encode()
#: The header carrying how long the caller waits for this attempt, when that is less
#: than the budget: no work may start after it.
START_HEADER = "x-meshkit-start-ms"
START_HEADER_BYTES = START_HEADER.encode()
#: The ASGI scope key holding when the request's head began to arrive (``now()``'s
#: clock), set by meshkit's serving protocol: queueing inside the server counts too.
ARRIVED_KEY = "meshkit.arrived"

_deadline: ContextVar[float | None] = ContextVar("meshkit_deadline", default=None)


#: The mesh's clock, for deadlines and durations: ``time.monotonic``. asyncio's
#: ``loop.time()`` is the same clock, but uvloop's counts whole milliseconds (too coarse
#: for sub-millisecond calls) and costs ~0.17 µs a read where this costs ~0.04. Timers
#: are set with ``call_later(deadline - now())``, which holds on either loop.
now = time.monotonic
#: The wall clock, only to compare a request's sent time with: hosts share no other.
wall = time.time


def current_deadline() -> float | None:
    """The incoming request's absolute deadline, or None outside a bounded request."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the incoming deadline (may be negative), or None."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - now()


@contextmanager
def deadline_after(seconds: float) -> Iterator[float]:
    """Bound every mesh call inside the block by ``seconds`` from now (never extended:
    an earlier incoming deadline still wins)."""
    deadline = now() + seconds
    outer = _deadline.get()
    if outer is not None and outer < deadline:
        deadline = outer
    with use_deadline(deadline):
        yield deadline


#: Make a deadline current until ``exit_deadline(token)``: ``use_deadline`` without a
#: generator-based context manager, for the server's per-request path; the ContextVar's
#: own methods, so no Python call.
enter_deadline: Callable[[float | None], Token[float | None]] = _deadline.set
exit_deadline: Callable[[Token[float | None]], None] = _deadline.reset


@contextmanager
def use_deadline(deadline: float | None) -> Iterator[None]:
    """Make ``deadline`` (absolute, on ``now()``'s clock) the current one inside the block."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def format_header(seconds_left: float) -> bytes:
    """The header value for ``seconds_left``, rounded down (never promise more time)."""
    budget = floor(seconds_left * 1000.0)
    return b"%d" % (budget if budget > 0 else 0)


def format_sent(unix_seconds: float) -> bytes:
    """The sent-time header value, rounded down: the request looks, if anything, older."""
    return b"%d" % floor(unix_seconds * 1000.0)


_LINES = DEADLINE_HEADER_BYTES + b": %d\r\n" + SENT_HEADER_BYTES + b": %d\r\n"


def format_lines(seconds_left: float, unix_seconds: float) -> bytes:
    """The budget and sent-time header lines, ``format_header``'s and ``format_sent``'s
    values formatted together (what a mesh client sends with every attempt)."""
    budget = floor(seconds_left * 1000.0)
    return _LINES % (budget if budget > 0 else 0, floor(unix_seconds * 1000.0))


def incoming_bounds(
    budget: bytes | None,
    sent: bytes | None,
    start: bytes | None,
    arrived: float,
    now: float,
    wall_now: float,
    max_clock_skew: float,
    default: float | None = None,
) -> tuple[float, float] | None:
    """(start by, finish by) on ``now()``'s clock of a request that carried these
    header values (None: absent) and whose head arrived at ``arrived``; None when it is
    unbounded. ``now`` and ``wall_now`` are the two clocks read at the same moment.

    The rules of the incoming headers, all here (the server's per-request path, in one
    call): a budget or start that is not a whole number of milliseconds is absent (an
    absent budget is ``default``, sent and start then ignored), a negative one is 0; a
    sent time that is not a positive number of milliseconds is ignored; the budget
    counts from the arrival, moved earlier by what the sent time shows the request
    waited unread beyond ``max_clock_skew`` (never later: see the module docstring).
    """
    try:
        seconds = int(budget) / 1000.0  # type: ignore[arg-type]
    except (TypeError, ValueError):  # absent, or not a number
        if default is None:
            return None
        seconds, sent, start = default, None, None
    seconds = seconds if seconds > 0.0 else 0.0
    since = arrived if arrived < now else now
    if sent is not None:
        try:
            sent_ms = int(sent)
        except ValueError:
            sent_ms = 0
        if sent_ms > 0:
            # Our wall clock at arrival, less the caller's at sending, less the allowance.
            unread = wall_now - (now - since) - sent_ms / 1000.0 - max_clock_skew
            if unread > 0.0:
                since -= unread
    deadline = since + seconds
    if start is None:
        return deadline, deadline
    try:
        start_by = int(start) / 1000.0
    except ValueError:
        return deadline, deadline
    if start_by >= seconds:
        return deadline, deadline
    return since + (start_by if start_by > 0.0 else 0.0), deadline
