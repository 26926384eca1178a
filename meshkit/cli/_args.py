"""Argument types shared by the commands: a bad value is named by its flag (argparse
prints ``argument --port: ...``), checked as the settings will check it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from meshkit.errors import ConfigError
from meshkit.settings import MeshSettings


def port_number(text: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def service_name(text: str) -> str:
    """A service name (a DNS label), as ``MeshSettings`` accepts it."""
    return _checked(text, lambda: MeshSettings(service=text))


def namespace_name(text: str) -> str:
    return _checked(text, lambda: MeshSettings(namespace=text))


def _checked(text: str, check: Callable[[], object]) -> str:
    try:
        check()
    except ConfigError as exc:
        # "service: must be a DNS label ...": argparse puts the flag where the field was.
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None
    return text
