"""The ``meshkit`` command.

Each area adds its own subcommands through an ``add_commands(subparsers)`` function
(``_COMMANDS`` names the module of each command); handlers return an exit code.
Expected failures are ``MeshError``s and print as one line on stderr with a non-zero
exit — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from meshkit import __version__
from meshkit.errors import MeshError

#: The module that adds each command, in the order ``meshkit --help`` lists them. A
#: command line naming one loads only that module: ``meshkit run`` serves for the
#: process's whole life, and the other commands' imports (cookiecutter, jinja2, yaml,
#: the Envoy wheel: 6 MiB resident, bench/memory.py) would stay in every service.
_COMMANDS = {
    "run": "meshkit.cli.run",
    "ca": "meshkit.cli.ca",
    "registry": "meshkit.cli.registry",
    "services": "meshkit.cli.registry",
    "intentions": "meshkit.cli.policy",
    "policy": "meshkit.cli.policy",
    "config": "meshkit.cli.config",
    "split": "meshkit.cli.config",
    "route": "meshkit.cli.config",
    "new": "meshkit.cli.new",
    "demo": "meshkit.cli.demo",
    "up": "meshkit.cli.demo",
    "dashboard": "meshkit.cli.observe",
    "top": "meshkit.cli.observe",
    "cert": "meshkit.cli.call",
    "call": "meshkit.cli.call",
    "check": "meshkit.cli.ops",
    "tap": "meshkit.cli.ops",
    "prometheus-config": "meshkit.cli.ops",
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every command's parser, or only the one of the command ``argv`` starts with."""
    parser = argparse.ArgumentParser(
        prog="meshkit", description="A service mesh without sidecars for Python ASGI services."
    )
    parser.add_argument("--version", action="version", version=f"meshkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    named = _COMMANDS.get(argv[0]) if argv else None
    for module_name in [named] if named else dict.fromkeys(_COMMANDS.values()):
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except MeshError as exc:
        print(f"meshkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
