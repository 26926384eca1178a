"""Consul's discovery chain applied by the mesh client, over real processes: a dev registry,
``inventory`` instances publishing ``MESHKIT_VERSION`` v1 and v2 and a ``catalog`` service,
each ``meshkit run``; entries written through py-consul as an operator writes them."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from meshkit.client import ClientHooks, ClientPolicy, DeadlineExceeded, MeshClientFactory
from meshkit.registry import WatchedCache
from meshkit.registry.consul import ConsulRegistry
from meshkit.registry.routing_watch import WatchedRouting
from meshkit.settings import MeshSettings
from meshkit.telemetry.client import ClientTelemetry
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.testing.processes import Mesh
from tests.client.helpers import contexts

pytestmark = pytest.mark.anyio
APP = "tests.apps.versioned:app"
VERSIONS = {
    "DefaultSubset": "v1",
    "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2"},
        "v3": {"Filter": "Service.Meta.version == v3"},  # no instance publishes it
        "v4": {"Filter": "Service.Meta.version == v4"},
    },
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(tmp_path_factory.mktemp("routing")) as mesh:
        mesh.start(APP, "inventory", env={"MESHKIT_VERSION": "v1"})
        mesh.start(APP, "inventory", env={"MESHKIT_VERSION": "v2"})
        mesh.start(APP, "catalog", env={"MESHKIT_VERSION": "c1"}, faults="delay=2,path=/slow")
        # Two v4 instances, one failing every /flaky call: for the route's retries.
        mesh.start(APP, "inventory", env={"MESHKIT_VERSION": "v4"}, faults="abort=500,path=/flaky")
        mesh.start(APP, "inventory", env={"MESHKIT_VERSION": "v4"})
        yield mesh


@pytest.fixture
async def registry(shop: Mesh) -> AsyncIterator[ConsulRegistry]:
    registry = ConsulRegistry(address=shop.registry.address)
    # As on a real Consul: routing and splitting need an HTTP protocol for the service.
    for service in ("inventory", "catalog"):
        await write(registry, "service-defaults", service, {"Protocol": "http"})
    yield registry
    for kind in ("service-router", "service-splitter", "service-resolver"):
        await registry.call(lambda client, kind=kind: client.config.delete(kind, "inventory"))


async def write(registry: ConsulRegistry, kind: str, name: str, body: dict[str, Any]) -> None:
    assert await registry.call(lambda client: client.config.set(kind, name, body))


@asynccontextmanager
async def client_of(
    shop: Mesh,
    registry: ConsulRegistry,
    policy: ClientPolicy | None = None,
    hooks: ClientHooks | None = None,
) -> AsyncIterator[Routed]:
    settings = MeshSettings(service="caller", trust_domain=shop.authority.trust_domain)
    routing = WatchedRouting(registry, wait=5)
    async with WatchedCache(registry) as cache, anyio.create_task_group() as group:
        group.start_soon(routing.run)
        factory = MeshClientFactory(
            cache,
            contexts(shop.authority, "caller"),
            settings,
            policy=policy,
            routing=routing,
            hooks=hooks,
        )
        try:
            yield Routed(factory, routing, registry)
        finally:
            await factory.aclose()
            group.cancel_scope.cancel()


class Routed:
    """A routed client and the way to change its chain and wait until it is in force."""

    def __init__(
        self, factory: MeshClientFactory, routing: WatchedRouting, registry: ConsulRegistry
    ) -> None:
        self.client = factory.client("inventory")
        self.routing = routing
        self.registry = registry

    async def apply(self, kind: str, body: dict[str, Any], name: str = "inventory") -> float:
        """Write an entry; return the seconds until this client's table had it."""
        generation = self.routing.generation
        started = time.perf_counter()
        await write(self.registry, kind, name, body)
        await self.changed_since(generation)
        return time.perf_counter() - started

    async def changed_since(self, generation: int) -> None:
        """Wait until this client's table is newer than ``generation``."""
        with anyio.fail_after(5):
            while self.routing.generation == generation:  # noqa: ASYNC110 (a counter)
                await anyio.sleep(0.005)

    async def get(self, path: str = "/item", **kwargs: Any) -> dict[str, Any]:
        response = await self.client.get(path, **kwargs)
        assert response.status_code == 200, response.text
        return json.loads(response.content)  # type: ignore[no-any-return]


