"""TapRing and the admin port's /tap answer: pure logic, in process (the tests over real
instances are in tests/observe/test_tap.py)."""

from __future__ import annotations

from typing import Any

from meshkit.identity import SpiffeId
from meshkit.telemetry.tap import TapFilter, TapRing, tap_answer

WEB = SpiffeId.for_service("meshkit.local", "default", "web")
CART = SpiffeId.for_service("meshkit.local", "shop", "cart")


def filled(size: int, count: int) -> TapRing:
    ring = TapRing(size)
    for n in range(count):
        caller = (WEB, CART, None)[n % 3]
        ring.record(float(n), caller, "GET", f"/r/{n % 2}", 200, 0.001, n)
    return ring


def seqs(answer: dict[str, Any]) -> list[int]:
    return [record["seq"] for record in answer["records"]]


def test_readers_page_through_the_ring_without_losing_entries() -> None:
    ring = filled(10, 6)
    first = ring.read(0, limit=4)
    assert seqs(first) == [1, 2, 3, 4] and first["next"] == 4 and first["dropped"] == 0
    second = ring.read(first["next"], limit=4)
    assert seqs(second) == [5, 6] and second["next"] == 6
    assert ring.read(6)["records"] == []


def test_a_wrapped_ring_says_how_many_entries_fell_off() -> None:
    ring = filled(4, 10)
    answer = ring.read(2)
    assert seqs(answer) == [7, 8, 9, 10]
    assert answer["dropped"] == 4  # 3, 4, 5 and 6


def test_a_reader_ahead_of_the_ring_starts_from_now() -> None:
    ring = filled(10, 3)
    answer = ring.read(10**18)
    assert answer == {"next": 3, "dropped": 0, "records": []}
    ring.record(9.0, WEB, "GET", "/r/0", 200, 0.001, 0)
    assert seqs(ring.read(answer["next"])) == [4]


def test_filters_by_route_and_by_caller_name_or_id() -> None:
    ring = filled(20, 12)
    routes = {r["route"] for r in ring.read(0, only=TapFilter(route="/r/1"))["records"]}
    assert routes == {"/r/1"}
    by_name = ring.read(0, only=TapFilter(caller="cart"))["records"]
    assert by_name and {r["caller"] for r in by_name} == {CART.uri}
    by_id = ring.read(0, only=TapFilter(caller=WEB.uri))["records"]
    assert by_id and {r["caller"] for r in by_id} == {WEB.uri}
    anonymous = ring.read(0, only=TapFilter(caller="unknown"))["records"]
    assert anonymous and {r["caller"] for r in anonymous} == {None}


def test_a_record_holds_only_what_the_metrics_label() -> None:
    ring = TapRing(4)
    ring.record(1.0, WEB, "POST", "/orders/{id}", 201, 0.0125, 0xABC)
    (record,) = ring.read(0)["records"]
    assert set(record) == {
        "seq",
        "time",
        "caller",
        "method",
        "route",
        "status",
        "duration_ms",
        "trace_id",
    }
    assert record["trace_id"] == f"{0xABC:032x}" and record["duration_ms"] == 12.5
    assert record["time"].endswith("Z")


def test_an_empty_ring_records_nothing() -> None:
    ring = TapRing(0)
    ring.record(1.0, WEB, "GET", "/", 200, 0.001, 0)
    assert ring.read(0)["records"] == []


def scope(client: str, query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "client": (client, 50000), "query_string": query}


def test_the_admin_answer_refuses_other_hosts_unless_configured() -> None:
    ring = filled(10, 3)
    status, body = tap_answer(ring, scope("192.0.2.7"), remote_allowed=False)
    assert status == 403 and "MESHKIT_TAP_REMOTE" in body["error"]
    assert tap_answer(ring, scope("192.0.2.7"), remote_allowed=True)[0] == 200
    for loopback in ("127.0.0.1", "127.3.2.1", "::1"):
        assert tap_answer(ring, scope(loopback), remote_allowed=False)[0] == 200


def test_the_admin_answer_rejects_bad_queries_with_json() -> None:
    ring = filled(10, 3)
    for query in (b"since=-1", b"limit=lots", b"since=" + b"9" * 40, b"&".join([b"a=1"] * 20)):
        status, body = tap_answer(ring, scope("127.0.0.1", query), remote_allowed=False)
        assert status == 400 and body["error"], query
    status, body = tap_answer(TapRing(0), scope("127.0.0.1"), remote_allowed=False)
    assert status == 404 and "MESHKIT_TAP_SIZE" in body["error"]
    status, body = tap_answer(ring, scope("127.0.0.1", b"since=1&limit=1"), remote_allowed=False)
    assert status == 200 and seqs(body) == [2]
