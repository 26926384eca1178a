"""``meshkit dashboard`` (the mesh live in a browser) and ``meshkit top SERVICE`` (a live
terminal table of what a service serves); the work is in ``meshkit.observe``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from meshkit.cli.policy import manifest_of
from meshkit.errors import ConfigError
from meshkit.observe.dashboard import (
    DASHBOARD_PORT,
    DashboardOptions,
    DashboardState,
    listening_line,
    serve_dashboard,
)
from meshkit.observe.prometheus import PrometheusScraper
from meshkit.observe.scrape import Observer
from meshkit.observe.top import as_json, as_table, check_service
from meshkit.registry.consul import DEFAULT_ADDRESS, ConsulRegistry
from meshkit.settings import MeshSettings


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    dashboard = subparsers.add_parser(
        "dashboard",
        help="serve a live web page of the mesh: topology, golden signals, instances, policies",
    )
    _add_registry(dashboard)
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"
    )
    dashboard.add_argument(
        "--port", type=int, default=DASHBOARD_PORT, help=f"port (default {DASHBOARD_PORT}; 0: any)"
    )
    dashboard.add_argument(
        "--prometheus",
        metavar="URL",
        default=None,
        help="read the metrics from this Prometheus (http://host:9090) instead of each instance",
    )
    dashboard.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE:APP",
        help="show the route policies of this app (repeatable; as `meshkit policy export`)",
    )
    dashboard.add_argument(
        "--manifest",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="show the route policies in this `meshkit policy export` output (repeatable)",
    )
    dashboard.add_argument(
        "--interval", type=float, default=1.0, help="seconds between updates (default 1)"
    )
    dashboard.set_defaults(handler=_dashboard)

    top = subparsers.add_parser(
        "top", help="live table of the requests SERVICE serves, per caller and route"
    )
    top.add_argument("service", metavar="SERVICE", help="the service to watch")
    _add_registry(top)
    top.add_argument(
        "--interval", type=float, default=2.0, help="seconds per refresh and window (default 2)"
    )
    top.add_argument("--once", action="store_true", help="print one window and exit")
    top.add_argument(
        "--output", choices=("table", "json"), default="table", help="table (default) or json"
    )
    top.set_defaults(handler=_top)


def _add_registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        metavar="URL",
        default=None,
        help=f"the registry (Consul HTTP API), default CONSUL_HTTP_ADDR or {DEFAULT_ADDRESS}",
    )


def _observer(args: argparse.Namespace) -> Observer:
    address = args.registry or MeshSettings.from_env().consul_http_addr or DEFAULT_ADDRESS
    return Observer(ConsulRegistry(address=address, timeout=5.0))


def _interval(seconds: float) -> float:
    if not 0.1 <= seconds <= 60:
        raise ConfigError(f"--interval {seconds}: expected 0.1 to 60 seconds")
    return seconds


def _manifests(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    manifests = [manifest_of(reference) for reference in args.app]
    for path in args.manifest:
        try:
            manifests.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--manifest {path}: {exc}") from None
    return {str(m.get("service") or f"app {i + 1}"): m for i, m in enumerate(manifests)}


def _dashboard(args: argparse.Namespace) -> int:
    options = DashboardOptions(args.host, args.port, interval=_interval(args.interval))
    state = DashboardState(manifests=_manifests(args))
    observer = _observer(args)
    if args.prometheus:
        observer.scraper = PrometheusScraper(args.prometheus)
        state.source = f"the Prometheus at {args.prometheus}"

    def listening(url: str) -> None:
        print(listening_line(url, observer.registry.address), flush=True)

    anyio.run(lambda: serve_dashboard(observer, state, options, on_listening=listening))
    return 0


def _top(args: argparse.Namespace) -> int:
    interval, observer = _interval(args.interval), _observer(args)
    anyio.run(observer.round)  # the baseline: what came before it has no rate
    check_service(observer, args.service)
    interactive = sys.stdout.isatty() and not args.once
    while True:
        time.sleep(interval)
        anyio.run(observer.round)
        ticks = observer.history.recent(interval * 1.5)
        if args.output == "json":
            text = json.dumps(as_json(args.service, ticks))
        else:
            text = as_table(args.service, ticks)
        if interactive:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text, flush=True)
        if args.once:
            return 0
