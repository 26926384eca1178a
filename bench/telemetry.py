"""Server CPU per request with TelemetryMiddleware on vs off, side by side in one run.

Each mode runs in its own uvicorn process (httptools + uvloop) serving the same
Starlette endpoint; one load-generator process (aiohttp, 16 concurrent requests over
keep-alive connections) drives them in alternating rounds, and reads each server's CPU
(all threads: the span exporter's included) from /proc/<pid>/task/*/schedstat. A round
ends with a POST to ``/flush`` (every mode gets it): the spans the exporter still holds
are posted then, so every post is charged to the round whose spans it carries.

Every mode runs twice: over strict mTLS with a verified caller (what ServiceApp serves,
the headline ratios) and over plaintext HTTP (``*_plaintext``: a smaller denominator).

Modes: ``off`` (no middleware), ``notrace`` (metrics, no tracer provider: the API's
no-op tracer, which still propagates context), ``sampledN`` (the SDK configured by
``configure_tracing_from_env`` with parentbased_traceidratio N/100, exporting
OTLP/HTTP protobuf to a sink in the load generator, as in production), and variants
of it that measure meshkit's two fast paths against the stock ones in the same run:

- ``sampledN_stock``: both off, as when ``meshkit.telemetry._otel_sdk``'s import check
  fails: spans from the SDK's ``Tracer.start_span``, exported by the stock
  ``BatchSpanProcessor`` + ``OTLPSpanExporter``;
- ``sampledN_stockexport``: meshkit's spans (``SpanStarter``/``MeshSpan``), the stock
  processor and exporter: against ``sampledN_stock`` it isolates the span making,
  against ``sampledN`` the encoder (``OTLPBatchProcessor``);
- ``sampledN_noexport``: meshkit's spans recorded but never exported;
- ``MODE_tap`` (any mode above): the same with the tap ring recording every request
  (``us_cost_MODE_tap`` is what recording costs per request).

The default modes are off, notrace, sampled10, sampled10_stock, sampled100,
sampled100_stockexport, sampled100_stock, sampled100_noexport.

    python -m bench.telemetry [--requests 4000] [--rounds 9] [--modes notrace,sampled0]

Ends with one JSON line: CPU µs per request per mode, ratios to ``off``, and
``us_saved_<mode>``: the µs per request ``<mode>`` saves over ``<mode>_stock`` (and
``us_saved_sampledN_spans``/``_export``: what each fast path saves alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

MODES = (
    "off",
    "notrace",
    "sampled10",
    "sampled10_stock",
    "sampled100",
    "sampled100_stockexport",
    "sampled100_stock",
    "sampled100_noexport",
)
TRANSPORTS = ("mtls", "plaintext")
CONCURRENCY = 16
#: Every measured request rides a connection opened in the warm-up (no handshakes).
KEEP_ALIVE_SECONDS = 3600


# --- the server process -------------------------------------------------------------


def serve(mode: str, sink: str, tls_dir: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp

    from meshkit.middleware.telemetry import TelemetryMiddleware
    from meshkit.telemetry.metrics import MeshMetrics
    from meshkit.telemetry.tap import TapRing

    provider = None

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"item": request.path_params["item_id"]})

    def flush(request: Request) -> JSONResponse:
        # The round's spans still waiting are posted now, inside the round's CPU window:
        # without it they go up to OTEL_BSP_SCHEDULE_DELAY later, during other modes'
        # rounds, and their posts would be charged to no mode.
        if provider is not None:
            provider.force_flush()
        return JSONResponse({})

    app: ASGIApp = Starlette(
        routes=[Route("/items/{item_id:int}", item), Route("/flush", flush, methods=["POST"])]
    )
    if mode != "off":
        if mode.startswith("sampled"):
            percent, _, variant = mode.removeprefix("sampled").removesuffix("_tap").partition("_")
            provider = tracer_provider(int(percent) / 100, variant, sink)
        # Outermost, as ServiceApp installs it; ``*_tap`` modes also fill a TapRing, as
        # ServiceApp does unless MESHKIT_TAP_SIZE=0.
        tap = TapRing() if mode.endswith("_tap") else None
        app = TelemetryMiddleware(
            app, service="bench", metrics=MeshMetrics(), tracer_provider=provider, tap=tap
        )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    print(sock.getsockname()[1], flush=True)
    options: dict[str, Any] = {"http": "httptools"}
    if tls_dir:
        # The verified caller reaches the scope as meshkit.serving.server will put it there.
        from meshkit.serving.protocol import MeshHttpToolsProtocol

        options = {
            "http": MeshHttpToolsProtocol,
            "ssl_certfile": f"{tls_dir}/svid.pem",
            "ssl_keyfile": f"{tls_dir}/svid-key.pem",
            "ssl_ca_certs": f"{tls_dir}/bundle.pem",
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    config = uvicorn.Config(
        app,
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="error",
        # Connections idle while the other modes run: uvicorn's default (5 s) would
        # close them, and each mode whose wait outlasted it would pay new handshakes.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        **options,
    )
    # As `meshkit run` does once it serves, in every mode alike.
    from meshkit.serving.server import freeze_startup_objects

    freeze_startup_objects()
    uvicorn.Server(config).run(sockets=[sock])


def tracer_provider(ratio: float, variant: str, sink: str) -> TracerProvider | None:
    """The provider of a ``sampledN[_variant]`` mode (built before the middleware, which
    decides then whether it makes meshkit's spans)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from meshkit.telemetry import _otel_sdk

    if variant in ("stock", "stockexport"):
        # What meshkit does when the adapter's import-time check fails: decided when
        # meshkit.telemetry.sdk is imported (it then imports the stock exporter).
        _otel_sdk._INTERNALS = None
    from meshkit.telemetry.sdk import configure_tracing_from_env, sampler_from_env

    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }
    if variant == "noexport":
        # No span processor: spans recorded, then dropped as they end.
        resource = Resource.create({"service.name": "bench"})
        return TracerProvider(resource=resource, sampler=sampler_from_env(environ))
    provider = configure_tracing_from_env("bench", environ)
    if variant == "stockexport":
        _otel_sdk._INTERNALS = _otel_sdk.check()  # the middleware's spans are meshkit's
    return provider


