"""meshkit/_httpx.py: the one module that imports httpx, its fast path and its fallback."""

from __future__ import annotations

import ast
import gzip
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest

import meshkit
from meshkit import _httpx
from meshkit._httpx import (
    URL,
    AsyncClient,
    ByteStream,
    LocalProtocolError,
    PeerGate,
    Request,
    Response,
    complete_response,
)
from meshkit.client._client import merge_url
from tests.client.helpers import SilentPeer, raw_server

pytestmark = pytest.mark.anyio
THIRD_PARTY_HTTP = {"httpx", "httpcore", "h11", "httpx2"}
HEADERS = [(b"Content-Type", b"text/plain"), (b"X-Trace", b"a"), (b"x-trace", b"b")]


def fields_of(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    """Headers as the pool hands them over: (name, lowercased name, value)."""
    return [(name, name.lower(), value) for name, value in raw]


async def stock_response(raw: list[tuple[bytes, bytes]], body: bytes, request: Request) -> Response:
    response = Response(200, headers=raw, stream=ByteStream(body), request=request)
    await response.aread()
    return response


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (HEADERS, b"plain"),
        ([*HEADERS, (b"Content-Encoding", b"gzip")], gzip.compress(b"plain")),
    ],
    ids=["plain", "gzip"],
)
async def test_complete_response_equals_httpx_response(
    raw: list[tuple[bytes, bytes]], body: bytes, httpx_path: str
) -> None:
    request = Request("GET", "http://payments/")
    built = complete_response(200, fields_of(raw), body, request, 0.002)
    expected = await stock_response(raw, body, request)
    assert built.headers.multi_items() == expected.headers.multi_items()
    assert built.headers.raw == raw
    assert built.headers.get_list("x-trace") == ["a", "b"]
    assert built.content == expected.content == b"plain"
    assert await built.aread() == b"plain"
    assert built.text == "plain"
    assert (built.is_closed, built.is_stream_consumed) == (True, True)
    assert built.request is request
    assert built.elapsed.total_seconds() == 0.002
    assert built.num_bytes_downloaded == expected.num_bytes_downloaded == len(body)
    assert (built.status_code, built.extensions, built.history) == (200, {}, [])
    assert built.next_request is None and built.encoding == "utf-8"


def test_header_fields_and_cookies_read_as_the_public_api(httpx_path: str) -> None:
    headers = _httpx.Headers(HEADERS)
    fields = _httpx.header_fields(headers)
    assert [(name, value) for name, _, value in fields] == headers.raw
    assert [(low.decode(), value.decode()) for _, low, value in fields] == headers.multi_items()
    headers["x-added"] = "1"  # the short path compares fields to see the client's change
    assert _httpx.header_fields(headers) != [(b"Content-Type", b"content-type", b"text/plain")]
    assert (b"x-added", b"x-added", b"1") in _httpx.header_fields(headers)
    client = AsyncClient()
    assert _httpx.plain_client(client)
    assert _httpx.client_headers(client) is client.headers
    client.cookies.set("session", "1", domain="payments")
    assert not _httpx.plain_client(client)
    for change in (
        {"auth": ("user", "secret")},
        {"follow_redirects": True},
        {"event_hooks": {"request": [print]}},
        {"event_hooks": {"response": [print]}},
    ):
        assert not _httpx.plain_client(AsyncClient(**change))  # type: ignore[arg-type]
    hooked = AsyncClient()
    hooked.event_hooks["request"].append(print)  # changed in place, as httpx allows
    assert not _httpx.plain_client(hooked)


def test_this_httpx_passes_the_check() -> None:
    # CI's newest-releases job fails here the day a release breaks the fast path.
    assert _httpx.fast_paths_problem() is None


async def test_a_failed_check_warns_once_and_takes_the_stock_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built_privately = _httpx._build_privately

    def renamed_field(*args: Any) -> Response:
        response = built_privately(*args)
        # As if httpx had renamed _content.
        response._body = vars(response).pop("_content")  # type: ignore[attr-defined]
        return response

    monkeypatch.setattr(_httpx, "_build_privately", renamed_field)
    try:
        with pytest.warns(RuntimeWarning, match="public constructors") as caught:
            assert _httpx.use_fast_paths() is False
        # Only ours: a test before may leave a ResourceWarning for the collector to raise.
        assert sum("meshkit: httpx" in str(warning.message) for warning in caught) == 1
        request = Request("GET", "http://a/")
        response = complete_response(200, fields_of(HEADERS), b"ok", request, 0.1)
        assert response.content == b"ok" and response.is_closed
    finally:
        monkeypatch.undo()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _httpx.use_fast_paths() is True


@pytest.mark.parametrize(
    "url", ["/items", "items", "/a/b?x=1&y=%20", "/", "", "?q=1", "//elsewhere/x", "http://o:81/p"]
)
def test_merge_url_merges_as_httpx_does(url: str) -> None:
    client = AsyncClient(base_url="http://payments")
    assert merge_url(client.base_url, url) == client.build_request("GET", url).url
    assert isinstance(merge_url(client.base_url, url), URL)


async def test_a_peer_gate_that_never_saw_a_handshake_sends_nothing() -> None:
    # Fails closed: were httpcore to stop reporting handshakes, nothing is sent unchecked.
    peer = SilentPeer()
    checked: list[dict[str, Any] | None] = []
    gate = PeerGate(checked.append)
    async with raw_server(peer.handle) as port, AsyncClient() as client:
        with pytest.raises(LocalProtocolError, match="not checked before sending"):
            await client.get(f"http://127.0.0.1:{port}/", extensions=gate.extensions)
        await anyio.sleep(0.1)
    assert (peer.received, checked, gate.ran) == (bytearray(), [], False)
    with pytest.raises(LocalProtocolError, match="never checked"):
        gate.verify_ran()


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module.split(".")[0])
    return modules


def test_only_the_adapter_imports_an_http_library() -> None:
    package = Path(meshkit.__file__).parent
    importers = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if _imported_modules(path) & THIRD_PARTY_HTTP
    }
    assert importers == {"_httpx.py"}
