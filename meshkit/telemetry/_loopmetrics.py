"""Histograms, counters and gauges recorded without locks, for the per-request hot path.

prometheus_client takes a ``threading.Lock`` per value on every update and finds a
histogram's bucket by a Python loop over its bounds. Everything meshkit records per
request runs on the event loop's thread, so these metrics keep plain Python numbers in
lists and update them with no lock at all. **Record from one thread only**, the event
loop's: two threads updating one series could lose increments.

A scrape may run on another thread. It copies each series' list with one ``list.copy()``
(no bytecode boundary inside, so no update lands halfway through the copy) and derives the
cumulative ``le`` buckets, ``+Inf`` and ``_count`` from that copy: a scrape between two
updates still sees a consistent histogram (``_sum`` may be one observation apart from
the count, as with prometheus_client's separate locks). New series, rare, are added
under a lock so that a scrape never iterates a dict that grows.

Each metric is a prometheus_client ``Collector`` registered in the registry given to it
and exposes what prometheus_client's own metric of the same name, help, labels and
buckets exposes after the same observations, minus the ``_created`` series (OpenMetrics
makes them optional; no PromQL function reads them, and a Prometheus without the
created-timestamp feature stores each one as a series of its own, one more per label set).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate
from typing import ClassVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: Label values as the caller has them (an int status code is fine): ``str()`` makes the
#: exposed values, as in prometheus_client's ``labels()``.
Key = tuple[object, ...]
Labels = tuple[str, ...]


class _LoopMetric(Collector):
    """One metric family; each label set's values live in a list (its series)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[Labels, list[float]] = {}
        # The same series under every key that names it (200 and "200"): the hot path is
        # one dict lookup by the caller's own tuple, with no str() per update.
        self._by_key: dict[Key, list[float]] = {}
        self._adding = threading.Lock()
        registry.register(self)

    def _add_series(self, key: Key) -> list[float]:
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key!r}")
        labels = tuple(str(value) for value in key)
        with self._adding:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = self._new_series()
        self._by_key[key] = series
        return series

    def _snapshot(self) -> list[tuple[Labels, list[float]]]:
        with self._adding:
            items = list(self._series.items())
        return [(labels, series.copy()) for labels, series in items]

    def _new_series(self) -> list[float]:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        """The family without samples: the registry checks its names for clashes."""
        return [self._family()]


class LoopHistogram(_LoopMetric):
    """A histogram; a series is ``[sum, count of bucket 0, ..., count above the last bound]``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float],
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets)
        if list(bounds) != sorted(set(bounds)) or not bounds or bounds[-1] == float("inf"):
            raise ValueError(f"{name}: buckets must be finite, increasing, not empty")
        self._bounds = bounds
        # The ``le`` text prometheus_client writes for a bound (Go's float formatting).
        le = [floatToGoString(bound) for bound in bounds]  # type: ignore[no-untyped-call]
        self._le = [*le, "+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def observe(self, key: Key, value: float) -> None:
        """One observation in ``key``'s series."""
        series = self._by_key.get(key)
        if series is None:
            series = self._add_series(key)
        # bisect_left: a value equal to a bound counts in that bound's bucket (le = <=);
        # past the last bound it lands in the +Inf slot at the end.
        series[bisect_left(self._bounds, value) + 1] += 1
        series[0] += value

    def child(self, key: Key) -> HistogramChild:
        """``key``'s series as an object its caller keeps (prometheus_client's
        ``labels()``): each observation is then one call, with no key lookup."""
        series = self._by_key.get(key)
        if series is None:
            series = self._add_series(key)
        return HistogramChild(self._bounds, series)

    def collect(self) -> list[Metric]:
        family = self._family()
        for labels, series in self._snapshot():
            cumulative = accumulate(float(count) for count in series[1:])
            family.add_metric(labels, list(zip(self._le, cumulative, strict=True)), series[0])
        return [family]

    def _new_series(self) -> list[float]:
        return [0.0] + [0] * (len(self._bounds) + 1)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


class HistogramChild:
    """One series of a ``LoopHistogram``; observe from the event loop's thread only."""

    __slots__ = ("_bounds", "_series")

    def __init__(self, bounds: tuple[float, ...], series: list[float]) -> None:
        self._bounds = bounds
        self._series = series

    def observe(self, value: float) -> None:
        series = self._series
        series[bisect_left(self._bounds, value) + 1] += 1
        series[0] += value


class _LoopValue(_LoopMetric):
    """A counter or a gauge; a series is ``[value]``."""

    family_type: ClassVar[type[CounterMetricFamily] | type[GaugeMetricFamily]]

    def add(self, key: Key, amount: int) -> None:
        self.series(key)[0] += amount

    def series(self, key: Key) -> list[float]:
        """The ``[value]`` list of ``key``'s series, for a caller that keeps it and
        updates ``[0]`` itself (from the loop's thread, as always)."""
        series = self._by_key.get(key)
        if series is None:
            series = self._add_series(key)
        return series

    def collect(self) -> list[Metric]:
        family = self._family()
        for labels, (value,) in self._snapshot():
            family.add_metric(labels, float(value))
        return [family]

    def _new_series(self) -> list[float]:
        return [0]

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        return self.family_type(self.name, self.documentation, labels=self.labelnames)


class LoopCounter(_LoopValue):
    """A counter (``add`` only amounts >= 0); ``name`` without ``_total``, which the
    exposition appends, as with prometheus_client's ``Counter``."""

    family_type = CounterMetricFamily


class LoopGauge(_LoopValue):
    """A gauge: ``add`` any amount, negative ones included."""

    family_type = GaugeMetricFamily
