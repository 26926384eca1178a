from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from meshkit.middleware.idempotency import IdempotencyStage
from meshkit.middleware.limits import (
    ConcurrencyStage,
    RateLimitStage,
    TimeoutStage,
    TokenBucket,
    build_pipeline,
)
from meshkit.policy.decorators import Concurrency, Idempotent, RateLimit, RoutePolicies, Timeout
from tests.middleware._asgi_call import Answer, Handler, call, caller

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=1.0, capacity=2, now=0.0)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_pipeline_without_limits_is_the_app_itself() -> None:
    handler = Handler()
    assert build_pipeline(handler, RoutePolicies(), route="/x") is handler


async def test_rate_limit_counts_per_caller_and_bounds_its_buckets() -> None:
    clock = Clock()
    stage = RateLimitStage(
        Handler(), RateLimit(0.5, 1, "caller"), route="/x", clock=clock, max_buckets=2
    )
    assert (await call(stage, identity=caller("web"))).status == 200
    refused = await call(stage, identity=caller("web"))
    assert refused.status == 429
    assert refused.headers["retry-after"] == "2"
    assert (await call(stage, identity=caller("cart"))).status == 200
    assert (await call(stage, identity=None)).status == 200
    assert len(stage._buckets) == 2
    clock.now += 2
    assert (await call(stage, identity=caller("cart"))).status == 200


async def test_concurrency_queues_then_sheds() -> None:
    handler = Handler()
    handler.hold = True
    stage = ConcurrencyStage(handler, Concurrency(1, queue=1), route="/x")
    answers: list[Answer] = []

    async def one() -> None:
        answers.append(await call(stage))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(one)
        await wait_all_tasks_blocked()
        tasks.start_soon(one)  # queued
        await wait_all_tasks_blocked()
        assert handler.calls == 1
        shed = await call(stage)
        assert shed.status == 503
        handler.release.set()
    assert [a.status for a in answers] == [200, 200]
    assert handler.calls == 2


async def test_timeout_after_the_response_began_sends_no_504() -> None:
    async def streaming(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await anyio.sleep(10)

    answer = await call(TimeoutStage(streaming, Timeout(0.01), route="/x"))
    assert [m["type"] for m in answer.messages] == ["http.response.start"]


async def test_timeout_before_the_response_is_504() -> None:
    handler = Handler()
    handler.hold = True
    answer = await call(TimeoutStage(handler, Timeout(0.01), route="/x"))
    assert answer.status == 504


def _idempotent(handler: Handler, clock: Clock | None = None, **kwargs: float) -> IdempotencyStage:
    policy = Idempotent(**kwargs)  # type: ignore[arg-type]
    return IdempotencyStage(handler, policy, route="/x", clock=clock or Clock())


async def test_idempotency_replays_and_expires() -> None:
    clock = Clock()
    handler = Handler(status=201)
    stage = _idempotent(handler, clock, ttl=10)
    key = {"Idempotency-Key": "a"}
    first = await call(stage, headers=key, identity=caller("web"))
    again = await call(stage, headers=key, identity=caller("web"))
    assert (first.body, again.body) == (b"1", b"1")
    assert again.headers["idempotent-replayed"] == "true"
    assert (await call(stage)).body == b"2"  # no key: runs every time
    clock.now += 11
    assert (await call(stage, headers=key, identity=caller("web"))).body == b"3"


async def test_idempotency_releases_the_key_after_5xx_and_crashes() -> None:
    handler = Handler(status=503)
    stage = _idempotent(handler)
    key = {"Idempotency-Key": "a"}
    await call(stage, headers=key)
    await call(stage, headers=key)
    assert handler.calls == 2
    handler.status, handler.fail = 200, True
    with pytest.raises(RuntimeError):
        await call(stage, headers=key)
    handler.fail = False
    assert (await call(stage, headers=key)).body == b"4"


async def test_idempotency_duplicates_wait_for_the_first() -> None:
    handler = Handler()
    handler.hold = True
    stage = _idempotent(handler)
    answers: list[Answer] = []

    async def one() -> None:
        answers.append(await call(stage, headers={"Idempotency-Key": "k"}))

    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(one)
        await wait_all_tasks_blocked()
        handler.release.set()
    assert handler.calls == 1
    assert [a.body for a in answers] == [b"1"] * 3
    assert sum("idempotent-replayed" in a.headers for a in answers) == 2


async def test_idempotency_store_is_bounded_and_keys_are_checked() -> None:
    handler = Handler()
    stage = _idempotent(handler, max_entries=2)
    for key in "abc":
        await call(stage, headers={"Idempotency-Key": key})
    assert (await call(stage, headers={"Idempotency-Key": "c"})).body == b"3"  # kept
    assert (await call(stage, headers={"Idempotency-Key": "a"})).body == b"4"  # evicted
    assert (await call(stage, headers={"Idempotency-Key": "x" * 300})).status == 400


async def test_timeout_covers_time_queued_for_a_slot() -> None:
    handler = Handler()
    handler.hold = True
    policies = RoutePolicies(timeout=Timeout(0.05), concurrency=Concurrency(1, queue=1))
    pipeline = build_pipeline(handler, policies, route="/x")
    answers: list[Answer] = []

    async def one() -> None:
        answers.append(await call(pipeline))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(one)
        tasks.start_soon(one)
    assert [a.status for a in answers] == [504, 504]
    assert handler.calls == 1  # the second timed out while queued
