"""The idempotency stage over a store: what callers get, whichever instance they reach.

Two stages sharing one store stand for two instances sharing a database; the stores'
own semantics are in ``test_idempotency_stores``, real processes in ``tests/chaos``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from meshkit.identity import PEER_IDENTITY_KEY, SpiffeId
from meshkit.middleware.idempotency import IdempotencyDefaults, IdempotencyStage
from meshkit.policy.decorators import Idempotent, idempotent, policies_of
from meshkit.policy.idempotency import (
    Claim,
    Claimed,
    IdempotencyKey,
    IdempotencyStoreError,
    MemoryStore,
    SQLiteStore,
    StoredResponse,
)
from meshkit.settings import InFlight, MeshSettings
from tests.middleware._asgi_call import Answer, Handler, caller

pytestmark = pytest.mark.anyio
WEB = caller("web")


async def post(
    app: Any,
    key: str | None = "k",
    *,
    body: bytes = b"{}",
    path: str = "/x",
    identity: SpiffeId | None = WEB,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Answer:
    """A POST with ``body`` in two chunks, as a server may deliver it."""
    raw = list(headers or ())
    if key is not None:
        raw.append((b"idempotency-key", key.encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": raw,
        "extensions": {"tls": {PEER_IDENTITY_KEY: identity}},
    }
    chunks = [
        {"type": "http.request", "body": body[:1], "more_body": True},
        {"type": "http.request", "body": body[1:], "more_body": False},
    ]
    answer = Answer()

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Any) -> None:
        answer.messages.append(message)

    await app(scope, receive, send)
    return answer


class Echo(Handler):
    """A Handler that also keeps the bodies it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await super().__call__(scope, receive, send)


def stage(
    handler: Any, store: Any = None, *, in_flight: InFlight | None = None, **policy: Any
) -> IdempotencyStage:
    defaults = IdempotencyDefaults(service="payments", store=store)
    return IdempotencyStage(
        handler, Idempotent(in_flight=in_flight, **policy), route="/x", defaults=defaults
    )


async def test_the_same_key_with_another_request_is_422() -> None:
    handler = Echo()
    instance = stage(handler)
    assert (await post(instance, body=b'{"amount":1}')).body == b"1"
    assert (await post(instance, body=b'{"amount":1}')).body == b"1"
    assert handler.bodies == [b'{"amount":1}']  # the handler read the body it was sent
    other_body = await post(instance, body=b'{"amount":2}')
    other_path = await post(instance, body=b'{"amount":1}', path="/y")
    assert (other_body.status, other_path.status) == (422, 422)
    assert other_body.headers["content-type"] == "application/json"
    assert handler.calls == 1


async def test_keys_belong_to_their_caller() -> None:
    handler = Handler()
    instance = stage(handler)
    await post(instance, identity=WEB)
    await post(instance, identity=caller("cart"))
    await post(instance, identity=None)
    assert handler.calls == 3


async def test_keys_are_one_structured_string_or_token() -> None:
    handler = Handler()
    instance = stage(handler)
    await post(instance, '"order-7"')
    assert (await post(instance, "order-7")).headers["idempotent-replayed"] == "true"
    assert (await post(instance, '"quote \\" inside"')).status == 200
    twice = [(b"idempotency-key", b"a")] * 2
    for bad in ("", "tab\tinside", "é", "x" * 256):
        assert (await post(instance, bad)).status == 400
    assert (await post(instance, None, headers=twice)).status == 400
    assert handler.calls == 2


async def test_two_instances_sharing_a_store_run_a_key_once() -> None:
    shared = MemoryStore()
    handler = Handler(status=201)
    handler.hold = True
    first, second = stage(handler, shared), stage(handler, shared)
    answers: list[Answer] = []

    async def send_to(instance: IdempotencyStage) -> None:
        answers.append(await post(instance))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send_to, first)
        await wait_all_tasks_blocked()
        tasks.start_soon(send_to, second)  # waits for the first instance's run
        await wait_all_tasks_blocked()
        handler.release.set()
    retried = await post(second)
    assert handler.calls == 1
    assert [a.status for a in [*answers, retried]] == [201, 201, 201]
    assert [a.body for a in [*answers, retried]] == [b"1", b"1", b"1"]
    assert retried.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("status", [201, 503])
