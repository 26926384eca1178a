"""HTTP checks as Consul runs them, against real sockets: what is sent, how the answer is
judged, and that a slow, silent or endless server costs bounded time and memory."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import ByteStream

from meshkit.ca.x509 import LocalAuthority
from meshkit.registry.dev.checks import OUTPUT_MAX, HTTPProbe, run_http_probe
from meshkit.registry.dev.state import CRITICAL, PASSING, WARNING
from meshkit.tls import TLSMaterial, server_context
from tests.client.helpers import raw_server

pytestmark = pytest.mark.anyio
Respond = Callable[[ByteStream], Awaitable[None]]


class Server:
    """One scripted HTTP/1.1 answer per connection; keeps every request it read."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        self.url = ""

    async def handle(self, stream: ByteStream) -> None:
        self.requests.append(await _read_request(stream))
        await self.respond(stream)


async def _read_request(stream: ByteStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += await stream.receive()
    return data


def reply(raw: bytes) -> Respond:
    async def respond(stream: ByteStream) -> None:
        await stream.send(raw)

    return respond


def answer(status: str, body: bytes = b"", *headers: str) -> Respond:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return reply(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


@asynccontextmanager
async def serving(respond: Respond, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(respond)
    async with raw_server(server.handle, tls=tls) as port:
        server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
        yield server


def probe(url: str, **options: object) -> HTTPProbe:
    """A probe of ``url`` (the interval does not matter: each test runs it once)."""
    return HTTPProbe(url=url, interval=10.0, **options)  # type: ignore[arg-type]


async def test_a_2xx_passes_with_consuls_output_and_headers() -> None:
    async with serving(answer("200 OK", b"ok")) as server:
        status, output = await run_http_probe(probe(server.url))
    assert (status, output) == (PASSING, f"HTTP GET {server.url}: 200 OK Output: ok")
    head = server.requests[0].decode().lower()
    assert head.startswith("get /healthz http/1.1\r\n")
    for line in ("user-agent: consul health check", "accept: text/plain, text/*, */*"):
        assert f"\r\n{line}\r\n" in head
    assert "\r\nconnection: close\r\n" in head  # Consul turns keep-alive off


@pytest.mark.parametrize(
    ("line", "expected", "shown"),
    [
        ("201 Created", PASSING, "201 Created"),
        ("429 Too Many Requests", WARNING, "429 Too Many Requests"),
        ("503 Service Unavailable", CRITICAL, "503 Service Unavailable"),
        ("302 Found", CRITICAL, "302 Found"),  # a redirect without Location: as Go, critical
        ("200", PASSING, "200"),  # no reason phrase: Go's Status is the code alone
    ],
)
async def test_the_status_decides(line: str, expected: str, shown: str) -> None:
    async with serving(answer(line, b"x")) as server:
        status, output = await run_http_probe(probe(server.url))
    assert status == expected
    assert output == f"HTTP GET {server.url}: {shown} Output: x"


async def test_method_headers_and_body_of_the_definition_are_sent() -> None:
    async with serving(answer("200 OK")) as server:
        header = {"X-Token": ["a", "b"], "user-agent": ["probe/1"]}
        status, output = await run_http_probe(
            probe(server.url, method="POST", header=header, body="ping")
        )
    assert status == PASSING and output.startswith(f"HTTP POST {server.url}: 200 OK")
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "post /healthz http/1.1"
    assert [line for line in lines if line.startswith("x-token")] == ["x-token: a", "x-token: b"]
    assert [line for line in lines if line.startswith("user-agent")] == ["user-agent: probe/1"]
    assert "content-length: 4" in lines and body == b"ping"


async def test_redirects_are_followed_and_the_output_names_the_checks_url() -> None:
    async with serving(answer("200 OK", b"ok")) as target:
        moved = answer("301 Moved Permanently", b"", f"Location: {target.url}")
        async with serving(moved) as server:
            status, output = await run_http_probe(probe(server.url))
    assert (status, output) == (PASSING, f"HTTP GET {server.url}: 200 OK Output: ok")


async def test_the_output_keeps_the_end_of_a_long_body() -> None:
    body = bytes(range(256)) * 400 + b"THE END"  # ~100 KB, the last bytes say something
    async with serving(answer("200 OK", body)) as server:
        _, output = await run_http_probe(probe(server.url))
        _, short = await run_http_probe(probe(server.url, output_max=7))
    assert output.endswith(": 200 OK Output: " + body[-OUTPUT_MAX:].decode(errors="replace"))
    assert short == f"HTTP GET {server.url}: 200 OK Output: THE END"


async def endless(stream: ByteStream) -> None:
    await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"y" * 65536
    while True:
        await stream.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))


async def test_an_endless_body_is_judged_at_the_timeout_in_bounded_memory() -> None:
    async with serving(endless) as server:
        started = time.monotonic()
        status, output = await run_http_probe(probe(server.url, timeout=0.5))
    assert 0.4 < time.monotonic() - started < 3
    # As Consul: the status line arrived, so a body cut by the timeout still passes.
    assert (status, output) == (PASSING, f"HTTP GET {server.url}: 200 OK Output: {'y' * 4096}")


async def silent(stream: ByteStream) -> None:
    await anyio.sleep_forever()


async def test_a_silent_server_is_critical_at_the_timeout() -> None:
    async with serving(silent) as server:
        started = time.monotonic()
        status, output = await run_http_probe(probe(server.url, timeout=0.3))
    assert time.monotonic() - started < 3
    assert status == CRITICAL
    assert output == (
        f'Get "{server.url}": context deadline exceeded '
        "(Client.Timeout exceeded while awaiting headers)"
    )


async def test_a_closed_port_is_critical_with_gos_error_shape() -> None:
    async with serving(silent) as server:
        url = server.url
    status, output = await run_http_probe(probe(url, method="HEAD"))
    assert status == CRITICAL and output.startswith(f'Head "{url}": ')


@pytest.mark.parametrize(
    "definition",
    [
        {"url": "ftp://127.0.0.1/x"},
        {"url": "http://[::1"},
    ],
    ids=["scheme", "url"],
)
async def test_a_malformed_definition_is_critical_not_a_crash(
    definition: dict[str, object],
) -> None:
    status, output = await run_http_probe(HTTPProbe(interval=10.0, **definition))  # type: ignore[arg-type]
    assert status == CRITICAL and output


async def test_a_header_smuggling_a_line_is_refused_before_sending() -> None:
    async with serving(answer("200 OK")) as server:
        header = {"X-Bad": ["a\r\nInjected: 1"]}
        status, output = await run_http_probe(probe(server.url, header=header))
    assert status == CRITICAL and output.startswith(f'Get "{server.url}": ')
    assert not any(b"Injected" in request for request in server.requests)


async def test_tls_skip_verify_accepts_a_certificate_the_system_does_not_trust(
    authority: LocalAuthority,
) -> None:
    issued = authority.issue("web")
    material = TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem)
    tls = server_context(material, require_client_cert=False)
    async with serving(answer("200 OK", b"ok"), tls) as server:
        verified = await run_http_probe(probe(server.url))
        skipped = await run_http_probe(probe(server.url, tls_skip_verify=True))
    assert verified[0] == CRITICAL and "CERTIFICATE_VERIFY_FAILED" in verified[1]
    assert skipped == (PASSING, f"HTTP GET {server.url}: 200 OK Output: ok")