async def test_weighted_split_between_versions(shop: Mesh, registry: ConsulRegistry) -> None:
    async with client_of(shop, registry) as routed:
        await routed.apply("service-resolver", VERSIONS)
        splits = [{"Weight": 75, "ServiceSubset": "v1"}, {"Weight": 25, "ServiceSubset": "v2"}]
        await routed.apply("service-splitter", {"Splits": splits})
        seen: Counter[str] = Counter()

        async def worker() -> None:
            for _ in range(250):
                seen[(await routed.get())["version"]] += 1

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(worker)
    assert sum(seen.values()) == 2000
    assert abs(seen["v2"] / 2000 - 0.25) <= 0.05, seen


async def test_client_metrics_count_calls_by_subset(shop: Mesh, registry: ConsulRegistry) -> None:
    """The caller's own metrics show the split per subset: each call counted under the
    subset that answered it, calls to a destination without a chain under none."""
    metrics = MeshMetrics()
    async with client_of(shop, registry, hooks=ClientTelemetry(metrics)) as routed:
        await routed.apply("service-resolver", VERSIONS)
        splits = [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}]
        await routed.apply("service-splitter", {"Splits": splits})
        seen = Counter([(await routed.get())["version"] for _ in range(200)])
    for subset in ("v1", "v2"):
        labels = {
            "http_request_method": "GET",
            "destination_service": "inventory",
            "http_response_status_code": "200",
            "error_type": "",
            "destination_subset": subset,
        }
        count = metrics.registry.get_sample_value(
            "http_client_request_duration_seconds_count", labels
        )
        assert count == seen[subset], (subset, seen)
        assert metrics.registry.get_sample_value("meshkit_client_attempts_total", labels)


async def test_default_subset_then_header_path_and_query_routes(
    shop: Mesh, registry: ConsulRegistry
) -> None:
    async with client_of(shop, registry) as routed:
        await routed.apply("service-resolver", VERSIONS)
        assert {(await routed.get())["version"] for _ in range(20)} == {"v1"}  # DefaultSubset
        routes = [
            {
                "Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "yes"}]}},
                "Destination": {
                    "ServiceSubset": "v2",
                    "ResponseHeaders": {"Set": {"x-route": "canary"}},
                },
            },
            {
                "Match": {"HTTP": {"PathPrefix": "/browse/", "Methods": ["GET"]}},
                "Destination": {"Service": "catalog", "PrefixRewrite": "/items/"},
            },
            {
                "Match": {"HTTP": {"QueryParam": [{"Name": "beta", "Present": True}]}},
                "Destination": {
                    "ServiceSubset": "v2",
                    "RequestHeaders": {"Set": {"x-canary": "by-query"}},
                },
            },
        ]
        await routed.apply("service-router", {"Routes": routes})
        canary = await routed.get("/item", headers={"x-canary": "yes"})
        assert (canary["version"], canary["canary"]) == ("v2", "yes")
        answer = await routed.client.get("/item", headers={"x-canary": "yes"})
        assert answer.headers["x-route"] == "canary"
        browse = await routed.get("/browse/42")
        assert (browse["version"], browse["path"]) == ("c1", "/items/42")
        beta = await routed.get("/item?beta=1")
        assert (beta["version"], beta["canary"]) == ("v2", "by-query")
        assert (await routed.get("/item"))["version"] == "v1"  # no route: the default
        # An absolute URL of another host is not the destination's: never routed.
        leader = await routed.client.get(f"http://{shop.registry.address}/v1/status/leader")
        assert leader.status_code == 200 and "version" not in leader.text


