"""`meshkit ca ...` subcommands: init, serve, token create, bootstrap."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path
from typing import Any

import anyio

from meshkit.ca import CA_NAMESPACE, CA_SERVICE
from meshkit.ca.client import fetch_bundle
from meshkit.ca.server import CA_LIMITS, DEV_WARNING, serve
from meshkit.ca.store import CAStore, init_ca
from meshkit.ca.tokens import MAX_TTL, MAX_USES, TokenStore
from meshkit.cli._args import port_number
from meshkit.errors import CAError, ConfigError, IdentityError
from meshkit.identity import SpiffeId

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``10m``, ``24h``, ``7d`` or plain seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration like 30s, 10m, 24h: {text!r}")
    return dt.timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``meshkit ca init|serve|token create|bootstrap``."""
    ca = subparsers.add_parser("ca", help="run and use the mesh certificate authority")
    commands = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    init = commands.add_parser("init", help="create a root and an intermediate CA in DIR")
    init.add_argument(
        "--dir", type=Path, required=True, help="new directory for the CA's keys and state"
    )
    init.add_argument(
        "--trust-domain",
        required=True,
        help="the trust domain of every SPIFFE ID it signs, e.g. example.org (services need "
        "the same MESHKIT_TRUST_DOMAIN)",
    )
    init.set_defaults(handler=_init)

    serve = commands.add_parser("serve", help="serve the CA's HTTPS API")
    serve.add_argument(
        "--dir", type=Path, required=True, help="the CA's directory (`meshkit ca init`)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=port_number, default=8443, help="port, 0 for any (default 8443)"
    )
    serve.add_argument(
        "--leaf-ttl",
        type=parse_duration,
        default=dt.timedelta(hours=24),
        help="lifetime of the certificates it signs, e.g. 1h (default 24h; renewed at half)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=CA_LIMITS.max_connections,
        help=f"connections held at most; past it the oldest idle is shed "
        f"(default {CA_LIMITS.max_connections})",
    )
    serve.add_argument(
        "--dev", action="store_true", help="sign any identity without a token (demos only)"
    )
    serve.set_defaults(handler=_serve)

    token = commands.add_parser("token", help="join tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = token_commands.add_parser("create", help="a join token bound to one service")
    create.add_argument(
        "--dir", type=Path, required=True, help="the CA's directory (`meshkit ca init`)"
    )
    create.add_argument("--service", required=True, help="the service name the token is for")
    create.add_argument(
        "--namespace", default="default", help="its namespace in the SPIFFE ID (default: default)"
    )
    create.add_argument(
        "--ttl",
        type=parse_duration,
        default=dt.timedelta(minutes=10),
        help="how long the token may be used, e.g. 90s, 1h (default 10m)",
    )
    create.add_argument("--uses", type=int, default=1, help="signings it allows (default 1)")
    create.add_argument(
        "--max-ttl",
        type=parse_duration,
        default=dt.timedelta(seconds=MAX_TTL),
        help="refuse a --ttl past this (default 24h): a join token is a bearer secret",
    )
    create.add_argument(
        "--max-uses", type=int, default=MAX_USES, help="refuse more --uses (default 100)"
    )
    create.set_defaults(handler=_token_create)

    bootstrap = commands.add_parser("bootstrap", help="fetch the trust bundle, pinned")
    bootstrap.add_argument("--url", required=True, help="the CA's URL, https://host:port")
    bootstrap.add_argument("--fingerprint", required=True, help="sha256:<hex> of the root")
    bootstrap.add_argument("--out", type=Path, required=True, help="file to write the bundle to")
    bootstrap.set_defaults(handler=_bootstrap)


def _init(args: argparse.Namespace) -> int:
    store = init_ca(args.dir, args.trust_domain)
    print(f"CA for trust domain {store.trust_domain} created in {args.dir}", file=sys.stderr)
    print(store.root_fingerprint)
    return 0


def _serve(args: argparse.Namespace) -> int:
    store = CAStore.open(args.dir)
    if args.dev:
        print(DEV_WARNING, file=sys.stderr, flush=True)

    def listening(host: str, port: int) -> None:
        print(f"meshkit CA listening on https://{host}:{port}", flush=True)
        print(f"root fingerprint {store.root_fingerprint}", flush=True)

    anyio.run(
        lambda: serve(
            store,
            host=args.host,
            port=args.port,
            dev=args.dev,
            leaf_ttl=args.leaf_ttl,
            max_connections=args.max_connections,
            on_listening=listening,
        ),
        backend_options={"use_uvloop": True},
    )
    return 0


def _token_create(args: argparse.Namespace) -> int:
    store = CAStore.open(args.dir)
    try:
        spiffe_id = SpiffeId.for_service(store.trust_domain, args.namespace, args.service)
    except IdentityError as exc:
        raise ConfigError(f"--service/--namespace: {exc}") from exc
    if (args.namespace, args.service) == (CA_NAMESPACE, CA_SERVICE):
        raise CAError(f"{spiffe_id} is reserved for the CA itself")
    if args.uses < 1:
        raise ConfigError("--uses must be at least 1")
    tokens = TokenStore(store.tokens_path)
    try:
        token = tokens.create(
            spiffe_id,
            ttl=args.ttl.total_seconds(),
            uses=args.uses,
            max_ttl=args.max_ttl.total_seconds(),
            max_uses=args.max_uses,
        )
    except ValueError as exc:
        raise ConfigError(f"{exc} (see --max-ttl and --max-uses)") from exc
    finally:
        tokens.close()
    print(f"join token for {spiffe_id}, {args.uses} use(s), expires in {args.ttl}")
    print(token)
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    bundle = anyio.run(lambda: fetch_bundle(args.url, args.fingerprint))
    args.out.write_text(bundle)
    print(f"trust bundle pinned to {args.fingerprint} written to {args.out}", file=sys.stderr)
    return 0