async def test_the_key_is_settled_before_the_client_has_the_answer(status: int) -> None:
    """A retry sent the moment the first answer arrives finds it stored (or, after a
    5xx, the key free): never still running, which would be a 409."""
    shared = MemoryStore()
    handler = Handler(status=status)
    first, second = stage(handler, shared), stage(handler, shared, in_flight="reject")
    retried: list[Answer] = []

    async def client(scope: Any, receive: Any, send: Any) -> None:
        async def receiving(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                retried.append(await post(second))
            await send(message)

        await first(scope, receive, receiving)

    await post(client)
    assert retried[0].status == status
    assert handler.calls == (1 if status < 500 else 2)


async def test_a_key_in_flight_elsewhere_is_409_when_rejecting() -> None:
    shared = MemoryStore()
    handler = Handler()
    handler.hold = True
    answers: list[Answer] = []

    async def send_to(instance: IdempotencyStage) -> None:
        answers.append(await post(instance))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send_to, stage(handler, shared))
        await wait_all_tasks_blocked()
        refused = await post(stage(handler, shared, in_flight="reject"))
        handler.release.set()
    assert refused.status == 409
    assert refused.headers["retry-after"] == "1"
    assert b"idempotency_key_in_flight" in refused.body


async def test_a_waiting_request_gives_up_after_wait_timeout() -> None:
    shared = MemoryStore()
    handler = Handler()
    handler.hold = True
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(post, stage(handler, shared))
        await wait_all_tasks_blocked()
        refused = await post(stage(handler, shared, wait_timeout=0.05))
        handler.release.set()
    assert refused.status == 409


async def test_a_response_too_large_to_keep_is_not_run_again() -> None:
    handler = Handler(status=201)
    instance = stage(handler, max_body_bytes=0)
    assert (await post(instance)).body == b"1"
    again = await post(instance)
    assert again.status == 409
    assert b'"status":201' in again.body and b"idempotent_response_not_kept" in again.body
    assert handler.calls == 1


class BrokenStore(MemoryStore):
    async def claim(self, key: IdempotencyKey, fingerprint: str, *, ttl: float) -> Claim:
        raise IdempotencyStoreError("the database is down")


async def test_a_store_that_cannot_answer_is_503_and_nothing_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Handler()
    with caplog.at_level(logging.ERROR, "meshkit.policy"):
        answer = await post(stage(handler, BrokenStore()))
    assert (answer.status, answer.headers["retry-after"]) == (503, "1")
    assert handler.calls == 0
    assert "the database is down" in caplog.text


class LeasedStore(MemoryStore):
    """A memory store whose claims lapse, to watch the stage renew them."""

    lease = 0.06

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    async def renew(self, claimed: Claimed) -> bool:
        self.renewals += 1
        return await super().renew(claimed)


async def test_the_stage_renews_its_claim_while_the_handler_runs() -> None:
    store = LeasedStore()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep(0.2)
        await Handler()(scope, receive, send)

    assert (await post(stage(slow, store))).status == 200
    assert 2 <= store.renewals <= 15


async def test_the_store_sweeps_after_the_answer_went_out() -> None:
    events: list[str] = []

    class Watched(MemoryStore):
        async def complete(self, claimed: Claimed, response: StoredResponse, *, ttl: float) -> bool:
            events.append("complete")
            return await super().complete(claimed, response, ttl=ttl)

        async def sweep(self) -> None:
            events.append("sweep")

    async def client(scope: Any, receive: Any, send: Any) -> None:
        async def sending(message: Any) -> None:
            events.append(message["type"])
            await send(message)

        await stage(Handler(), Watched())(scope, receive, sending)

    await post(client)
    assert events == ["http.response.start", "complete", "http.response.body", "sweep"]