async def test_a_route_with_a_regex_that_does_not_compile_is_skipped(
    shop: Mesh, registry: ConsulRegistry
) -> None:
    """The registry stores it, as Consul does; no call fails for it, the next route
    that fits takes the call."""
    async with client_of(shop, registry) as routed:
        await routed.apply("service-resolver", VERSIONS)
        routes = [
            {"Match": {"HTTP": {"PathRegex": "/item("}}, "Destination": {"ServiceSubset": "v4"}},
            {"Match": {"HTTP": {"PathPrefix": "/item"}}, "Destination": {"ServiceSubset": "v2"}},
        ]
        await routed.apply("service-router", {"Routes": routes})
        assert {(await routed.get("/item"))["version"] for _ in range(10)} == {"v2"}


async def test_a_split_to_another_services_splitter_is_flattened(
    shop: Mesh, registry: ConsulRegistry
) -> None:
    """inventory: v1 50, catalog 50; catalog: inventory's v2 50 (a header set on the way),
    itself 50. Flattened as Consul does: v1 50 %, v2 25 % with both splits' headers,
    catalog 25 %."""
    to_v2 = {"Weight": 50, "Service": "inventory", "ServiceSubset": "v2"}
    to_v2["RequestHeaders"] = {"Set": {"x-canary": "nested"}}
    async with client_of(shop, registry) as routed:
        await routed.apply("service-resolver", VERSIONS)
        try:
            await routed.apply("service-splitter", {"Splits": [to_v2, {"Weight": 50}]}, "catalog")
            splits = [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "Service": "catalog"}]
            await routed.apply("service-splitter", {"Splits": splits})
            seen: Counter[tuple[str, str | None]] = Counter()

            async def worker() -> None:
                for _ in range(250):
                    answer = await routed.get()
                    seen[answer["version"], answer["canary"]] += 1

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(worker)
        finally:
            await registry.call(lambda c: c.config.delete("service-splitter", "inventory"))
            await registry.call(lambda c: c.config.delete("service-splitter", "catalog"))
    assert set(seen) == {("v1", None), ("v2", "nested"), ("c1", None)}, seen
    for key, share in ((("v1", None), 0.5), (("v2", "nested"), 0.25), (("c1", None), 0.25)):
        assert abs(seen[key] / 2000 - share) <= 0.05, seen


async def test_meshkit_route_steers_running_clients(shop: Mesh, registry: ConsulRegistry) -> None:
    """``meshkit route`` (a process of its own, as an operator runs it) writes a router
    the running client follows: the header's calls to v2, the others to the default."""
    async with client_of(shop, registry) as routed:
        await routed.apply("service-resolver", VERSIONS)
        generation = routed.routing.generation
        argv = [sys.executable, "-m", "meshkit", "route", "inventory"]
        argv += ["--header", "x-canary=1", "--subset", "v2"]
        env = {**os.environ, "CONSUL_HTTP_ADDR": shop.registry.address}
        done = await anyio.run_process(argv, env=env, check=False)
        assert done.returncode == 0, done.stderr
        await routed.changed_since(generation)
        canary = {(await routed.get(headers={"x-canary": "1"}))["version"] for _ in range(20)}
        others = {(await routed.get())["version"] for _ in range(20)}
    assert (canary, others) == ({"v2"}, {"v1"})


async def test_subset_without_instances_fails_over(shop: Mesh, registry: ConsulRegistry) -> None:
    """Served by the failover subset, and counted once, under it: the empty subset the
    call skipped is not a second (failed) call in the caller's metrics."""
    metrics = MeshMetrics()
    async with client_of(shop, registry, hooks=ClientTelemetry(metrics)) as routed:
        await routed.apply(
            "service-resolver",
            {**VERSIONS, "DefaultSubset": "v3", "Failover": {"v3": {"ServiceSubset": "v2"}}},
        )
        assert {(await routed.get())["version"] for _ in range(20)} == {"v2"}
    for name in ("http_client_request_duration_seconds_count", "meshkit_client_attempts_total"):
        counted = Counter[tuple[str, str]]()
        for family in metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    labels = sample.labels
                    counted[labels["destination_subset"], labels["error_type"]] += int(sample.value)
        assert counted == {("v2", ""): 20}, (name, counted)


