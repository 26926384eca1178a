"""How every server meshkit runs listens: the service and admin ports, the CA, the dev
registry. One place for the socket options and the uvicorn settings they share."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from meshkit.errors import ConfigError
from meshkit.serving.protocol import MeshHttpToolsProtocol
from meshkit.settings import ConnectionLimits

BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket bound by us, so port 0 works and the real port is known
    before the first request; a ConfigError naming the address when it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    # Accepted sockets inherit it. asyncio sets TCP_NODELAY itself only for sockets made
    # with proto=IPPROTO_TCP, and create_server uses 0: without it Nagle and delayed
    # ACKs stall every response written in two parts (headers, body) by ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, limits: ConnectionLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for a meshkit server: meshkit's HTTP protocol (peer identity in
    scope) enforcing ``limits``, no access log or Server header of uvicorn's own, no
    proxy headers trusted; ``options`` for what differs by server (lifespan, loop)."""
    protocol = type("MeshHttpToolsProtocol", (MeshHttpToolsProtocol,), {"limits": limits})
    settings: dict[str, Any] = {
        "loop": "none",
        "http": protocol,
        "timeout_keep_alive": limits.keepalive_timeout,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
    }
    config = uvicorn.Config(app, **(settings | options))
    config.load()
    return config
