"""Serving the dev registry: uvicorn on uvloop, listening as every meshkit server does
(``meshkit.serving.listen``), so port 0 works and the real address is printed first."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from meshkit.registry.dev.agent import DevAgent
from meshkit.registry.dev.api import MAX_BODY_BYTES, DevRegistryApp
from meshkit.registry.dev.connect_api import ConnectRegistryApp
from meshkit.registry.dev.intentions_api import DefaultPolicy
from meshkit.registry.dev.persist import DataDir
from meshkit.serving.listen import listen
from meshkit.serving.server import Server
from meshkit.settings import ConnectionLimits

#: Clients keep connections between blocking queries: Consul does not close them early.
#: A body holds at most a KV value (Consul's limit, 512 KiB) or a registration.
#: 4,096 connections (each instance holds a few, for its watches) bound what bodies can
#: hold at once to 4 GiB in theory; in practice bodies are small and decoded one at a time.
REGISTRY_LIMITS = ConnectionLimits(
    keepalive_timeout=65.0, max_body_bytes=MAX_BODY_BYTES, max_connections=4096
)


class RegistryServer(Server):
    """uvicorn, answering parked blocking queries at once when asked to stop.

    Otherwise each would hold the graceful shutdown until its wait ran out (minutes).
    """

    def __init__(self, app: DevRegistryApp) -> None:
        super().__init__(
            app,
            name="registry",
            limits=REGISTRY_LIMITS,
            mode="plain",
            loop="uvloop",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.store.release_all()
        await super().shutdown(sockets)


def serve(
    host: str,
    port: int,
    *,
    enable_script_checks: bool = False,
    acl_default_policy: DefaultPolicy = "allow",
    data_dir: Path | None = None,
) -> None:
    """Run until interrupted; print the bound address first (``port=0`` picks one).
    ``data_dir``: keep the catalog, KV, CA and config entries there across restarts."""
    app = build_app(
        enable_script_checks=enable_script_checks,
        acl_default_policy=acl_default_policy,
        data_dir=data_dir,
    )
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"meshkit registry: serving the Consul HTTP API on http://{shown}:{bound_port}")
    if enable_script_checks:
        print("meshkit registry: script checks are enabled: registrations can run commands")
    sys.stdout.flush()
    server = RegistryServer(app)
    server.hold_within_descriptors()
    server.run(sockets=[sock])


def build_app(
    *,
    enable_script_checks: bool = False,
    acl_default_policy: DefaultPolicy = "allow",
    data_dir: Path | None = None,
) -> ConnectRegistryApp:
    """The registry's app, its state restored from ``data_dir`` and saved there."""
    agent = DevAgent(enable_script_checks=enable_script_checks)
    if data_dir is None:
        return ConnectRegistryApp(agent, acl_default_policy=acl_default_policy)
    directory = DataDir(data_dir)
    directory.prepare()
    saved = directory.load(agent)
    app = ConnectRegistryApp(
        agent, ca=saved.ca if saved else None, acl_default_policy=acl_default_policy
    )
    if saved is not None:
        app.config_entries.restore(saved.config_entries)
    agent.store.on_commit = lambda: directory.save(app)
    directory.save(app)
    return app