async def test_a_change_under_load_drops_no_request(shop: Mesh, registry: ConsulRegistry) -> None:
    tally: Counter[str] = Counter()
    failures: list[BaseException] = []
    async with client_of(shop, registry) as routed:
        await routed.apply("service-resolver", VERSIONS)
        await routed.apply("service-splitter", {"Splits": [{"Weight": 100, "ServiceSubset": "v1"}]})
        stop = anyio.Event()
        last: dict[int, str] = {}

        async def worker(number: int) -> None:
            while not stop.is_set():
                try:
                    version = (await routed.get())["version"]
                except Exception as exc:  # a failed call is what this test counts
                    failures.append(exc)
                    continue
                tally[version] += 1
                last[number] = version

        async with anyio.create_task_group() as group:
            for number in range(8):
                group.start_soon(worker, number)
            await anyio.sleep(0.5)
            splits = [{"Weight": 0, "ServiceSubset": "v1"}, {"Weight": 100, "ServiceSubset": "v2"}]
            in_force = await routed.apply("service-splitter", {"Splits": splits})
            await anyio.sleep(0.5)
            stop.set()
    assert not failures, failures[:3]
    assert tally["v1"] > 0 and tally["v2"] > 0
    assert set(last.values()) == {"v2"}
    print(f"splitter change in force after {in_force * 1000:.0f} ms")


async def test_route_retries_and_timeout(shop: Mesh, registry: ConsulRegistry) -> None:
    async with client_of(shop, registry) as routed:
        await routed.apply("service-resolver", VERSIONS)
        assert {(await routed.client.get("/flaky")).status_code for _ in range(10)} == {200}
        routes = [
            {
                "Match": {"HTTP": {"PathPrefix": "/flaky-on"}},
                "Destination": {"ServiceSubset": "v4", "NumRetries": 3, "RetryOn": ["5xx"]},
            },
            {
                "Match": {"HTTP": {"PathPrefix": "/flaky"}},
                # 500 is not retried by default (only 502-504): the route says it is.
                "Destination": {
                    "ServiceSubset": "v4",
                    "NumRetries": 3,
                    "RetryOnStatusCodes": [500],
                },
            },
            {
                "Match": {"HTTP": {"PathPrefix": "/slow"}},
                "Destination": {"Service": "catalog", "RequestTimeout": "300ms"},
            },
        ]
        await routed.apply("service-router", {"Routes": routes})
        statuses = [(await routed.client.get("/flaky")).status_code for _ in range(30)]
        assert statuses == [200] * 30
        statuses = [(await routed.client.get("/flaky-on")).status_code for _ in range(30)]
        assert statuses == [200] * 30  # RetryOn 5xx: the same, by Envoy's condition name
        with pytest.raises(DeadlineExceeded):
            await routed.client.get("/slow")  # the instance waits 2 s; the route, 300 ms


async def test_mirror_to_a_subset_of_the_same_service(shop: Mesh, registry: ConsulRegistry) -> None:
    mirrored = ClientPolicy(mirror_to="inventory", mirror_subset="v2", mirror_fraction=1.0)
    v2 = next(p for p in shop.processes if p.env.get("MESHKIT_VERSION") == "v2")
    connection = shop.connect(v2)
    async with client_of(shop, registry, mirrored) as routed:
        await routed.apply("service-resolver", VERSIONS)
        for _ in range(10):
            assert (await routed.get("/shadowed"))["version"] == "v1"  # DefaultSubset
        # The copies are in flight until they are answered: wait with the client open.
        with anyio.fail_after(5):
            while connection.get("/__seen?path=/shadowed")[1]["count"] < 10:  # noqa: ASYNC110
                await anyio.sleep(0.05)
