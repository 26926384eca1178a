from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from meshkit.errors import ConfigError
from meshkit.identity import SpiffeId
from meshkit.policy.decorators import (
    Allow,
    CallerSet,
    Deny,
    RateLimit,
    RoutePolicies,
    Timeout,
    allow,
    concurrency,
    deny,
    idempotent,
    iter_routes,
    parse_rate,
    policies_of,
    policy_manifest,
    rate_limit,
    timeout,
)


@allow("web", "cart")
@deny("cart")
@timeout(2)
async def charge(request: Request) -> Response:
    return PlainTextResponse("ok")


async def plain(request: Request) -> Response:
    return PlainTextResponse("ok")


@allow("admin-ui")
class Refunds(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return PlainTextResponse("list")

    @allow("web")
    @idempotent(ttl=60)
    async def post(self, request: Request) -> Response:
        return PlainTextResponse("refunded")


async def socket(websocket: WebSocket) -> None:
    await websocket.close()


def test_decorators_attach_values_and_return_the_endpoint_itself() -> None:
    assert policies_of(charge) == (Timeout(2.0), Deny(("cart",)), Allow(("web", "cart")))
    merged = RoutePolicies.merge(policies_of(charge))
    assert merged.allow_declared and merged.allow == ("web", "cart")
    assert merged.deny == ("cart",)
    assert policies_of(plain) == ()


def test_conflicting_stacks_fail_at_decoration() -> None:
    async def handler(request: Request) -> Response:
        return PlainTextResponse("ok")

    with pytest.raises(ConfigError, match="timeout"):
        timeout(1)(timeout(2)(handler))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("100/s", (100.0, 1.0)),
        ("30/m", (30.0, 60.0)),
        ("5/10s", (5.0, 10.0)),
        ("1/h", (1.0, 3600.0)),
    ],
)
def test_parse_rate(spec: str, expected: tuple[float, float]) -> None:
    assert parse_rate(spec) == expected


@pytest.mark.parametrize("spec", ["", "100", "0/s", "5/0s", "x/s", "10/fortnight"])
def test_parse_rate_rejects(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_rate(spec)


def test_rate_limit_value() -> None:
    decorated = rate_limit("30/m", per="global")(lambda request: None)
    assert policies_of(decorated) == (RateLimit(0.5, 30, "global"),)


@pytest.mark.parametrize(
    "make",
    [
        lambda: allow(),
        lambda: deny(),
        lambda: allow("Not A Name"),
        lambda: allow("spiffe://BAD/x"),
        lambda: timeout(0),
        lambda: concurrency(0),
        lambda: rate_limit("1/s", per="everyone"),  # type: ignore[arg-type]
    ],
)
def test_invalid_arguments_raise_config_error(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


def test_caller_set_matches_names_ids_and_globs() -> None:
    callers = CallerSet.of(["web", "cart-*", "spiffe://other.org/ns/*/svc/batch"])
    web = SpiffeId.for_service("meshkit.local", "default", "web")
    assert callers.matches(web, "web")
    assert callers.matches(web, "cart-v2")
    assert not callers.matches(web, None)  # bare names need our domain and namespace
    batch = SpiffeId.for_service("other.org", "jobs", "batch")
    assert callers.matches(batch, None)
    assert not CallerSet.of(["web"]).matches(batch, None)


def test_caller_set_matches_consuls_form_of_an_id_in_meshkits_form() -> None:
    callers = CallerSet.of(["spiffe://td/ns/jobs/svc/batch"])
    assert callers.matches(SpiffeId.parse("spiffe://td/ns/jobs/dc/dc1/svc/batch"), None)
    assert not callers.matches(SpiffeId.parse("spiffe://td/ap/p2/ns/jobs/dc/dc1/svc/batch"), None)
    consul_only = CallerSet.of(["spiffe://td/ns/jobs/dc/dc1/svc/batch"])
    assert consul_only.matches(SpiffeId.parse("spiffe://td/ns/jobs/dc/dc1/svc/batch"), None)
    assert not consul_only.matches(SpiffeId.parse("spiffe://td/ns/jobs/dc/dc2/svc/batch"), None)


def test_http_endpoint_methods_merge_over_the_class() -> None:
    app = Starlette(routes=[Route("/refunds", Refunds)])
    (info,) = iter_routes(app.routes)
    assert info.methods == ("GET", "HEAD", "POST")
    assert info.policies.allow == ("admin-ui",)
    post = info.by_method["POST"]
    assert post.allow == ("admin-ui", "web")
    assert post.idempotent is not None
    assert "GET" not in info.by_method


def test_manifest_lists_every_route_in_a_stable_order() -> None:
    app = Starlette(
        routes=[
            Route("/plain", plain),
            Mount("/api", routes=[Route("/charge", charge, methods=["POST"])]),
            Route("/refunds", Refunds),
            WebSocketRoute("/ws", socket),
        ]
    )
    manifest = policy_manifest(app.routes, default_policy="deny", service="payments")
    assert json.loads(json.dumps(manifest)) == manifest
    keys = [(entry["path"], entry["method"]) for entry in manifest["routes"]]
    assert keys == sorted(keys)
    assert keys == [
        ("/api/charge", "POST"),
        ("/plain", "GET"),
        ("/plain", "HEAD"),
        ("/refunds", "GET"),
        ("/refunds", "HEAD"),
        ("/refunds", "POST"),
        ("/ws", "WEBSOCKET"),
    ]
    by_key = {(e["path"], e["method"]): e for e in manifest["routes"]}
    assert by_key[("/plain", "GET")]["access"] == "intentions-only"
    assert by_key[("/api/charge", "POST")]["access"] == "allow-list"
    assert by_key[("/api/charge", "POST")]["deny"] == ["cart"]
    assert by_key[("/api/charge", "POST")]["timeout"] == 2.0
    assert by_key[("/refunds", "POST")]["allow"] == ["admin-ui", "web"]
    assert by_key[("/refunds", "POST")]["idempotent"] == {"ttl": 60.0, "max_entries": 10000}
    mesh_default = policy_manifest(app.routes, default_policy="allow-mesh")
    assert mesh_default["routes"][1]["access"] == "allow-mesh"
