"""``meshkit check`` over a real mesh: a registry, a CA and service processes, healthy
and then broken in the ways an operator meets (a crashed instance, intentions that
shut a service off, a wrong pin, another trust domain, no registry at all)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshkit.ca.store import init_ca
from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import CAProcess, Mesh
from tests.middleware.servers import free_port

pytestmark = pytest.mark.timeout(120)
UPSTREAM = "tests.apps.upstream:app"


def check(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    """``meshkit check --output json ARGS``: its exit code and its document."""
    result = subprocess.run(
        [sys.executable, "-m", "meshkit", "check", "--output", "json", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **env},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def statuses(document: dict[str, Any], group: str) -> list[tuple[str, str]]:
    return [(c["status"], c["message"]) for c in document["checks"] if c["group"] == group]


def failing(document: dict[str, Any]) -> list[str]:
    return [c["message"] for c in document["checks"] if c["status"] == "fail"]


def operator_env(
    mesh: Mesh, directory: Path, authority: LocalAuthority | None = None
) -> dict[str, str]:
    """The environment of an operator holding an identity of the mesh's trust domain."""
    issued = (authority or mesh.authority).issue("operator")
    cert, key, bundle = issued.write(directory / "operator")
    return {
        "CONSUL_HTTP_ADDR": mesh.registry.address,
        "MESHKIT_TRUST_DOMAIN": mesh.authority.trust_domain,
        "MESHKIT_CERT_FILE": str(cert),
        "MESHKIT_KEY_FILE": str(key),
        "MESHKIT_BUNDLE_FILE": str(bundle),
        "MESHKIT_CA_URL": "",
    }


def test_a_healthy_mesh_passes_every_check(mesh: Mesh, tmp_path: Path) -> None:
    mesh.start(UPSTREAM, "upstream", instances=2)
    code, document = check(operator_env(mesh, tmp_path))
    assert code == 0 and document["success"], failing(document)
    assert [s for s, _ in statuses(document, "registry")] == ["ok", "ok"]  # Consul + clock
    identity = statuses(document, "identity")
    assert all(s == "ok" for s, _ in identity) and len(identity) == 3
    upstream = statuses(document, "service upstream")
    assert upstream[0] == ("ok", "2/2 instances passing")
    served = [m for s, m in upstream if "certificate valid for" in m]
    assert len(served) == 2 and all(
        "spiffe://meshkit.local/ns/default/svc/upstream" in m for m in served
    )
    assert sum("answers /healthz 200" in m for _, m in upstream) == 2


def test_the_text_output_is_one_marked_line_per_check(mesh: Mesh, tmp_path: Path) -> None:
    mesh.start(UPSTREAM, "upstream")
    result = subprocess.run(
        [sys.executable, "-m", "meshkit", "check", "upstream"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **operator_env(mesh, tmp_path)},
    )
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert "service upstream" in lines
    assert any(line.startswith("\u221a 1/1 instances passing") for line in lines)
    assert lines[-1] == "Status: every check passed"


def intention(mesh: Mesh, *args: str) -> None:
    """``meshkit intentions ARGS`` against the mesh's registry."""
    subprocess.run(
        [sys.executable, "-m", "meshkit", "intentions", *args],
        check=True,
        env={**os.environ, "CONSUL_HTTP_ADDR": mesh.registry.address},
        timeout=30,
    )


def test_a_crashed_instance_and_a_shut_off_service_fail_with_hints(
    mesh: Mesh, tmp_path: Path
) -> None:
    first, _ = mesh.start(UPSTREAM, "upstream", instances=2)
    mesh.kill(first)  # still registered: the registry has not noticed yet
    intention(mesh, "deny", "*", "upstream")
    code, document = check(operator_env(mesh, tmp_path), "upstream")
    assert code == 1 and not document["success"]
    failures = failing(document)
    assert any(
        first.service in m and "admin port" in m and "does not answer" in m for m in failures
    )
    assert any("no TLS handshake" in m for m in failures)
    assert "intentions deny every caller of upstream" in failures
    denial = next(c for c in document["checks"] if c["message"].startswith("intentions deny"))
    assert denial["hint"] == "meshkit intentions allow SOURCE upstream (or delete the deny rules)"
    # One allowed caller is enough to pass that check.
    intention(mesh, "allow", "web", "upstream")
    _, document = check(operator_env(mesh, tmp_path), "upstream")
    assert "intentions deny every caller of upstream" not in failing(document)


def test_an_identity_of_another_trust_domain_or_near_expiry_is_reported(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.start(UPSTREAM, "upstream")
    env = operator_env(mesh, tmp_path, LocalAuthority("elsewhere.test"))
    code, document = check(env)
    assert code == 1
    assert any("is of trust domain elsewhere.test" in m for m in failing(document))
    # Its chain does not verify against the mesh: the served certificates cannot be read.
    assert any("no TLS handshake" in m for m in failing(document))

    old = mesh.authority.issue(
        "operator",
        ttl=dt.timedelta(hours=1),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=55),
    )
    cert, key, bundle = old.write(tmp_path / "old")
    env.update(
        MESHKIT_CERT_FILE=str(cert), MESHKIT_KEY_FILE=str(key), MESHKIT_BUNDLE_FILE=str(bundle)
    )
    code, document = check(env)
    assert code == 0, failing(document)
    (warning,) = [m for s, m in statuses(document, "identity") if s == "warn"]
    assert "past renewal" in warning


def test_no_registry_is_one_failed_check_not_a_traceback(tmp_path: Path) -> None:
    code, document = check({"CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}", "MESHKIT_CA_URL": ""})
    assert code == 1
    (registry,) = statuses(document, "registry")
    assert registry[0] == "fail" and "does not answer" in registry[1]
    assert not any(c["group"].startswith("service") for c in document["checks"])


def test_the_ca_is_checked_against_its_pin(mesh: Mesh, tmp_path: Path) -> None:
    store = init_ca(tmp_path / "ca", "meshkit.local")
    with CAProcess(store.directory) as ca:
        env = {
            **operator_env(mesh, tmp_path),
            "MESHKIT_CA_URL": ca.url,
            "MESHKIT_CA_FINGERPRINT": store.root_fingerprint,
        }
        code, document = check(env)
        assert code == 0, failing(document)
        assert [s for s, _ in statuses(document, "ca")] == ["ok", "ok"]  # pin + clock
        env["MESHKIT_CA_FINGERPRINT"] = "sha256:" + "0" * 64
        code, document = check(env)
        assert code == 1
        ((status, message),) = statuses(document, "ca")
        assert status == "fail" and "does not hold the pinned root" in message


def test_without_a_local_identity_the_served_certificates_are_still_read(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.start(UPSTREAM, "upstream")
    env = {
        "CONSUL_HTTP_ADDR": mesh.registry.address,
        "MESHKIT_CA_URL": "",
        "MESHKIT_DATA_DIR": str(tmp_path / "empty"),
    }
    code, document = check(env, "upstream")
    assert code == 0, failing(document)
    ((status, message),) = statuses(document, "identity")
    assert status == "skip" and "no local workload identity" in message
    served = [m for _, m in statuses(document, "service upstream") if "certificate valid" in m]
    assert len(served) == 1 and "svc/upstream" in served[0]


def test_a_service_nobody_registered_fails(mesh: Mesh, tmp_path: Path) -> None:
    code, document = check(operator_env(mesh, tmp_path), "nosuch")
    assert code == 1
    assert statuses(document, "service nosuch")[0] == ("fail", "0/0 instances passing")
