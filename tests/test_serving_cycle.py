"""meshkit's request cycle (``meshkit.serving.cycle``) answers every request as uvicorn's
does: the same requests go over real sockets to stock uvicorn and to meshkit's protocol,
and the bytes that come back are compared (the Date header aside)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from meshkit.serving.cycle import LEAN_CYCLE
from meshkit.serving.protocol import NOTED_HEADERS_KEY, MeshHttpToolsProtocol
from tests.middleware.servers import running

Headers = list[tuple[bytes, bytes]]


def _start(status: int, headers: Headers) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


def _body(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


#: path -> the messages the app sends.
ANSWERS: dict[str, list[dict[str, Any]]] = {
    "/fixed": [
        _start(200, [(b"content-type", b"text/plain"), (b"content-length", b"5")]),
        _body(b"hello"),
    ],
    "/upper": [_start(201, [(b"Content-Length", b"2"), (b"X-Custom", b"A b")]), _body(b"ok")],
    "/streamed": [
        _start(200, [(b"content-type", b"text/plain")]),
        _body(b"one", True),
        _body(b"", True),
        _body(b"two", True),
        _body(b""),
    ],
    "/chunked-declared": [
        _start(200, [(b"transfer-encoding", b"chunked")]),
        _body(b"x", True),
        _body(b""),
    ],
    "/identity-encoding": [
        _start(200, [(b"transfer-encoding", b"identity"), (b"content-length", b"1")]),
        _body(b"x"),
    ],
    "/no-content": [_start(204, [])],
    "/not-modified": [_start(304, [(b"etag", b"1")])],
    "/close": [
        _start(200, [(b"content-length", b"2"), (b"connection", b"Keep-Alive, Close")]),
        _body(b"ok"),
    ],
    "/keep": [
        _start(200, [(b"content-length", b"2"), (b"connection", b"keep-alive")]),
        _body(b"ok"),
    ],
    "/two-lengths": [
        _start(200, [(b"content-length", b"2"), (b"content-length", b"3")]),
        _body(b"ok"),
    ],
    "/bad-name": [_start(200, [(b"bad name", b"x"), (b"content-length", b"0")]), _body(b"")],
    "/bad-value": [_start(200, [(b"content-length", b"0"), (b"x", b"a\nb")]), _body(b"")],
    "/bad-length": [_start(200, [(b"content-length", b"two")]), _body(b"ok")],
    "/too-long": [_start(200, [(b"content-length", b"1")]), _body(b"ok")],
    "/too-short": [_start(200, [(b"content-length", b"5")]), _body(b"ok")],
    "/body-first": [_body(b"ok")],
    "/start-twice": [_start(200, [(b"content-length", b"2")]), _start(200, [])],
    "/after-end": [_start(200, [(b"content-length", b"2")]), _body(b"ok"), _body(b"more")],
    "/list-headers": [_start(200, [[b"content-length", b"2"]]), _body(b"ok")],  # type: ignore[list-item]
    "/unknown-status": [_start(299, [(b"content-length", b"0")]), _body(b"")],
    "/silent": [],
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/noted":
        body = b"|".join(b"%s=%s" % field for field in scope.get(NOTED_HEADERS_KEY, [(b"-", b"-")]))
        await send(_start(200, [(b"content-length", b"%d" % len(body))]))
        await send(_body(body))
        return
    if scope["path"] == "/echo":
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await send(_start(200, [(b"content-length", str(len(body)).encode())]))
        await send(_body(body))
        return
    for message in ANSWERS[scope["path"]]:
        await send(message)


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, int]]:
    with running(app, http="httptools") as stock, running(app) as mesh:
        yield stock, mesh


def exchange(port: int, request: bytes) -> bytes:
    """What the server sends back for ``request``, until it closes or is quiet 0.3 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.settimeout(0.3)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                received += b"<closed>"
                break
            received += chunk
    return re.sub(rb"date: [^\r]*\r\n", b"date: *\r\n", received)


def get(path: str, version: bytes = b"1.1", method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/%s\r\nhost: x\r\n\r\n" % (method, path.encode(), version)


REQUESTS = {
    **{path.strip("/"): get(path) for path in ANSWERS},
    "head": get("/fixed", method=b"HEAD"),
    "head-streamed": get("/streamed", method=b"HEAD"),
    "http10": get("/fixed", version=b"1.0"),
    "http10-streamed": get("/streamed", version=b"1.0"),
    "request-close": b"GET /fixed HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    "pipelined": get("/fixed") + get("/upper") + get("/streamed"),
    "body": b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
    "chunked-body": (
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    ),
    "expect-continue": (
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nExpect: 100-continue \r\n\r\nok"
    ),
    "length-with-spaces": b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2  \r\n\r\nok",
    "quoted-path": get("/fi%78ed"),
}


@pytest.mark.skipif(not LEAN_CYCLE, reason="a uvicorn whose shapes meshkit does not know")
def test_the_lean_cycle_is_in_use() -> None:
    """Against the uvicorn of constraints.txt the comparisons below compare meshkit's
    cycle with uvicorn's, not uvicorn's with itself (make test-latest runs them against
    the newest uvicorn, where a stock fallback is skipped here, not failed)."""
    assert MeshHttpToolsProtocol.on_header is MeshHttpToolsProtocol._on_header


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_answers_as_uvicorn_does(ports: tuple[int, int], case: str) -> None:
    stock, mesh = ports
    request = REQUESTS[case]
    expected = exchange(stock, request)
    assert expected  # every case gets an answer or a close
    assert exchange(mesh, request) == expected


def test_the_mesh_headers_are_noted_as_they_come(ports: tuple[int, int]) -> None:
    """The protocol sets the mesh's own headers apart, in order, repeats included: what
    the deadline and telemetry middleware read instead of every header."""
    _, mesh = ports
    request = (
        b"GET /noted HTTP/1.1\r\nhost: x\r\nTraceparent: 00-a\r\naccept: */*\r\n"
        b"x-meshkit-deadline-ms: 2500 \r\nbaggage: k=v\r\nx-meshkit-sent-ms: 17\r\n"
        b"x-meshkit-start-ms: 300\r\ntracestate: a=1\r\ntraceparent: 00-b\r\n"
        b"x-meshkit-other: 1\r\n\r\n"
    )
    answer = exchange(mesh, request)
    assert answer.endswith(
        b"\r\n\r\ntraceparent=00-a|x-meshkit-deadline-ms=2500|baggage=k=v|"
        b"x-meshkit-sent-ms=17|x-meshkit-start-ms=300|tracestate=a=1|traceparent=00-b"
    )
    plain = b"GET /noted HTTP/1.1\r\nhost: x\r\n\r\n"
    assert exchange(mesh, plain).endswith(b"\r\n\r\n")  # noted, and nothing in it
