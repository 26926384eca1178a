"""``meshkit run MODULE:APP``: serve a meshed app with mTLS, registration and telemetry.

APP is a ``ServiceApp``, or any Starlette or FastAPI app meshed with ``Mesh(app, ...)``.

Flags become ``MESHKIT_*`` variables before the app module is imported; the process
owns the OpenTelemetry SDK (set up from ``OTEL_*``) and logging.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Generator, Mapping
from typing import Any

from opentelemetry import trace

from meshkit.errors import ConfigError
from meshkit.mesh import Mesh, mesh_of
from meshkit.serving.server import serve
from meshkit.telemetry.sdk import configure_tracing_from_env

_RUN_FLAGS: Mapping[str, str] = {
    "service": "MESHKIT_SERVICE",
    "host": "MESHKIT_HOST",
    "port": "MESHKIT_PORT",
    "admin_host": "MESHKIT_ADMIN_HOST",
    "admin_port": "MESHKIT_ADMIN_PORT",
}


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    run = subparsers.add_parser(
        "run",
        help="serve a meshed app (ServiceApp or Mesh(app)) with mTLS, registration and telemetry",
        description="Serve MODULE:APP. Flags override MESHKIT_* variables.",
    )
    run.add_argument("target", metavar="MODULE:APP", help="e.g. payments.app:app")
    for name in _RUN_FLAGS:
        run.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    # Flags become environment before the app module is imported, since a ServiceApp
    # reads its settings when it is constructed.
    for name, variable in _RUN_FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            os.environ[variable] = str(value)
    configure_logging(args.log_level)
    app, mesh = load_app(args.target)
    with _tracing_from_env(mesh):
        serve(app, mesh)
    return 0


@contextlib.contextmanager
def _tracing_from_env(mesh: Mesh) -> Generator[None, None, None]:
    """The OpenTelemetry SDK as the standard OTEL_* variables say, unless the app brought
    its own provider or one is installed already; flushed at exit."""
    provider = None
    if mesh.tracer_provider is None:
        provider = configure_tracing_from_env(mesh.settings.service, os.environ)
    if provider is not None:
        trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        if provider is not None:
            provider.shutdown()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Access log lines are JSON already: one per line on stdout, nothing around them.
    access = logging.getLogger("meshkit.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    # httpx logs every request at INFO: the CA client's few are meshkit's to tell.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def load_app(target: str) -> tuple[Any, Mesh]:
    """Import ``module:attribute``: a meshed app (a ServiceApp, or any app given to
    ``Mesh``) and its mesh."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"expected MODULE:APP, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    try:
        return app, mesh_of(app)
    except ConfigError:
        raise ConfigError(
            f"{target} is not a meshed app (a ServiceApp, or an app given to Mesh(app, ...))"
        ) from None
