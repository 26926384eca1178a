"""In-process cost of recording one request's metrics: prometheus_client vs MeshMetrics.

``old`` is what meshkit did before its lock-free metrics: memoized prometheus_client
children (``LabelCache``), ``Gauge.inc`` + ``Gauge.dec`` + ``Histogram.observe`` per
server request, ``Histogram.observe`` + ``Counter.inc`` per client call (one attempt).
``new`` is today's ``MeshMetrics`` API for the same recordings. Both run side by side
in alternating repeats; the figure is the best repeat (the least disturbed by others).

    python -m bench.metrics [--number 200000] [--repeat 7]

Ends with one JSON line: ns per request for each and the ratios new/old.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from meshkit.telemetry.metrics import (
    _CLIENT_LABELS,
    DURATION_BUCKETS,
    UNKNOWN_NAMESPACE,
    LabelCache,
    MeshMetrics,
)

ROUTE = "/orders/{order_id}"
SECONDS = 0.0012  # an in-mesh call: the 4th bucket, so the old bucket loop runs 4 steps


def old_recorders() -> dict[str, Callable[[], None]]:
    registry = CollectorRegistry()
    server_labels = ["http_request_method", "http_route", "http_response_status_code"]
    duration = LabelCache(
        Histogram(
            "s", "", [*server_labels, "source_service"], registry=registry, buckets=DURATION_BUCKETS
        )
    )
    active = LabelCache(Gauge("a", "", ["http_request_method"], registry=registry))
    client_duration = LabelCache(
        Histogram("c", "", _CLIENT_LABELS, registry=registry, buckets=DURATION_BUCKETS)
    )
    attempts = LabelCache(Counter("n", "", _CLIENT_LABELS, registry=registry))

    def server() -> None:
        gauge = active.get("GET")
        gauge.inc()
        gauge.dec()
        duration.get("GET", ROUTE, 200, "web").observe(SECONDS)

    def client() -> None:
        client_duration.get("POST", "payments", 201, "", "").observe(SECONDS)
        attempts.get("POST", "payments", 201, "", "").inc()

    return {"server": server, "client": client}


def new_recorders() -> dict[str, Callable[[], None]]:
    metrics = MeshMetrics()
    # As the telemetry middleware records a request: the series of its method and of its
    # outcome found in the dicts it keeps, then updated.
    outcome = ("GET", ROUTE, 200, "web")
    methods = {"GET": metrics.server_active("GET")}
    outcomes = {outcome: metrics.server_duration(*outcome, UNKNOWN_NAMESPACE)}

    def server() -> None:
        active = methods["GET"]
        active[0] += 1
        outcomes[outcome].observe(SECONDS)
        active[0] -= 1

    # As the client's telemetry records a call and its attempt: the series of their
    # labels and outcome found in the dict it keeps, then updated.
    calls = {("POST", "payments", 201): metrics.client_series("POST", "payments", 201, "")}

    def client() -> None:
        attempts, duration = calls["POST", "payments", 201]
        duration.observe(SECONDS)
        attempts[0] += 1

    return {"server": server, "client": client}


def measure(number: int, repeat: int) -> dict[str, float]:
    recorders = {"old": old_recorders(), "new": new_recorders()}
    best: dict[str, float] = {}
    for _ in range(repeat):
        for version, sides in recorders.items():
            for side, record in sides.items():
                seconds = timeit.timeit(record, number=number) / number
                name = f"ns_per_request_{side}_{version}"
                best[name] = min(best.get(name, seconds), seconds)
    return {name: round(seconds * 1e9, 1) for name, seconds in sorted(best.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    figures: dict[str, float | int] = dict(measure(args.number, args.repeat))
    for side in ("server", "client"):
        old, new = figures[f"ns_per_request_{side}_old"], figures[f"ns_per_request_{side}_new"]
        print(f"{side:>7}: {old:7.1f} ns old, {new:7.1f} ns new")
        figures[f"ratio_{side}_new_to_old"] = round(new / old, 3)
    figures.update(number=args.number, repeat=args.repeat)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
