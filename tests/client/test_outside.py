"""OutsideClient over real sockets: httpx's own transport (a proxy from the standard
environment variables), the hooks seeing one call of one attempt by host, redirects
only when asked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshkit.client import AttemptEnded, AttemptStarted, CallEnded, OutsideClient
from tests._recording_http import RecordingServer, recording_server
from tests.client.helpers import Recorder

pytestmark = pytest.mark.anyio


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingServer]:
    with recording_server() as server:
        monkeypatch.setenv("HTTP_PROXY", server.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        yield server


async def test_the_environment_proxy_carries_calls_reported_by_host(proxy: RecordingServer) -> None:
    hooks = Recorder()
    async with OutsideClient(hooks=hooks) as client:
        # outside.test resolves nowhere: only the proxy can have answered.
        response = await client.get("http://outside.test/rates?day=1")
    assert response.json() == {"path": "http://outside.test/rates?day=1"}
    assert proxy.lines == ["GET http://outside.test/rates?day=1 HTTP/1.1"]
    [call] = hooks.of(CallEnded)
    assert (call.destination, call.path, call.status, call.attempts) == (
        "outside.test",
        "/rates",
        200,
        1,
    )
    [attempt] = hooks.of(AttemptEnded)
    assert (attempt.endpoint, attempt.status) == (None, 200)
    assert len(hooks.of(AttemptStarted)) == 1


async def test_redirects_are_followed_only_when_asked(proxy: RecordingServer) -> None:
    async with OutsideClient() as client:
        assert (await client.get("http://outside.test/moved")).status_code == 302
        followed = await client.get("http://outside.test/moved", follow_redirects=True)
    assert followed.json() == {"path": "http://outside.test/elsewhere"}
    assert len(proxy.lines) == 3
