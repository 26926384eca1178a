"""The shop's services served for real: ``meshkit run`` in subprocesses, strict mTLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import Connection, ServiceProcess, context_for

pytestmark = pytest.mark.timeout(60)


def test_two_inventory_instances_share_one_database(
    authority: LocalAuthority, tmp_path: Path, registry_env: dict[str, str]
) -> None:
    env = {"SHOP_DATA_DIR": str(tmp_path / "data"), "MESHKIT_DEREGISTER_DELAY": "0"}
    env.update(registry_env)
    identity = authority.issue("inventory")
    first = ServiceProcess(
        "examples.shop.inventory:app",
        service="inventory",
        identity=identity,
        identity_dir=tmp_path / "a",
        env=env,
    )
    second = ServiceProcess(
        "examples.shop.inventory:app",
        service="inventory",
        identity=identity,
        identity_dir=tmp_path / "b",
        env=env,
    )
    cart = context_for(authority.issue("cart"), authority.bundle_pem)
    payments = context_for(authority.issue("payments"), authority.bundle_pem)
    with first, second:
        for instance in (first, second):
            connection = Connection(instance.port, cart)
            status, body = connection.get("/products/tea-sencha")
            connection.close()
            assert (status, body["stock"]) == (200, 100_000)
        denied = Connection(first.port, payments)
        assert denied.get("/products")[0] == 403
        denied.close()
    assert (tmp_path / "data" / "inventory.db").exists()
