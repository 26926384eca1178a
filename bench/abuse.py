"""What hostile clients can make meshkit's servers hold, against real processes.

    python -m bench.abuse

Each attack of issue #15, run against a real ``meshkit ca serve``, ``meshkit run`` or
``meshkit registry serve`` process, with the figure a user cares about measured while
it lasts (and, where it means something, the same figure without the attack, from
the same run):

- CA signing latency while 256 connections hold a slow ``POST /v1/sign`` body;
- CA and service resident memory while clients stream endless header lines;
- service success rate and admin ``/healthz`` latency while 1,000 TCP connections sit
  idle under ``nofile`` 1,024;
- registry resident memory while 4 clients each start a 300 MiB PUT and stall.

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench._procs import rss_mb
from meshkit.ca.store import init_ca
from meshkit.ca.x509 import LocalAuthority, build_csr, csr_pem, new_private_key
from meshkit.identity import SpiffeId
from meshkit.testing import (
    CAProcess,
    Connection,
    RegistryProcess,
    ServiceProcess,
    admin_get,
    context_for,
)

TRUST_DOMAIN = "bench.local"


class PeakRSS:
    """The highest resident set of ``pid`` seen, sampled every 20 ms while open."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_mb(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return round(self.peak - self.start, 1)


def p99_ms(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=100)[98] * 1000, 2)


def timed(call: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def flood_heads(port: int, context: ssl.SSLContext | None, connections: int, mib: int) -> None:
    """``connections`` clients at once, each sending ``mib`` MiB of one header line."""

    def one() -> None:
        with contextlib.suppress(OSError):
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock = context.wrap_socket(raw) if context else raw
            with sock:
                sock.sendall(b"POST / HTTP/1.1\r\nX-Flood: ")
                line = b"a" * (1 << 20)
                for _ in range(mib):
                    sock.sendall(line)

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- the CA --------------------------------------------------------------------------


def ca_figures(directory: Path) -> dict[str, Any]:
    store = init_ca(directory / "ca", TRUST_DOMAIN)
    context = ssl.create_default_context(cadata=store.bundle_pem)
    context.check_hostname = False
    with CAProcess(store.directory, "--dev") as ca:

        def sign() -> None:
            wanted = SpiffeId.for_service(TRUST_DOMAIN, "default", "web")
            body = json.dumps({"csr": csr_pem(build_csr(new_private_key(), wanted))})
            connection = _https(ca.port, context)
            connection.request("POST", "/v1/sign", body=body)
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
            connection.close()

        timed(sign, 20)  # warm up: imports, caches
        quiet = timed(sign, 100)
        with _slow_bodies(ca.port, context, 256):
            held = timed(sign, 100)
        with PeakRSS(ca.process.pid) as memory:
            flood_heads(ca.port, context, connections=6, mib=64)
    return {
        "ca_sign_p99_ms_quiet": p99_ms(quiet),
        "ca_sign_p99_ms_under_slow_body": p99_ms(held),
        "ca_rss_growth_mb_under_header_flood": memory.growth,
    }


def _https(port: int, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)


@contextlib.contextmanager
def _slow_bodies(port: int, context: ssl.SSLContext, count: int) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            raw = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock = stack.enter_context(context.wrap_socket(raw))
            sock.sendall(b"POST /v1/sign HTTP/1.1\r\nHost: ca\r\nContent-Length: 60000\r\n\r\n{")
        yield


# -- a service -----------------------------------------------------------------------


def service_figures(directory: Path) -> dict[str, Any]:
    authority = LocalAuthority(TRUST_DOMAIN)
    web = context_for(authority.issue("web"), authority.bundle_pem)
    figures: dict[str, Any] = {}
    with _echo(authority, directory / "flood") as echo:
        with PeakRSS(echo.process.pid) as memory:
            flood_heads(echo.port, web, connections=8, mib=200)
        figures["svc_rss_growth_mb_under_header_flood"] = memory.growth
    with _echo(authority, directory / "idle", nofile=1024) as echo:
        quiet = timed(lambda: admin_get(echo.admin_port, "/healthz"), 200)
        idle = [socket.create_connection(("127.0.0.1", echo.port)) for _ in range(1000)]
        try:
            time.sleep(0.5)
            answered = sum(_call(echo.port, web) for _ in range(200))
            flooded = timed(lambda: admin_get(echo.admin_port, "/healthz"), 200)
        finally:
            for sock in idle:
                sock.close()
    figures["svc_success_pct_under_idle_flood"] = round(100 * answered / 200, 1)
    figures["admin_healthz_p99_ms_quiet"] = p99_ms(quiet)
    figures["admin_healthz_p99_ms_under_idle_flood"] = p99_ms(flooded)
    return figures


def _echo(authority: LocalAuthority, directory: Path, nofile: int | None = None) -> Any:
    return ServiceProcess(
        "tests.apps.echo:app",
        service="echo",
        identity=authority.issue("echo"),
        identity_dir=directory,
        env={"MESHKIT_TRUST_DOMAIN": TRUST_DOMAIN},
        nofile=nofile,
    )


def _call(port: int, context: ssl.SSLContext) -> bool:
    connection = Connection(port, context)
    try:
        return connection.get("/whoami")[0] == 200
    except OSError:
        return False
    finally:
        connection.close()


# -- the dev registry ----------------------------------------------------------------


def registry_figures() -> dict[str, Any]:
    with RegistryProcess() as registry, PeakRSS(registry.process.pid) as memory:
        port = int(registry.address.rpartition(":")[2])
        stalled = []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"PUT /v1/kv/big HTTP/1.1\r\nHost: r\r\nContent-Length: 314572800\r\n\r\n")
            with contextlib.suppress(OSError):
                for _ in range(8):
                    sock.sendall(b"x" * (1 << 20))
            stalled.append(sock)
        time.sleep(1.0)
        for sock in stalled:
            sock.close()
    return {"registry_rss_growth_mb_under_big_bodies": memory.growth}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshkit-abuse-") as scratch:
        directory = Path(scratch)
        figures = {**ca_figures(directory), **service_figures(directory), **registry_figures()}
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
