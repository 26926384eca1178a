"""A service instance as its own process: ``python -m tests.client.instance DIR NAME``.

Serves strict mTLS with ``DIR/svid.pem`` etc. on an ephemeral port, prints the port.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import uvicorn

from meshkit.tls import TLSContexts, TLSMaterial


def main() -> None:
    directory, name = Path(sys.argv[1]), sys.argv[2]
    tls = TLSContexts(
        TLSMaterial.from_files(
            directory / "svid.pem", directory / "svid-key.pem", directory / "bundle.pem"
        )
    )
    body = name.encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_level="warning",
        ssl_context_factory=lambda _config, _default: tls.listening_context,
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        serving = asyncio.ensure_future(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await asyncio.sleep(0.01)
        print(server.servers[0].sockets[0].getsockname()[1], flush=True)
        await serving

    asyncio.run(run())


if __name__ == "__main__":
    main()
