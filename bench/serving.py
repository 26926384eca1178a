"""meshkit's serving fast path against the stock uvicorn completion, in one process.

After each response uvicorn arms a keep-alive timer that the next request cancels;
meshkit's protocol (meshkit/serving/protocol.py) completes a response without it (its
once-a-second check closes idle connections) and writes the response at once instead
of one loop pass later. Here one uvloop runs meshkit's protocol serving the bench's
``/hello`` over mTLS on 127.0.0.1 and a lean raw-protocol client on kept-alive
connections; rounds alternate stock and fast (``protocol.use_fast_paths``) on the same
connections. Figures: the process's CPU µs per request (server + client; the client's
work is the same in both), medians over the rounds, at each concurrency.

On a busy machine CPU time is too noisy for a few µs; ``--instructions`` counts
instead, under valgrind (callgrind): for each path, one process serving 300 requests
and one serving 1,300, so that everything but the extra 1,000 requests (start-up,
imports, handshakes) cancels out; the figure is instructions per request.

    python -m bench.serving [--requests 20000] [--rounds 7] [--concurrency 1,16]
    python -m bench.serving --instructions [--concurrency 16]

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httptools
import uvloop
from uvicorn.server import ServerState

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._endpoint import app
from bench._report import print_figures
from meshkit.ca.x509 import LocalAuthority
from meshkit.serving import protocol
from meshkit.serving.listen import uvicorn_config
from meshkit.settings import ConnectionLimits
from meshkit.tls import TLSMaterial, client_context, server_context

REQUEST = b"GET /hello HTTP/1.1\r\nHost: callee\r\n\r\n"


class Client(asyncio.Protocol):
    """One kept-alive connection sending the next request when a response is complete."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.left = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.left -= 1
        if self.left > 0:
            assert self.transport is not None
            self.transport.write(REQUEST)
        elif self.done is not None and not self.done.done():
            self.done.set_result(None)

    def run(self, requests: int) -> asyncio.Future[None]:
        self.left = requests
        self.done = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(REQUEST)
        return self.done


def material(authority: LocalAuthority, service: str) -> TLSMaterial:
    issued = authority.issue(service)
    return TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem)


async def round_us(clients: list[Client], requests: int) -> float:
    each = requests // len(clients)
    start = time.process_time()
    await asyncio.gather(*(client.run(each) for client in clients))
    return (time.process_time() - start) / (each * len(clients)) * 1e6


async def run(
    args: argparse.Namespace, *, warm_up: int | None = None, path: bool | None = None
) -> dict[str, Any]:
    """Interleaved rounds; or with ``path`` set, only ``warm_up`` requests on that path."""
    authority = LocalAuthority("bench.local")
    config = uvicorn_config(app, ConnectionLimits(), lifespan="off")
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: config.http_protocol_class(config=config, server_state=state, app_state={}),
        "127.0.0.1",
        0,
        ssl=server_context(material(authority, "callee")),
    )
    port = server.sockets[0].getsockname()[1]
    tls = client_context(material(authority, "loadgen"))
    figures: dict[str, Any] = {"fast_path_available": protocol.use_fast_paths(path is not False)}
    try:
        for n in args.concurrency:
            clients = []
            for _ in range(n):
                _, client = await loop.create_connection(Client, "127.0.0.1", port, ssl=tls)
                clients.append(client)
            samples: dict[bool, list[float]] = {False: [], True: []}
            await round_us(clients, args.requests // 10 if warm_up is None else warm_up)
            for _ in range(args.rounds):
                for fast in (False, True):
                    protocol.use_fast_paths(fast)
                    samples[fast].append(await round_us(clients, args.requests))
            for client in clients:
                assert client.transport is not None
                client.transport.close()
            if path is not None:
                continue
            stock, fast = (statistics.median(samples[key]) for key in (False, True))
            figures[f"us_per_request_stock_c{n}"] = round(stock, 2)
            figures[f"us_per_request_fast_c{n}"] = round(fast, 2)
            figures[f"saved_us_c{n}"] = round(stock - fast, 2)
            figures[f"ratio_fast_over_stock_c{n}"] = round(fast / stock, 3)
            figures[f"round_stdev_us_c{n}"] = round(
                max(statistics.pstdev(values) for values in samples.values()), 2
            )
    finally:
        protocol.use_fast_paths()
        server.close()
    return figures


async def one_path(fast: bool, requests: int, concurrency: int) -> None:
    """Serve ``requests`` on one path only (what ``--instructions`` runs under valgrind)."""
    args = argparse.Namespace(requests=requests, rounds=0, concurrency=[concurrency])
    protocol.use_fast_paths(fast)
    await run(args, warm_up=requests, path=fast)


def callgrind_instructions(fast: bool, requests: int, concurrency: int, workdir: Path) -> int:
    out = workdir / f"callgrind.{fast}.{requests}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    argv += [sys.executable, "-m", "bench.serving", "--only", "fast" if fast else "stock"]
    argv += ["--requests", str(requests), "--concurrency", str(concurrency)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()[-1000:]}")
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    assert totals is not None, f"no totals in {out}"
    return int(totals[1])


def instructions(concurrency: int) -> dict[str, Any]:
    low, high = 300, 1300
    keys = [(fast, n) for fast in (False, True) for n in (low, high)]
    with tempfile.TemporaryDirectory() as directory, ThreadPoolExecutor(len(keys)) as pool:
        counts = pool.map(
            lambda key: callgrind_instructions(*key, concurrency, Path(directory)), keys
        )
        runs = dict(zip(keys, counts, strict=True))
    per = {fast: (runs[fast, high] - runs[fast, low]) / (high - low) for fast in (False, True)}
    return {
        f"instructions_per_request_stock_c{concurrency}": round(per[False]),
        f"instructions_per_request_fast_c{concurrency}": round(per[True]),
        f"ratio_instructions_fast_over_stock_c{concurrency}": round(per[True] / per[False], 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.serving", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--only", choices=("stock", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    if args.only:
        uvloop.run(one_path(args.only == "fast", args.requests, args.concurrency[0]))
        return
    if args.instructions:
        figures: dict[str, Any] = {}
        for n in args.concurrency:
            figures |= instructions(n)
    else:
        figures = uvloop.run(run(args))
    print_figures(figures)


if __name__ == "__main__":
    main()
