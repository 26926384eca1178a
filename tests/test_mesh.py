"""``Mesh(app)`` wires itself into a plain Starlette app when made: the app's lifespan
runs inside the mesh's, an app that already served is refused, and ``meshkit run``
names what is not a meshed app. (Served over real sockets: tests/test_mesh_fastapi.py,
tests/test_outside.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from meshkit import ConfigError, Mesh, MeshSettings, ServiceApp
from meshkit.client import OutsideClient
from meshkit.mesh import mesh_of
from meshkit.testing import admin_get
from meshkit.testing.supervisor import Child

# Permissive mode without an identity and no registry: the lifespan opens no CA or Consul.
LOCAL = MeshSettings(service="local", tls_mode="permissive", consul_http_addr=None)
SERVING = re.compile(r"(?P<id>spiffe://\S+) serving .* admin on \S+:(?P<admin>\d+)")


@pytest.mark.anyio
async def test_the_apps_lifespan_runs_inside_the_meshs() -> None:
    seen: list[str] = []
    outside: list[OutsideClient] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # The mesh's resources are open during the app's startup, and its shutdown.
        outside.append(mesh_of(app).outside)
        assert not outside[0].is_closed
        seen.append("startup")
        yield {"db": "open"}
        assert mesh_of(app).outside is outside[0] and not outside[0].is_closed
        seen.append("shutdown")

    app = Starlette(lifespan=lifespan)
    mesh = Mesh(app, settings=LOCAL)
    assert mesh_of(app) is mesh is app.state.mesh
    with pytest.raises(ConfigError, match="lifespan"):
        _ = mesh.outside  # opened by the lifespan
    async with app.router.lifespan_context(app) as state:
        assert state == {"db": "open"}  # the app's lifespan state reaches its requests
        assert seen == ["startup"]
    assert seen == ["startup", "shutdown"]
    assert outside[0].is_closed  # closed with it
    with pytest.raises(ConfigError, match="lifespan"):
        _ = mesh.outside


def test_an_app_that_already_served_is_refused() -> None:
    app = Starlette()
    app.middleware_stack = app.build_middleware_stack()  # what its first request does
    with pytest.raises(ConfigError, match="before the app serves"):
        Mesh(app, settings=LOCAL)


def test_service_app_is_starlette_plus_mesh() -> None:
    app = ServiceApp(settings=LOCAL)
    assert isinstance(app.mesh, Mesh) and mesh_of(app) is app.mesh
    assert app.settings is app.mesh.settings
    with pytest.raises(ConfigError, match="not meshed"):
        mesh_of(Starlette())


def test_mesh_run_serves_the_app_it_meshes() -> None:
    """``mesh.run(...)`` (what ``ServiceApp.run`` calls) serves the app with its overrides."""
    script = (
        "import logging; logging.basicConfig(level='INFO'); from tests.apps.relay import mesh; "
        "mesh.run(service='ran', admin_port=0)"
    )
    env = {**os.environ, "MESHKIT_TLS_MODE": "permissive", "CONSUL_HTTP_ADDR": ""}
    argv = [sys.executable, "-c", script]
    child = Child.spawn("run", argv, env=env, cwd=Path(__file__).parent.parent)
    try:
        match = child.wait_for(SERVING, timeout=30)
        status, body = admin_get(int(match["admin"]), "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True})
        assert "svc/ran" in match.group(0)  # the override reached the served settings
    finally:
        assert child.stop() == 0


def test_policy_export_describes_a_meshed_fastapi_app_with_its_own_settings() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "meshkit", "policy", "export", "examples.orders.app:app"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parent.parent,
        env={k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")},
    )
    assert completed.returncode == 0, completed.stderr
    manifest = json.loads(completed.stdout)
    # Mesh(app, service="orders"), not the environment's default name ("service").
    assert manifest["service"] == "orders"
