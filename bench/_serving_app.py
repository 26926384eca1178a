"""The app side of one request, in process: what ``bench/serving.py --callgrind --app`` counts.

    python -m bench._serving_app {meshkit,bare,meshkit-<ablation>} CALLS

Calls the ASGI app CALLS times (after 500 uncounted calls and a frozen GC), each call in
a task of its own as uvicorn runs it, with the scope meshkit's serving protocol builds
for a request of the load generator sending a mesh client's headers (bench/_loadgen.py
``--mesh-headers``): no sockets, TLS or protocol, only what the middleware, Starlette
and the handler cost. ``meshkit`` is M's callee (bench/_apps.py) with tracing set up as
``meshkit run`` does from the OTEL_* settings of bench/_paths.py (10% of traces, OTLP
export queued but never posted: the export delay outlasts the run, which ends with
``os._exit`` so that no flush runs); ``bare`` is bench/_endpoint.py's Starlette app.

``meshkit-<ablation>`` is M's callee with one part left out, to tell what each part
costs (``ABLATIONS``): the telemetry, deadline or authorization middleware (``Mesh``
builds its stack without it), the tap ring, or the 10% of sampled callers (every
``traceparent`` unsampled). The callers' trace and span ids and sampled flags come from
a generator of their own with a fixed seed: every run sees the same sampled requests,
so two runs differ only by what the code does (10% sampled at random moved a figure
by up to ~0.3%, one recorded span costing ~68k instructions).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
import time
from typing import Any

import uvloop

WARMUP_CALLS = 500
TRACING = {
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.1",
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",
    "OTEL_BSP_SCHEDULE_DELAY": "3600000",
    "OTEL_BSP_MAX_QUEUE_SIZE": "1000000",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1000000",
}
#: What ``meshkit-<name>`` leaves out of M's callee.
ABLATIONS = ("notelemetry", "nodeadline", "noauthz", "notap", "unsampled")
_CALLERS = random.Random(21)  # the load generator's ids and sampling, the same every run
HEADERS = [
    (b"host", b"127.0.0.1:8443"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"Python/3.11 aiohttp/3.14"),
]


def load_app(name: str) -> Any:
    """The app to call: imported after the environment is set (ServiceApp reads it)."""
    if name == "bare":
        from bench._endpoint import app

        return app
    os.environ.update(TRACING, MESHKIT_SERVICE="solo", MESHKIT_ACCESS_LOG="false")
    _, _, ablation = name.partition("-")
    if ablation:
        leave_out(ablation)
    from opentelemetry import trace

    from meshkit.telemetry.sdk import configure_tracing_from_env

    provider = configure_tracing_from_env("solo", os.environ)
    assert provider is not None
    trace.set_tracer_provider(provider)
    from bench._apps import callee

    return callee


def leave_out(ablation: str) -> None:
    """Build M's callee without one part (before the app is imported and built)."""
    import meshkit.mesh

    def absent(app: Any, **_: Any) -> Any:
        return app

    if ablation not in ABLATIONS:
        raise SystemExit(f"unknown ablation {ablation!r}: choose from {', '.join(ABLATIONS)}")
    if ablation == "notelemetry":
        meshkit.mesh.TelemetryMiddleware = absent  # type: ignore[misc,assignment]
    elif ablation == "nodeadline":
        meshkit.mesh.DeadlineMiddleware = absent  # type: ignore[misc,assignment]
    elif ablation == "noauthz":
        meshkit.mesh.AuthzMiddleware = absent  # type: ignore[misc,assignment]
    elif ablation == "notap":
        os.environ["MESHKIT_TAP_SIZE"] = "0"


def mesh_headers(sampling: float) -> list[tuple[bytes, bytes]]:
    """bench/_loadgen.py's ``mesh_headers``, as the protocol hands them to the app."""
    sampled = b"01" if _CALLERS.random() < sampling else b"00"
    trace_id, span_id = _CALLERS.getrandbits(128) or 1, _CALLERS.getrandbits(64) or 1
    traceparent = b"00-%032x-%016x-%s" % (trace_id, span_id, sampled)
    sent = str(int(time.time() * 1000)).encode()
    return [
        (b"traceparent", traceparent),
        (b"x-meshkit-deadline-ms", b"10000"),
        (b"x-meshkit-sent-ms", sent),
    ]


def scope(tls: dict[str, Any], sampling: float = 0.1) -> dict[str, Any]:
    """The scope MeshHttpToolsProtocol builds for one request of the load generator."""
    from meshkit.deadline import ARRIVED_KEY
    from meshkit.serving.protocol import NOTED_HEADERS_KEY

    noted = mesh_headers(sampling)  # all of them are the mesh's
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8443),
        "client": ("127.0.0.1", 50000),
        "scheme": "https",
        "root_path": "",
        "headers": HEADERS + noted,
        "state": {},
        "method": "GET",
        "path": "/hello",
        "raw_path": b"/hello",
        "query_string": b"",
        "extensions": {"tls": tls},
        ARRIVED_KEY: time.monotonic(),
        NOTED_HEADERS_KEY: noted,
    }


async def call(app: Any, calls: int, sampling: float) -> int:
    """Serve ``calls`` requests; the number answered 200."""
    from meshkit.identity import PEER_IDENTITY_KEY, SpiffeId

    tls = {PEER_IDENTITY_KEY: SpiffeId.parse("spiffe://meshkit.local/ns/default/svc/loadgen")}
    answered = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal answered
        if message["type"] == "http.response.start" and message["status"] == 200:
            answered += 1

    loop = asyncio.get_running_loop()
    for done in range(WARMUP_CALLS + calls):
        if done == WARMUP_CALLS:
            gc.collect()
            gc.freeze()
        await loop.create_task(app(scope(tls, sampling), receive, send))
    return answered


def main() -> None:
    name, calls = sys.argv[1], int(sys.argv[2])
    sampling = 0.0 if name.endswith("-unsampled") else 0.1
    answered = uvloop.run(call(load_app(name), calls, sampling))
    print(f"{name}: {answered} of {WARMUP_CALLS + calls} calls answered 200", flush=True)
    os._exit(0 if answered == WARMUP_CALLS + calls else 1)  # no span flush at exit


if __name__ == "__main__":
    main()
