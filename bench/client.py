"""Client CPU per request: meshkit's mesh client vs raw aiohttp vs raw httpx, over mTLS.

One uvicorn server (uvloop + httptools, strict mTLS) runs in a subprocess; this process
drives it with each client in turn at 16 and 64 concurrent requests and measures its
own CPU time per request (the server's CPU is not counted). The meshkit client runs
with everything on: discovery (a static source), P2C, retries, budget, breaker,
limits, identity-checked mTLS; ``meshkit_telemetry`` is the same client with the hooks a
ServiceApp installs (``ClientTelemetry``: metrics, and CLIENT spans from an SDK tracer
sampling 10% of traces, recorded and not exported), so ``us_telemetry_cN`` is what
the client's telemetry costs a call. Run: ``python -m bench.client [--requests N]``.
Ends with one JSON line of the figures.

``--clients meshkit_telemetry --concurrency 1`` runs one cell alone, e.g. under
callgrind to count the instructions of a change (run it at two ``--requests`` and
divide the difference: start-up cancels out).

uvicorn writes a response's head and body apart, two TLS records: whether the client
reads them in one pass or two depends on how the two processes are scheduled, so on
a loaded machine the count moves by thousands of instructions a call. ``--canned``
serves the same response (status, headers, body) from a protocol that writes it in
one record: one read per response, counts repeatable under any load. With
``--toggle-collect=uv_run`` callgrind also leaves out the imports, the noisiest part
of start-up, e.g. ``PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=uv_run
python -m bench.client --canned --clients meshkit --concurrency 1 --requests 300``
(and 1300; the difference / 1000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from bench._mtls import StaticSource, mtls_server
from meshkit.ca.x509 import LocalAuthority
from meshkit.client import ClientPolicy, MeshClientFactory
from meshkit.registry.base import Endpoint
from meshkit.settings import MeshSettings
from meshkit.telemetry.client import ClientTelemetry
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.tls import TLSContexts, TLSMaterial, client_context

CONCURRENCY = (16, 64)
CLIENTS = ("aiohttp", "httpx", "meshkit", "meshkit_telemetry")
Send = Callable[[], Awaitable[int]]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


CANNED = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 04:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
)


class _Canned(asyncio.Protocol):
    """What uvicorn answers ``_app`` with, in one write per (bodiless) request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: Any = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            _, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            self._transport.write(CANNED)


def serve_canned(directory: Path) -> None:
    """The ``--canned`` server subprocess: ``_Canned`` over strict mTLS, as ``serve``."""
    files = (directory / "payments.pem", directory / "payments-key.pem", directory / "bundle.pem")
    context = TLSContexts(TLSMaterial.from_files(*files)).listening_context

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Canned, "127.0.0.1", 0, ssl=context)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    uvloop.run(run())


def serve(directory: Path) -> None:
    """The server subprocess: mTLS uvicorn on an ephemeral port, printed on stdout."""
    server = mtls_server(_app, directory)

    async def run() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await asyncio.sleep(0.01)
        print(server.servers[0].sockets[0].getsockname()[1], flush=True)
        await task

    uvloop.run(run())


async def measure(send: Send, concurrency: int, requests: int) -> dict[str, float]:
    """Client CPU seconds per request and requests per second for ``requests`` calls."""
    for _ in range(100):  # warm up: connections, caches
        await send()
    remaining = requests
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            if await send() != 200:
                failures += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "cpu_us_per_request": cpu / requests * 1e6,
        "requests_per_second": requests / wall,
        "failures": failures,
    }


