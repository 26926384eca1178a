"""Does the caller's memory stay bounded under sustained overload? (issue #16)

    python -m bench.soak [--minutes 10] [--get-rate 100] [--post-rate 100]

Real processes (``meshkit.testing.Mesh``): a dev registry, a caller (``soaker``) and
``--callees`` instances of ``soakee``, ``--slow`` of them delaying ``--slow-percent`` of
their requests by ``--delay`` seconds, longer than the caller's per-try timeout: every
attempt that lands on a delayed request is abandoned mid-request (its connection with
it) and retried elsewhere when that is safe. The load generator in this process paces
GETs and POSTs at fixed rates (a share of the POSTs with an Idempotency-Key) and
samples the caller's resident set every ``--sample`` seconds.

The default delays 30% of the requests of every instance. Instances that are always
slow (``--callees 4 --slow 2 --slow-percent 100``, the overload as first reported) are soon
avoided by the balancer (peak-EWMA P2C, outlier ejection): the caller then abandons ~2
attempts a second, and its memory shows little. Delays on every instance cannot be
routed around: ~70 abandoned attempts a second, every one a new TLS connection.

Ends with one JSON line:

- ``rss_mb_start`` / ``rss_mb_end``: the caller's VmRSS when the load starts and ends;
- ``rss_growth_mb_per_min_last5``: least-squares slope over the last 5 minutes' samples
  (the whole run when shorter), the figure to hold <= 1.0;
- ``failed_idempotent_pct``: keyed POSTs that did not end 2xx;
- achieved rates, failures per kind of request, attempts abandoned per second (from
  the caller's /metrics), the caller's and this process's CPU, its descriptors.

``--caller-env NAME=VALUE`` (repeatable) runs the caller with extra variables, e.g.
``MALLOC_ARENA_MAX=2`` or ``SOAK_DEBUG=1`` (then ``--debug-log`` records what the
caller's ``/_debug`` says at every sample; see ``bench/_soak_apps.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import ssl
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench._procs import cpu_seconds, rss_mb
from meshkit.testing import Mesh, ServiceProcess, admin_get, context_for

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15)
SLOPE_WINDOW_S = 300.0
TICK_S = 0.005


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--get-rate", type=float, default=100.0, help="GETs per second")
    parser.add_argument("--post-rate", type=float, default=100.0, help="POSTs per second")
    parser.add_argument("--keyed", type=float, default=0.5, help="share of POSTs with a key")
    parser.add_argument("--callees", type=int, default=3)
    parser.add_argument("--slow", type=int, default=3, help="callee instances that delay")
    parser.add_argument("--delay", type=float, default=1.0, help="their delay, seconds")
    parser.add_argument("--slow-percent", type=float, default=30.0, help="of their requests")
    parser.add_argument("--per-try-timeout", type=float, default=0.5)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--connections", type=int, default=128, help="the load generator's, all opened first"
    )
    parser.add_argument("--caller-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--debug-log", type=Path, help="JSON lines of the caller's /_debug")
    parser.add_argument(
        "--debug-trim", action="store_true", help="/_debug calls malloc_trim(0) (changes RSS)"
    )
    return parser.parse_args(argv)


# -- measuring the caller ---------------------------------------------------------------


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    count = len(samples)
    mean_t = sum(t for t, _ in samples) / count
    mean_y = sum(y for _, y in samples) / count
    covariance = sum((t - mean_t) * (y - mean_y) for t, y in samples)
    variance = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60.0 * covariance / variance if variance else 0.0


@dataclass
class Samples:
    """The caller's RSS (MB) and descriptors over time (seconds since the load began)."""

    pid: int
    rss: list[tuple[float, float]] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def take(self, elapsed: float) -> float:
        mb = rss_mb(self.pid)
        self.rss.append((elapsed, mb))
        self.fds.append(descriptors(self.pid))
        return mb

    def growth_last(self, window: float) -> float:
        end = self.rss[-1][0]
        return slope_per_minute([(t, mb) for t, mb in self.rss if t >= end - window])


# -- the load ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes per kind of request: ``get``, ``post_keyed``, ``post_unkeyed``."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    done: int = 0

    def record(self, kind: str, outcome: int | str) -> None:
        self.done += 1
        if isinstance(outcome, int) and 200 <= outcome < 300:
            self.ok[kind] += 1
        else:
            self.statuses[f"{kind}:{outcome}"] += 1

    def failed(self, kind: str) -> int:
        return self.sent[kind] - self.ok[kind]


