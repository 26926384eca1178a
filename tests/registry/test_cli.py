from __future__ import annotations

import anyio
import pytest

from meshkit.cli import main
from meshkit.registry.consul import ConsulRegistry, check_ids
from tests.registry.conftest import ThreadedRegistry, instance


def _register(registry: ThreadedRegistry) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    anyio.run(consul_registry.register, instance(number=1))
    anyio.run(consul_registry.register, instance(number=2, version="1.3.0"))
    registry.client().agent.check.ttl_fail(check_ids("payments-2")[0], "stuck")


def test_services_lists_healthy_and_total(
    registry: ThreadedRegistry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(registry)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", registry.address)
    assert main(["services"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SERVICE", "HEALTHY", "TOTAL"]
    assert ["payments", "1", "2"] in [line.split() for line in lines]


def test_services_name_lists_instances(
    registry: ThreadedRegistry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(registry)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://{registry.address}")
    assert main(["services", "payments"]) == 0
    out = capsys.readouterr().out
    header, first, second = out.splitlines()
    assert header.split()[:4] == ["INSTANCE", "ADDRESS", "VERSION", "STATUS"]
    assert first.split()[:4] == ["payments-1", "127.0.0.1:8001", "1.2.0", "passing"]
    assert second.split()[:4] == ["payments-2", "127.0.0.1:8002", "1.3.0", "critical"]
    assert "meshkit heartbeat=critical" in second


def test_unknown_service_is_one_line_and_exit_1(
    registry: ThreadedRegistry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", registry.address)
    assert main(["services", "nothing"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no instances of 'nothing'" in err


def test_unreachable_registry_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:9")
    assert main(["services"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        "meshkit: error: consul at http://127.0.0.1:9 (CONSUL_HTTP_ADDR) is unreachable"
    )
