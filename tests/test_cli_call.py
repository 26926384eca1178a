"""``meshkit cert issue`` and ``meshkit call`` as a user runs them: real processes (a CA
server, a dev registry, a service with a CA-issued identity) and the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.ca.store import CAStore, init_ca
from meshkit.ca.tokens import TokenStore
from meshkit.identity import SpiffeId
from meshkit.testing import CAProcess, RegistryProcess, ServiceProcess
from meshkit.tls import TLSMaterial

TRUST_DOMAIN = "example.org"  # not the default: nothing may assume meshkit.local


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> CAStore:
    return init_ca(tmp_path_factory.mktemp("ca") / "ca", TRUST_DOMAIN)


def token_for(store: CAStore, service: str) -> str:
    tokens = TokenStore(store.tokens_path)
    try:
        spiffe_id = SpiffeId.for_service(store.trust_domain, "default", service)
        return tokens.create(spiffe_id, ttl=60, uses=1)
    finally:
        tokens.close()


@pytest.fixture(scope="module")
def plane(store: CAStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A CA server, a dev registry and ``echo`` serving with a certificate from that CA:
    the variables a user exports to reach them."""
    home = tmp_path_factory.mktemp("echo")
    with CAProcess(store.directory) as ca, RegistryProcess() as registry:
        env = {
            "MESHKIT_CA_URL": ca.url,
            "MESHKIT_CA_FINGERPRINT": store.root_fingerprint,
            "CONSUL_HTTP_ADDR": registry.address,
        }
        echo = ServiceProcess(
            "tests.apps.echo:app",
            service="echo",
            registry=registry.address,
            env={
                **env,
                "MESHKIT_TRUST_DOMAIN": TRUST_DOMAIN,
                "MESHKIT_JOIN_TOKEN": token_for(store, "echo"),
                "MESHKIT_DATA_DIR": str(home),
                "MESHKIT_DEREGISTER_DELAY": "0",
            },
        )
        with echo:
            yield env


def meshkit(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MESHKIT_", "CONSUL_"))}
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args],
        env={**environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cert_issue_with_a_token_from_the_ca_dir_then_call_with_it(
    store: CAStore, plane: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "alice"
    issued = meshkit(
        "cert", "issue", "--service", "alice", "--ca-dir", str(store.directory),
        "--out", str(out), env=plane, cwd=tmp_path,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    assert f"MESHKIT_CERT_FILE={out / 'svid.pem'}" in issued.stdout.splitlines()
    material = TLSMaterial.from_files(out / "svid.pem", out / "svid-key.pem", out / "bundle.pem")
    assert str(material.spiffe_id) == "spiffe://example.org/ns/default/svc/alice"
    assert oct((out / "svid-key.pem").stat().st_mode & 0o777) == "0o600"

    called = meshkit("call", "echo", "/whoami", "--cert-dir", str(out), env=plane, cwd=tmp_path)
    assert called.returncode == 0, called.stderr
    lines = called.stdout.splitlines()
    assert lines[0].startswith("peer: spiffe://example.org/ns/default/svc/echo (verified by mTLS)")
    assert lines[1] == "HTTP/1.1 200 OK"
    assert "content-type: application/json" in lines
    assert '"caller":"spiffe://example.org/ns/default/svc/alice"' in lines[-1]


def test_call_as_a_name_with_a_given_token_posts_data_and_headers(
    store: CAStore, plane: dict[str, str], tmp_path: Path
) -> None:
    env = {**plane, "MESHKIT_TRUST_DOMAIN": TRUST_DOMAIN}
    (tmp_path / "body").write_bytes(b"x" * 1000)
    called = meshkit(
        "call", "echo", "/upload", "--as", "bob", "--token", token_for(store, "bob"),
        "-d", "@body", "-H", "X-Trace: yes", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    assert called.stdout.splitlines()[-1] == '{"received":1000}'


def test_a_status_of_400_or_more_is_printed_and_exits_1(
    store: CAStore, plane: dict[str, str], tmp_path: Path
) -> None:
    ca_dir = str(store.directory)
    called = meshkit("call", "echo", "/nowhere", "--ca-dir", ca_dir, env=plane, cwd=tmp_path)
    assert called.returncode == 1
    assert "HTTP/1.1 404 Not Found" in called.stdout.splitlines()


@pytest.mark.parametrize(
    ("args", "env_names", "message"),
    [
        (["call", "nothing", "/", "--ca-dir", "{ca}"], "all", "nothing: no healthy instance"),
        (["cert", "issue", "--service", "x", "--out", "x"], (), "no CA: set MESHKIT_CA_URL"),
        (["call", "echo", "/", "--token", "bogus"], "all", "the CA refused"),
        (["call", "echo", "/", "--cert-dir", "missing"], "all", "missing/svid.pem"),
        (["call", "echo", "/", "-H", "nocolon", "--ca-dir", "{ca}"], "all", "expected 'Name:"),
    ],
)
def test_mistakes_are_one_line(
    store: CAStore,
    plane: dict[str, str],
    tmp_path: Path,
    args: list[str],
    env_names: object,
    message: str,
) -> None:
    env = plane if env_names == "all" else {}
    argv = [arg.replace("{ca}", str(store.directory)) for arg in args]
    failed = meshkit(*argv, env={**env, "MESHKIT_TRUST_DOMAIN": TRUST_DOMAIN}, cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith("meshkit: error: ")
    assert message in failed.stderr
