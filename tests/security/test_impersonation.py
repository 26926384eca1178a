"""Whom a caller trusts comes from the name it calls, never from the registry.

A workload with a valid certificate for another namespace registers under a name it
does not own, its registry entry vouching for its own SPIFFE ID (issue #15's finding):
the caller refuses it after the handshake, before sending a byte, and counts it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meshkit.ca.x509 import LocalAuthority
from meshkit.client import MeshClientFactory, PeerIdentityMismatch
from meshkit.errors import ConfigError
from meshkit.registry import ConsulRegistry, WatchedCache
from meshkit.settings import MeshSettings
from meshkit.telemetry.client import ClientTelemetry
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.testing import RegistryProcess, ServiceProcess
from tests.client.helpers import StaticSource, contexts

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_a_workload_of_another_namespace_cannot_answer_for_a_name(
    authority: LocalAuthority, dev_registry: RegistryProcess, tmp_path: Path
) -> None:
    with ServiceProcess(
        "tests.apps.echo:app",
        service="svcw",
        identity=authority.issue("svcw", namespace="other"),
        identity_dir=tmp_path,
        registry=dev_registry.address,
        env={"MESHKIT_NAMESPACE": "other"},
    ):
        metrics = MeshMetrics(CollectorRegistry())
        settings = MeshSettings(service="web", consul_http_addr=dev_registry.address)
        async with WatchedCache(ConsulRegistry.from_settings(settings)) as cache:
            mesh = MeshClientFactory(
                cache, contexts(authority, "web"), settings, hooks=ClientTelemetry(metrics)
            )
            try:
                # The registry says svcw is at that address, as ns/other/svc/svcw: the
                # caller meant ns/default/svc/svcw, and the certificate says otherwise.
                with pytest.raises(PeerIdentityMismatch, match="ns/other/svc/svcw"):
                    await mesh.client("svcw").get("/whoami")
                # Named with its namespace, the same workload is who the caller meant.
                response = await mesh.client("svcw.other").get("/whoami")
                assert response.status_code == 200
                assert response.json()["caller"] == "spiffe://meshkit.local/ns/default/svc/web"
            finally:
                await mesh.aclose()
    exposed = generate_latest(metrics.registry).decode()
    refused = [
        line
        for line in exposed.splitlines()
        if line.startswith("meshkit_client_attempts_total")
        and 'destination_service="svcw"' in line
        and "PeerIdentityMismatch" in line
    ]
    assert refused and refused[0].endswith(" 1.0")


async def test_a_destination_must_be_a_name_or_a_name_and_namespace(
    authority: LocalAuthority,
) -> None:
    settings = MeshSettings(service="web", consul_http_addr=None)
    mesh = MeshClientFactory(StaticSource(), contexts(authority, "web"), settings)
    for bad in ("Payments", "a.b.c", "pay ments", ".x", "x."):
        with pytest.raises(ConfigError, match="destination"):
            mesh.client(bad)
