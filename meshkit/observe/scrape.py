"""Every instance of every service, from the registry, and what its admin ``/metrics`` says.

``discover`` lists the instances (healthy or not) with the admin port each published in
its registration metadata (``admin_port``); ``scrape`` reads their ``/metrics`` at once,
parsed with prometheus_client's own text parser into ``InstanceMetrics``; ``History``
keeps the increments of each round for a sliding window (ten minutes by default), from
which come requests/s, success and p50/p99 per edge (caller -> callee) and per flow
(caller, method, route) as ``meshkit.observe.golden`` computes them.

An edge is seen from its caller when the caller is in the mesh (the mesh client's
``http_client_request_duration_seconds``: calls that never reached a callee, e.g. to a
killed instance, count as failures there) and from its callee otherwise (a browser or a
test client only shows up in the callee's ``http_server_request_duration_seconds``).
"""

from __future__ import annotations

import http.client
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from meshkit.errors import RegistryError
from meshkit.observe.golden import (
    CLIENT_METRIC,
    SERVER_METRIC,
    Edge,
    Flow,
    Golden,
    Histogram,
    Scoreboard,
    Side,
    add_sample,
    flow_of,
    merge,
)
from meshkit.registry.consul import ConsulRegistry, endpoint_from_entry, instance_from_entry

#: How long a scrape of one instance may take; a slower instance counts as down this round.
SCRAPE_TIMEOUT = 2.0
#: The largest exposition read from one instance: a broken one cannot make us hold more.
MAX_EXPOSITION_BYTES = 8 * 1024 * 1024
#: Increments kept by ``History``: the dashboard's time series span.
HISTORY_SECONDS = 600.0
#: The window the current numbers are computed over.
WINDOW_SECONDS = 10.0
_CIRCUIT_NAMES = {0: "closed", 1: "half-open", 2: "open"}


@dataclass(frozen=True, slots=True)
class Target:
    """One registered instance and where its admin port listens (None: not published)."""

    service: str
    instance_id: str
    address: str
    port: int
    admin_port: int | None
    version: str | None
    health: str  # the worst check state: passing, warning or critical
    spiffe_id: str | None = None

    @property
    def admin_host(self) -> str:
        # The admin port binds its own interface; the service address is the best guess.
        return self.address or "127.0.0.1"


def target_from_entry(entry: Mapping[str, Any]) -> Target:
    """A Target from one ``/v1/health/service`` entry."""
    endpoint, health = endpoint_from_entry(entry), instance_from_entry(entry)
    admin = endpoint.meta.get("admin_port", "")
    return Target(
        service=endpoint.service,
        instance_id=endpoint.instance_id,
        address=endpoint.address,
        port=endpoint.port,
        admin_port=int(admin) if admin.isdigit() else None,
        version=endpoint.version,
        health=health.status,
        spiffe_id=endpoint.spiffe_id,
    )


async def discover(registry: ConsulRegistry) -> list[Target]:
    """Every instance of every service in the registry, passing or not, sorted."""

    def listing(client: Any) -> list[Target]:
        _, names = client.catalog.services()
        targets: list[Target] = []
        for name in sorted(names or {}):
            if name == "consul":  # a real Consul lists itself; it has no admin port
                continue
            _, entries = client.health.service(name)
            targets.extend(target_from_entry(entry) for entry in entries or ())
        return sorted(targets, key=lambda t: (t.service, t.instance_id))

    return await registry.call(listing)


# -- one instance's exposition -------------------------------------------------------------


@dataclass
class InstanceMetrics:
    """What one instance's ``/metrics`` says, cumulative since it started."""

    inbound: dict[Flow, Histogram] = field(default_factory=dict)
    outbound: dict[Flow, Histogram] = field(default_factory=dict)
    in_flight: float = 0.0
    cert_expiry: float | None = None
    circuits: dict[str, str] = field(default_factory=dict)  # destination -> state
    ejections: dict[str, float] = field(default_factory=dict)  # destination -> total


