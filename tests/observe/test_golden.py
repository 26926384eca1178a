"""Golden metrics from Prometheus text: the exposition is made by prometheus_client itself."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from meshkit.observe.golden import (
    CLIENT_METRIC,
    SERVER_METRIC,
    Edge,
    Scoreboard,
    edge_stats,
    format_table,
    parse_edges,
)
from meshkit.observe.golden import Histogram as EdgeHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Instance:
    """The metrics an instance would expose, observed by hand."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["source_service", "http_route", "http_response_status_code"]
        self.server = Histogram(
            SERVER_METRIC, "server", labels, registry=self.registry, buckets=BUCKETS
        )
        self.client = Histogram(
            CLIENT_METRIC,
            "client",
            ["destination_service", "http_response_status_code", "error_type"],
            registry=self.registry,
            buckets=BUCKETS,
        )

    def serve(self, source: str, status: int, seconds: float, times: int = 1) -> None:
        for _ in range(times):
            self.server.labels(source, "/carts/{id}", str(status)).observe(seconds)

    def call(self, destination: str, status: str, error: str, seconds: float) -> None:
        self.client.labels(destination, status, error).observe(seconds)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_server_side_edges_with_success_and_quantiles() -> None:
    cart = Instance()
    cart.serve("web", 200, 0.003, times=90)
    cart.serve("web", 201, 0.040, times=9)
    cart.serve("web", 503, 0.300, times=1)
    cart.serve("inventory", 403, 0.001)
    edges = parse_edges(cart.text(), service="cart")
    assert set(edges) == {Edge("web", "cart"), Edge("inventory", "cart")}
    web = edges[Edge("web", "cart")]
    assert (web.count, web.errors, web.success) == (100, 1, 0.99)
    # 90 of 100 at or below 5 ms: the median is inside the first bucket, interpolated.
    assert web.quantile(0.5) == pytest.approx(0.005 * 50 / 90)
    # The 99th is the 99th of 100: inside (25 ms, 50 ms], at its upper end.
    assert web.quantile(0.99) == pytest.approx(0.05)
    # A 403 is the caller's problem, not a failure of the edge.
    assert edges[Edge("inventory", "cart")].success == 1.0


def test_client_side_edges_count_transport_errors_as_failures() -> None:
    cart = Instance()
    cart.call("payments", "201", "", 0.02)
    cart.call("payments", "", "ConnectError", 0.001)
    edges = parse_edges(cart.text(), service="cart", side="client")
    payments = edges[Edge("cart", "payments")]
    assert (payments.count, payments.errors) == (2, 1)


def test_quantile_beyond_the_last_bucket_is_its_bound() -> None:
    slow = Instance()
    slow.serve("web", 200, 5.0, times=3)
    assert parse_edges(slow.text(), service="x")[Edge("web", "x")].quantile(0.99) == 1.0
    assert EdgeHistogram().quantile(0.5) is None


def test_the_scoreboard_keeps_what_a_killed_instance_counted() -> None:
    first, second = Instance(), Instance()
    board = Scoreboard()
    first.serve("web", 200, 0.01, times=10)
    second.serve("web", 200, 0.01, times=5)
    window = board.update(
        {
            "cart-1": parse_edges(first.text(), service="cart"),
            "cart-2": parse_edges(second.text(), service="cart"),
        }
    )
    assert window[Edge("web", "cart")].count == 15
    first.serve("web", 200, 0.01, times=4)
    # cart-2 was killed: it is not scraped any more.
    window = board.update({"cart-1": parse_edges(first.text(), service="cart")})
    assert window[Edge("web", "cart")].count == 4
    assert board.total[Edge("web", "cart")].count == 19


def test_a_retained_scoreboard_forgets_instances_gone_from_the_registry() -> None:
    cart = Instance()
    cart.serve("web", 200, 0.01, times=3)
    board: Scoreboard[Edge] = Scoreboard()
    board.update({"cart-1": parse_edges(cart.text(), service="cart")})
    board.retain({"cart-2"})
    # Forgotten: were it to come back, all it counted would be new again.
    window = board.update({"cart-1": parse_edges(cart.text(), service="cart")})
    assert window[Edge("web", "cart")].count == 3
    board.retain({"cart-1"})  # still registered: kept, so nothing new is counted
    window = board.update({"cart-1": parse_edges(cart.text(), service="cart")})
    assert window[Edge("web", "cart")].count == 0


def test_a_counter_reset_counts_as_new_requests() -> None:
    before = EdgeHistogram({0.1: 10.0, float("inf"): 10.0}, 10, 0)
    after = EdgeHistogram({0.1: 3.0, float("inf"): 3.0}, 3, 0)
    assert (after - before).count == 3


def test_edge_stats_and_table() -> None:
    cart = Instance()
    cart.serve("web", 200, 0.003, times=20)
    cart.serve("web", 500, 0.003, times=1)
    rows = edge_stats(parse_edges(cart.text(), service="cart"), seconds=2.0)
    assert len(rows) == 1
    assert rows[0].rate == 10.5
    table = format_table(rows).splitlines()
    assert table[0].split() == [
        "edge",
        "requests",
        "req/s",
        "success",
        "%",
        "p50",
        "ms",
        "p99",
        "ms",
    ]
    assert table[1].split()[:6] == ["web", "->", "cart", "21", "10.5", "95.24"]
    assert format_table([]).splitlines()[0].startswith("edge")
