"""ServiceApp served by ``meshkit run``: strict mTLS, peer identity, admin port, rotation,
graceful shutdown — all over real sockets against a real subprocess."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import Connection, ServiceProcess, admin_get, context_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def echo(authority: LocalAuthority, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "tests.apps.echo:app",
        service="echo",
        identity=authority.issue("echo"),
        identity_dir=tmp_path,
        env={"MESHKIT_CERT_RELOAD_INTERVAL": "0.1", "MESHKIT_DEREGISTER_DELAY": "0.5"},
    )
    with process:
        yield process


def test_caller_identity_reaches_the_handler(
    echo: ServiceProcess, authority: LocalAuthority
) -> None:
    web = authority.issue("web", namespace="shop")
    connection = Connection(echo.port, context_for(web, authority.bundle_pem))
    status, body = connection.get("/whoami")
    assert status == 200
    assert body["caller"] == "spiffe://meshkit.local/ns/shop/svc/web"
    assert body["tls_version"] == 0x0304
    assert body["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert body["client_cert_chain"] == 1
    # The same keep-alive connection serves a second request with the same identity.
    assert connection.get("/whoami")[1]["caller"] == body["caller"]
    connection.close()


def _refused(port: int, context: ssl.SSLContext) -> bool:
    connection = Connection(port, context)
    try:
        connection.get("/whoami")
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        connection.close()
    return False


def test_no_client_certificate_is_refused(echo: ServiceProcess, authority: LocalAuthority) -> None:
    assert _refused(echo.port, context_for(None, authority.bundle_pem))


def test_certificate_from_another_ca_is_refused(
    echo: ServiceProcess, authority: LocalAuthority
) -> None:
    stranger = LocalAuthority("meshkit.local").issue("web")
    context = context_for(stranger, authority.bundle_pem)
    assert _refused(echo.port, context)


def test_expired_certificate_is_refused(echo: ServiceProcess, authority: LocalAuthority) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    expired = authority.issue("web", ttl=dt.timedelta(hours=1), now=long_ago)
    assert _refused(echo.port, context_for(expired, authority.bundle_pem))


def test_admin_port_serves_health_readiness_and_metrics(echo: ServiceProcess) -> None:
    assert admin_get(echo.admin_port, "/healthz")[0] == 200
    status, body = admin_get(echo.admin_port, "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, body = admin_get(echo.admin_port, "/metrics")
    assert status == 200
    assert admin_get(echo.admin_port, "/whoami")[0] == 404


def test_rotated_files_serve_new_connections_and_keep_old_ones(
    echo: ServiceProcess, authority: LocalAuthority, tmp_path: Path
) -> None:
    web = authority.issue("web")
    before = Connection(echo.port, context_for(web, authority.bundle_pem))
    assert before.get("/whoami")[0] == 200
    old_serial = before.server_serial()

    renewed = authority.issue("echo")
    renewed.write(tmp_path / "echo")
    new_serial = renewed.certificate.serial_number
    deadline = time.monotonic() + 10
    while True:
        after = Connection(echo.port, context_for(web, authority.bundle_pem))
        assert after.get("/whoami")[0] == 200
        serial = after.server_serial()
        after.close()
        if serial == new_serial or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert serial == new_serial != old_serial
    # The connection opened before the rotation still works, with its old certificate.
    assert before.get("/whoami")[0] == 200
    assert before.server_serial() == old_serial
    before.close()


def test_sigterm_drains_in_flight_request(echo: ServiceProcess, authority: LocalAuthority) -> None:
    web = authority.issue("web")
    result: dict[str, object] = {}

    def slow_call() -> None:
        connection = Connection(echo.port, context_for(web, authority.bundle_pem))
        result["response"] = connection.get("/slow?seconds=2")
        connection.close()

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)  # the request is in flight
    echo.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert admin_get(echo.admin_port, "/readyz")[0] == 503
    caller.join(10)
    assert result["response"] == (200, {"slept": 2.0})
    assert echo.wait(15) == 0


def test_invalid_port_variable_is_one_clear_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "meshkit", "run", "tests.apps.echo:app"],
        env={"MESHKIT_PORT": "abc", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parent.parent,
    )
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert lines == ["meshkit: error: MESHKIT_PORT='abc': expected a port number 0-65535"]


def test_missing_identity_is_one_clear_line() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "meshkit", "run", "tests.apps.echo:app"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parent.parent,
    )
    assert completed.returncode == 1
    assert (
        completed.stderr.strip().splitlines()[-1].startswith("meshkit: error: no workload identity")
    )


def test_permissive_mode_accepts_mtls_and_plaintext_on_one_port(
    authority: LocalAuthority, tmp_path: Path
) -> None:
    process = ServiceProcess(
        "tests.apps.echo:app",
        service="echo",
        identity=authority.issue("echo"),
        identity_dir=tmp_path,
        env={"MESHKIT_TLS_MODE": "permissive"},
    )
    with process:
        web = authority.issue("web")
        secure = Connection(process.port, context_for(web, authority.bundle_pem))
        assert secure.get("/whoami")[1]["caller"] == str(web.spiffe_id)
        secure.close()
        plain = http.client.HTTPConnection("127.0.0.1", process.port, timeout=10)
        plain.request("GET", "/public")
        response = plain.getresponse()
        assert (response.status, json.loads(response.read())) == (
            200,
            {"caller": None, "tls_version": None},
        )
        # Plaintext is accepted, but an anonymous caller is still not a mesh identity.
        plain.request("GET", "/whoami")
        response = plain.getresponse()
        assert (response.status, json.loads(response.read())["error"]) == (403, "denied")
        plain.close()
    # The log says what the port accepts.
    assert any("serving mTLS and plaintext (permissive) on" in line for line in process.lines)


def test_the_log_tells_the_lifecycle_once_and_the_tls_mode(echo: ServiceProcess) -> None:
    """One process, two uvicorn servers (service and admin port): one account of it."""
    assert echo.stop() == 0
    output = "\n".join(echo.lines)
    assert output.count("Started server process") == 1
    assert output.count("Shutting down") == 1
    assert output.count("Finished server process") == 1
    (serving,) = [line for line in echo.lines if " serving " in line]
    assert "serving mTLS on" in serving and "plaintext" not in serving


def test_strict_mode_answers_plaintext_that_it_wants_tls(echo: ServiceProcess) -> None:
    plain = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=10)
    plain.request("GET", "/whoami")
    response = plain.getresponse()
    assert (response.status, json.loads(response.read())["error"]) == (400, "tls_required")
    assert response.getheader("connection") == "close"
    plain.close()
