"""`meshkit check`, `meshkit tap` and `meshkit prometheus-config`: operating a mesh."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from meshkit.observe.check import Checker, failed, render_json, render_text
from meshkit.observe.prometheus_config import ScrapeSettings, scrape_config
from meshkit.observe.tap import Tap, TapQuery, format_record
from meshkit.registry.consul import ConsulRegistry
from meshkit.settings import MeshSettings


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    check = subparsers.add_parser(
        "check",
        help="check the registry, the CA, this identity and each service; exit 1 on failure",
    )
    check.add_argument("service", nargs="?", help="check only this service (default: all)")
    _add_output(check, "text lines or one JSON document")
    check.set_defaults(handler=_check)

    tap = subparsers.add_parser(
        "tap", help="stream the requests SERVICE's instances serve (from their admin /tap)"
    )
    tap.add_argument("service", help="the service to tap")
    tap.add_argument(
        "--route",
        default="",
        help="only this route template, e.g. /items/{id} (default: every route)",
    )
    tap.add_argument(
        "--caller",
        default="",
        help="only this caller: a service name or SPIFFE ID (default: every caller)",
    )
    tap.add_argument("--count", type=_positive, help="stop after this many requests")
    _add_output(tap, "text lines or JSON lines")
    tap.set_defaults(handler=_tap)

    prometheus = subparsers.add_parser(
        "prometheus-config",
        help="print a Prometheus configuration that finds every instance in the registry",
    )
    prometheus.add_argument(
        "--registry",
        help="the registry (Consul) address Prometheus asks (default: CONSUL_HTTP_ADDR)",
    )
    prometheus.add_argument(
        "--interval", default="15s", help="scrape and evaluation interval (default 15s)"
    )
    prometheus.add_argument(
        "--job", default="meshkit", help="the scrape job's name (default: meshkit)"
    )
    prometheus.add_argument("--datacenter", help="the Consul datacenter (default: the agent's)")
    prometheus.set_defaults(handler=_prometheus_config)


def _add_output(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--output", choices=("text", "json"), default="text", help=f"{what} (default: text)"
    )


def _prometheus_config(args: argparse.Namespace) -> int:
    registry = args.registry or MeshSettings.from_env().consul_http_addr or "127.0.0.1:8500"
    settings = ScrapeSettings(
        registry=registry, job=args.job, interval=args.interval, datacenter=args.datacenter
    )
    print(scrape_config(settings), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    checker = Checker(MeshSettings.from_env())
    results = anyio.run(checker.run, args.service)
    print(render_json(results) if args.output == "json" else render_text(results))
    return 1 if failed(results) else 0


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {raw!r}")
    return int(raw)


def _tap(args: argparse.Namespace) -> int:
    query = TapQuery(service=args.service, route=args.route, caller=args.caller, count=args.count)

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record) if args.output == "json" else format_record(record)
        print(line, flush=True)

    def warn(message: str) -> None:
        print(f"meshkit tap: {message}", file=sys.stderr, flush=True)

    registry = ConsulRegistry.from_settings(MeshSettings.from_env())
    anyio.run(Tap(registry, query, emit, warn).run)
    return 0
