"""The ``meshkit`` command.

Each area adds its own subcommands through an ``add_commands(subparsers)`` function
(listed in ``_COMMAND_MODULES``); handlers return an exit code. Expected failures are
``MeshError``s and print as one line on stderr with a non-zero exit — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from meshkit import __version__
from meshkit.errors import MeshError

_COMMAND_MODULES = (
    "meshkit.cli.run",
    "meshkit.cli.ca",
    "meshkit.cli.registry",
    "meshkit.cli.policy",
    "meshkit.cli.config",
    "meshkit.cli.new",
    "meshkit.cli.demo",
    "meshkit.cli.observe",
    "meshkit.cli.call",
    "meshkit.cli.ops",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshkit", description="A service mesh without sidecars for Python ASGI services."
    )
    parser.add_argument("--version", action="version", version=f"meshkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except MeshError as exc:
        print(f"meshkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
