"""In-process cost of the tap ring: TelemetryMiddleware with and without a TapRing.

The same request (a verified caller, a traceparent from it, a matched route) runs
through the middleware around a trivial app, ``number`` times per repeat, the two
variants alternating; the figure is the best repeat (the least disturbed by others).

    python -m bench.tap [--number 100000] [--repeat 7]

Ends with one JSON line: ns per request for each, the difference and their ratio, and
``ns_per_record``: the ring's ``record`` alone (the part of the difference that is not
noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import timeit
from typing import Any

from starlette.routing import Route

from meshkit.identity import PEER_IDENTITY_KEY, SpiffeId
from meshkit.middleware.telemetry import TelemetryMiddleware
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.telemetry.tap import TapRing

CALLER = SpiffeId.for_service("meshkit.local", "default", "web")
ROUTE = Route("/orders/{order_id}", lambda request: None)
START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"{}"}


async def app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = ROUTE  # as Starlette's router records the match
    await send(START)
    await send(BODY)


async def receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    pass


def scope() -> dict[str, Any]:
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    return {
        "type": "http",
        "method": "GET",
        "path": "/orders/7",
        "scheme": "https",
        "http_version": "1.1",
        "query_string": b"",
        "client": ("127.0.0.1", 50000),
        "headers": [(b"traceparent", traceparent)],
        "extensions": {"tls": {PEER_IDENTITY_KEY: CALLER}},
    }


async def timed(middleware: TelemetryMiddleware, number: int) -> float:
    request = scope()
    started = time.perf_counter()
    for _ in range(number):
        await middleware(request, receive, send)
    return (time.perf_counter() - started) / number


async def measure(number: int, repeat: int) -> dict[str, float]:
    variants = {
        "without": TelemetryMiddleware(app, service="bench", metrics=MeshMetrics()),
        "with": TelemetryMiddleware(app, service="bench", metrics=MeshMetrics(), tap=TapRing()),
    }
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, middleware in variants.items():
            seconds = await timed(middleware, number)
            best[name] = min(best.get(name, seconds), seconds)
    figures = {f"ns_per_request_{name}_tap": round(s * 1e9, 1) for name, s in best.items()}
    figures["ns_per_record"] = round(record_cost(number, repeat) * 1e9, 1)
    return figures


def record_cost(number: int, repeat: int) -> float:
    """One ``TapRing.record`` alone, less the empty call that timeit makes around it."""
    ring = TapRing()

    def record() -> None:
        ring.record(1.0, CALLER, "GET", "/orders/{order_id}", 200, 0.001, 1)

    def empty() -> None:
        pass

    spent = min(timeit.repeat(record, number=number, repeat=repeat))
    baseline = min(timeit.repeat(empty, number=number, repeat=repeat))
    return (spent - baseline) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    figures: dict[str, float | int] = dict(asyncio.run(measure(args.number, args.repeat)))
    without, with_tap = figures["ns_per_request_without_tap"], figures["ns_per_request_with_tap"]
    print(f"middleware: {without:7.1f} ns without the tap, {with_tap:7.1f} ns with it")
    figures.update(
        ns_tap_cost=round(with_tap - without, 1),
        ratio_with_to_without=round(with_tap / without, 3),
        number=args.number,
        repeat=args.repeat,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
