"""Pure logic of the client: budget, breaker, policy, Retry-After, serialization."""

from __future__ import annotations

import pytest

from meshkit import deadline
from meshkit._httpx import LocalProtocolError, Request
from meshkit.client import ClientPolicy
from meshkit.client._breaker import ADMITTED, PROBE, REFUSED, CircuitBreaker
from meshkit.client._budget import RetryBudget, WindowedCounter
from meshkit.client._transports import _header_line, _retry_after, read_body, serialize_head
from meshkit.errors import ConfigError

pytestmark = pytest.mark.anyio


def test_windowed_counter_forgets_old_slots() -> None:
    counter = WindowedCounter(3)
    counter.add(5, 100.0)
    counter.add(2, 101.5)
    assert counter.total(102.9) == 7
    assert counter.total(103.0) == 2  # second 100 left the window
    assert counter.total(200.0) == 0


def test_windowed_counter_adds_an_earlier_time_to_the_current_second() -> None:
    # A time read before another caller's add (both in flight) never moves the window
    # back, which would count the newer slots twice.
    counter = WindowedCounter(3)
    counter.add(1, 105.2)
    counter.add(1, 104.9)
    counter.add(1, 105.9)
    assert counter.total(105.5) == 3
    assert counter.total(107.99) == 3
    assert counter.total(108.0) == 0


def test_budget_allows_twenty_percent_plus_reserve() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, ttl=10)
    for _ in range(50):
        budget.deposit(1000.0)
    allowed = sum(budget.can_retry(1000.0) for _ in range(100))
    assert allowed == 10
    reserved = RetryBudget(ratio=0.2, min_per_second=10, ttl=10)
    assert sum(reserved.can_retry(1000.0) for _ in range(1000)) == 100  # 10/s over 10 s


def test_budget_with_zero_ratio_never_retries() -> None:
    assert not RetryBudget(ratio=0, min_per_second=10, ttl=10).can_retry(1.0)


def test_breaker_opens_probes_and_closes() -> None:
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        window=10,
        min_calls=4,
        failure_ratio=0.5,
        open_for=5,
        on_change=lambda old, new: changes.append((old, new)),
    )
    for _ in range(3):
        breaker.record(breaker.allow(0.0), False, 0.0)
    assert breaker.state == "closed"  # fewer than min_calls
    breaker.record(breaker.allow(0.0), False, 0.0)
    assert breaker.state == "open"
    assert breaker.allow(1.0) == REFUSED
    assert breaker.allow(6.0) == PROBE
    assert breaker.allow(6.0) == REFUSED  # one probe at a time
    breaker.record(PROBE, True, 6.1)
    assert breaker.state == "closed" and breaker.allow(6.2) == ADMITTED
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_failed_probe_reopens() -> None:
    breaker = CircuitBreaker(window=10, min_calls=1, failure_ratio=0.5, open_for=1)
    breaker.record(breaker.allow(0.0), False, 0.0)
    breaker.record(breaker.allow(2.0), False, 2.0)
    assert breaker.state == "open" and breaker.allow(2.5) == REFUSED


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        ClientPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="timeout"):
        ClientPolicy(timeout=-1)
    with pytest.raises(ConfigError, match="balancer_decay"):
        ClientPolicy(balancer_decay=0)
    assert ClientPolicy().replace(max_attempts=5).max_attempts == 5


def test_retry_after_forms() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


async def _serialize(request: Request) -> tuple[bytes, bytes, bool]:
    body = await read_body(request)
    head, keyed = serialize_head(
        request.method, request.url.raw_path, request.headers.raw, len(body)
    )
    return head, body, keyed


async def test_serialize_buffers_a_streamed_body() -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b"ab"
        yield b"cd"

    request = Request("POST", "http://payments/charge?x=1", content=chunks())
    head, body, keyed = await _serialize(request)
    assert head.startswith(b"POST /charge?x=1 HTTP/1.1\r\n")
    assert b"Content-Length: 4\r\n" in head and b"chunked" not in head.lower()
    assert body == b"abcd"
    assert not keyed


async def test_serialize_finds_an_idempotency_key_in_any_case() -> None:
    request = Request("POST", "http://payments/", headers={"Idempotency-KEY": "k1"}, content=b"x")
    head, _, keyed = await _serialize(request)
    assert keyed
    assert b"Idempotency-KEY: k1\r\n" in head


async def test_header_line_breaks_are_refused() -> None:
    request = Request("GET", "http://payments/", headers={"x-evil": "a\r\nHost: other"})
    with pytest.raises(Exception, match="line break"):
        await _serialize(request)


def test_a_hook_header_with_a_line_break_is_refused() -> None:
    assert _header_line("traceparent", "00-a-b-01") == b"traceparent: 00-a-b-01\r\n"
    for name, value in (("x-id", "a\r\nHost: other"), ("x-id", "a\nb"), ("x\rid", "a")):
        with pytest.raises(LocalProtocolError, match="line break"):
            _header_line(name, value)


def test_deadline_header_round_trip() -> None:
    assert deadline.incoming_bounds(b"1500", None, None, 0.0, 0.0, 0.0, 0.0) == (1.5, 1.5)
    assert deadline.incoming_bounds(b"-5", None, None, 0.0, 0.0, 0.0, 0.0) == (0.0, 0.0)
    assert deadline.incoming_bounds(b"abc", None, None, 0.0, 0.0, 0.0, 0.0) is None
    assert deadline.format_header(1.2349) == b"1234"
    assert deadline.format_header(-1) == b"0"
    for left, sent in ((1.2349, 1796904000.1239), (-0.5, 1.0), (0.0009, 2.5)):
        lines = b"x-meshkit-deadline-ms: %s\r\nx-meshkit-sent-ms: %s\r\n" % (
            deadline.format_header(left),
            deadline.format_sent(sent),
        )
        assert deadline.format_lines(left, sent) == lines
