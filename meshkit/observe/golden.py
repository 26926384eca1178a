"""Golden metrics per edge (source -> destination) from the services' own /metrics.

Each instance exposes ``http_server_request_duration_seconds`` (labelled with the
calling ``source_service``) and ``http_client_request_duration_seconds`` (labelled
with the ``destination_service``). A scrape becomes one cumulative ``Histogram`` per
edge; the difference of two scrapes is a window, from which come requests/s, success
(not a 5xx, not a transport error) and p50/p99 interpolated in the buckets the way
Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from prometheus_client.parser import text_string_to_metric_families

SERVER_METRIC = "http_server_request_duration_seconds"
CLIENT_METRIC = "http_client_request_duration_seconds"
# OpenTelemetry's name first; the others are what other exporters call it.
_STATUS_LABELS = ("http_response_status_code", "status_code", "status", "code")
_ERROR_LABEL = "error_type"
Side = Literal["server", "client"]
#: What histograms are kept per: an ``Edge``, or a finer key (``meshkit.observe.scrape.Flow``).
K = TypeVar("K")


@dataclass(frozen=True, order=True)
class Edge:
    source: str
    destination: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.destination}"


@dataclass
class Histogram:
    """Cumulative counts per bucket upper bound, the total count, and how many failed."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    errors: float = 0.0

    def __add__(self, other: Histogram) -> Histogram:
        bounds = self.buckets.keys() | other.buckets.keys()
        return Histogram(
            {b: self._at(b) + other._at(b) for b in bounds},
            self.count + other.count,
            self.errors + other.errors,
        )

    def __sub__(self, earlier: Histogram) -> Histogram:
        if self.count < earlier.count:
            return self  # the counters were reset (a restarted instance): all of it is new
        return Histogram(
            {b: max(0.0, n - earlier._at(b)) for b, n in self.buckets.items()},
            self.count - earlier.count,
            max(0.0, self.errors - earlier.errors),
        )

    def _at(self, bound: float) -> float:
        """The cumulative count at ``bound`` (buckets are cumulative, so: the largest <=)."""
        below = [n for b, n in self.buckets.items() if b <= bound]
        return max(below, default=0.0)

    @property
    def success(self) -> float | None:
        return None if self.count == 0 else 1.0 - self.errors / self.count

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, linearly interpolated inside its bucket."""
        if self.count == 0 or not self.buckets:
            return None
        rank = q * self.count
        lower, lower_count = 0.0, 0.0
        for bound, cumulative in sorted(self.buckets.items()):
            if cumulative >= rank and cumulative > lower_count:
                if math.isinf(bound):
                    return lower  # past the last finite bucket: its bound is all we know
                return lower + (bound - lower) * (rank - lower_count) / (cumulative - lower_count)
            lower, lower_count = bound, cumulative
        return lower


def is_error(labels: Mapping[str, str]) -> bool:
    if labels.get(_ERROR_LABEL):
        return True
    for name in _STATUS_LABELS:
        status = labels.get(name, "")
        if status.isdigit():
            return int(status) >= 500
    return False


@dataclass(frozen=True, order=True, slots=True)
class Flow:
    """Requests of one kind: who called whom, how (method), and which route ("" when the
    caller counted it: the caller knows no route template)."""

    source: str
    destination: str
    method: str = ""
    route: str = ""

    @property
    def edge(self) -> Edge:
        return Edge(self.source, self.destination)


def flow_of(labels: Mapping[str, str], service: str, side: Side) -> Flow:
    """The flow a sample of ``service``'s server (or client) histogram counts."""
    method = labels.get("http_request_method", "")
    if side == "server":
        source = labels.get("source_service") or "unknown"
        return Flow(source, service, method, labels.get("http_route", ""))
    return Flow(service, labels.get("destination_service") or "unknown", method)


def add_sample(
    flows: dict[K, Histogram], key: K, name: str, labels: Mapping[str, str], value: float
) -> None:
    """Count one ``_bucket`` or ``_count`` sample (``name``) of a histogram into ``key``'s."""
    histogram = flows.setdefault(key, Histogram())
    if name.endswith("_bucket"):
        bound = float(labels["le"])
        histogram.buckets[bound] = histogram.buckets.get(bound, 0.0) + value
    elif name.endswith("_count"):
        histogram.count += value
        if is_error(labels):
            histogram.errors += value


def parse_edges(text: str, *, service: str, side: Side = "server") -> dict[Edge, Histogram]:
    """One instance's scrape: a cumulative histogram per edge it serves (or calls)."""
    metric = SERVER_METRIC if side == "server" else CLIENT_METRIC
    edges: dict[Edge, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for sample in family.samples:
            edge = flow_of(sample.labels, service, side).edge
            add_sample(edges, edge, sample.name, sample.labels, sample.value)
    return edges


def merge(*snapshots: Mapping[K, Histogram]) -> dict[K, Histogram]:
    merged: dict[K, Histogram] = {}
    for snapshot in snapshots:
        for edge, histogram in snapshot.items():
            merged[edge] = merged.get(edge, Histogram()) + histogram
    return merged


class Scoreboard(Generic[K]):
    """Scrapes of many instances over time: what each tick added, and the running total.

    An instance that disappears (killed) keeps what it counted before; one that is
    scraped for the first time counts from zero, since it started during the run.
    """

    def __init__(self) -> None:
        self._last: dict[str, dict[K, Histogram]] = {}
        self.total: dict[K, Histogram] = {}

    def update(self, scrapes: Mapping[str, Mapping[K, Histogram]]) -> dict[K, Histogram]:
        """Record one round of scrapes (instance name -> edges); return its increments."""
        window: dict[K, Histogram] = {}
        for instance, edges in scrapes.items():
            previous = self._last.get(instance, {})
            delta = {e: h - previous.get(e, Histogram()) for e, h in edges.items()}
            window = merge(window, delta)
            self._last[instance] = dict(edges)
        self.total = merge(self.total, window)
        return window

    def retain(self, instances: Collection[str]) -> None:
        """Forget the last scrape of every instance not in ``instances`` (gone from the
        registry): a long-running observer of a changing mesh holds only current ones."""
        for instance in self._last.keys() - set(instances):
            del self._last[instance]


@dataclass(frozen=True)
class Golden:
    """The golden signals of one histogram's window: volume, rate, success, latency."""

    requests: float
    rate: float
    success: float | None
    p50: float | None
    p99: float | None

    @classmethod
    def of(cls, histogram: Histogram, seconds: float) -> Golden:
        return cls(
            requests=histogram.count,
            rate=histogram.count / seconds if seconds > 0 else 0.0,
            success=histogram.success,
            p50=histogram.quantile(0.5),
            p99=histogram.quantile(0.99),
        )


@dataclass(frozen=True)
class EdgeStats(Golden):
    edge: Edge


def edge_stats(window: Mapping[Edge, Histogram], seconds: float) -> list[EdgeStats]:
    """Golden metrics of each edge over a window of ``seconds``, sorted by edge."""
    return [
        EdgeStats(edge=edge, **vars(Golden.of(h, seconds))) for edge, h in sorted(window.items())
    ]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.2f}"


def format_table(rows: Iterable[EdgeStats]) -> str:
    """A fixed-width text table: edge, requests, req/s, success %, p50 and p99 in ms."""
    header = ("edge", "requests", "req/s", "success %", "p50 ms", "p99 ms")
    lines = [
        (
            str(r.edge),
            f"{r.requests:.0f}",
            f"{r.rate:.1f}",
            _percent(r.success),
            _ms(r.p50),
            _ms(r.p99),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *lines]
    )
