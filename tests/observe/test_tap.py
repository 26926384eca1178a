"""``meshkit tap`` over real instances: the requests they serve, as they serve them,
with the verified caller and the trace, and nothing of the headers or bodies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from meshkit.observe.tap import format_record
from meshkit.testing import Mesh, MeshProcess, admin_get

pytestmark = pytest.mark.timeout(120)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TAPPING = r"meshkit tap: tapping (?P<n>\d+) instance"


@contextmanager
def tapping(mesh: Mesh, *args: str) -> Iterator[MeshProcess]:
    """``meshkit tap ARGS --output json`` running, past its first poll (so it sees what
    the test sends next)."""
    process = MeshProcess(
        ["tap", *args, "--output", "json"],
        ready=re.compile(TAPPING),
        name="tap",
        env={"CONSUL_HTTP_ADDR": mesh.registry.address},
    )
    with process:
        yield process


def records(process: MeshProcess) -> list[dict[str, Any]]:
    assert process.wait(timeout=60) == 0, process.lines
    return [json.loads(line) for line in process.lines if line.startswith("{")]


def test_tap_streams_each_request_with_its_verified_caller_and_trace(mesh: Mesh) -> None:
    upstream = mesh.start("tests.apps.upstream:app", "upstream", instances=2)
    (caller,) = mesh.start("tests.apps.caller:app", "caller")
    with tapping(mesh, "upstream", "--count", "4") as tap:
        connection = mesh.connect(caller, as_="tester")
        for n in range(4):
            headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b{n}-01"}
            assert connection.get("/call", headers=headers)[0] == 200
        seen = records(tap)
    assert len(seen) == 4
    for record in seen:
        assert record["caller"] == "spiffe://meshkit.local/ns/default/svc/caller"
        assert (record["method"], record["route"], record["status"]) == ("GET", "/work", 200)
        assert record["duration_ms"] > 0
        assert record["trace_id"] == TRACE  # carried on by the caller's mesh client
    # Every instance is tapped: each record names the one that served it.
    assert {r["instance"].rpartition("-")[0] for r in seen} == {"upstream"}
    assert len(upstream) == 2


def test_tap_filters_by_caller_and_route(mesh: Mesh) -> None:
    (echo,) = mesh.start("tests.apps.echo:app", "echo")
    with tapping(mesh, "echo", "--caller", "web", "--route", "/whoami", "--count", "2") as tap:
        web, cart = mesh.connect(echo, as_="web"), mesh.connect(echo, as_="cart")
        for connection in (cart, web, cart, web):
            assert connection.get("/public")[0] == 200
            assert connection.get("/whoami")[0] == 200
        seen = records(tap)
    assert [(r["caller"], r["route"]) for r in seen] == [
        ("spiffe://meshkit.local/ns/default/svc/web", "/whoami")
    ] * 2


def test_the_admin_tap_shows_no_header_query_or_body(mesh: Mesh) -> None:
    (echo,) = mesh.start("tests.apps.echo:app", "echo")
    connection = mesh.connect(echo, as_="web")
    connection.http.request(
        "POST",
        "/upload?token=s3cr3t-query",
        body=b"s3cr3t-body",
        headers={"x-api-key": "s3cr3t-header"},
    )
    assert connection.http.getresponse().read()
    status, body = admin_get(echo.admin_port, "/tap?since=0")
    assert status == 200
    assert b"s3cr3t" not in body
    (record,) = json.loads(body)["records"]
    assert (record["method"], record["route"]) == ("POST", "/upload")


def test_tap_can_be_turned_off_and_an_unknown_service_is_one_line(mesh: Mesh) -> None:
    (echo,) = mesh.start("tests.apps.echo:app", "echo", env={"MESHKIT_TAP_SIZE": "0"})
    status, body = admin_get(echo.admin_port, "/tap")
    assert status == 404 and b"MESHKIT_TAP_SIZE" in body
    result = subprocess.run(
        [sys.executable, "-m", "meshkit", "tap", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CONSUL_HTTP_ADDR": mesh.registry.address},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"meshkit: error: no instance of 'nosuch' at http://{mesh.registry.address}"
    ]


def test_a_text_line_has_every_field_in_order() -> None:
    record = {
        "time": "2026-12-05T21:59:07.025Z",
        "instance": "upstream-7c0429fec88a",
        "caller": None,
        "method": "GET",
        "route": "/work",
        "status": 503,
        "duration_ms": 1.5,
        "trace_id": None,
    }
    assert format_record(record) == (
        "21:59:07.025  upstream-7c0429fec88a  src=unknown  GET /work  status=503"
        "  latency=1.5ms  trace=-"
    )
