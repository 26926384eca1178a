"""The discovery chain's pure decisions: splitters of other services flattened as Consul's
compiler flattens them (agent/consul/discoverychain/compile.go, flattenAdjacentSplitterNodes)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from meshkit.registry.routing import RoutingTable, Target


def splitter(name: str, *splits: dict[str, Any]) -> dict[str, Any]:
    return {"Kind": "service-splitter", "Name": name, "Splits": list(splits)}


def test_a_split_to_a_service_with_a_splitter_takes_that_splitters_splits() -> None:
    table = RoutingTable(
        {
            "service-splitter": [
                splitter(
                    "web",
                    {"Weight": 50, "ServiceSubset": "v1"},
                    {"Weight": 50, "Service": "api", "RequestHeaders": {"Set": {"x-a": "1"}}},
                ),
                splitter(
                    "api",
                    {"Weight": 33.33, "Service": "auth"},  # auth's splitter is flattened too
                    {"Weight": 33.33, "ServiceSubset": "blue"},
                    {"Weight": 33.34, "Service": "api"},  # itself: resolved, not split again
                ),
                splitter("auth", {"Weight": 10, "ServiceSubset": "v2"}, {"Weight": 90}),
            ]
        }
    )
    # As Consul: weights multiplied, rounded to 0.01 % (api's 33.33 x 10 % = 3.333 -> 3.33;
    # web's 50 % of that, 1.665 -> 1.67: half away from zero, as Go's math.Round).
    assert table.splits("web") == [
        (50.0, Target("web", "v1")),
        (1.67, Target("auth", "v2")),
        (15.0, Target("auth", "")),
        (16.67, Target("api", "blue")),
        (16.67, Target("api", "")),
    ]
    # A subset split stops there: a subset is resolved, never split again.
    assert table.splits("api") == [
        (3.33, Target("auth", "v2")),
        (30.0, Target("auth", "")),
        (33.33, Target("api", "blue")),
        (33.34, Target("api", "")),
    ]


def test_flattened_splits_keep_the_outer_header_changes() -> None:
    """The outer split's request changes apply first and its response changes last
    (Consul's ServiceSplit.MergeParent)."""
    outer = {"Set": {"x-from": "outer", "x-outer": "1"}}
    inner = {"Set": {"x-from": "inner"}}
    table = RoutingTable(
        {
            "service-splitter": [
                splitter(
                    "web",
                    {
                        "Weight": 100,
                        "Service": "api",
                        "RequestHeaders": outer,
                        "ResponseHeaders": outer,
                    },
                ),
                splitter(
                    "api",
                    {
                        "Weight": 100,
                        "ServiceSubset": "v2",
                        "RequestHeaders": inner,
                        "ResponseHeaders": inner,
                    },
                ),
            ]
        }
    )
    decision = table.decide("web", "GET", "/", {}, {})
    assert decision.target == Target("api", "v2")
    assert decision.headers.set == (("x-from", "outer"), ("x-outer", "1"), ("x-from", "inner"))
    assert decision.response_headers.set == (
        ("x-from", "inner"),
        ("x-from", "outer"),
        ("x-outer", "1"),
    )


def test_a_loop_of_splitters_stops_where_it_would_repeat() -> None:
    """Consul refuses such entries; a table built from them anyway still decides."""
    table = RoutingTable(
        {
            "service-splitter": [
                splitter("a", {"Weight": 100, "Service": "b"}),
                splitter("b", {"Weight": 100, "Service": "a"}),
            ]
        }
    )
    assert table.splits("a") == [(100.0, Target("a", ""))]


def test_a_route_whose_regex_does_not_compile_is_skipped_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Consul stores such a router (it never compiles the patterns); calls go on down
    the routes, and the log names the route once however often the table is rebuilt."""

    def route(match: dict[str, Any], subset: str) -> dict[str, Any]:
        return {"Match": {"HTTP": match}, "Destination": {"ServiceSubset": subset}}

    routes = [
        route({"PathRegex": "/items/(", "Header": [{"Name": "x-a", "Present": True}]}, "v2"),
        route({"Header": [{"Name": "x-b", "Regex": "[", "Invert": True}]}, "v3"),
        route({"QueryParam": [{"Name": "q", "Regex": "*"}]}, "v4"),
        route({"PathPrefix": "/items/"}, "v5"),
    ]
    name = f"web-{uuid.uuid4().hex[:8]}"  # "once" is per process: a name of this run's own
    entries = {"service-router": [{"Kind": "service-router", "Name": name, "Routes": routes}]}
    with caplog.at_level(logging.WARNING, logger="meshkit.registry"):
        for _ in range(2):
            table = RoutingTable(entries)
    decision = table.decide(name, "GET", "/items/1", {"x-a": "1"}, {"q": "x"})
    assert decision.target == Target(name, "v5")
    assert table.decide(name, "GET", "/other", {}, {}).target == Target(name, "")
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"service-router {name}: Route[0] skipped: its regex '/items/(' does not compile",
        f"service-router {name}: Route[1] skipped: its regex '[' does not compile",
        f"service-router {name}: Route[2] skipped: its regex '*' does not compile",
    ]