async def test_renewals_and_the_completion_take_turns(caplog: pytest.LogCaptureFixture) -> None:
    """A renewal racing the completion could make it fail (Consul: a CAS on a replaced
    version), losing the response; and a renewal after it would report a lost claim."""

    class Slow(LeasedStore):
        renewing = False

        async def renew(self, claimed: Claimed) -> bool:
            self.renewing = True
            await anyio.sleep(0.03)
            self.renewing = False
            return await super().renew(claimed)

        async def complete(self, claimed: Claimed, response: StoredResponse, *, ttl: float) -> bool:
            assert not self.renewing
            return await super().complete(claimed, response, ttl=ttl)

    store = Slow()
    for pause in (0.05, 0.07, 0.09, 0.11):

        async def slow(scope: Any, receive: Any, send: Any, pause: float = pause) -> None:
            await anyio.sleep(pause)
            await Handler()(scope, receive, send)

        with caplog.at_level(logging.WARNING, "meshkit.policy"):
            assert (await post(stage(slow, store), key=str(pause))).status == 200
    assert store.renewals >= 4
    assert caplog.text == ""


async def test_handler_errors_come_out_as_they_were_raised() -> None:
    """Not wrapped in an ExceptionGroup by the renewal's task group: the app's
    exception handlers must still recognise them. The key is released."""
    store = LeasedStore()
    handler = Handler()
    handler.fail = True
    with pytest.raises(RuntimeError, match="handler crashed"):
        await post(stage(handler, store))
    handler.fail = False
    assert (await post(stage(handler, store))).status == 200
    assert handler.calls == 2


async def test_a_cancelled_request_releases_its_key_in_a_shared_store(tmp_path: Path) -> None:
    """The release runs shielded: a deadline or timeout must not leave the key held."""
    store = SQLiteStore(tmp_path / "keys.db")
    handler = Handler()
    handler.hold = True
    with anyio.move_on_after(0.3):
        await post(stage(handler, store))
    assert handler.calls == 1
    handler.hold = False
    assert (await post(stage(handler, store))).body == b"2"
    await store.aclose()


async def test_claims_lost_while_running_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Forgetful(LeasedStore):
        async def renew(self, claimed: Claimed) -> bool:
            return False

        async def complete(self, claimed: Claimed, response: StoredResponse, *, ttl: float) -> bool:
            return False

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep(0.1)
        await Handler()(scope, receive, send)

    with caplog.at_level(logging.WARNING, "meshkit.policy"):
        assert (await post(stage(slow, Forgetful()))).status == 200
    assert "lost the claim" in caplog.text and "was not stored" in caplog.text


def test_the_decorator_takes_a_store_and_an_in_flight_policy(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "keys.db")

    @idempotent(ttl=60, store=store, in_flight="reject", wait_timeout=5)
    async def charge() -> None: ...

    (policy,) = policies_of(charge)
    assert policy == Idempotent(60.0, store=store, in_flight="reject", wait_timeout=5.0)
    with pytest.raises(Exception, match="in_flight"):
        idempotent(in_flight="later")  # type: ignore[arg-type]


def test_the_settings_choose_the_default_store_and_behaviour(tmp_path: Path) -> None:
    env = {
        "MESHKIT_IDEMPOTENCY_STORE": f"sqlite:{tmp_path}/keys.db",
        "MESHKIT_IDEMPOTENCY_IN_FLIGHT": "reject",
    }
    settings = MeshSettings.from_env(env)
    assert (settings.idempotency_store, settings.idempotency_in_flight) == (
        f"sqlite:{tmp_path}/keys.db",
        "reject",
    )
    for variable, value in [
        ("MESHKIT_IDEMPOTENCY_STORE", "redis://x"),
        ("MESHKIT_IDEMPOTENCY_IN_FLIGHT", "later"),
    ]:
        with pytest.raises(Exception, match=variable):
            MeshSettings.from_env({variable: value})
