"""`meshkit registry serve` (the embedded dev registry) and `meshkit services [NAME]`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from meshkit.errors import RegistryError
from meshkit.registry.base import InstanceHealth, ServiceSummary
from meshkit.registry.consul import ConsulRegistry
from meshkit.registry.dev.serve import serve
from meshkit.settings import MeshSettings


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    registry = subparsers.add_parser("registry", help="the embedded Consul-compatible registry")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    serve = registry_commands.add_parser(
        "serve", help="run a single-node, in-memory registry speaking Consul's HTTP API"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8500, help="port, 0 for any (default 8500)")
    serve.add_argument(
        "--enable-script-checks",
        action="store_true",
        help="run script checks (Args) that registrations define, as Consul's flag does",
    )
    serve.add_argument(
        "--acl-default-policy",
        choices=("allow", "deny"),
        default="allow",
        help="what no matching intention means, as Consul's acl.default_policy: allow "
        "(default, like consul agent -dev) or deny",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the catalog, KV and Connect CA in this directory across restarts "
        "(default: in memory only, as consul agent -dev)",
    )
    serve.set_defaults(handler=_serve)

    services = subparsers.add_parser(
        "services", help="list services and their healthy/total instances, or one service's"
    )
    services.add_argument("name", nargs="?", help="show this service's instances")
    services.set_defaults(handler=_services)


def _serve(args: argparse.Namespace) -> int:
    serve(
        args.host,
        args.port,
        enable_script_checks=args.enable_script_checks,
        acl_default_policy=args.acl_default_policy,
        data_dir=args.data_dir,
    )
    return 0


def _services(args: argparse.Namespace) -> int:
    registry = ConsulRegistry.from_settings(MeshSettings.from_env())
    if args.name:
        instances = anyio.run(registry.instances, args.name)
        if not instances:
            raise RegistryError(f"no instances of {args.name!r} at {registry.address}")
        print(format_instances(instances))
    else:
        print(format_services(anyio.run(registry.services)))
    return 0


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def format_services(summaries: Sequence[ServiceSummary]) -> str:
    rows = [(s.name, str(s.healthy), str(s.total)) for s in summaries]
    return format_table(("SERVICE", "HEALTHY", "TOTAL"), rows)


def format_instances(instances: Sequence[InstanceHealth]) -> str:
    rows = [
        (
            i.instance_id,
            f"{i.address}:{i.port}",
            i.version or "-",
            i.status,
            ", ".join(f"{c.name}={c.status}" for c in i.checks) or "-",
        )
        for i in instances
    ]
    return format_table(("INSTANCE", "ADDRESS", "VERSION", "STATUS", "CHECKS"), rows)