async def bench_aiohttp(url: str, material: TLSMaterial, concurrency: int, requests: int) -> Any:
    connector = aiohttp.TCPConnector(ssl=client_context(material), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> int:
            async with session.get(url) as response:
                await response.read()
                return response.status

        return await measure(send, concurrency, requests)


async def bench_httpx(url: str, material: TLSMaterial, concurrency: int, requests: int) -> Any:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(verify=client_context(material), limits=limits) as client:

        async def send() -> int:
            return (await client.get(url)).status_code

        return await measure(send, concurrency, requests)


async def bench_meshkit(
    port: int,
    material: TLSMaterial,
    concurrency: int,
    requests: int,
    *,
    telemetry: bool = False,
    keep_idle: bool = False,
) -> Any:
    # Two registry entries for the one server, so every call runs a real P2C pick.
    # At one call at a time P2C may leave one of them unpicked for seconds: ``keep_idle``
    # keeps its connection (the canned server closes none), so that no reconnect, a TLS
    # handshake, lands among the counted calls.
    policy = ClientPolicy(idle_timeout=3600.0) if keep_idle else None
    source = StaticSource(
        [Endpoint(f"payments-{n}", "payments", "127.0.0.1", port) for n in (1, 2)]
    )
    hooks = None
    if telemetry:
        random.seed(0)  # the same calls sampled in every run: instruction counts compare
        sampler = ParentBased(TraceIdRatioBased(0.1))
        hooks = ClientTelemetry(MeshMetrics(), tracer_provider=TracerProvider(sampler=sampler))
    factory = MeshClientFactory(
        source, TLSContexts(material), MeshSettings(service="web"), hooks=hooks, policy=policy
    )
    payments = factory.client("payments")

    async def send() -> int:
        return (await payments.get("/charge")).status_code

    try:
        return await measure(send, concurrency, requests)
    finally:
        await factory.aclose()


async def run_all(
    port: int,
    directory: Path,
    requests: int,
    clients: Sequence[str],
    concurrency: Sequence[int],
    *,
    canned: bool = False,
) -> dict[str, Any]:
    files = (directory / "web.pem", directory / "web-key.pem", directory / "bundle.pem")
    material = TLSMaterial.from_files(*files)
    url = f"https://127.0.0.1:{port}/charge"
    cells: dict[str, Callable[[int], Awaitable[Any]]] = {
        "aiohttp": lambda c: bench_aiohttp(url, material, c, requests),
        # httpx is ~15x slower: fewer requests give as stable a figure in similar time.
        "httpx": lambda c: bench_httpx(url, material, c, max(requests // 4, 500)),
        "meshkit": lambda c: bench_meshkit(port, material, c, requests, keep_idle=canned),
        "meshkit_telemetry": lambda c: bench_meshkit(
            port, material, c, requests, telemetry=True, keep_idle=canned
        ),
    }
    results: dict[str, Any] = {}
    for c in concurrency:
        for client in clients:
            results[f"{client}_c{c}"] = await cells[client](c)
    return results


def _ratios(results: dict[str, Any], concurrency: Sequence[int]) -> dict[str, float]:
    ratios = {}
    for c in concurrency:
        mesh = results.get(f"meshkit_c{c}")
        for other in ("aiohttp", "httpx"):
            theirs = results.get(f"{other}_c{c}")
            if mesh is not None and theirs is not None:
                ratio = mesh["cpu_us_per_request"] / theirs["cpu_us_per_request"]
                ratios[f"ratio_cpu_vs_{other}_c{c}"] = round(ratio, 3)
        telemetry = results.get(f"meshkit_telemetry_c{c}")
        if mesh is not None and telemetry is not None:
            cost = telemetry["cpu_us_per_request"] - mesh["cpu_us_per_request"]
            ratios[f"us_telemetry_c{c}"] = round(cost, 1)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=8000, help="calls per cell (8000)")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated subset of the cells"
    )
    parser.add_argument(
        "--concurrency", default="16,64", help="comma-separated concurrent calls per cell"
    )
    parser.add_argument(
        "--canned", action="store_true", help="a server answering in one TLS record (see above)"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-canned", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.clients = args.clients.split(",")
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    if set(args.clients) - set(CLIENTS):
        parser.error(f"unknown clients: {', '.join(sorted(set(args.clients) - set(CLIENTS)))}")
    if args.serve:
        serve(args.serve)
        return
    if args.serve_canned:
        serve_canned(args.serve_canned)
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        authority = LocalAuthority()
        authority.issue("payments").write(directory, stem="payments")
        authority.issue("web").write(directory, stem="web")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.client",
                "--serve-canned" if args.canned else "--serve",
                str(directory),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            results = uvloop.run(
                run_all(
                    port,
                    directory,
                    args.requests,
                    args.clients,
                    args.concurrency,
                    canned=args.canned,
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
    for name, figures in results.items():
        print(
            f"{name:14} {figures['cpu_us_per_request']:8.1f} us CPU/request "
            f"{figures['requests_per_second']:9.0f} req/s  failures {figures['failures']}"
        )
    summary = {"results": results, **_ratios(results, args.concurrency)}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
