"""``meshkit run MODULE:APP``: serve a meshed app with mTLS, registration and telemetry.

APP is a ``ServiceApp``, or any Starlette or FastAPI app meshed with ``Mesh(app, ...)``.

Flags become ``MESHKIT_*`` variables before the app module is imported; the process
owns the OpenTelemetry SDK (set up from ``OTEL_*``) and logging.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Generator, Mapping
from typing import Any

from opentelemetry import trace

from meshkit.cli._args import port_number, service_name
from meshkit.cli.policy import load_app as load_target
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
        description="Serve MODULE:APP (imported from the current directory). Flags override "
        "the MESHKIT_* variables; the rest of the settings come from those variables.",
    )
    run.add_argument("target", metavar="MODULE:APP", help="e.g. payments.app:app")
    run.add_argument(
        "--service",
        type=service_name,
        help="service name in the SPIFFE ID and the registry (default: MESHKIT_SERVICE, "
        "else the app's)",
    )
    run.add_argument(
        "--host", help="service port's interface (default: MESHKIT_HOST, else 127.0.0.1)"
    )
    run.add_argument(
        "--port",
        type=port_number,
        help="service port, 0 for any free one (default: MESHKIT_PORT, else 0)",
    )
    run.add_argument(
        "--admin-host",
        help="admin port's interface (default: MESHKIT_ADMIN_HOST, else 127.0.0.1)",
    )
    run.add_argument(
        "--admin-port",
        type=port_number,
        help="admin port for /healthz, /readyz, /metrics, 0 for any free one "
        "(default: MESHKIT_ADMIN_PORT, else 0)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the lowest level logged to stderr (default: info)",
    )
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
    app = load_target(target)
    try:
        return app, mesh_of(app)
    except ConfigError:
        raise ConfigError(
            f"{target} is a {type(app).__name__}, not a meshed app (a ServiceApp, or an app "
            "given to Mesh(app, ...))"
        ) from None
