"""`meshkit intentions ...` and `meshkit policy export` subcommands."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, cast

import anyio
from starlette.routing import BaseRoute

from meshkit.errors import ConfigError
from meshkit.mesh import Mesh
from meshkit.policy.consul_intentions import (
    ConsulIntentionAdmin,
    ListedIntention,
    intention_source,
)
from meshkit.policy.decorators import policy_manifest
from meshkit.policy.intentions import Intention, IntentionStore, consul_client
from meshkit.registry.consul import ConsulRegistry
from meshkit.registry.routing_watch import routing_by_service
from meshkit.settings import DefaultPolicy, MeshSettings


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    intentions = subparsers.add_parser(
        "intentions",
        help="mesh-wide allow/deny rules source -> destination (in the registry; Consul's "
        "own intentions with MESHKIT_INTENTIONS=consul)",
    )
    actions = intentions.add_subparsers(dest="intentions_command", metavar="ACTION", required=True)
    for action in ("allow", "deny"):
        parser = actions.add_parser(action, help=f"{action} calls from SOURCE to DESTINATION")
        _add_pair(parser)
        parser.set_defaults(handler=_set_intention, action=action)
    delete = actions.add_parser("delete", help="remove the rule SOURCE -> DESTINATION")
    _add_pair(delete)
    delete.set_defaults(handler=_delete_intention)
    listing = actions.add_parser("list", help="print the rules in force")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_list_intentions)

    policy = subparsers.add_parser("policy", help="handler policies")
    policy_actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    export = policy_actions.add_parser(
        "export", help="print every route of module:app with its effective policies (JSON)"
    )
    export.add_argument("app", help="the application, as module:attribute")
    export.add_argument(
        "--default-policy",
        choices=("allow-mesh", "deny"),
        help="the mesh default to assume (default: the app's, else MESHKIT_DEFAULT_POLICY)",
    )
    export.add_argument(
        "--routing",
        action="store_true",
        help="add the routing in force per destination (Consul's service-router, -splitter "
        "and -resolver entries, read from CONSUL_HTTP_ADDR)",
    )
    export.set_defaults(handler=_export)


def _add_pair(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="calling service name, or * for any")
    parser.add_argument("destination", help="called service name, or * for any")


def _store() -> IntentionStore:
    return IntentionStore(consul_client(MeshSettings.from_env()))


def _consul_admin() -> ConsulIntentionAdmin | None:
    """Consul's intentions when they are the source: MESHKIT_INTENTIONS=consul, or
    ``auto`` with MESHKIT_IDENTITY=consul. Not detected from the agent as a service does:
    a shell without the services' variables would then write where they do not read."""
    settings = MeshSettings.from_env()
    if intention_source(settings, settings.identity) != "consul":
        return None
    return ConsulIntentionAdmin(consul_client(settings))


def _set_intention(args: argparse.Namespace) -> int:
    admin = _consul_admin()
    if admin is not None:
        admin.set(args.source, args.destination, args.action)
    else:
        _store().set(Intention(args.source, args.destination, args.action))
    print(f"{args.source} -> {args.destination}: {args.action}")
    return 0


def _delete_intention(args: argparse.Namespace) -> int:
    admin = _consul_admin()
    if admin is not None:
        admin.delete(args.source, args.destination)
    else:
        _store().delete(args.source, args.destination)
    print(f"{args.source} -> {args.destination}: deleted")
    return 0


def _list_intentions(args: argparse.Namespace) -> int:
    admin = _consul_admin()
    rules = (
        admin.rules()
        if admin is not None
        else [ListedIntention(r.source, r.destination, r.action) for r in _store().rules()]
    )
    if args.json:
        print(json.dumps([rule.to_json() for rule in rules], indent=2))
        return 0
    if not rules:
        print("no intentions")
    for rule in rules:
        shown = f"{len(rule.permissions)} L7 permissions" if rule.permissions else rule.action
        print(f"{rule.source} -> {rule.destination}: {shown}")
    return 0


def _export(args: argparse.Namespace) -> int:
    manifest = manifest_of(args.app, default_policy=args.default_policy)
    if args.routing:
        # The registry of the environment (CONSUL_HTTP_ADDR), as the other commands use.
        registry = ConsulRegistry.from_settings(MeshSettings.from_env())
        manifest = {**manifest, "routing": anyio.run(routing_by_service, registry)}
    json.dump(manifest, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def manifest_of(reference: str, *, default_policy: DefaultPolicy | None = None) -> dict[str, Any]:
    """The policy manifest of the app ``module:attribute`` (``meshkit policy export``)."""
    app = load_app(reference)
    routes = cast(list[BaseRoute], getattr(app, "routes", None))
    if routes is None:
        raise ConfigError(f"{reference} has no routes (expected a Starlette or FastAPI app)")
    # A meshed app (ServiceApp, Mesh(app)) carries its settings; any other app is
    # described with the environment's.
    mesh = getattr(getattr(app, "state", None), "mesh", None)
    settings = mesh.settings if isinstance(mesh, Mesh) else MeshSettings.from_env()
    default: DefaultPolicy = default_policy or settings.default_policy
    return policy_manifest(routes, default_policy=default, service=settings.service)


def load_app(reference: str) -> object:
    """Import ``module:attribute`` (dots allowed in the attribute), from the current dir."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"expected module:attribute, got {reference!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ConfigError(f"{module_name} has no attribute {attribute}") from exc
    return target
