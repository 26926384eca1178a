"""The cheap httpx builders make what httpx's own constructors make."""

from __future__ import annotations

import gzip

import pytest

from meshkit.client._http import ByteStream, Request, Response, build_response

pytestmark = pytest.mark.anyio
HEADERS = [(b"Content-Type", b"text/plain"), (b"X-Trace", b"a"), (b"x-trace", b"b")]


async def httpx_response(raw: list[tuple[bytes, bytes]], body: bytes, request: Request) -> Response:
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
async def test_build_response_equals_httpx_response(
    raw: list[tuple[bytes, bytes]], body: bytes
) -> None:
    request = Request("GET", "http://payments/")
    built = await build_response(200, raw, body, request, 0.002)
    expected = await httpx_response(raw, body, request)
    assert built.headers._list == expected.headers._list
    assert built.headers.get_list("x-trace") == ["a", "b"]
    assert built.content == expected.content == b"plain"
    assert built.text == "plain"
    assert (built.is_closed, built.is_stream_consumed) == (True, True)
    assert built.request is request
    assert built.elapsed.total_seconds() == 0.002
    # Every field httpx sets is set, but the decoder, which httpx makes when first needed.
    assert vars(expected).keys() - {"_decoder"} <= vars(built).keys()
