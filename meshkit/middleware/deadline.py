"""Enforce the caller's deadline on the server: a cancel scope, then a 504 JSON answer.

The incoming deadline headers (``meshkit.deadline`` says what they carry and why)
become the current deadline for the handler, counted from when the request's head
arrived, so the mesh calls it makes are bounded by it and pass on what is left. A
request whose caller has stopped waiting — its budget spent while it sat unread, or
the attempt's start time passed — is answered 504 at once, without running the
handler: that work would run for nobody, and maybe a second time beside the caller's
retry. When the deadline passes before the response has started the handler is
cancelled and the caller gets ``504`` with a JSON body; so does a handler whose own
mesh call raised ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from meshkit import deadline as deadlines
from meshkit.client import DeadlineExceeded
from meshkit.middleware._asgi import observe, send_json
from meshkit.serving.protocol import NOTED_HEADERS_KEY
from meshkit.settings import MeshSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_RAN_OUT = "the caller's deadline ran out"
_NOT_STARTED = "the caller stopped waiting before the request could start"
_DEADLINE = deadlines.DEADLINE_HEADER_BYTES
_SENT = deadlines.SENT_HEADER_BYTES
_START = deadlines.START_HEADER_BYTES


class DeadlineMiddleware:
    """Run each HTTP request under its incoming deadline (or ``default_timeout``), both
    counted from the request's arrival; ``max_clock_skew`` is how far the caller's clock
    may disagree with ours before its sent time counts (see ``meshkit.deadline``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_timeout: float | None = None,
        max_clock_skew: float = MeshSettings.max_clock_skew,
    ) -> None:
        self.app = app
        self.default_timeout = default_timeout
        self.max_clock_skew = max_clock_skew

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine for a bounded request on asyncio (the usual one): the app runs
        # here, its task watched by ``Overdue``, with no coroutine in between.
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The last value of each header, as a scan finds it (the same instructions, in C);
        # meshkit's protocol has set the mesh's own apart.
        noted = scope.get(NOTED_HEADERS_KEY)
        headers = dict(scope["headers"] if noted is None else noted)
        budget = headers.get(_DEADLINE)
        if budget is None and self.default_timeout is None:
            await self.app(scope, receive, send)
            return
        now = deadlines.now()
        bounds = deadlines.incoming_bounds(
            budget,
            headers.get(_SENT),
            headers.get(_START),
            # Without meshkit's protocol (no arrival noted) the budget counts from now.
            scope.get(deadlines.ARRIVED_KEY, now),
            now,
            deadlines.wall(),
            self.max_clock_skew,
            self.default_timeout,
        )
        if bounds is None:
            await self.app(scope, receive, send)
            return
        start_by, deadline = bounds
        if now >= start_by:
            await send_deadline_exceeded(send, _NOT_STARTED)
            return
        # Whether the response started: meshkit's server notes it itself, as does the
        # telemetry middleware's send outside this one; only alone is send wrapped.
        observed, send = observe(scope, send)
        overdue = self._overdue
        watched = overdue.watch_current(deadline, now) if overdue is not None else None
        if watched is None:
            watched = self._watch_first(deadline, now)
        if watched is None:  # not asyncio (trio under anyio): anyio's own cancel scope
            try:
                if not await self._run_in_cancel_scope(deadline, scope, receive, send):
                    return
            except DeadlineExceeded:
                if observed.status:
                    raise
        else:
            overdue, task, entry = watched
            token = deadlines.enter_deadline(deadline)
            try:
                await self.app(scope, receive, send)
            except asyncio.CancelledError:
                # Time ran out if the cancellation was ours, and ours alone.
                if not overdue.done(entry) or task.uncancel() > 0:
                    raise
            except BaseException as exc:
                if overdue.done(entry):
                    task.uncancel()
                # A mesh call the handler made ran out of our deadline: the same answer.
                if observed.status or not isinstance(exc, DeadlineExceeded):
                    raise
            else:
                if not overdue.done(entry):
                    return
                task.uncancel()  # the app swallowed our cancellation: take the request back
            finally:
                deadlines.exit_deadline(token)
        # Once the response has started its status is on the wire: nothing left to say.
        if not observed.status:
            await send_deadline_exceeded(send)

    def _watch_first(
        self, deadline: float, now: float
    ) -> tuple[Overdue, asyncio.Task[Any], _Entry] | None:
        """``Overdue.watch_current`` for the first request on an event loop (a new
        ``Overdue``), None when not on asyncio."""
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return None
        if task is None:
            return None
        overdue = self._overdue = Overdue(task.get_loop())
        return overdue, task, overdue.watch(deadline, task, now)

    async def _run_in_cancel_scope(
        self, deadline: float, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """The app under anyio's cancel scope, on any backend (and the stock path that
        bench/deadline.py measures ``Overdue`` against); True if time ran out."""
        with anyio.move_on_after(deadline - deadlines.now()) as cancel_scope:
            with deadlines.use_deadline(deadline):
                await self.app(scope, receive, send)
        return cancel_scope.cancelled_caught

    _overdue: Overdue | None = None


# A request watched: [deadline, order, its task (None once it ended), expired]. A list,
# not an object: made without a Python call, and the heap item itself; the order breaks
# ties between equal deadlines on the heap, so tasks are never compared.
_Entry = list[Any]
_TASK, _EXPIRED = 2, 3
#: A deadline further away than this waits in a plain list, not on the heap ...
HORIZON = 1.0
#: ... which is swept this often for those coming within it (so each is on the heap
#: at least HORIZON - SWEEP before it is due).
SWEEP = 0.5


class Overdue:
    """Cancels the tasks of requests whose deadline passed, with one timer for them all.

    ``anyio.move_on_after`` arms a timer and builds a cancel scope per request: ~11 µs of
    the ~13 µs this middleware costs a bounded request. Here a request is one entry: one
    timer fires at the earliest deadline on a heap, cancels what is overdue, and is set
    again for the next. Most requests end long before their deadline (a mesh call's
    budget is seconds; its answer takes milliseconds), so an entry due later than
    ``HORIZON`` is only appended to a list, which a sweep every ``SWEEP`` seconds moves
    to the heap as its deadline comes within reach, dropping the entries of requests
    that ended: a push onto the heap (its comparisons of entries) is paid only by the
    requests that run long or carry short deadlines. Finished entries on the heap are
    dropped when the timer pops them, or all at once when they outnumber the running
    ones; both hold about what arrived over the last ``SWEEP`` seconds plus what runs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.get_ident()
        self._heap: list[_Entry] = []
        self._later: list[_Entry] = []  # due beyond HORIZON when watched; unordered
        self._order = itertools.count()  # ties between equal deadlines never compare entries
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._sweeper: asyncio.TimerHandle | None = None

    def watch_current(
        self, deadline: float, now: float
    ) -> tuple[Overdue, asyncio.Task[Any], _Entry] | None:
        """``watch`` the task running on this loop, if it runs in this thread now (the
        task and its entry); else None.

        Python 3.11's ``asyncio.current_task()`` finds the running loop with a
        ``getpid()`` system call (its fork check); naming the loop skips it."""
        if threading.get_ident() != self._thread:
            return None
        task = asyncio.current_task(self.loop)
        if task is None:
            return None
        return self, task, self.watch(deadline, task, now)

    def watch(self, deadline: float, task: asyncio.Task[Any], now: float) -> _Entry:
        """Cancel ``task`` if it still runs at ``deadline`` (``now`` is the time now)."""
        self._running += 1
        if deadline - now > HORIZON:
            entry: _Entry = [deadline, 0, task, False]
            self._later.append(entry)
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(SWEEP, self._sweep)
            return entry
        entry = [deadline, next(self._order), task, False]
        self._push(entry)
        return entry

    def done(self, entry: _Entry) -> bool:
        """The request ended; True if its deadline had passed and its task was cancelled."""
        if entry[_TASK] is not None:
            entry[_TASK] = None
            self._running -= 1
        return bool(entry[_EXPIRED])

    def _push(self, entry: _Entry) -> None:
        heap = self._heap
        heapq.heappush(heap, entry)
        if entry[0] < self._timer_at:
            self._arm(entry[0])
        if len(heap) > 2 * self._running + 64:
            self._heap = [item for item in heap if item[_TASK] is not None]
            heapq.heapify(self._heap)

    def _sweep(self) -> None:
        """Move the entries due within HORIZON to the heap; drop those that ended."""
        self._sweeper = None
        reach = deadlines.now() + HORIZON
        later = []
        for entry in self._later:
            if entry[_TASK] is None:
                continue
            if entry[0] <= reach:
                entry[1] = next(self._order)
                self._push(entry)
            else:
                later.append(entry)
        self._later = later
        if later:
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(deadline - deadlines.now(), 0.0), self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap, now = self._heap, deadlines.now()
        while heap and (heap[0][_TASK] is None or heap[0][0] <= now):
            entry = heapq.heappop(heap)
            if entry[_TASK] is not None and not entry[_EXPIRED]:
                entry[_EXPIRED] = True
                entry[_TASK].cancel()
        if heap:
            self._arm(heap[0][0])


async def send_deadline_exceeded(send: Send, detail: str = _RAN_OUT) -> None:
    """Answer 504 with meshkit's JSON error body."""
    await send_json(send, 504, {"error": "deadline_exceeded", "detail": detail})