async def one_request(
    session: aiohttp.ClientSession, url: str, kind: str, number: int, tally: Tally
) -> None:
    tally.sent[kind] += 1
    headers = {"Idempotency-Key": uuid.uuid4().hex} if kind == "post_keyed" else {}
    try:
        if kind == "get":
            request = session.get(url)
        else:
            request = session.post(url, json={"order": number}, headers=headers)
        async with request as response:
            await response.read()
            outcome: int | str = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = type(exc).__name__
    tally.record(kind, outcome)


class Pacer:
    """Starts each kind of request at its fixed rate, from a tick, whatever latency does:
    an open-loop load, so a slow caller gets more in flight rather than less traffic."""

    def __init__(self, session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> None:
        self._session = session
        self._url = url
        self._get_rate = args.get_rate
        self._post_rate = args.post_rate
        self._keyed = args.keyed
        self._started = {"get": 0, "post": 0}
        self.tally = Tally()

    async def run(self, seconds: float) -> None:
        """Send for ``seconds``, then wait for every answer."""
        async with asyncio.TaskGroup() as group:
            begin = time.monotonic()
            while (elapsed := time.monotonic() - begin) < seconds:
                self._start_due(group, "get", self._get_rate * elapsed)
                self._start_due(group, "post", self._post_rate * elapsed)
                await asyncio.sleep(TICK_S)

    def _start_due(self, group: asyncio.TaskGroup, kind: str, due: float) -> None:
        while self._started[kind] < int(due):
            number = self._started[kind] = self._started[kind] + 1
            if kind == "post":
                # Every other POST keyed at 0.5: spread evenly, not in random clumps.
                keyed = int(number * self._keyed) != int((number - 1) * self._keyed)
                kind_now = "post_keyed" if keyed else "post_unkeyed"
            else:
                kind_now = kind
            group.create_task(one_request(self._session, self._url, kind_now, number, self.tally))

    @property
    def in_flight(self) -> int:
        return sum(self._started.values()) - self.tally.done


async def sample_every(
    samples: Samples,
    session: aiohttp.ClientSession,
    debug_url: str | None,
    debug_log: Path | None,
    period: float,
    pacer: Pacer,
) -> None:
    begin = time.monotonic()
    for tick in itertools.count(1):
        await asyncio.sleep(max(begin + tick * period - time.monotonic(), 0.0))
        elapsed = time.monotonic() - begin
        mb = samples.take(elapsed)
        line = f"soak: {elapsed:6.0f} s  caller RSS {mb:7.1f} MB  fds {samples.fds[-1]}"
        print(f"{line}  in flight {pacer.in_flight}", file=sys.stderr, flush=True)
        if debug_url is not None and debug_log is not None:
            await record_debug(session, debug_url, debug_log, elapsed)


async def record_debug(session: aiohttp.ClientSession, url: str, log: Path, elapsed: float) -> None:
    try:
        async with session.get(url) as response:
            figures = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        figures = {"error": repr(exc)}
    with log.open("a") as out:
        out.write(json.dumps({"t": round(elapsed), **figures}) + "\n")


async def open_connections(session: aiohttp.ClientSession, url: str, count: int) -> None:
    """Open every connection of the load generator before measuring.

    aiohttp reuses its idle connections first in, first out, so none stays idle long
    enough to be closed: a burst of requests that opened more would keep them, and the
    caller's TLS state for them, to the end of the run, a step in its RSS that says
    nothing about the caller. Opened at once, they are part of ``rss_mb_start``.
    """
    async with asyncio.TaskGroup() as group:
        for number in range(count):
            group.create_task(one_request(session, url, "get", number, Tally()))
    await asyncio.sleep(1.0)


async def drive(
    args: argparse.Namespace, caller: ServiceProcess, tls: ssl.SSLContext
) -> dict[str, Any]:
    url = f"https://127.0.0.1:{caller.port}/item"
    debug_url = f"https://127.0.0.1:{caller.port}/_debug" if args.debug_log else None
    if debug_url is not None and args.debug_trim:
        debug_url += "?trim=1"
    connector = aiohttp.TCPConnector(limit=args.connections, ssl=tls)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        await open_connections(session, url, args.connections)
        pacer = Pacer(session, url, args)
        samples = Samples(caller.process.pid)
        samples.take(0.0)
        cpu_caller = cpu_seconds(caller.process.pid)
        cpu_self = time.process_time()
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            sampler = group.create_task(
                sample_every(samples, session, debug_url, args.debug_log, args.sample, pacer)
            )
            await pacer.run(args.minutes * 60.0)
            sampler.cancel()
        elapsed = time.monotonic() - started
        samples.take(elapsed)
        cpu = (cpu_seconds(caller.process.pid) - cpu_caller, time.process_time() - cpu_self)
    counters = client_counters(caller)
    abandoned = counters.get("attempts_AttemptTimedOut", 0) / elapsed
    figures = summary(args, pacer.tally, samples, elapsed, cpu)
    return {**figures, "abandoned_attempts_per_s": round(abandoned, 1), "client": counters}


def summary(
    args: argparse.Namespace,
    tally: Tally,
    samples: Samples,
    elapsed: float,
    cpu: tuple[float, float],
) -> dict[str, Any]:
    keyed = tally.sent["post_keyed"]
    return {
        "minutes": round(elapsed / 60, 2),
        "rss_mb_start": round(samples.rss[0][1], 1),
        "rss_mb_end": round(samples.rss[-1][1], 1),
        "rss_mb_max": round(max(mb for _, mb in samples.rss), 1),
        "rss_growth_mb_per_min_last5": round(samples.growth_last(SLOPE_WINDOW_S), 3),
        "failed_idempotent_pct": round(100 * tally.failed("post_keyed") / max(keyed, 1), 3),
        "get_rps": round(tally.sent["get"] / elapsed, 1),
        "post_rps": round((keyed + tally.sent["post_unkeyed"]) / elapsed, 1),
        "sent": dict(tally.sent),
        "failed": {kind: tally.failed(kind) for kind in sorted(tally.sent)},
        "failures": dict(tally.statuses.most_common(8)),
        "caller_cpu_pct": round(100 * cpu[0] / elapsed, 1),
        "loadgen_cpu_pct": round(100 * cpu[1] / elapsed, 1),
        "caller_fds_start_end": [samples.fds[0], samples.fds[-1]],
        "callees": f"{args.callees - args.slow} fast + {args.slow} delaying {args.delay} s "
        f"({args.slow_percent:g}% of requests)",
        "per_try_timeout_s": args.per_try_timeout,
        "caller_env": args.caller_env,
        "rss_mb_samples": [round(mb, 1) for _, mb in samples.rss],
    }


def client_counters(caller: ServiceProcess) -> dict[str, int]:
    """What the caller's client did, from its /metrics: attempts by error type
    (``AttemptTimedOut``: abandoned mid-request by the per-try timeout), retries, ejections."""
    status, body = admin_get(caller.admin_port, "/metrics")
    counters: collections.Counter[str] = collections.Counter()
    if status != 200:
        return {}
    for line in body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("meshkit_client_attempts_total{"):
            error = name.partition('error_type="')[2].partition('"')[0]
            counters[f"attempts_{error or 'ok'}"] += int(float(value))
        elif name.startswith(("meshkit_retries_total{", "meshkit_endpoint_ejections_total{")):
            counters[name.partition("_total")[0].removeprefix("meshkit_")] += int(float(value))
    return dict(counters)


def start_mesh(mesh: Mesh, args: argparse.Namespace) -> ServiceProcess:
    target = "bench._soak_apps"
    fast = args.callees - args.slow
    if fast:
        mesh.start(f"{target}:callee", "soakee", instances=fast)
    if args.slow:
        mesh.start(
            f"{target}:callee",
            "soakee",
            instances=args.slow,
            faults=f"delay={args.delay},percent={args.slow_percent}",
        )
    extra = dict(item.split("=", 1) for item in args.caller_env)
    env = {"SOAK_PER_TRY_TIMEOUT": str(args.per_try_timeout), **extra}
    (caller,) = mesh.start(f"{target}:caller", "soaker", env=env)
    return caller


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="meshkit-soak-") as directory,
        Mesh(Path(directory)) as mesh,
    ):
        caller = start_mesh(mesh, args)
        tls = context_for(mesh.authority.issue("loadgen"), mesh.authority.bundle_pem)
        result = uvloop.run(drive(args, caller, tls))
    print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
