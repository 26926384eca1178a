"""``meshkit dashboard``: the mesh live in a browser, served by meshkit itself.

One ``Observer`` round per ``interval`` (1 s by default) becomes one JSON document
(``DashboardState.document``): topology with the golden signals per edge, instances per
service, the breakers and ejections their callers report, intentions and each route's
policies, and every edge's time series over the history. ``/events`` pushes each new
document as a server-sent event, ``/api/state`` answers the latest one, ``/`` is the page
(plain HTML, CSS and JS shipped in ``static/``: no build step, no CDN, works offline).

The server is meshkit's (``meshkit.serving.Server``) with the admin port's connection
limits, bound to 127.0.0.1 unless told otherwise. ``/events`` holds at most
``max_clients`` streams; each sends only the latest document, one at a time, and drops
a client that does not read one within ``SEND_TIMEOUT``: a slow browser never makes the
server queue documents.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from meshkit.errors import RegistryError
from meshkit.observe.golden import Edge, Golden
from meshkit.observe.scrape import (
    HISTORY_SECONDS,
    WINDOW_SECONDS,
    InstanceMetrics,
    Observer,
    Target,
    Tick,
    edge_golden,
    window_seconds,
)
from meshkit.policy.intentions import IntentionStore
from meshkit.serving.listen import listen
from meshkit.serving.server import Server
from meshkit.settings import ADMIN_LIMITS

STATIC = Path(__file__).parent / "static"
#: Below this success ratio an edge is drawn as failing.
FAILING_BELOW = 0.95
#: Seconds each point of the time series covers (120 points in ten minutes).
SERIES_STEP = 5.0
#: Streams ``/events`` holds at once (the admin limits cap connections at 64 anyway).
MAX_CLIENTS = 16
#: How long one document may take to leave for a client before it is dropped.
SEND_TIMEOUT = 10.0
#: A comment line this often keeps idle proxies and browsers from closing the stream.
KEEPALIVE_SECONDS = 15.0
#: The default port: beside the dev registry's 8500 (``meshkit up``).
DASHBOARD_PORT = 8550
#: The line ``meshkit dashboard`` prints once it listens, and the pattern that finds it.
LISTENING = re.compile(r"meshkit dashboard on (?P<url>http://\S+/)")
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"


def _finite(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


@dataclass
class DashboardState:
    """What the page shows, rebuilt after every round; ``document`` is its JSON."""

    manifests: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "each instance's /metrics"  # where the numbers come from, for the page
    keep: float = HISTORY_SECONDS
    intentions: list[dict[str, str]] = field(default_factory=list)
    series: deque[tuple[float, dict[str, list[float | None]]]] = field(default_factory=deque)
    _pending: list[Tick] = field(default_factory=list)

    def add_tick(self, tick: Tick, services: Sequence[str]) -> None:
        """Collect rounds until they span ``SERIES_STEP`` seconds, then add one point per
        edge to the time series: requests/s, success, p50, p99 over those rounds (one
        round alone is too short to say much: a burst, then nothing)."""
        self._pending.append(tick)
        if window_seconds(self._pending) < SERIES_STEP:
            return
        point: dict[str, list[float | None]] = {}
        for row in edge_golden(self._pending, services):
            golden = row.golden
            point[_edge_key(row.edge)] = [
                _finite(golden.rate, 3),
                _finite(golden.success),
                _finite(golden.p50),
                _finite(golden.p99),
            ]
        self.series.append((tick.at, point))
        self._pending.clear()
        while self.series and self.series[-1][0] - self.series[0][0] > self.keep:
            self.series.popleft()

    def document(self, observer: Observer, *, window: float = WINDOW_SECONDS) -> dict[str, Any]:
        ticks = observer.history.recent(window)
        services = observer.services
        edges = [
            _edge_row(row.edge, row.golden, row.seen_by) for row in edge_golden(ticks, services)
        ]
        series_edges = sorted({key for _, point in self.series for key in point})
        return {
            "at": time.time(),
            "window_seconds": round(sum(t.seconds for t in ticks), 3),
            "registry": observer.registry.address,
            "source": self.source,
            "error": observer.error,
            "nodes": _nodes(services, edges, series_edges),
            "edges": edges,
            "services": _services(observer),
            "intentions": self.intentions,
            "policies": [self.manifests[name] for name in sorted(self.manifests)],
            "series": {
                "keep_seconds": self.keep,
                "times": [round(at, 3) for at, _ in self.series],
                "edges": {
                    key: [point.get(key) for _, point in self.series] for key in series_edges
                },
            },
        }


def _edge_key(edge: Edge) -> str:
    return f"{edge.source}->{edge.destination}"


def _edge_row(edge: Edge, golden: Golden, seen_by: str) -> dict[str, Any]:
    success = golden.success
    return {
        "id": _edge_key(edge),
        "source": edge.source,
        "destination": edge.destination,
        "rps": _finite(golden.rate, 3),
        "requests": golden.requests,
        "success": _finite(success),
        "p50": _finite(golden.p50),
        "p99": _finite(golden.p99),
        "seen_by": seen_by,
        "failing": success is not None and success < FAILING_BELOW,
    }


def _nodes(
    services: Sequence[str], edges: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> list[dict[str, Any]]:
    """Every service in the registry, and every caller or callee an edge names (a test
    client or a browser is a node too, marked as outside the mesh)."""
    names = set(services)
    for edge in edges:
        names.update((edge["source"], edge["destination"]))
    for key in keys:
        names.update(key.split("->", 1))
    return [{"id": name, "meshed": name in services} for name in sorted(names)]


def _instance_row(target: Target, metrics: InstanceMetrics | None) -> dict[str, Any]:
    return {
        "id": target.instance_id,
        "address": f"{target.address}:{target.port}",
        "admin_port": target.admin_port,
        "version": target.version,
        "health": target.health,
        "scraped": metrics is not None,
        "in_flight": None if metrics is None else metrics.in_flight,
        "cert_expiry": None if metrics is None else metrics.cert_expiry,
    }


def _services(observer: Observer) -> list[dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {
        name: {"name": name, "instances": [], "breakers": [], "ejections": 0.0}
        for name in observer.services
    }
    for target in observer.targets:
        metrics = observer.latest.get(target.instance_id)
        by_name[target.service]["instances"].append(_instance_row(target, metrics))
        if metrics is None:
            continue
        # What callers report about their destinations: breaker state and ejections.
        for destination, state in sorted(metrics.circuits.items()):
            if destination in by_name:
                caller = {"caller": target.instance_id, "state": state}
                by_name[destination]["breakers"].append(caller)
        for destination, count in metrics.ejections.items():
            if destination in by_name:
                by_name[destination]["ejections"] += count
    return [by_name[name] for name in sorted(by_name)]


class Feed:
    """The latest document and a version number; waiters wake when it changes."""

    def __init__(self, *, max_clients: int = MAX_CLIENTS) -> None:
        self.text = "{}"
        self.version = 0
        self.clients = 0
        self.max_clients = max_clients
        self._changed = anyio.Event()

    def publish(self, text: str) -> None:
        self.text = text
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_past(self, version: int) -> bool:
        """Wait until the document is newer than ``version``; False after the keepalive
        interval without one."""
        with anyio.move_on_after(KEEPALIVE_SECONDS):
            while self.version == version:
                await self._changed.wait()
            return True
        return False


class EventStream:
    """``/events``: server-sent events, each the latest document, to a bounded number
    of clients (pure ASGI, so it sees the client leave and stops at once)."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.feed.clients >= self.feed.max_clients:
            response = JSONResponse(
                {"error": "too many dashboard clients", "limit": self.feed.max_clients},
                status_code=503,
                headers={"Retry-After": "5"},
            )
            await response(scope, receive, send)
            return
        self.feed.clients += 1
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope)
                await self._stream(send)
                tasks.cancel_scope.cancel()
        finally:
            self.feed.clients -= 1

    async def _stream(self, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._send(send, b"retry: 2000\n\n")
        version = 0  # the first document is the first round's: none before it
        while True:
            if version == self.feed.version and not await self.feed.wait_past(version):
                await self._send(send, b": keepalive\n\n")
                continue
            version = self.feed.version
            await self._send(send, f"id: {version}\ndata: {self.feed.text}\n\n".encode())

    async def _send(self, send: Send, body: bytes) -> None:
        # A client that stops reading blocks the send (flow control): drop it, keep nothing.
        with anyio.fail_after(SEND_TIMEOUT):
            await send({"type": "http.response.body", "body": body, "more_body": True})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def build_app(feed: Feed) -> Starlette:
    """The dashboard's routes over ``feed``."""

    async def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", media_type="text/html")
        response.headers["content-security-policy"] = _CSP
        response.headers["cache-control"] = "no-store"
        return response

    async def state(request: Request) -> Response:
        return Response(feed.text, media_type="application/json")

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/events", EventStream(feed)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


async def read_intentions(observer: Observer) -> list[dict[str, str]]:
    """The intentions in the registry (empty when it does not answer this time)."""
    try:
        rules = await observer.registry.call(lambda client: IntentionStore(client).rules())
    except RegistryError:
        return []
    return [{"source": r.source, "destination": r.destination, "action": r.action} for r in rules]


async def observe(
    observer: Observer, state: DashboardState, feed: Feed, *, interval: float = 1.0
) -> None:
    """Forever: one round, one new document, every ``interval`` seconds."""
    while True:
        started = anyio.current_time()
        tick = await observer.round()
        state.add_tick(tick, observer.services)
        state.intentions = await read_intentions(observer)
        feed.publish(json.dumps(state.document(observer), separators=(",", ":")))
        await anyio.sleep(max(0.0, interval - (anyio.current_time() - started)))


def listening_line(url: str, registry: str) -> str:
    return f"meshkit dashboard on {url} (registry {registry})"


@dataclass(frozen=True)
class DashboardOptions:
    host: str = "127.0.0.1"
    port: int = 0
    interval: float = 1.0
    max_clients: int = MAX_CLIENTS


async def serve_dashboard(
    observer: Observer,
    state: DashboardState,
    options: DashboardOptions,
    *,
    on_listening: Callable[[str], None] = lambda url: None,
) -> None:
    """Serve the dashboard until SIGINT/SIGTERM; ``on_listening(url)`` once bound."""
    feed = Feed(max_clients=options.max_clients)
    server = Server(
        build_app(feed),
        name="dashboard",
        limits=ADMIN_LIMITS,
        mode="plain",
        lifespan="off",
        # Event streams never end by themselves: on shutdown, give them a second.
        timeout_graceful_shutdown=1,
    )
    sock = listen(options.host, options.port)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                functools.partial(observe, interval=options.interval), observer, state, feed
            )
            host, port = sock.getsockname()[:2]
            on_listening(f"http://{host}:{port}/")
            await server.serve(sockets=[sock])
            tasks.cancel_scope.cancel()
    finally:
        sock.close()