# --- the load generator -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in ns precision (/proc/*/schedstat), where
    /proc/<pid>/stat counts 10 ms ticks: too coarse for a few thousand requests."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                total += int(handle.read().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return total / 1e9


@contextmanager
def server(mode: str, sink: str, tls_dir: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    command = [sys.executable, "-m", "bench.telemetry", "--serve", mode, "--sink", sink]
    command += ["--tls-dir", tls_dir] if tls_dir else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def drive(session: object, origin: str, requests: int) -> None:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    url = f"{origin}/items/42"

    async def worker(count: int) -> None:
        for _ in range(count):
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200

    await asyncio.gather(*(worker(requests // CONCURRENCY) for _ in range(CONCURRENCY)))


async def flush_spans(session: object, origin: str) -> None:
    """Have the server post the spans its exporter still holds (one request; every mode
    gets it, so each pays the same for it)."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    async with session.post(f"{origin}/flush") as response:
        await response.read()
        assert response.status == 200


async def start_sink() -> tuple[object, str]:
    """An OTLP/HTTP endpoint that accepts and drops span batches."""
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    application = web.Application()
    application.router.add_post("/v1/traces", accept)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def write_identities(directory: Path) -> ssl.SSLContext:
    """Server identity files for uvicorn; returns the caller's client context."""
    from meshkit.ca.x509 import LocalAuthority
    from meshkit.tls import TLSMaterial, client_context

    authority = LocalAuthority()
    authority.issue("bench").write(directory)
    caller = authority.issue("loadgen")
    return client_context(TLSMaterial(caller.chain_pem, caller.key_pem, caller.bundle_pem))


async def run(requests: int, rounds: int, modes: list[str]) -> dict[str, object]:
    runner, sink = await start_sink()
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-") as directory:
        client_ssl = write_identities(Path(directory))
        for transport in TRANSPORTS:
            tls_dir, context = (directory, client_ssl) if transport == "mtls" else ("", None)
            per_request = await measure(requests, rounds, sink, tls_dir, context, modes)
            figures.update(summarize(per_request, "" if transport == "mtls" else "_plaintext"))
    await runner.cleanup()  # type: ignore[attr-defined]
    return figures


async def measure(
    requests: int,
    rounds: int,
    sink: str,
    tls_dir: str,
    context: ssl.SSLContext | None,
    modes: list[str],
) -> dict[str, list[float]]:
    import aiohttp

    per_request: dict[str, list[float]] = {mode: [] for mode in modes}
    scheme = "https" if context else "http"
    with ExitStack() as stack:
        servers = {mode: stack.enter_context(server(mode, sink, tls_dir)) for mode in modes}
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=CONCURRENCY,
            ssl=context if context else False,
            keepalive_timeout=KEEP_ALIVE_SECONDS,
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            origins = {mode: f"{scheme}://127.0.0.1:{port}" for mode, (_, port) in servers.items()}
            for origin in origins.values():
                await drive(session, origin, requests // 4)  # warm up
            for _ in range(rounds):
                for mode, (process, _) in servers.items():
                    before = cpu_seconds(process.pid)
                    await drive(session, origins[mode], requests)
                    await flush_spans(session, origins[mode])
                    per_request[mode].append((cpu_seconds(process.pid) - before) / requests)
    return per_request


def summarize(per_request: dict[str, list[float]], suffix: str) -> dict[str, object]:
    median = {mode: statistics.median(values) for mode, values in per_request.items()}
    figures: dict[str, object] = {}
    for mode in median:
        figures[f"cpu_us_per_request_{mode}{suffix}"] = round(median[mode] * 1e6, 2)
    for mode in list(median)[1:]:
        figures[f"ratio_cpu_{mode}{suffix}"] = round(median[mode] / median["off"], 3)
    for mode in median:
        # What a fast path saves: the same traffic without it minus the traffic with it.
        compared = {
            mode: (f"{mode}_stock", mode),  # both fast paths
            f"{mode}_spans": (f"{mode}_stock", f"{mode}_stockexport"),  # span making
            f"{mode}_export": (f"{mode}_stockexport", mode),  # the encoding processor
        }
        for name, (without, with_it) in compared.items():
            if without in median and with_it in median:
                us = (median[without] - median[with_it]) * 1e6
                figures[f"us_saved_{name}{suffix}"] = round(us, 2)
        if f"{mode}_tap" in median:
            us = (median[f"{mode}_tap"] - median[mode]) * 1e6
            figures[f"us_cost_{mode}_tap{suffix}"] = round(us, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="modes to run, comma-separated (off first; sampledN[_noexport]: N%% sampled)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--sink", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.sink, args.tls_dir)
        return
    started = time.monotonic()
    modes = ["off", *(mode for mode in args.modes.split(",") if mode != "off")]
    figures = asyncio.run(run(args.requests, args.rounds, modes))
    for suffix in ("", "_plaintext"):
        for mode in modes:
            cpu = figures[f"cpu_us_per_request_{mode}{suffix}"]
            print(f"{mode + suffix:>30}: {cpu:7.2f} µs server CPU/request")
    figures.update(
        requests_per_round=args.requests,
        rounds=args.rounds,
        concurrency=CONCURRENCY,
        seconds=round(time.monotonic() - started, 1),
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
