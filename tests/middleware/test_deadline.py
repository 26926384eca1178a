"""DeadlineMiddleware: the budget counts from arrival, less the time a request waited
unread beyond the clock-skew allowance; a caller that stopped waiting gets a 504 and
the handler never runs. In-process, with the clocks read as the middleware reads them;
over real mTLS in tests/client/test_deadline.py and tests/chaos/."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anyio
import pytest

from meshkit import deadline
from meshkit.client import DeadlineExceeded
from meshkit.middleware.deadline import HORIZON, SWEEP, DeadlineMiddleware

pytestmark = pytest.mark.anyio

SKEW = 0.25


class Handler:
    """An app that notes the remaining budget it was given, works ``work`` seconds, and
    answers 200."""

    def __init__(self, work: float = 0.0) -> None:
        self.work = work
        self.runs: list[float | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.runs.append(deadline.remaining())
        await anyio.sleep(self.work)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def serve(
    *,
    budget_ms: int | None = None,
    sent_ago: float | None = None,
    start_ms: int | None = None,
    arrived_ago: float | None = None,
    default_timeout: float | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
    handler: Any = None,
) -> tuple[list[Any], Handler]:
    """One request through the middleware (to a ``Handler()`` unless another app is
    given); what it sent, and the handler."""
    headers = list(extra or [])
    if budget_ms is not None:
        headers.append((b"x-meshkit-deadline-ms", b"%d" % budget_ms))
    if sent_ago is not None:
        headers.append((b"x-meshkit-sent-ms", deadline.format_sent(deadline.wall() - sent_ago)))
    if start_ms is not None:
        headers.append((b"x-meshkit-start-ms", b"%d" % start_ms))
    scope: dict[str, Any] = {"type": "http", "headers": headers}
    if arrived_ago is not None:
        scope[deadline.ARRIVED_KEY] = deadline.now() - arrived_ago
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    handler = Handler() if handler is None else handler
    middleware = DeadlineMiddleware(handler, default_timeout=default_timeout, max_clock_skew=SKEW)
    await middleware(scope, None, send)
    return sent, handler


def refused_unstarted(sent: list[Any], handler: Handler) -> bool:
    body = json.loads(sent[1]["body"])
    return sent[0]["status"] == 504 and body["error"] == "deadline_exceeded" and not handler.runs


async def test_a_request_that_waited_unread_past_its_deadline_never_runs() -> None:
    # Paused 17 s with a 5 s budget: the caller gave up 12 s ago.
    assert refused_unstarted(*await serve(budget_ms=5000, sent_ago=17.0))


async def test_a_wait_within_the_skew_allowance_costs_nothing() -> None:
    _, handler = await serve(budget_ms=1000, sent_ago=0.2)
    assert handler.runs[0] == pytest.approx(1.0, abs=0.02)


async def test_a_wait_beyond_the_allowance_shortens_the_budget_by_the_excess() -> None:
    _, handler = await serve(budget_ms=2000, sent_ago=1.0)
    assert handler.runs[0] == pytest.approx(2.0 - (1.0 - SKEW), abs=0.02)


async def test_a_caller_clock_ahead_of_ours_never_extends_the_budget() -> None:
    _, handler = await serve(budget_ms=1000, sent_ago=-100.0)
    assert handler.runs[0] == pytest.approx(1.0, abs=0.02)


async def test_without_a_sent_time_the_budget_alone_counts() -> None:
    _, handler = await serve(budget_ms=1000, extra=[(b"x-meshkit-sent-ms", b"garbage")])
    assert handler.runs[0] == pytest.approx(1.0, abs=0.02)


async def test_work_may_not_start_after_the_attempt_was_given_up() -> None:
    # A keyed attempt: 5 s of work allowed, but its caller waited only 300 ms for it.
    assert refused_unstarted(*await serve(budget_ms=5000, start_ms=300, sent_ago=1.0))


async def test_work_started_in_time_gets_the_whole_budget() -> None:
    _, handler = await serve(budget_ms=5000, start_ms=300, sent_ago=0.0)
    assert handler.runs[0] == pytest.approx(5.0, abs=0.02)


async def test_the_budget_counts_from_arrival_not_from_the_handler() -> None:
    _, handler = await serve(budget_ms=1000, arrived_ago=0.4)
    assert handler.runs[0] == pytest.approx(0.6, abs=0.02)


async def test_a_request_queued_in_the_server_past_its_budget_never_runs() -> None:
    assert refused_unstarted(*await serve(budget_ms=1000, arrived_ago=1.5))


async def test_the_default_timeout_counts_from_arrival_too() -> None:
    _, handler = await serve(default_timeout=2.0, arrived_ago=0.5)
    assert handler.runs[0] == pytest.approx(1.5, abs=0.02)


async def test_a_sent_time_without_a_budget_bounds_nothing() -> None:
    _, handler = await serve(sent_ago=60.0)
    assert handler.runs == [None]


async def test_a_request_with_no_time_left_never_runs() -> None:
    assert refused_unstarted(*await serve(budget_ms=0))


async def test_without_a_budget_or_default_there_is_no_deadline() -> None:
    sent, handler = await serve()
    assert sent[0]["status"] == 200 and handler.runs == [None]


async def test_a_handler_that_overruns_its_budget_is_cancelled_with_504() -> None:
    with anyio.fail_after(5):
        sent, handler = await serve(budget_ms=50, handler=Handler(work=30))
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"])["detail"] == "the caller's deadline ran out"
    assert handler.runs[0] is not None and 0 < handler.runs[0] <= 0.05


async def test_a_downstream_deadline_error_is_answered_504() -> None:
    async def its_call_ran_out(scope: Any, receive: Any, send: Any) -> None:
        raise DeadlineExceeded("no time left", destination="payments")

    sent, _ = await serve(budget_ms=1000, handler=its_call_ran_out)
    assert sent[0]["status"] == 504


async def status_within(middleware: DeadlineMiddleware, budget_ms: int) -> int:
    """The status a request with ``budget_ms`` of budget gets from ``middleware``."""
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"x-meshkit-deadline-ms", b"%d" % budget_ms)]}
    await middleware(scope, None, send)
    status: int = sent[0]["status"]
    return status


async def test_a_shorter_deadline_after_a_longer_one_still_fires_in_time() -> None:
    """One timer serves every request: a request with less time than those already
    running moves it earlier."""
    middleware = DeadlineMiddleware(Handler(work=30), max_clock_skew=SKEW)
    answers: dict[int, int] = {}

    async def one(budget_ms: int) -> None:
        answers[budget_ms] = await status_within(middleware, budget_ms)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(one, 3000)
            await anyio.sleep(0.01)
            group.start_soon(one, 50)
            group.start_soon(one, 100)
            await anyio.sleep(0.5)
            assert answers == {50: 504, 100: 504}  # the 3 s one is still running
            group.cancel_scope.cancel()


async def test_finished_requests_leave_nothing_behind() -> None:
    middleware = DeadlineMiddleware(Handler(), max_clock_skew=SKEW)
    scope = {"type": "http", "headers": [(b"x-meshkit-deadline-ms", b"60000")]}

    async def send(message: Any) -> None:
        pass

    for _ in range(1000):
        await middleware(scope, None, send)
    overdue = middleware._overdue
    assert overdue is not None and len(overdue._heap) <= 64 and overdue._running == 0
    await anyio.sleep(SWEEP + 0.1)  # the sweep drops the far deadlines of ended requests
    assert overdue._later == [] and overdue._sweeper is None


async def test_a_far_deadline_waits_off_the_heap_and_still_fires_in_time() -> None:
    """A deadline beyond HORIZON waits in the sweep's list, moves to the heap as it comes
    near, and is cancelled on time; one arriving later but due sooner fires first."""
    middleware = DeadlineMiddleware(Handler(work=30), max_clock_skew=SKEW)
    finished: dict[int, tuple[int, float]] = {}
    started = time.monotonic()

    async def one(budget_ms: int) -> None:
        status = await status_within(middleware, budget_ms)
        finished[budget_ms] = (status, time.monotonic() - started)

    far_ms = int((HORIZON + 2 * SWEEP) * 1000)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(one, far_ms)
            await anyio.sleep(0.05)
            overdue = middleware._overdue
            assert overdue is not None and len(overdue._later) == 1 and overdue._heap == []
            group.start_soon(one, 100)
    assert finished[100][0] == 504 and finished[100][1] < 1.0
    status, elapsed = finished[far_ms]
    assert status == 504 and far_ms / 1000 <= elapsed < far_ms / 1000 + 0.25


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    middleware = DeadlineMiddleware(Handler(work=30), max_clock_skew=SKEW)
    scope = {"type": "http", "headers": [(b"x-meshkit-deadline-ms", b"60000")]}
    with anyio.move_on_after(0.05) as outer:
        await middleware(scope, None, send)
    assert outer.cancelled_caught and sent == []


def test_one_middleware_keeps_its_deadlines_on_a_second_event_loop() -> None:
    """The shared timer belongs to a loop: a middleware that outlives its loop (an app
    served again, tests) arms a new one instead of a timer on the closed loop."""
    middleware = DeadlineMiddleware(Handler(work=30), max_clock_skew=SKEW)
    scope = {"type": "http", "headers": [(b"x-meshkit-deadline-ms", b"50")]}

    async def once() -> int:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        await asyncio.wait_for(middleware(scope, None, send), 5)
        return int(sent[0]["status"])

    assert [asyncio.run(once()), asyncio.run(once())] == [504, 504]
