"""A process that registers one instance and heartbeats it (for tests that SIGKILL it).

Usage: python -m tests.registry._registrant REGISTRY_ADDRESS TTL_SECONDS
Prints "registered" once the instance is registered.
"""

from __future__ import annotations

import sys

import anyio
import anyio.abc

from meshkit.registry.base import InstanceRegistration
from meshkit.registry.consul import ConsulRegistry
from meshkit.registry.lifecycle import ServiceRegistration


async def _healthz(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        await stream.receive()
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


async def main(address: str, ttl: float) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    admin_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    instance = InstanceRegistration(
        service="doomed",
        instance_id="doomed-1",
        address="127.0.0.1",
        port=8443,
        admin_port=admin_port,
        spiffe_id="spiffe://meshkit.local/ns/default/svc/doomed",
        ttl=ttl,
        check_interval=30.0,
    )
    registration = ServiceRegistration(ConsulRegistry(address=address), instance)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _healthz)
        await tg.start(registration.run)
        print("registered", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], float(sys.argv[2]))
