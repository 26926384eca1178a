"""Serving a ServiceApp: uvicorn with strict mTLS on the service port, plaintext admin port."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``meshkit run`` (being built)."""
