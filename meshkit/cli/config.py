"""`meshkit config write|read|list|delete`: Consul's config entries, as `consul config` does;
`meshkit split SERVICE v1=90 v2=10`: a service-splitter in one line; `meshkit route
SERVICE --header x-canary=1 --subset v2`: a service-router route in one line.

``write FILE`` takes one entry in Consul's JSON form (``Kind``, ``Name`` and the kind's
fields; ``-`` reads stdin) and writes it to the registry (``CONSUL_HTTP_ADDR``), where
it is validated as Consul validates it. Routing entries (``service-resolver``,
``service-splitter``, ``service-router``) are in force in every meshkit client within
about a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from meshkit.errors import ConfigError, RegistryError
from meshkit.registry.consul import ConsulRegistry
from meshkit.settings import MeshSettings

_MAX_FILE = 1 << 20  # Consul refuses bodies past its own limits long before this


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    config = subparsers.add_parser(
        "config", help="write, read, list and delete Consul config entries (e.g. routing)"
    )
    commands = config.add_subparsers(dest="config_command", required=True)
    write = commands.add_parser("write", help="write one entry from a JSON file ('-': stdin)")
    write.add_argument("file", help="the entry in Consul's JSON form, or - for stdin")
    write.add_argument("--cas", type=int, help="write only over this ModifyIndex (0: if absent)")
    write.set_defaults(handler=_write)
    read = commands.add_parser("read", help="print one entry as JSON")
    read.add_argument("--kind", required=True, help="the entry's kind, e.g. service-splitter")
    read.add_argument("--name", required=True, help="the entry's name (usually a service)")
    read.set_defaults(handler=_read)
    listing = commands.add_parser("list", help="list the names of one kind's entries")
    listing.add_argument("--kind", required=True, help="the kind to list")
    listing.set_defaults(handler=_list)
    delete = commands.add_parser("delete", help="delete one entry")
    delete.add_argument("--kind", required=True, help="the entry's kind")
    delete.add_argument("--name", required=True, help="the entry's name")
    delete.set_defaults(handler=_delete)

    split = subparsers.add_parser(
        "split", help="write SERVICE's service-splitter: SUBSET=WEIGHT ... (weights sum to 100)"
    )
    split.add_argument("service", help="the service whose calls are split")
    split.add_argument(
        "splits", nargs="+", metavar="SUBSET=WEIGHT", help="a resolver subset and its percent"
    )
    split.set_defaults(handler=_split)
    _add_route(subparsers)


def _add_route(subparsers: argparse._SubParsersAction[Any]) -> None:
    route = subparsers.add_parser(
        "route",
        help="write SERVICE's service-router with one route: a match and where it goes",
        description="The route replaces SERVICE's router unless --append adds it after "
        "the routes already there. Calls no route matches go to SERVICE itself.",
    )
    route.add_argument("service", help="the service whose calls are routed")
    path = route.add_mutually_exclusive_group()
    path.add_argument("--path-prefix", metavar="PREFIX", help="match paths that start with PREFIX")
    path.add_argument("--path-exact", metavar="PATH", help="match this path only")
    path.add_argument("--path-regex", metavar="REGEX", help="match paths this RE2 matches")
    route.add_argument(
        "--method", action="append", default=[], help="match this method (repeatable)"
    )
    route.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="match a header equal to VALUE, or present without =VALUE (repeatable)",
    )
    route.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="match a query parameter equal to VALUE, or present (repeatable)",
    )
    route.add_argument("--subset", help="send matching calls to this resolver subset")
    route.add_argument("--to-service", metavar="SERVICE", help="... or to this other service")
    route.add_argument("--prefix-rewrite", metavar="PREFIX", help="replace the matched prefix")
    route.add_argument("--timeout", metavar="DURATION", help="request timeout, e.g. 2s")
    route.add_argument("--retries", type=int, metavar="N", help="NumRetries for the route")
    route.add_argument(
        "--append", action="store_true", help="add after the existing routes (default: replace)"
    )
    route.set_defaults(handler=_route)


def _registry() -> ConsulRegistry:
    return ConsulRegistry.from_settings(MeshSettings.from_env())


def load_entry(file: str) -> dict[str, Any]:
    """One entry from ``file`` (or stdin), checked for what the command itself needs."""
    try:
        text = sys.stdin.read(_MAX_FILE) if file == "-" else Path(file).read_text()[:_MAX_FILE]
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        entry = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{file}: not JSON ({exc}); write Consul's JSON form") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"{file}: expected one config entry (a JSON object)")
    kind = entry.get("Kind", entry.get("kind"))
    name = entry.get("Name", entry.get("name"))
    if not isinstance(kind, str) or not kind or not isinstance(name, str) or not name:
        raise ConfigError(f"{file}: the entry needs a Kind and a Name")
    return entry


def _write(args: argparse.Namespace) -> int:
    entry = load_entry(args.file)
    kind, name = entry.get("Kind", entry.get("kind")), entry.get("Name", entry.get("name"))
    body = {k: v for k, v in entry.items() if k not in ("Kind", "kind", "Name", "name")}
    registry = _registry()
    written = anyio.run(
        registry.call, lambda client: client.config.set(kind, name, body, cas=args.cas)
    )
    if not written:
        raise RegistryError(f"config entry {kind}/{name} not written: its ModifyIndex changed")
    print(f"Config entry written: {kind}/{name}")
    return 0


def parse_splits(service: str, splits: list[str]) -> dict[str, Any]:
    """``v1=90 v2=10`` as a service-splitter entry (the registry checks the sum)."""
    parsed = []
    for item in splits:
        subset, equals, weight = item.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not equals or not subset or value < 0:
            raise ConfigError(f"{item!r}: expected SUBSET=WEIGHT, e.g. v2=10")
        parsed.append({"Weight": value, "ServiceSubset": subset})
    return {"Kind": "service-splitter", "Name": service, "Splits": parsed}


def _split(args: argparse.Namespace) -> int:
    entry = parse_splits(args.service, args.splits)
    registry = _registry()
    body = {"Splits": entry["Splits"]}
    anyio.run(
        registry.call, lambda client: client.config.set("service-splitter", args.service, body)
    )
    shares = ", ".join(f"{s['ServiceSubset']} {s['Weight']:g}%" for s in entry["Splits"])
    print(f"Config entry written: service-splitter/{args.service} ({shares})")
    return 0


def parse_route(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's route as a service-router ``Routes`` item, in Consul's form
    (the registry validates the rest, as Consul does)."""
    if args.subset is None and args.to_service is None:
        raise ConfigError("meshkit route: say where matching calls go: --subset or --to-service")
    http: dict[str, Any] = {}
    for flag, field in (
        ("path_prefix", "PathPrefix"),
        ("path_exact", "PathExact"),
        ("path_regex", "PathRegex"),
    ):
        if getattr(args, flag) is not None:
            http[field] = getattr(args, flag)
    if args.method:
        http["Methods"] = [method.upper() for method in args.method]
    if args.header:
        http["Header"] = [_value_match("--header", item) for item in args.header]
    if args.query:
        http["QueryParam"] = [_value_match("--query", item) for item in args.query]
    destination: dict[str, Any] = {}
    for value, field in (
        (args.to_service, "Service"),
        (args.subset, "ServiceSubset"),
        (args.prefix_rewrite, "PrefixRewrite"),
        (args.timeout, "RequestTimeout"),
        (args.retries, "NumRetries"),
    ):
        if value is not None:
            destination[field] = value
    route: dict[str, Any] = {"Destination": destination}
    if http:
        route["Match"] = {"HTTP": http}
    return route


