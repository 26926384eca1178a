"""A service port under hostile clients, as an attacker would try it: a real ``meshkit
run`` process, real TLS, raw sockets that send what no well-behaved client sends.

Each test asserts the outcome the connection policy promises: a clear 4xx JSON answer
or a TLS alert, the connection closed, and nothing held for long.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import Connection, ServiceProcess, admin_get, context_for

pytestmark = pytest.mark.timeout(90)

LIMITS = {
    "MESHKIT_HANDSHAKE_TIMEOUT": "1",
    "MESHKIT_HEADER_TIMEOUT": "1",
    "MESHKIT_BODY_TIMEOUT": "1",
    "MESHKIT_MAX_HEADER_BYTES": "8192",
    "MESHKIT_MAX_BODY_BYTES": "65536",
}


@pytest.fixture
def echo(authority: LocalAuthority, tmp_path: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        "tests.apps.echo:app",
        service="echo",
        identity=authority.issue("echo"),
        identity_dir=tmp_path,
        env=LIMITS,
    ) as process:
        yield process


@pytest.fixture
def web(authority: LocalAuthority) -> ssl.SSLContext:
    return context_for(authority.issue("web"), authority.bundle_pem)


def tls_socket(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=None)


def response_of(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    response.begin()
    return response.status, dict(response.getheaders()), response.read()


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_a_head_over_the_limit_gets_431_and_a_close(
    echo: ServiceProcess, web: ssl.SSLContext
) -> None:
    with tls_socket(echo.port, web) as sock:
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: echo\r\nX-Big: " + b"a" * 20_000)
        status, headers, body = response_of(sock)
        assert status == 431
        assert json.loads(body)["error"] == "request_header_fields_too_large"
        assert headers["connection"] == "close"
        assert closed(sock)


def test_a_head_that_never_ends_gets_408(echo: ServiceProcess, web: ssl.SSLContext) -> None:
    with tls_socket(echo.port, web) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: echo\r\n")
        status, _, body = response_of(sock)
        assert (status, json.loads(body)["error"]) == (408, "request_header_timeout")
        assert time.monotonic() - started < 5  # header timeout 1 s, checked every second


def test_a_silent_connection_is_closed(echo: ServiceProcess, web: ssl.SSLContext) -> None:
    with tls_socket(echo.port, web) as sock:
        started = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - started < 5


def test_a_kept_alive_connection_answers_then_closes_when_idle(
    authority: LocalAuthority, tmp_path: Path, web: ssl.SSLContext
) -> None:
    """Closed after the keep-alive timeout (1 s), long before the header timeout (10 s)."""
    env = LIMITS | {"MESHKIT_KEEPALIVE_TIMEOUT": "1", "MESHKIT_HEADER_TIMEOUT": "10"}
    identity = authority.issue("echo")
    with (
        ServiceProcess(
            "tests.apps.echo:app", service="echo", identity=identity, identity_dir=tmp_path, env=env
        ) as echo,
        tls_socket(echo.port, web) as sock,
    ):
        for _ in range(3):  # kept alive between requests that come in time
            sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: echo\r\n\r\n")
            assert response_of(sock)[0] == 200
        started = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - started < 4  # keep-alive 1 s


def test_pipelined_requests_are_answered_in_order_and_the_connection_stays_open(
    echo: ServiceProcess, web: ssl.SSLContext
) -> None:
    """The next pipelined request starts when a response completes (meshkit's protocol
    does that without uvicorn's keep-alive timer), and the connection is reused after."""
    with tls_socket(echo.port, web) as sock:
        request = b"GET /whoami HTTP/1.1\r\nHost: echo\r\n\r\n"
        sock.sendall(request * 3)
        assert statuses_of(sock, 3) == [200, 200, 200]
        sock.sendall(request)
        assert statuses_of(sock, 1) == [200]


def statuses_of(sock: socket.socket, count: int) -> list[int]:
    """The statuses of ``count`` responses read off ``sock`` (one buffer for all: they
    may arrive in one read), nothing more."""
    data, statuses = b"", []
    while len(statuses) < count:
        chunk = sock.recv(65536)
        assert chunk, "closed before every response came"
        data += chunk
        while (end := data.find(b"\r\n\r\n")) >= 0:
            head = data[:end].decode("latin-1")
            length = int(re.search(r"content-length: *(\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
            if len(data) < end + 4 + length:
                break
            statuses.append(int(head.split()[1]))
            data = data[end + 4 + length :]
    assert data == b""
    return statuses


def test_a_connection_that_never_says_hello_is_closed(echo: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", echo.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 5  # handshake timeout 1 s


def test_a_declared_body_over_the_limit_gets_413_unread(
    echo: ServiceProcess, web: ssl.SSLContext
) -> None:
    with tls_socket(echo.port, web) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 1000000000\r\n\r\n")
        status, _, body = response_of(sock)
        assert (status, json.loads(body)["error"]) == (413, "request_body_too_large")


def test_a_streamed_body_over_the_limit_gets_413(echo: ServiceProcess, web: ssl.SSLContext) -> None:
    with tls_socket(echo.port, web) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16_384
        try:
            for _ in range(8):  # 128 KiB, twice the limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (ConnectionError, ssl.SSLError):
            pass  # closed while we were still sending: the answer is already there
        status, _, body = response_of(sock)
        assert (status, json.loads(body)["error"]) == (413, "request_body_too_large")


def test_a_body_that_stops_coming_gets_408(echo: ServiceProcess, web: ssl.SSLContext) -> None:
    with tls_socket(echo.port, web) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        status, _, body = response_of(sock)
        assert (status, json.loads(body)["error"]) == (408, "request_body_timeout")


def test_bodies_within_the_limit_reach_the_handler(
    echo: ServiceProcess, web: ssl.SSLContext
) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", echo.port, context=web)
    connection.request("POST", "/upload", body=b"y" * 65_536)
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"received": 65_536})
    connection.close()


def _alert(port: int, context: ssl.SSLContext) -> str:
    """The reason of the TLS alert the server sends (TLS 1.3: read after the handshake)."""
    try:
        with tls_socket(port, context) as sock:
            sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: echo\r\n\r\n")
            sock.recv(1)
    except ssl.SSLError as exc:
        return str(exc.reason)
    return "no alert"


def test_refused_handshakes_send_their_alert_and_are_counted(
    echo: ServiceProcess, authority: LocalAuthority
) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    expired = authority.issue("web", ttl=dt.timedelta(hours=1), now=long_ago)
    stranger = LocalAuthority("meshkit.local").issue("web")
    assert _alert(echo.port, context_for(None, authority.bundle_pem)) == (
        "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    )
    assert _alert(echo.port, context_for(stranger, authority.bundle_pem)) == (
        "TLSV1_ALERT_UNKNOWN_CA"
    )
    assert _alert(echo.port, context_for(expired, authority.bundle_pem)) == (
        "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    )
    _, metrics = admin_get(echo.admin_port, "/metrics")
    for reason in ("certificate_required", "unknown_ca", "certificate_expired"):
        assert f'meshkit_connections_refused_total{{reason="{reason}"}} 1.0' in metrics.decode()
    # One log line per source per minute, however many are refused.
    refusals = [line for line in echo.lines if "refused a connection from 127.0.0.1" in line]
    assert len(refusals) == 1 and "certificate_required" in refusals[0]


def test_an_expired_certificate_is_refused_on_its_kept_alive_connection(
    echo: ServiceProcess, authority: LocalAuthority
) -> None:
    now = dt.datetime.now(dt.UTC)
    brief = authority.issue("web", ttl=dt.timedelta(seconds=3), now=now)
    connection = Connection(echo.port, context_for(brief, authority.bundle_pem))
    assert connection.get("/whoami")[0] == 200
    time.sleep(3.5)
    try:
        status, body = connection.get("/whoami")
    except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError):
        pass  # closed by the server, idle with an expired certificate
    else:
        assert (status, body["error"]) == (401, "peer_certificate_expired")
    finally:
        connection.close()


def test_many_idle_connections_do_not_lock_out_callers(
    authority: LocalAuthority, tmp_path: Path, web: ssl.SSLContext
) -> None:
    """1,000 connections that never start a handshake, under ``nofile`` 1,024: the
    oldest are shed for new callers, and the admin port keeps its own budget."""
    with ServiceProcess(
        "tests.apps.echo:app",
        service="echo",
        identity=authority.issue("echo"),
        identity_dir=tmp_path,
        nofile=1024,
    ) as echo:
        idle = [socket.create_connection(("127.0.0.1", echo.port)) for _ in range(1000)]
        try:
            time.sleep(0.5)
            answers = []
            for _ in range(20):
                connection = Connection(echo.port, web)
                answers.append(connection.get("/whoami")[0])
                connection.close()
            assert answers == [200] * 20
            assert admin_get(echo.admin_port, "/healthz")[0] == 200
        finally:
            for sock in idle:
                sock.close()
