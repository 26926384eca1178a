from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from examples.shop import payments
from tests.examples.conftest import Shop

pytestmark = pytest.mark.anyio

CHARGE = {"amount_cents": 1250, "currency": "usd", "payment_method": "tok_visa", "reference": "c1"}


async def _charges(shop: Shop) -> int:
    return int(
        await shop.db("payments").read(
            lambda c: c.execute("SELECT count(*) FROM charges").fetchone()[0]
        )
    )


async def test_a_charge_needs_an_idempotency_key(shop: Shop) -> None:
    response = await shop.client("cart", "payments").post("/charges", json=CHARGE)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]
    assert await _charges(shop) == 0


async def test_the_same_key_charges_once_and_replays_the_answer(shop: Shop) -> None:
    payments = shop.client("cart", "payments")
    headers = {"Idempotency-Key": "k1"}
    first = await payments.post("/charges", json=CHARGE, headers=headers)
    second = await payments.post("/charges", json=CHARGE, headers=headers)
    assert first.status_code == 201
    assert first.json()["status"] == "succeeded"
    assert first.json()["currency"] == "USD"
    assert second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert await _charges(shop) == 1
    shown = await payments.get(f"/charges/{first.json()['id']}")
    assert shown.json() == first.json()


async def test_the_same_key_with_another_request_is_refused(shop: Shop) -> None:
    payments = shop.client("cart", "payments")
    headers = {"Idempotency-Key": "k2"}
    await payments.post("/charges", json=CHARGE, headers=headers)
    other = await payments.post("/charges", json={**CHARGE, "amount_cents": 1}, headers=headers)
    assert other.status_code == 422
    assert await _charges(shop) == 1


async def test_a_declined_card_is_402_every_time(shop: Shop) -> None:
    payments = shop.client("cart", "payments")
    body, headers = {**CHARGE, "payment_method": "tok_declined"}, {"Idempotency-Key": "k3"}
    first = await payments.post("/charges", json=body, headers=headers)
    again = await payments.post("/charges", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (402, 402)
    assert first.json()["status"] == "declined"


async def test_invalid_charges_are_400_and_unknown_ids_404(shop: Shop) -> None:
    payments = shop.client("cart", "payments")
    bad = {**CHARGE, "amount_cents": -5}
    assert (
        await payments.post("/charges", json=bad, headers={"Idempotency-Key": "k4"})
    ).status_code == 400
    assert (await payments.get("/charges/ch_nope")).status_code == 404
    assert await _charges(shop) == 0


async def test_only_cart_may_charge(shop: Shop) -> None:
    response = await shop.client("web", "payments").post(
        "/charges", json=CHARGE, headers={"Idempotency-Key": "k5"}
    )
    assert response.status_code == 403
    assert await _charges(shop) == 0


async def test_the_plain_app_charges_with_no_mesh_at_all(tmp_path: Path) -> None:
    """``create_plain_app`` (payments behind an Envoy sidecar in ``meshkit demo
    --consul-native``): the same handlers serve requests that carry no identity, since
    the sidecar authorizes; the database is where it is told."""
    app = payments.create_plain_app(database=tmp_path / "payments.db")
    transport = httpx.ASGITransport(app)
    # httpx.ASGITransport does not run lifespans: run it here.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://payments") as client,
    ):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        headers = {"Idempotency-Key": "k"}
        charged = await client.post("/charges", json=CHARGE, headers=headers)
        assert charged.status_code == 201
        shown = await client.get(f"/charges/{charged.json()['id']}")
        assert shown.json() == charged.json()
    assert (tmp_path / "payments.db").exists()
