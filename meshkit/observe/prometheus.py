"""The dashboard's numbers from a Prometheus server instead of each instance's /metrics.

``PrometheusScraper`` is a ``Scraper``: one instant query fetches the current value of
every series the dashboard reads, and each series goes to the registered instance its
``instance`` label names (``host:admin_port``, as a scrape of the admin port labels it,
or the registry's instance ID when a relabelling put that there). The rest is what a
direct scrape does: the same samples, the same ``InstanceMetrics``. An instance
Prometheus has no series for counts as not answering.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import anyio
from prometheus_client.samples import Sample

from meshkit.errors import ConfigError, MeshError
from meshkit.observe.golden import CLIENT_METRIC, SERVER_METRIC
from meshkit.observe.scrape import SCRAPE_TIMEOUT, InstanceMetrics, Target, read_sample

#: Every series ``read_sample`` uses, by name.
SERIES = (
    f"{SERVER_METRIC}_bucket",
    f"{SERVER_METRIC}_count",
    f"{CLIENT_METRIC}_bucket",
    f"{CLIENT_METRIC}_count",
    "http_server_active_requests",
    "meshkit_cert_expiry_timestamp_seconds",
    "meshkit_circuit_state",
    "meshkit_endpoint_ejections_total",
)
QUERY = '{__name__=~"' + "|".join(SERIES) + '"}'
#: The largest answer read from Prometheus.
MAX_ANSWER_BYTES = 32 * 1024 * 1024


def family_of(name: str) -> str:
    """The metric a series belongs to: a histogram's ``_bucket``/``_count`` name its base."""
    for suffix in ("_bucket", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in (SERVER_METRIC, CLIENT_METRIC):
            return name[: -len(suffix)]
    return name


class PrometheusScraper:
    """Reads a round's metrics from the Prometheus at ``url`` (``http(s)://host:port``)."""

    def __init__(self, url: str, *, timeout: float = SCRAPE_TIMEOUT) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--prometheus {url!r}: expected http(s)://host:port")
        self.url = url.rstrip("/")
        self.timeout = timeout

    async def __call__(self, targets: Sequence[Target]) -> dict[str, InstanceMetrics | None]:
        try:
            series = await anyio.to_thread.run_sync(self.query, abandon_on_cancel=True)
        except MeshError:
            series = []  # Prometheus down this round: every instance reads as not answering
        return assign(series, targets)

    def query(self) -> list[dict[str, Any]]:
        """The instant vector of every series in ``SERIES``."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": QUERY})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                answer = json.loads(response.read(MAX_ANSWER_BYTES))
        except (OSError, ValueError) as exc:
            raise MeshError(f"prometheus at {self.url} did not answer: {exc}") from exc
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise MeshError(f"prometheus at {self.url} refused the query: {answer!r:.200}")
        result = answer.get("data", {}).get("result", [])
        return result if isinstance(result, list) else []


def assign(
    series: Sequence[dict[str, Any]], targets: Sequence[Target]
) -> dict[str, InstanceMetrics | None]:
    """Each target's metrics from the series whose ``instance`` label names it."""
    by_label: dict[str, Target] = {}
    for target in targets:
        by_label[target.instance_id] = target
        if target.admin_port is not None:
            by_label[f"{target.admin_host}:{target.admin_port}"] = target
    found: dict[str, InstanceMetrics] = {}
    for entry in series:
        labels = {str(k): str(v) for k, v in (entry.get("metric") or {}).items()}
        owner = by_label.get(labels.get("instance", ""))
        if owner is None:
            continue
        try:
            value = float(entry["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # not a sample: nothing to count
        name = labels.pop("__name__", "")
        metrics = found.setdefault(owner.instance_id, InstanceMetrics())
        read_sample(metrics, family_of(name), Sample(name, labels, value), owner.service)
    return {target.instance_id: found.get(target.instance_id) for target in targets}
