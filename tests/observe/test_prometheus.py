"""Prometheus out of the box: ``meshkit prometheus-config`` makes a real Prometheus find
every instance through the dev registry and scrape its admin port; the shipped Grafana
dashboards ask that Prometheus only questions it has answers to."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.testing import Mesh, ServiceProcess
from tests.observe.consul_sd import (
    consul_sd_groups,
    file_sd_targets,
    supports_consul_sd,
    with_file_sd,
)
from tests.prometheus import query, running_prometheus, wait_for

pytestmark = [
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="make prometheus installs it"),
    pytest.mark.timeout(180),
]

DASHBOARDS = Path(__file__).parents[2] / "meshkit" / "observe" / "grafana"
#: What the dashboards' variables stand for in the test mesh.
VARIABLES = {
    "$__rate_interval": "15s",
    "$service": "caller",
    "$source": "caller",
    "$destination": "upstream",
}


def meshkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args], capture_output=True, text=True, timeout=60
    )


class Traffic:
    """``tester`` (namespace ``ops``) calls ``caller``, which calls ``upstream``, until
    stopped: the rates Prometheus computes need samples across scrapes."""

    def __init__(self, mesh: Mesh, caller: ServiceProcess) -> None:
        self.connection = mesh.connect(caller, as_="tester", namespace="ops")
        self.stopped = threading.Event()
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(0.05):
            self.statuses.append(self.connection.get("/call")[0])

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running mesh under traffic, and the URL of a Prometheus started on the printed
    configuration that has scraped every instance of it."""
    directory = tmp_path_factory.mktemp("prometheus")
    with Mesh(directory / "mesh") as mesh:
        mesh.start("tests.apps.upstream:app", "upstream")
        (caller,) = mesh.start("tests.apps.caller:app", "caller", env={"MESHKIT_VERSION": "1.2.3"})
        printed = meshkit(
            "prometheus-config", "--registry", mesh.registry.address, "--interval", "1s"
        )
        assert printed.returncode == 0, printed.stderr
        # Prometheus runs on the printed scrape job; its global part (intervals) is the
        # test helper's, which the printed one (--interval 1s) matches.
        global_part, _, scrape_configs = printed.stdout.partition("scrape_configs:\n")
        assert "scrape_interval: 1s" in global_part
        config = directory / "printed.yml"
        config.write_text(printed.stdout)
        if not supports_consul_sd(config):
            targets = directory / "targets.json"
            groups = consul_sd_groups(mesh.registry.address)
            targets.write_text(json.dumps(file_sd_targets(groups)))
            scrape_configs = with_file_sd(scrape_configs, targets)
        with (
            Traffic(mesh, caller) as traffic,
            running_prometheus(directory, scrape_configs) as base,
        ):
            wait_for(lambda: len(query(base, 'up{service_instance_id!=""} == 1')) == 2, "2 targets")
            edge = "rate(http_client_request_duration_seconds_count[15s]) > 0"
            wait_for(lambda: query(base, edge), "the caller -> upstream edge")
            yield base
        assert traffic.statuses and set(traffic.statuses) == {200}


def test_prometheus_finds_every_instance_at_its_admin_port(scraped: str) -> None:
    up = {r["metric"]["job"]: r["metric"] for r in query(scraped, 'up{service_instance_id!=""}')}
    assert set(up) == {"caller", "upstream"}
    assert up["caller"]["version"] == "1.2.3"
    for labels in up.values():
        assert labels["namespace"] == "default"
        assert labels["service_instance_id"].startswith(labels["job"] + "-")
        assert re.fullmatch(r"127\.0\.0\.1:\d+", labels["instance"])


def test_every_service_exposes_process_and_python_metrics(scraped: str) -> None:
    for promql in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        jobs = {r["metric"]["job"] for r in query(scraped, promql)}
        assert jobs == {"caller", "upstream"}, promql
    assert query(scraped, "python_gc_collections_total")


def test_a_closed_breaker_has_a_series_and_callers_carry_their_namespace(scraped: str) -> None:
    (circuit,) = query(scraped, 'meshkit_circuit_state{job="caller"}')
    assert circuit["metric"]["destination_service"] == "upstream"
    assert circuit["value"][1] == "0"
    callers = query(
        scraped,
        "sum by (job, source_service, source_namespace) "
        "(http_server_request_duration_seconds_count)",
    )
    edges = {
        (r["metric"]["source_service"], r["metric"]["source_namespace"], r["metric"]["job"])
        for r in callers
    }
    assert edges == {("tester", "ops", "caller"), ("caller", "default", "upstream")}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every panel target in every shipped dashboard."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


def variable_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] == "query":
                found.append((f"{path.name}: ${variable['name']}", variable["definition"]))
    return found


def substituted(expression: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda item: -len(item[0])):
        expression = expression.replace(name, value)
    assert "$" not in expression, f"a variable the test does not know: {expression}"
    return expression


def test_the_dashboards_are_the_three_promised() -> None:
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS.glob("*.json")}
    assert titles == {"meshkit / Mesh overview", "meshkit / Service", "meshkit / Edge"}
    assert len(dashboard_queries()) > 30


def test_every_dashboard_expression_returns_data(scraped: str) -> None:
    empty = []
    for where, expression in dashboard_queries():
        promql = substituted(expression)
        try:
            wait_for(functools.partial(query, scraped, promql), where, timeout=5)
        except AssertionError:
            empty.append(f"{where}: {promql}")
    assert not empty, "\n".join(empty)


def test_every_dashboard_variable_lists_the_test_mesh(scraped: str) -> None:
    for where, definition in variable_queries():
        match = re.fullmatch(r"label_values\((?P<selector>.+), (?P<label>\w+)\)", definition)
        assert match, where
        values = {
            r["metric"].get(match["label"]) for r in query(scraped, substituted(match["selector"]))
        }
        wanted = VARIABLES["$destination"] if match["label"] == "destination_service" else "caller"
        assert wanted in values, (where, values)


def test_prometheus_config_refuses_bad_input_in_one_line() -> None:
    for args in (["--registry", "ftp://x"], ["--interval", "soon"]):
        result = meshkit("prometheus-config", *args)
        assert result.returncode != 0
        assert result.stdout == "" and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
