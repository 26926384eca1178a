"""The load generator: one process, aiohttp, N concurrent workers, latency per request.

Every path is driven by this same program. It talks to its parent over stdin/stdout so
the parent can sample the servers' CPU exactly around the measured window:

    (connect, wait until the target answers 200, warm up)  -> prints "ready"
    parent samples /proc, writes "go"                       -> measured window
    every worker finished its last request                 -> prints "done"
    parent samples /proc again, writes "go"                 -> closes, writes the result

    python -m bench._loadgen --url URL --concurrency N --duration S --result FILE
        [--warmup S] [--cert CHAIN --key KEY --ca BUNDLE] [--mesh-headers]

``--mesh-headers`` sends with each request what a meshkit caller's mesh client sends: a
``traceparent`` of a new trace (10% of them sampled) and the deadline headers of a
10 s call timeout, and none of aiohttp's ``Accept`` and ``Accept-Encoding`` (the mesh
client sends neither), so a meshkit server does per request what M's callee does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import uvloop

from meshkit.tls import TLSMaterial, client_context

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


def command(
    url: str,
    result: Path,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    tls: tuple[Path, Path, Path] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a load generator (``tls``: certificate, key, trust bundle)."""
    argv = [sys.executable, "-m", "bench._loadgen", "--url", url, "--result", str(result)]
    argv += ["--concurrency", str(concurrency), "--duration", str(seconds)]
    argv += ["--warmup", str(warmup), *extra]
    if tls is not None:
        cert, key, bundle = tls
        argv += ["--cert", str(cert), "--key", str(key), "--ca", str(bundle)]
    return argv


def start(argv: Sequence[str], cwd: Path) -> subprocess.Popen[str]:
    """A load generator the parent talks to over its stdin and stdout (see above)."""
    pipe = subprocess.PIPE
    return subprocess.Popen(argv, cwd=cwd, stdin=pipe, stdout=pipe, stderr=pipe, text=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench._loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--ca", type=Path)
    parser.add_argument("--result", type=Path, required=True, help="where the JSON goes")
    parser.add_argument(
        "--mesh-headers",
        action="store_true",
        help="send a mesh client's trace context (10%% sampled) and deadline headers",
    )
    return parser.parse_args(argv)


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | bool:
    if args.cert is None:
        return False
    return client_context(TLSMaterial.from_files(args.cert, args.key, args.ca))


class Tally:
    """What one phase measured: latencies of successful requests, and failures."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.first_error: str | None = None

    def failed(self, reason: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or reason


def mesh_headers() -> dict[str, str]:
    """What meshkit's client sends on a call (meshkit.deadline, W3C traceparent)."""
    sampled = "01" if random.random() < 0.1 else "00"
    trace_id, span_id = random.getrandbits(128) or 1, random.getrandbits(64) or 1
    return {
        "traceparent": f"00-{trace_id:032x}-{span_id:016x}-{sampled}",
        "x-meshkit-deadline-ms": "10000",
        "x-meshkit-sent-ms": str(int(time.time() * 1000)),
    }


def no_headers() -> None:
    return None


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    deadline: float,
    tally: Tally,
    headers: Callable[[], dict[str, str] | None],
) -> None:
    clock = time.perf_counter
    while clock() < deadline:
        start = clock()
        try:
            async with session.get(url, headers=headers()) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.failed(f"{type(exc).__name__}: {exc}")
            continue
        if status == 200:
            tally.latencies_ms.append((clock() - start) * 1000.0)
        else:
            tally.failed(f"HTTP {status}")


async def phase(
    session: aiohttp.ClientSession,
    url: str,
    concurrency: int,
    seconds: float,
    headers: Callable[[], dict[str, str] | None] = no_headers,
) -> tuple[Tally, float]:
    tally = Tally()
    start = time.perf_counter()
    deadline = start + seconds
    workers = (worker(session, url, deadline, tally, headers) for _ in range(concurrency))
    await asyncio.gather(*workers)
    return tally, time.perf_counter() - start


async def wait_ready(session: aiohttp.ClientSession, url: str, seconds: float) -> None:
    """Until the target answers 200 (M: until the callee is discovered through the registry)."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                await response.read()
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.1)
    raise SystemExit(f"loadgen: {url} not ready after {seconds:.0f} s: {last}")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def parent_says() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run(args: argparse.Namespace) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=args.concurrency, ssl=tls_context(args))
    skip = ("Accept", "Accept-Encoding") if args.mesh_headers else ()
    async with aiohttp.ClientSession(
        connector=connector, timeout=REQUEST_TIMEOUT, skip_auto_headers=skip
    ) as session:
        await wait_ready(session, args.url, args.ready_timeout)
        headers = mesh_headers if args.mesh_headers else no_headers
        await phase(session, args.url, args.concurrency, args.warmup, headers)
        say("ready")
        await parent_says()
        tally, elapsed = await phase(session, args.url, args.concurrency, args.duration, headers)
        say("done")
        await parent_says()  # closing connections wakes the servers: only after sampling
    return {
        "concurrency": args.concurrency,
        "elapsed_s": elapsed,
        "requests": len(tally.latencies_ms),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "latencies_ms": [round(value, 4) for value in tally.latencies_ms],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = uvloop.run(run(args))
    # To a file, not stdout: the result outgrows a pipe's buffer, and the loop may have
    # left stdout non-blocking (a short write then kills the process mid-line).
    args.result.write_text(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
