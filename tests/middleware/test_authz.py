"""Acceptance: real mTLS callers with different identities against a real uvicorn server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshkit import cli
from meshkit.ca.x509 import LocalAuthority
from meshkit.identity import SpiffeId
from meshkit.middleware.authz import Authorizer
from meshkit.policy.intentions import Intentions, IntentionStore, consul_client
from meshkit.settings import MeshSettings
from meshkit.testing import RegistryProcess
from meshkit.tls import TLSMaterial
from tests import _mtls
from tests.middleware import shop_app

Denial = tuple[SpiffeId | None, str, str]


@pytest.fixture(scope="module")
def ids(authority: LocalAuthority) -> dict[str, TLSMaterial]:
    names = ("payments", "web", "cart", "admin-ui")
    found = {name: _mtls.material(authority, name) for name in names}
    found["staging-web"] = _mtls.material(authority, "web", namespace="staging")
    # Consul's CA names the same workloads with their datacenter (and partition).
    for name, namespace, partition in (
        ("web", "default", "default"),
        ("cart", "default", "default"),
        ("web", "staging", "default"),
        ("web", "default", "finance"),
    ):
        spiffe_id = SpiffeId.for_consul_service(
            authority.trust_domain, namespace, "dc1", name, partition=partition
        )
        issued = authority.issue(name, spiffe_id=spiffe_id)
        tls = TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem)
        found[f"consul-{partition}-{namespace}-{name}"] = tls
    return found


@pytest.fixture
def denials() -> list[Denial]:
    return []


def _authorizer(default: str, denials: list[Denial]) -> Authorizer:
    return Authorizer(
        service="payments",
        default_policy=default,  # type: ignore[arg-type]
        intentions=Intentions(),
        on_denial=lambda caller, route, reason: denials.append((caller, route, reason)),
    )


@pytest.fixture
def mesh_url(ids: dict[str, TLSMaterial], denials: list[Denial]) -> Iterator[str]:
    """The shop app under the allow-mesh default; client certificates optional."""
    app = shop_app.build(_authorizer("allow-mesh", denials))
    with _mtls.serve(app, ids["payments"], require_client_cert=False) as url:
        yield url


def _status(ids: dict[str, TLSMaterial], url: str, who: str, path: str, method: str = "GET") -> int:
    with _mtls.client(url, ids[who]) as client:
        return client.request(method, path).status_code


def test_allow_lets_only_named_callers_in(
    ids: dict[str, TLSMaterial], mesh_url: str, denials: list[Denial]
) -> None:
    assert _status(ids, mesh_url, "web", "/charge", "POST") == 200
    with _mtls.client(mesh_url, ids["cart"]) as client:
        response = client.post("/charge")
    assert response.status_code == 403
    cart = "spiffe://meshkit.local/ns/default/svc/cart"
    assert response.json() == {"error": "denied", "caller": cart, "route": "/charge"}
    assert denials == [(SpiffeId.parse(cart), "/charge", "not-allowed")]
    # A bare name means our namespace; the SPIFFE glob admits web from any namespace.
    assert _status(ids, mesh_url, "staging-web", "/charge", "POST") == 403
    assert _status(ids, mesh_url, "staging-web", "/any-namespace-web") == 200
    assert _status(ids, mesh_url, "cart", "/any-namespace-web") == 403


def test_callers_in_consuls_spiffe_form_match_the_same_policies(
    ids: dict[str, TLSMaterial], mesh_url: str
) -> None:
    assert _status(ids, mesh_url, "consul-default-default-web", "/charge", "POST") == 200
    assert _status(ids, mesh_url, "consul-default-default-cart", "/charge", "POST") == 403
    assert _status(ids, mesh_url, "consul-default-default-cart", "/no-cart") == 403
    assert _status(ids, mesh_url, "consul-default-staging-web", "/charge", "POST") == 403
    assert _status(ids, mesh_url, "consul-default-staging-web", "/any-namespace-web") == 200
    # Another admin partition's web is another workload: a bare name never means it.
    assert _status(ids, mesh_url, "consul-finance-default-web", "/charge", "POST") == 403
    with _mtls.client(mesh_url, ids["consul-default-default-web"]) as client:
        assert client.get("/plain").text == "spiffe://meshkit.local/ns/default/dc/dc1/svc/web"


def test_deny_wins_and_default_allow_mesh_admits_the_rest(
    ids: dict[str, TLSMaterial], mesh_url: str
) -> None:
    assert _status(ids, mesh_url, "cart", "/no-cart") == 403
    assert _status(ids, mesh_url, "web", "/no-cart") == 200
    with _mtls.client(mesh_url, ids["staging-web"]) as client:
        response = client.get("/plain")
    assert response.text == "spiffe://meshkit.local/ns/staging/svc/web"


def test_http_endpoint_methods_have_their_own_callers(
    ids: dict[str, TLSMaterial], mesh_url: str
) -> None:
    assert _status(ids, mesh_url, "admin-ui", "/refunds") == 200
    assert _status(ids, mesh_url, "web", "/refunds") == 403
    assert _status(ids, mesh_url, "web", "/refunds", "POST") == 200
    assert _status(ids, mesh_url, "admin-ui", "/refunds", "POST") == 200
    assert _status(ids, mesh_url, "cart", "/refunds", "POST") == 403


def test_anonymous_callers_need_an_explicit_allow(
    ids: dict[str, TLSMaterial], mesh_url: str, denials: list[Denial]
) -> None:
    with _mtls.anonymous_client(mesh_url, ids["web"].bundle_pem) as client:
        assert client.get("/public").status_code == 200
        response = client.get("/plain")
    assert response.status_code == 403
    assert response.json()["caller"] is None
    assert denials == [(None, "/plain", "unauthenticated")]


def test_deny_default_blocks_undecorated_routes(
    ids: dict[str, TLSMaterial], denials: list[Denial]
) -> None:
    app = shop_app.build(_authorizer("deny", denials))
    with _mtls.serve(app, ids["payments"]) as url:
        assert _status(ids, url, "web", "/plain") == 403
        assert _status(ids, url, "web", "/charge", "POST") == 200
        assert _status(ids, url, "web", "/public") == 200
    assert denials[0][2] == "default-deny"


def _wait_for_status(client_status: object, expected: int, limit: float = 10.0) -> float:
    """Poll until the status is ``expected``; returns the seconds it took."""
    began = time.monotonic()
    while client_status() != expected:  # type: ignore[operator]
        assert time.monotonic() - began < limit, f"status never became {expected}"
        time.sleep(0.02)
    return time.monotonic() - began


def test_intentions_apply_live_without_restart(
    ids: dict[str, TLSMaterial],
    denials: list[Denial],
    monkeypatch: pytest.MonkeyPatch,
    dev_registry: RegistryProcess,
) -> None:
    address = dev_registry.address
    monkeypatch.setenv("CONSUL_HTTP_ADDR", address)
    store = IntentionStore(consul_client(MeshSettings(consul_http_addr=address)))
    app = shop_app.build(_authorizer("deny", denials), store=store)
    with _mtls.serve(app, ids["payments"]) as url, _mtls.client(url, ids["web"]) as web:
        assert web.get("/plain").status_code == 403
        assert cli.main(["intentions", "allow", "web", "payments"]) == 0
        took = _wait_for_status(lambda: web.get("/plain").status_code, 200)
        print(f"intention allow applied after {took * 1000:.0f} ms")
        # A deny intention beats the route's own @allow("web").
        assert web.post("/charge").status_code == 200
        assert cli.main(["intentions", "deny", "web", "payments"]) == 0
        _wait_for_status(lambda: web.post("/charge").status_code, 403)
        assert cli.main(["intentions", "delete", "web", "payments"]) == 0
        _wait_for_status(lambda: web.post("/charge").status_code, 200)
        assert web.get("/plain").status_code == 403  # back to the deny default
    assert ("intention-deny") in {reason for _, _, reason in denials}


def test_rate_limit_answers_429_with_retry_after(
    ids: dict[str, TLSMaterial], mesh_url: str
) -> None:
    with _mtls.client(mesh_url, ids["web"]) as web:
        assert [web.get("/limited").status_code for _ in range(2)] == [200, 200]
        refused = web.get("/limited")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.json()["error"] == "rate_limited"
    assert _status(ids, mesh_url, "cart", "/limited") == 200  # per caller
    assert _status(ids, mesh_url, "web", "/limited-global") == 200
    assert _status(ids, mesh_url, "cart", "/limited-global") == 429  # one bucket for all


def test_timeout_answers_504(ids: dict[str, TLSMaterial], mesh_url: str) -> None:
    with _mtls.client(mesh_url, ids["web"]) as web:
        response = web.get("/too-slow")
    assert response.status_code == 504
    assert response.json() == {"error": "timeout", "route": "/too-slow", "timeout": 0.2}


def test_concurrency_sheds_past_the_limit(ids: dict[str, TLSMaterial], mesh_url: str) -> None:
    shop_app.gate = shop_app.Gate()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_status, ids, mesh_url, "web", "/slow")
        assert shop_app.gate.entered.wait(10)
        with _mtls.client(mesh_url, ids["cart"]) as cart:
            shed = cart.get("/slow")
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "1"
            cart.get("/release")
        assert first.result(10) == 200


def test_idempotency_key_runs_the_handler_once(ids: dict[str, TLSMaterial], mesh_url: str) -> None:
    shop_app.charges.clear()
    headers = {"Idempotency-Key": "order-1"}
    with _mtls.client(mesh_url, ids["web"]) as web:
        first = web.post("/pay", content=b"10 EUR", headers=headers)
        again = web.post("/pay", content=b"10 EUR", headers=headers)
        other_key = web.post("/pay", content=b"5 EUR", headers={"Idempotency-Key": "order-2"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"charge": 1}
    assert again.headers["idempotent-replayed"] == "true"
    assert other_key.json() == {"charge": 2}
    # The same key from another caller is another request.
    with _mtls.client(mesh_url, ids["cart"]) as cart:
        assert cart.post("/pay", content=b"1 EUR", headers=headers).json() == {"charge": 3}
    assert shop_app.charges == ["10 EUR", "5 EUR", "1 EUR"]


def test_concurrent_duplicates_wait_for_the_first(
    ids: dict[str, TLSMaterial], mesh_url: str
) -> None:
    shop_app.charges.clear()
    shop_app.gate = shop_app.Gate()
    headers = {"Idempotency-Key": "order-9", "x-hold": "1"}

    def pay() -> tuple[int, str]:
        with _mtls.client(mesh_url, ids["web"]) as web:
            response = web.post("/pay", content=b"9 EUR", headers=headers)
            return response.status_code, response.text

    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(pay)]
        assert shop_app.gate.entered.wait(10)
        calls += [pool.submit(pay) for _ in range(2)]
        time.sleep(0.3)  # best effort: let the duplicates arrive while the first runs
        _status(ids, mesh_url, "web", "/release")
        results = [call.result(10) for call in calls]
    assert results == [(201, '{"charge":1}')] * 3
    assert shop_app.charges == ["9 EUR"]
