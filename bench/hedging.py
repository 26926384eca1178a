"""Hedged attempts: the tail they cut and the attempts they add, side by side in one run.

Four instance processes serve strict mTLS (uvicorn, uvloop, httptools); each answers
after a latency drawn like a real service's (a base plus an exponential tail); one of
them answers ``--slow-ms`` later to ``--slow-share`` of its requests (a noisy neighbour,
GC pauses), which the balancer's latency average sees only after the fact. This process
calls them with the mesh client at ``--concurrency`` concurrent GETs in two settings,
each with hedging off and on (hedging at the p95 of the destination's recent latency),
interleaved over ``--rounds`` rounds: ``normal`` (three normal instances) and
``one_slow`` (two normal, one slow). Every setting starts from a fresh client (no
latency history).

Reported: p50/p99 of the calls as the caller saw them, and extra attempts (attempts
beyond one per call: hedges and retries) in percent of calls; ratios are medians over
rounds. Run: ``python -m bench.hedging [--requests N]``. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench._mtls import StaticSource, mtls_server
from bench._procs import free_port, port_open, spawn, wait_until
from bench._report import percentile
from meshkit.ca.x509 import LocalAuthority
from meshkit.client import (
    AttemptEnded,
    BaseClientHooks,
    ClientPolicy,
    HedgeStarted,
    MeshClientFactory,
)
from meshkit.registry.base import Endpoint
from meshkit.settings import MeshSettings
from meshkit.tls import TLSContexts, TLSMaterial

BASE_MS = 2.0  # every instance's latency: this ...
TAIL_MS = 1.0  # ... plus an exponential draw of this mean


def serve(directory: Path, port: int, extra_ms: float, share: float) -> None:
    """One instance process: mTLS on ``port``, answering after its drawn latency, and
    ``extra_ms`` later for ``share`` of the requests."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        delay = BASE_MS + random.expovariate(1 / TAIL_MS)
        if random.random() < share:
            delay += extra_ms
        await asyncio.sleep(delay / 1000)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mtls_server(app, directory, port=port).run()


class _Counts(BaseClientHooks):
    def __init__(self) -> None:
        self.attempts = 0
        self.hedges = 0

    def on_attempt_end(self, event: AttemptEnded) -> None:
        self.attempts += 1

    def on_hedge_started(self, event: HedgeStarted) -> None:
        self.hedges += 1


async def measure(
    ports: list[int], material: TLSMaterial, *, hedge: bool, requests: int, concurrency: int
) -> dict[str, float]:
    endpoints = [Endpoint(f"payments-{p}", "payments", "127.0.0.1", p) for p in ports]
    policy = ClientPolicy(hedge_percentile=95 if hedge else None)
    counts = _Counts()
    settings = MeshSettings(service="web")
    factory = MeshClientFactory(
        StaticSource(endpoints), TLSContexts(material), settings, policy=policy, hooks=counts
    )
    payments = factory.client("payments")
    for _ in range(100):  # warm up: connections, the latency window
        await payments.get("/x")
    warm_attempts = counts.attempts
    latencies: list[float] = []
    failures = 0
    remaining = requests

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            status = (await payments.get("/x")).status_code
            latencies.append((time.perf_counter() - started) * 1000)
            failures += status != 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await factory.aclose()
    ordered = sorted(latencies)
    extra = counts.attempts - warm_attempts - len(latencies)
    return {
        "p50_ms": round(percentile(ordered, 50), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "extra_attempts_pct": round(100 * extra / len(latencies), 2),
        "failures": failures,
    }


async def run_all(
    normal: list[int], slow: int, material: TLSMaterial, args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    settings = {"normal": normal[:3], "one_slow": [*normal[:2], slow]}
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for name, ports in settings.items():
            for hedge in (False, True):
                figures = await measure(
                    ports,
                    material,
                    hedge=hedge,
                    requests=args.requests,
                    concurrency=args.concurrency,
                )
                key = f"{name}_{'hedge' if hedge else 'none'}"
                results.setdefault(key, []).append(figures)
                print(key, figures, flush=True)
    return results


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    def median(key: str, figure: str) -> float:
        return statistics.median(cell[figure] for cell in results[key])

    ratios = [
        hedged["p99_ms"] / plain["p99_ms"]
        for plain, hedged in zip(results["one_slow_none"], results["one_slow_hedge"], strict=True)
    ]
    return {
        "ratio_p99_hedge_over_none": round(statistics.median(ratios), 3),
        "ratio_p99_hedge_over_none_normal": round(
            median("normal_hedge", "p99_ms") / median("normal_none", "p99_ms"), 3
        ),
        "extra_attempts_pct_normal": median("normal_hedge", "extra_attempts_pct"),
        "extra_attempts_pct_one_slow": median("one_slow_hedge", "extra_attempts_pct"),
        "p99_ms": {key: median(key, "p99_ms") for key in results},
        "p50_ms": {key: median(key, "p50_ms") for key in results},
        "failures": sum(cell["failures"] for cells in results.values() for cell in cells),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="calls per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--slow-ms", type=float, default=150.0, help="the slow instance's delay")
    parser.add_argument(
        "--slow-share", type=float, default=0.5, help="share of its requests it delays"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--extra-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.extra_ms, args.slow_share)
        return
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp)
        authority = LocalAuthority()
        authority.issue("payments").write(directory, stem="payments")
        authority.issue("web").write(directory, stem="web")
        ports = []
        for extra in (0.0, 0.0, 0.0, args.slow_ms):
            port = free_port()
            argv = [sys.executable, "-m", "bench.hedging", "--serve", tmp, "--port", str(port)]
            process = spawn(stack, [*argv, "--extra-ms", str(extra)])
            wait_until(lambda port=port: port_open(port), what="instance", process=process)
            ports.append(port)
        files = (directory / "web.pem", directory / "web-key.pem", directory / "bundle.pem")
        material = TLSMaterial.from_files(*files)
        results = uvloop.run(run_all(ports[:3], ports[3], material, args))
    print(json.dumps(summarize(results), sort_keys=True))


if __name__ == "__main__":
    main()
