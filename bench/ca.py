"""CA issuance throughput: in-process signing core, then the HTTPS API.

    python -m bench.ca [--seconds 5] [--clients 4]

In-process: CSR parse + proof-of-possession check + build + sign + profile check +
path verification, one thread (one core). HTTPS: a real ``meshkit ca serve --dev``
process and aiohttp clients on keep-alive connections, for /v1/sign (dev mode, the CSR
names its identity) and /v1/renew (mTLS, the steady state of a running mesh). The
server's own CPU time per certificate is read from /proc, since on a small machine
the clients compete with it for cores. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.ca.authority import Authority
from meshkit.ca.store import CAStore, init_ca
from meshkit.ca.x509 import build_csr, csr_pem, new_private_key, private_key_pem, write_private
from meshkit.identity import SpiffeId

TRUST_DOMAIN = "bench.local"
_LISTENING = re.compile(r"listening on https://[^:]+:(\d+)")


def _csrs(count: int, *, named: bool) -> list[str]:
    spiffe_id = SpiffeId.for_service(TRUST_DOMAIN, "default", "bench") if named else None
    return [csr_pem(build_csr(new_private_key(), spiffe_id)) for _ in range(count)]


def bench_inprocess(store: CAStore, seconds: float) -> dict[str, float]:
    """Certificates per CPU-second of this thread: other load on the machine is excluded."""
    authority = Authority.from_store(store)
    spiffe_id = SpiffeId.for_service(TRUST_DOMAIN, "default", "bench")
    csrs = _csrs(64, named=False)  # as with a token or a renewal: the CSR names nothing
    stages = {"parse_and_check_csr": 0.0, "issue_and_verify": 0.0}
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for csr in csrs:
            started = time.thread_time()
            request = authority.parse_csr(csr)
            parsed = time.thread_time()
            authority.issue(request, spiffe_id)
            stages["parse_and_check_csr"] += parsed - started
            stages["issue_and_verify"] += time.thread_time() - parsed
        count += len(csrs)
    total = sum(stages.values())
    print(f"in-process: {count} certificates, {count / total:,.0f} certs per CPU-second")
    for stage, spent in stages.items():
        print(f"  {stage:22s} {spent / count * 1e6:7.1f} us/cert")
    return {"certs_per_s_inprocess": round(count / total)}


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(
    url: str,
    path: str,
    context: ssl.SSLContext,
    csrs: list[str],
    *,
    clients: int,
    seconds: float,
) -> list[float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def client(offset: int) -> None:
            index = offset
            while time.perf_counter() < deadline:
                body = {"csr": csrs[index % len(csrs)]}
                started = time.perf_counter()
                async with session.post(url + path, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{path}: {response.status} {await response.text()}")
                latencies.append(time.perf_counter() - started)
                index += clients

        await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


def _summary(name: str, latencies: list[float], seconds: float, cpu: float) -> dict[str, float]:
    rate = len(latencies) / seconds
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    cpu_ms = cpu / len(latencies) * 1000
    print(
        f"HTTPS {name}: {rate:,.0f} certs/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"server CPU {cpu_ms:.3f} ms/cert"
    )
    return {"rate": round(rate), "p99": round(p99, 2), "cpu_ms": round(cpu_ms, 3)}


def start_ca(store: CAStore) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "meshkit", "ca", "serve", "--dir", str(store.directory)]
    process = subprocess.Popen(
        [*command, "--port", "0", "--dev", "--max-concurrency", "1024"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    port = next(int(m[1]) for line in process.stdout if (m := _LISTENING.search(line)))
    return process, f"https://127.0.0.1:{port}"


async def bench_https(
    store: CAStore, pid: int, url: str, work: Path, *, seconds: float, clients: int
) -> dict[str, float]:
    trust = ssl.create_default_context(cadata=store.bundle_pem)
    trust.check_hostname = False
    load: dict[str, Any] = {"clients": clients, "seconds": seconds}
    sign = await _measure(pid, "sign", url, trust, _csrs(64, named=True), **load)
    mtls = await _client_identity(url, trust, work)
    renew = await _measure(pid, "renew", url, mtls, _csrs(64, named=False), **load)
    return {
        "certs_per_s_https": sign["rate"],
        "p99_ms_https": sign["p99"],
        "server_cpu_ms_per_cert_https": sign["cpu_ms"],
        "certs_per_s_https_renew": renew["rate"],
        "p99_ms_https_renew": renew["p99"],
        "clients": clients,
    }


async def _measure(
    pid: int, name: str, url: str, context: ssl.SSLContext, csrs: list[str], **load: Any
) -> dict[str, float]:
    await _drive(url, f"/v1/{name}", context, csrs, clients=load["clients"], seconds=0.5)
    cpu = _server_cpu(pid)
    started = time.perf_counter()
    latencies = await _drive(url, f"/v1/{name}", context, csrs, **load)
    elapsed = time.perf_counter() - started
    return _summary(name, latencies, elapsed, _server_cpu(pid) - cpu)


async def _client_identity(url: str, trust: ssl.SSLContext, work: Path) -> ssl.SSLContext:
    """An mTLS context holding a certificate from the CA (dev mode), for /v1/renew."""
    key = new_private_key()
    spiffe_id = SpiffeId.for_service(TRUST_DOMAIN, "default", "bench")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session:
        body = {"csr": csr_pem(build_csr(key, spiffe_id))}
        async with session.post(url + "/v1/sign", json=body) as response:
            answer = await response.json()
    write_private(work / "key.pem", private_key_pem(key))
    (work / "chain.pem").write_text("".join(answer["chain"]))
    context = ssl.create_default_context(cadata=answer["bundle"])
    context.check_hostname = False
    context.load_cert_chain(work / "chain.pem", work / "key.pem")
    return context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-ca-") as work:
        store = init_ca(Path(work) / "ca", TRUST_DOMAIN)
        figures = bench_inprocess(store, args.seconds)
        process, url = start_ca(store)
        try:
            figures |= asyncio.run(
                bench_https(
                    store, process.pid, url, Path(work), seconds=args.seconds, clients=args.clients
                )
            )
        finally:
            process.terminate()
            process.wait(10)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