def _value_match(flag: str, item: str) -> dict[str, Any]:
    """``NAME=VALUE`` as an exact match, ``NAME`` as a presence test."""
    name, equals, value = item.partition("=")
    if not name:
        raise ConfigError(f"{flag} {item!r}: expected NAME or NAME=VALUE")
    return {"Name": name, "Exact": value} if equals else {"Name": name, "Present": True}


def _route(args: argparse.Namespace) -> int:
    route = parse_route(args)
    registry = _registry()
    written = anyio.run(registry.call, lambda client: _write_route(client, args, route))
    if not written:
        raise RegistryError(
            f"service-router/{args.service} not written: it changed meanwhile; run again"
        )
    where = "/".join(filter(None, (args.to_service, args.subset)))
    print(f"Config entry written: service-router/{args.service} (route to {where})")
    return 0


def _write_route(client: Any, args: argparse.Namespace, route: dict[str, Any]) -> bool:
    """Write the router; with ``--append``, over the one read (CAS: a write in between
    is not lost, the command fails instead)."""
    if not args.append:
        return bool(client.config.set("service-router", args.service, {"Routes": [route]}))
    existing = client.config.get("service-router", args.service)
    if existing is None:
        body, cas = {"Routes": [route]}, 0
    else:
        body, cas = {"Routes": [*(existing.get("Routes") or []), route]}, existing["ModifyIndex"]
    return bool(client.config.set("service-router", args.service, body, cas=cas))


def _read(args: argparse.Namespace) -> int:
    registry = _registry()
    entry = anyio.run(registry.call, lambda client: client.config.get(args.kind, args.name))
    if entry is None:
        raise RegistryError(f'Config entry not found for "{args.kind}" / "{args.name}"')
    print(json.dumps(entry, indent=4))
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = _registry()
    entries = anyio.run(registry.call, lambda client: client.config.list(args.kind))
    for entry in entries or ():
        print(entry.get("Name", ""))
    return 0


def _delete(args: argparse.Namespace) -> int:
    registry = _registry()
    anyio.run(registry.call, lambda client: client.config.delete(args.kind, args.name))
    print(f"Config entry deleted: {args.kind}/{args.name}")
    return 0