def read_sample(metrics: InstanceMetrics, family: str, sample: Sample, service: str) -> None:
    """Count one sample of ``family`` (the metric's name) into ``metrics``."""
    if family in (SERVER_METRIC, CLIENT_METRIC):
        side: Side = "server" if family == SERVER_METRIC else "client"
        flows = metrics.inbound if side == "server" else metrics.outbound
        key = flow_of(sample.labels, service, side)
        add_sample(flows, key, sample.name, sample.labels, sample.value)
    elif family == "http_server_active_requests":
        metrics.in_flight += sample.value
    elif family == "meshkit_cert_expiry_timestamp_seconds" and math.isfinite(sample.value):
        earliest = metrics.cert_expiry
        metrics.cert_expiry = sample.value if earliest is None else min(earliest, sample.value)
    elif family == "meshkit_circuit_state":
        state = _CIRCUIT_NAMES.get(int(sample.value), "unknown")
        metrics.circuits[sample.labels.get("destination_service", "")] = state
    elif family.startswith("meshkit_endpoint_ejections") and not sample.name.endswith("_created"):
        # The family is named with or without ``_total`` depending on the exposition.
        destination = sample.labels.get("destination_service", "")
        metrics.ejections[destination] = metrics.ejections.get(destination, 0.0) + sample.value


def parse_metrics(text: str, *, service: str) -> InstanceMetrics:
    """One instance's exposition (Prometheus text format) as ``InstanceMetrics``."""
    metrics = InstanceMetrics()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            read_sample(metrics, family.name, sample, service)
    return metrics


# -- scraping --------------------------------------------------------------------------------


def fetch_text(host: str, port: int, path: str, *, timeout: float = SCRAPE_TIMEOUT) -> str:
    """GET http://host:port/path; its body as text (raises OSError when it fails)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Accept": "text/plain"})
        response = connection.getresponse()
        body = response.read(MAX_EXPOSITION_BYTES + 1)
        if response.status != 200 or len(body) > MAX_EXPOSITION_BYTES:
            raise OSError(f"{host}:{port}{path} answered {response.status}, {len(body)} bytes")
        return body.decode("utf-8", "replace")
    finally:
        connection.close()


def scrape_one(target: Target, *, timeout: float = SCRAPE_TIMEOUT) -> InstanceMetrics | None:
    """The target's metrics, or None when it has no admin port or does not answer."""
    if target.admin_port is None:
        return None
    try:
        text = fetch_text(target.admin_host, target.admin_port, "/metrics", timeout=timeout)
        return parse_metrics(text, service=target.service)
    except (OSError, ValueError, http.client.HTTPException):
        return None


async def scrape(
    targets: Sequence[Target], *, each: float = SCRAPE_TIMEOUT
) -> dict[str, InstanceMetrics | None]:
    """Every target scraped at once (worker threads, ``each`` seconds at most), by ID."""
    results: dict[str, InstanceMetrics | None] = {}

    async def one(target: Target) -> None:
        results[target.instance_id] = await anyio.to_thread.run_sync(
            lambda: scrape_one(target, timeout=each), abandon_on_cancel=True
        )

    async with anyio.create_task_group() as tasks:
        for target in targets:
            tasks.start_soon(one, target)
    return results


# -- over time ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """What one round of scrapes added: the increments of every flow, over ``seconds``."""

    at: float  # wall-clock time of the round (Unix seconds)
    seconds: float
    inbound: dict[Flow, Histogram]
    outbound: dict[Flow, Histogram]


@dataclass(frozen=True)
class EdgeGolden:
    edge: Edge
    golden: Golden
    seen_by: str  # "caller" or "callee"


@dataclass(frozen=True)
class FlowGolden:
    flow: Flow
    golden: Golden


