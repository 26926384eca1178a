"""Test-only: call a pure ASGI app in-process with a chosen caller identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

from meshkit.identity import PEER_IDENTITY_KEY, SpiffeId


@dataclass
class Answer:
    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0].get("headers", ())}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def caller(service: str) -> SpiffeId:
    return SpiffeId.for_service("meshkit.local", "default", service)


async def call(
    app: ASGIApp,
    *,
    identity: SpiffeId | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    path: str = "/x",
) -> Answer:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "extensions": {"tls": {PEER_IDENTITY_KEY: identity}},
    }
    answer = Answer()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        answer.messages.append(message)

    await app(scope, receive, send)
    return answer


class Handler:
    """An ASGI app that counts calls, can be held open, and answers a chosen status."""

    def __init__(self, status: int = 200) -> None:
        import anyio

        self.calls = 0
        self.status = status
        self.release = anyio.Event()
        self.hold = False
        self.fail = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        number = self.calls
        if self.hold:
            await self.release.wait()
        if self.fail:
            raise RuntimeError("handler crashed")
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": str(number).encode()})
