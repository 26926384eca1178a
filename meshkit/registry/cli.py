"""`meshkit registry ...` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the `registry` subcommands (not yet built)."""
