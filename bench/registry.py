"""The dev registry at 1,000 services x 3 instances: health reads per second, blocking-query
wake-up latency after a change, and server memory.

Run: .venv/bin/python -m bench.registry [--services 1000] [--instances 3] [--seconds 3]

The registry runs as its own process (``meshkit registry serve --port 0``), as in use; the
load comes from aiohttp in this process. Targets: >= 2,000 health reads/s, wake-up p99
< 50 ms, RSS < 150 MB. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

TARGETS = {"health_reads_per_s": 2000.0, "wake_p99_ms": 50.0, "rss_mb": 150.0}


def start_registry() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "meshkit", "registry", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    match = re.search(r"http://\S+", process.stdout.readline())
    if match is None:
        process.kill()
        raise SystemExit("the registry did not print its address")
    return process, match.group(0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def populate(
    session: aiohttp.ClientSession, base: str, services: int, instances: int
) -> None:
    semaphore = asyncio.Semaphore(32)

    async def register(service: int, number: int) -> None:
        body = {
            "Name": f"svc-{service}",
            "ID": f"svc-{service}-{number}",
            "Address": "127.0.0.1",
            "Port": 10000 + number,
            "Tags": ["version=1.0.0"],
            "Meta": {"spiffe_id": f"spiffe://meshkit.local/ns/default/svc/svc-{service}"},
            "Check": {"CheckID": f"ttl-{service}-{number}", "TTL": "10m", "Status": "passing"},
        }
        async with semaphore, session.put(f"{base}/v1/agent/service/register", json=body) as r:
            assert r.status == 200, await r.text()

    await asyncio.gather(*(register(s, n) for s in range(services) for n in range(instances)))


async def health_reads(
    session: aiohttp.ClientSession, base: str, services: int, seconds: float, workers: int = 16
) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            url = f"{base}/v1/health/service/svc-{random.randrange(services)}?passing=1"
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return count / (time.perf_counter() - started)


class Watchers:
    """One blocking query per service, re-armed after every answer."""

    def __init__(self, session: aiohttp.ClientSession, base: str, services: int) -> None:
        self.session, self.base, self.services = session, base, services
        self.woken: dict[int, asyncio.Event] = {s: asyncio.Event() for s in range(services)}
        self.woken_at: dict[int, float] = {}
        self.armed = 0

    async def watch(self, service: int) -> None:
        url = f"{self.base}/v1/health/service/svc-{service}"
        async with self.session.get(url) as response:
            index = response.headers["X-Consul-Index"]
            await response.read()
        while True:
            self.armed += 1
            async with self.session.get(url, params={"index": index, "wait": "60s"}) as response:
                await response.read()
                new_index = response.headers["X-Consul-Index"]
            self.armed -= 1
            if new_index != index:
                self.woken_at[service] = time.perf_counter()
                self.woken[service].set()
            index = new_index


async def wake_latencies(
    session: aiohttp.ClientSession, base: str, services: int, instances: int, changes: int
) -> tuple[list[float], int]:
    watchers = Watchers(session, base, services)
    tasks = [asyncio.create_task(watchers.watch(s)) for s in range(services)]
    while watchers.armed < services:  # noqa: ASYNC110 (a progress count, polled)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # let every query park
    latencies = []
    for _ in range(changes // 2):
        service = random.randrange(services)
        check = f"ttl-{service}-{random.randrange(instances)}"
        # Fail one instance's check, then pass it again: two changes, two wake-ups.
        for status in ("fail", "pass"):
            watchers.woken[service].clear()
            started = time.perf_counter()
            async with session.put(f"{base}/v1/agent/check/{status}/{check}") as response:
                assert response.status == 200
            await asyncio.wait_for(watchers.woken[service].wait(), 5)
            latencies.append((watchers.woken_at[service] - started) * 1000)
    parked = watchers.armed
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return latencies, parked


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    process, base = start_registry()
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.perf_counter()
            await populate(session, base, args.services, args.instances)
            total = args.services * args.instances
            print(f"registered {total} instances in {time.perf_counter() - started:.1f}s")
            cpu_before, clock = cpu_seconds(process.pid), time.perf_counter()
            reads = await health_reads(session, base, args.services, args.seconds)
            busy = (cpu_seconds(process.pid) - cpu_before) / (time.perf_counter() - clock)
            print(f"health reads: {reads:,.0f}/s (?passing, 16 concurrent clients)")
            print(
                f"  server CPU {busy * 100:.0f}% of a core, {busy / reads * 1e6:.0f} us per read "
                f"(~{reads / busy:,.0f} reads/s per server core; the client shares the machine)"
            )
            latencies, parked = await wake_latencies(
                session, base, args.services, args.instances, args.changes
            )
            rss = rss_mb(process.pid)
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        print(
            f"wake-up after a change, {parked} blocking queries parked: "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(latencies):.2f} ms "
            f"({len(latencies)} changes)"
        )
        print(f"server RSS with {parked} parked queries: {rss:.1f} MB")
        figures = {
            "health_reads_per_s": round(reads),
            "wake_p99_ms": round(p99, 2),
            "rss_mb": round(rss, 1),
        }
        for key, target in TARGETS.items():
            value = figures[key]
            ratio = value / target
            better = ratio >= 1 if key == "health_reads_per_s" else ratio <= 1
            verdict = "ok" if better else "MISSED"
            print(f"  {key}: {value} vs target {target:g} -> {ratio:.2f}x target ({verdict})")
        return figures
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
