"""The deadline middleware's cost per bounded request: one shared timer vs anyio's scope.

``DeadlineMiddleware`` bounds a request that carries a deadline header. It used to
open an ``anyio.move_on_after`` scope per request; it now puts the request on the
``Overdue`` heap that one timer serves. Both run here in one process on uvloop, in
interleaved rounds (stock, shared, stock, ...) of ``--requests`` requests each, at
``--concurrency`` requests in flight, through the middleware to an app that answers at
once. Figures: CPU µs per request (``time.process_time``), medians over the rounds,
and the middleware's own share (the same requests without the middleware subtracted).

    python -m bench.deadline [--requests 20000] [--rounds 7] [--concurrency 16]

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import print_figures
from meshkit import deadline as deadlines
from meshkit.middleware.deadline import DeadlineMiddleware

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"ok"}


async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


class StockDeadline(DeadlineMiddleware):
    """The middleware with anyio's cancel scope per request, as before ``Overdue``."""

    def _watch_first(self, deadline: float, now: float) -> None:
        return None  # never an Overdue: every request takes the cancel-scope path


async def round_cpu_us(app: App, requests: int, concurrency: int) -> float:
    """CPU µs per request for ``requests`` requests, ``concurrency`` at a time."""

    async def send(message: Any) -> None:
        await asyncio.sleep(0)  # a real send yields to the loop: requests overlap

    async def worker(count: int) -> None:
        for _ in range(count):
            # A caller's budget, sent as the mesh client sends it.
            budget = deadlines.format_header(10.0)
            scope = {"type": "http", "headers": [(b"x-meshkit-deadline-ms", budget)]}
            await app(scope, None, send)

    start = time.process_time()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return (time.process_time() - start) / (requests // concurrency * concurrency) * 1e6


async def run(args: argparse.Namespace) -> dict[str, float]:
    variants: dict[str, App] = {
        "bare": endpoint,
        "stock": StockDeadline(endpoint),
        "shared_timer": DeadlineMiddleware(endpoint),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for app in variants.values():  # warm-up
        await round_cpu_us(app, args.requests // 10, args.concurrency)
    for _ in range(args.rounds):
        for name, app in variants.items():
            samples[name].append(await round_cpu_us(app, args.requests, args.concurrency))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    stock = medians["stock"] - medians["bare"]
    shared = medians["shared_timer"] - medians["bare"]
    spread = max(statistics.pstdev(values) for values in samples.values())
    return {
        "us_per_request_bare": round(medians["bare"], 2),
        "us_per_request_stock": round(medians["stock"], 2),
        "us_per_request_shared_timer": round(medians["shared_timer"], 2),
        "middleware_us_stock": round(stock, 2),
        "middleware_us_shared_timer": round(shared, 2),
        "ratio_middleware_shared_over_stock": round(shared / stock, 3) if stock else float("nan"),
        "round_stdev_us_max": round(spread, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.deadline", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    figures = uvloop.run(run(args))
    print_figures(figures)


if __name__ == "__main__":
    main()