class History:
    """The increments of each round of scrapes over the last ``keep`` seconds.

    Bounded by time: a round older than ``keep`` is dropped as the next one comes. An
    instance that disappears keeps what it counted; a new one counts from zero.
    """

    def __init__(self, *, keep: float = HISTORY_SECONDS) -> None:
        self.keep = keep
        self.ticks: deque[Tick] = deque()
        self._inbound: Scoreboard[Flow] = Scoreboard()
        self._outbound: Scoreboard[Flow] = Scoreboard()
        self._last: float | None = None

    def record(self, scrapes: Mapping[str, InstanceMetrics | None], *, now: float) -> Tick:
        """Add one round (instance ID -> metrics, None for one registered but not
        scraped) at ``now`` (monotonic seconds); the first round only sets the baseline."""
        live = {key: metrics for key, metrics in scrapes.items() if metrics is not None}
        for board in (self._inbound, self._outbound):
            board.retain(scrapes.keys())
        inbound = self._inbound.update({k: m.inbound for k, m in live.items()})
        outbound = self._outbound.update({k: m.outbound for k, m in live.items()})
        seconds = 0.0 if self._last is None else now - self._last
        if self._last is None:
            inbound, outbound = {}, {}  # cumulative since each instance started: no rate
        self._last = now
        tick = Tick(time.time(), seconds, inbound, outbound)
        self.ticks.append(tick)
        while self.ticks and self.ticks[-1].at - self.ticks[0].at > self.keep:
            self.ticks.popleft()
        return tick

    def recent(self, seconds: float = WINDOW_SECONDS) -> list[Tick]:
        """The rounds that ended in the last ``seconds`` (at least the latest one)."""
        if not self.ticks:
            return []
        newest = self.ticks[-1].at
        recent = [t for t in self.ticks if newest - t.at < seconds]
        return recent or [self.ticks[-1]]


def window_seconds(ticks: Iterable[Tick]) -> float:
    return sum(tick.seconds for tick in ticks)


def edges_of(ticks: Sequence[Tick], services: Iterable[str]) -> dict[Edge, tuple[Histogram, str]]:
    """Each edge's histogram over ``ticks``, from its caller's view when the caller is
    one of ``services`` (in the mesh), else from its callee's; with the view's name."""
    meshed = set(services)
    by_edge: dict[Edge, tuple[Histogram, str]] = {}
    outbound = merge(*(tick.outbound for tick in ticks))
    for flow, histogram in outbound.items():
        by_edge[flow.edge] = (by_edge.get(flow.edge, (Histogram(), ""))[0] + histogram, "caller")
    inbound = merge(*(tick.inbound for tick in ticks))
    for flow, histogram in inbound.items():
        if flow.source in meshed:
            continue  # its caller counted it, failures to reach it included
        by_edge[flow.edge] = (by_edge.get(flow.edge, (Histogram(), ""))[0] + histogram, "callee")
    return by_edge


def edge_golden(ticks: Sequence[Tick], services: Iterable[str]) -> list[EdgeGolden]:
    """The golden signals of every edge over ``ticks``, sorted by edge."""
    seconds = window_seconds(ticks)
    return [
        EdgeGolden(edge, Golden.of(histogram, seconds), view)
        for edge, (histogram, view) in sorted(edges_of(ticks, services).items())
    ]


def inbound_golden(ticks: Sequence[Tick], service: str) -> list[FlowGolden]:
    """The golden signals of every (caller, method, route) ``service`` served, sorted."""
    seconds = window_seconds(ticks)
    inbound = merge(*(tick.inbound for tick in ticks))
    return [
        FlowGolden(flow, Golden.of(histogram, seconds))
        for flow, histogram in sorted(inbound.items())
        if flow.destination == service
    ]


#: Where a round's metrics come from: each instance's /metrics (``scrape``), or Prometheus.
Scraper = Callable[[Sequence[Target]], Awaitable[dict[str, InstanceMetrics | None]]]


class Observer:
    """Discover, scrape and record, one round at a time: what ``meshkit top`` and the
    dashboard read. ``targets`` and ``latest`` are the last round's."""

    def __init__(
        self,
        registry: ConsulRegistry,
        *,
        keep: float = HISTORY_SECONDS,
        scraper: Scraper = scrape,
    ) -> None:
        self.registry = registry
        self.scraper = scraper
        self.history = History(keep=keep)
        self.targets: list[Target] = []
        self.latest: dict[str, InstanceMetrics | None] = {}
        self.error: str | None = None  # why the last round could not reach the registry

    async def round(self) -> Tick:
        """One round; a registry that does not answer keeps the last instance list."""
        try:
            self.targets = await discover(self.registry)
            self.error = None
        except RegistryError as exc:
            self.error = str(exc)
        self.latest = await self.scraper(self.targets)
        return self.history.record(self.latest, now=time.monotonic())

    @property
    def services(self) -> list[str]:
        return sorted({target.service for target in self.targets})
