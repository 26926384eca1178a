"""CAIdentity and ``meshkit ca bootstrap`` against real ``meshkit ca serve`` processes."""

from __future__ import annotations

import functools
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from meshkit.ca import client as ca_client
from meshkit.ca.client import CERT_FILE, KEY_FILE, CAIdentity, fetch_bundle
from meshkit.ca.store import CAStore, init_ca
from meshkit.errors import CAError, CertificateError
from meshkit.settings import MeshSettings
from meshkit.testing import CAProcess
from meshkit.tls import TLSContexts, TLSMaterial, server_context
from tests.ca.conftest import make_token
from tests.client.helpers import SilentPeer, raw_server

pytestmark = pytest.mark.anyio


def _settings(ca: CAProcess, store: CAStore, directory: Path, **changes: object) -> MeshSettings:
    return MeshSettings(
        service="web",
        trust_domain=store.trust_domain,
        ca_url=ca.url,
        ca_fingerprint=store.root_fingerprint,
        data_dir=directory,
    ).replace(**changes)


async def test_obtain_stores_0600_and_reuses_after_a_restart(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    settings = _settings(ca_server, ca_store, tmp_path, join_token=make_token(ca_store, "web"))
    material = await CAIdentity(settings).obtain()
    assert material.spiffe_id == settings.spiffe_id
    for name in (CERT_FILE, KEY_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    # A restart: the token is spent, yet the stored certificate is reused.
    restarted = await CAIdentity(settings).obtain()
    assert restarted.chain_pem == material.chain_pem


async def test_a_token_for_another_service_is_not_accepted(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    settings = _settings(ca_server, ca_store, tmp_path, join_token=make_token(ca_store, "other"))
    with pytest.raises(CertificateError, match="another service"):
        await CAIdentity(settings).obtain()


async def test_a_spent_token_is_refused(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    token = make_token(ca_store, "web")
    await CAIdentity(_settings(ca_server, ca_store, tmp_path / "a", join_token=token)).obtain()
    with pytest.raises(CAError, match="already used"):
        await CAIdentity(_settings(ca_server, ca_store, tmp_path / "b", join_token=token)).obtain()


async def test_a_wrong_pin_is_refused(ca_server: CAProcess) -> None:
    with pytest.raises(CAError, match="pinned root"):
        await fetch_bundle(ca_server.url, "sha256:" + "ab" * 32)


async def test_an_unreachable_ca_is_a_ca_error(ca_store: CAStore) -> None:
    with pytest.raises(CAError, match="cannot reach"):
        await fetch_bundle("https://127.0.0.1:9", ca_store.root_fingerprint)


def _server_tls(material: TLSMaterial) -> ssl.SSLContext:
    return server_context(material, require_client_cert=False)


async def test_a_server_of_the_same_ca_but_not_the_ca_gets_no_request(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    # A workload's certificate chains to the CA's root: only its identity gives it away,
    # and it must, before the request (with the current certificate's renewal) is sent.
    settings = _settings(ca_server, ca_store, tmp_path, join_token=make_token(ca_store, "web"))
    material = await CAIdentity(settings).obtain()
    impostor = SilentPeer()
    async with raw_server(impostor.handle, tls=_server_tls(material)) as port:
        url = f"https://127.0.0.1:{port}"
        with pytest.raises(CAError, match="/svc/web, not the CA"):
            await CAIdentity(settings.replace(ca_url=url)).renew(material)
        await anyio.sleep(0.2)  # what was sent, had anything been, has arrived by now
    assert impostor.received == b""


async def test_a_silent_ca_is_a_ca_error_within_the_timeout(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(ca_server, ca_store, tmp_path, join_token=make_token(ca_store, "web"))
    material = await CAIdentity(settings).obtain()
    monkeypatch.setattr(ca_client, "REQUEST_TIMEOUT", 0.5)
    silent = SilentPeer()
    async with raw_server(silent.handle, tls=_server_tls(material)) as port:
        started = time.monotonic()
        with pytest.raises(CAError, match="cannot reach"):
            await fetch_bundle(f"https://127.0.0.1:{port}", ca_store.root_fingerprint)
        assert time.monotonic() - started < 5
    assert silent.received.startswith(b"GET /v1/roots/sha256:")


async def _rotation(contexts: TLSContexts, current: TLSMaterial) -> TLSMaterial:
    rotated = anyio.Event()
    contexts.on_update(lambda _material: rotated.set())
    with anyio.fail_after(20):
        if contexts.material is current:
            await rotated.wait()
    return contexts.material


async def test_keeps_its_certificate_while_the_ca_is_down_and_renews_after_restart(
    tmp_path: Path,
) -> None:
    store = init_ca(tmp_path / "ca", "example.org")
    ca = CAProcess(store.directory, "--leaf-ttl", "10s").start()
    try:
        settings = _settings(ca, store, tmp_path / "web", join_token=make_token(store, "web"))
        identity = CAIdentity(settings)
        material = await identity.obtain()
        contexts = TLSContexts(material)
        expiries: list[float] = []
        ca.stop()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                functools.partial(identity.renew_forever, contexts, on_expiry=expiries.append)
            )
            # Past the latest renewal point (60% of the lifetime), the CA still down.
            await anyio.sleep(material.leaf.renewal_time(0.6) + 0.3 - time.time())
            assert contexts.material is material  # the last good certificate stays in use

            await anyio.to_thread.run_sync(ca.start)  # same port
            renewed = await _rotation(contexts, material)
            assert renewed.spiffe_id == settings.spiffe_id
            assert renewed.leaf.serial_number != material.leaf.serial_number
            assert renewed.not_after > material.not_after
            tasks.cancel_scope.cancel()
        assert expiries[:2] == [material.not_after, renewed.not_after]
    finally:
        ca.stop()


def test_bootstrap_writes_the_pinned_bundle(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    out = tmp_path / "bundle.pem"
    command = [sys.executable, "-m", "meshkit", "ca", "bootstrap", "--url", ca_server.url]
    ok = subprocess.run(
        [*command, "--fingerprint", ca_store.root_fingerprint, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert out.read_text() == ca_store.bundle_pem
    bad = subprocess.run(
        [*command, "--fingerprint", "sha256:" + "00" * 32, "--out", str(tmp_path / "x.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "pinned root" in bad.stderr
    assert not (tmp_path / "x.pem").exists()
