"""``meshkit registry serve --data-dir``: catalog, KV, CA, config entries and the agent's
checks survive a restart of the real process, as with a single-node Consul server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import consul
import pytest

from meshkit.errors import MeshError
from meshkit.testing import RegistryProcess


def _client(registry: RegistryProcess) -> Any:
    host, _, port = registry.address.rpartition(":")
    return consul.Consul(host=host, port=int(port))


def _status(client: Any, check_id: str) -> str:
    return str(client.agent.checks()[check_id]["Status"])


def test_state_survives_a_restart(tmp_path: Path) -> None:
    with RegistryProcess(data_dir=tmp_path) as registry:
        client = _client(registry)
        check = {"CheckID": "web-ttl", "Name": "ttl", "TTL": "1s", "Status": "passing"}
        client.agent.service.register("web", service_id="web-1", port=80, check=check)
        client.agent.service.register("db", service_id="db-1", port=5432, connect={"Native": True})
        client.kv.put("config/answer", "42")
        sources = [{"Name": "web", "Action": "allow"}]
        assert client.config.set("service-intentions", "db", {"Sources": sources})
        entry = client.config.get("service-intentions", "db")
        roots = client.agent.connect.ca.roots()
        index, _ = client.kv.get("config/answer")
    assert (tmp_path / "registry-state.json").stat().st_mode & 0o777 == 0o600
    with RegistryProcess(data_dir=tmp_path) as registry:
        client = _client(registry)
        assert client.kv.get("config/answer")[1]["Value"] == b"42"
        assert client.kv.get("config/answer")[0] == index  # indexes go on, never back
        assert client.agent.connect.ca.roots() == roots
        assert client.config.get("service-intentions", "db") == entry
        assert client.agent.services()["db-1"]["Connect"] == {"Native": True}
        assert {e["Service"]["ID"] for e in client.health.service("web")[1]} == {"web-1"}
        # The agent runs its restored TTL check again: nobody heartbeats it, so it expires.
        deadline = time.monotonic() + 10
        while _status(client, "web-ttl") != "critical":
            assert time.monotonic() < deadline, "the restored TTL check never ran"
            time.sleep(0.05)
        client.agent.check.ttl_pass("web-ttl")
        assert _status(client, "web-ttl") == "passing"


def test_unreadable_state_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "registry-state.json").write_text("{not json")
    registry = RegistryProcess(data_dir=tmp_path)
    with pytest.raises(MeshError):  # it never serves; its output tells why
        registry.start(timeout=10)
    assert registry.wait(timeout=10) == 1
    assert registry.lines[-1].startswith("meshkit: error: --data-dir ")
    assert "Traceback" not in "\n".join(registry.lines)
