"""``meshkit demo`` (the online shop in a mesh, with its golden metrics) and ``meshkit up``
(the control plane alone, for your own services); the work is in ``meshkit.demo``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from meshkit.demo.run import DemoOptions, Display, demo, interruptible, start_control_plane
from meshkit.errors import MeshError
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
    demo.set_defaults(handler=_demo_command)
    up = subparsers.add_parser(
        "up", help="run the control plane (dev registry + dev CA) for your services"
    )
    up.add_argument("--registry-port", type=int, default=8500)
    up.add_argument("--ca-port", type=int, default=8443)
    up.add_argument("--dir", type=Path, default=Path(".meshkit/control-plane"))
    up.set_defaults(handler=_up_command)


def _demo_command(args: argparse.Namespace) -> int:
    options = DemoOptions(
        args.duration, args.rate, args.interval, args.kill and not args.canary, args.canary
    )
    return demo(options, args.dir, Display(sys.stdout, interactive=sys.stdout.isatty()))


def _up_command(args: argparse.Namespace) -> int:
    with interruptible(), Supervisor(args.dir / "logs") as supervisor:
        plane = start_control_plane(
            supervisor, args.dir, registry_port=args.registry_port, ca_port=args.ca_port
        )
        print("control plane up: dev registry and dev CA. Point your services at it:\n")
        for name, value in plane.env().items():
            print(f"  export {name}={value}")
        print(f"\nlogs in {args.dir / 'logs'}; Ctrl-C stops everything.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(child.running for child in supervisor.children):
                time.sleep(0.5)
            failed = next(c for c in supervisor.children if not c.running)
            raise MeshError(f"{failed.name} exited:\n{failed.log_tail()}")
    return 0
