"""The server side of one request without sockets or TLS: what ``bench/serving.py
--callgrind --protocol`` counts.

    python -m bench._serving_protocol {meshkit,bare,meshkit-<ablation>} REQUESTS

Feeds REQUESTS requests (after 500 uncounted ones and a frozen GC), one at a time, as
bytes to the server's HTTP protocol on one kept-alive connection, and runs the loop
until each is answered: uvicorn's protocol around the bare app (bench/_endpoint.py),
or meshkit's (``MeshHttpToolsProtocol`` as ``meshkit run`` configures it) around M's
callee, the caller's SPIFFE ID in place of a TLS handshake. Each request carries what
the mesh client sends (bench/_serving_app.py's headers: a deadline and a trace parent,
10% sampled, made as it is sent so its sent time is fresh). What it counts is the
app side of ``--app`` plus the protocol: parsing callbacks, the request cycle, writes
into the transport (here an in-memory one). TLS and system calls are left out; they
cost both servers alike.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from typing import Any

import uvloop

from bench._serving_app import HEADERS, WARMUP_CALLS, load_app, mesh_headers


class MemoryTransport(asyncio.Transport):
    """A transport that keeps what is written: the protocol's whole outside world."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self._closing = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"sockname": ("127.0.0.1", 8443), "peername": ("127.0.0.1", 50000)}
        return extra.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def request(sampling: float) -> bytes:
    """One GET /hello as the mesh client sends it, its headers made now."""
    fields = [b"%s: %s" % field for field in HEADERS + mesh_headers(sampling)]
    return b"\r\n".join([b"GET /hello HTTP/1.1", *fields, b"", b""])


def protocol_for(name: str, app: Any) -> Any:
    """The HTTP protocol class and config the named server serves with."""
    import uvicorn
    from uvicorn.server import ServerState

    if name == "bare":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        config = uvicorn.Config(app, http="httptools", lifespan="off", access_log=False)
        config.load()
        protocol_class: Any = HttpToolsProtocol
    else:
        from meshkit.serving.listen import uvicorn_config
        from meshkit.settings import ConnectionLimits

        config = uvicorn_config(app, ConnectionLimits(), lifespan="off")
        protocol_class = config.http_protocol_class
    loop = asyncio.get_running_loop()
    return protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)


async def serve(name: str, requests: int) -> int:
    """Serve WARMUP_CALLS + ``requests`` requests; the number answered 200."""
    from meshkit.identity import PEER_IDENTITY_KEY, SpiffeId

    sampling = 0.0 if name.endswith("-unsampled") else 0.1
    protocol = protocol_for(name, load_app(name))
    transport = MemoryTransport()
    protocol.connection_made(transport)
    if name != "bare":  # the verified caller, as a handshake would have given it
        caller = SpiffeId.parse("spiffe://meshkit.local/ns/default/svc/loadgen")
        protocol._tls = {PEER_IDENTITY_KEY: caller}
    answered = 0
    for done in range(WARMUP_CALLS + requests):
        if done == WARMUP_CALLS:
            gc.collect()
            gc.freeze()
        transport.written.clear()
        protocol.data_received(request(sampling))
        # Both cycles mark the response's end only by this flag: one loop pass at a time.
        while protocol.cycle is None or not protocol.cycle.response_complete:  # noqa: ASYNC110
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # what the loop runs once a response is out
        answered += b"".join(transport.written).startswith(b"HTTP/1.1 200 ")
    return answered


def main() -> None:
    name, requests = sys.argv[1], int(sys.argv[2])
    answered = uvloop.run(serve(name, requests))
    total = WARMUP_CALLS + requests
    print(f"{name}: {answered} of {total} requests answered 200", flush=True)
    os._exit(0 if answered == total else 1)  # no span flush at exit


if __name__ == "__main__":
    main()
