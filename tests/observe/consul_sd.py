"""Prometheus's Consul service discovery, done by the test where Prometheus cannot.

Debian's Prometheus is built without Consul SD ("Disable Consul SD until its Debian
package is back in shape"), so where `promtool check config` refuses consul_sd_configs
the test does that one step itself, asking the registry what Prometheus's
discovery/consul/consul.go asks (agent/self for the datacenter, the catalog, then each
service's health entries, all of them, stale reads, blocking) and labelling targets
as it does; Prometheus then relabels and scrapes them for real (file_sd_configs).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def supports_consul_sd(config: Path) -> bool:
    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, timeout=30
    )
    return result.returncode == 0


def consul_get(registry: str, path: str, **params: str) -> tuple[Any, dict[str, str]]:
    """GET ``path`` of the registry as Consul's Go API does; the body and the headers."""
    url = f"http://{registry}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response), {k.lower(): v for k, v in response.headers.items()}


def consul_sd_groups(registry: str) -> list[dict[str, Any]]:
    """The target groups Prometheus's Consul SD makes of the registry's answers."""
    agent, _ = consul_get(registry, "/v1/agent/self")
    datacenter = agent["Config"]["Datacenter"]
    services, headers = consul_get(registry, "/v1/catalog/services", stale="")
    index = int(headers["x-consul-index"])  # the Go API refuses an answer without it
    # The catalog's blocking query answers at once when the index is behind: a faithful
    # registry never makes a watcher wait on a list it has not seen.
    consul_get(registry, "/v1/catalog/services", stale="", index=str(index - 1), wait="120000ms")
    return [_group(registry, name, datacenter) for name in sorted(services)]


def _group(registry: str, name: str, datacenter: str) -> dict[str, Any]:
    entries, headers = consul_get(registry, f"/v1/health/service/{name}", stale="")
    index = headers["x-consul-index"]
    # Prometheus then watches with a blocking query at that index: without a change it
    # must wait, then answer with the same index.
    began = time.monotonic()
    again, headers = consul_get(
        registry, f"/v1/health/service/{name}", stale="", index=index, wait="300ms"
    )
    if headers["x-consul-index"] == index:  # else a health check ran meanwhile: a change
        assert again == entries
        assert time.monotonic() - began >= 0.25, "a blocking query answered before its wait"
    return {
        "targets": [_address(entry) for entry in entries],
        "labels": {"__meta_consul_service": name, "__meta_consul_dc": datacenter},
        "entries": entries,
    }


def _address(entry: dict[str, Any]) -> str:
    service, node = entry["Service"], entry["Node"]
    host = service["Address"] or node["Address"]
    return f"[{host}]:{service['Port']}" if ":" in host else f"{host}:{service['Port']}"


def file_sd_targets(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd's JSON: one group per instance, with consul.go's ``__meta_consul_*`` labels."""
    targets = []
    for group in groups:
        for address, entry in zip(group["targets"], group["entries"], strict=True):
            service, node = entry["Service"], entry["Node"]
            labels = {
                **group["labels"],
                "__meta_consul_address": node["Address"],
                "__meta_consul_node": node["Node"],
                "__meta_consul_tags": "," + ",".join(service["Tags"] or []) + ",",
                "__meta_consul_service_address": service["Address"],
                "__meta_consul_service_port": str(service["Port"]),
                "__meta_consul_service_id": service["ID"],
                "__meta_consul_health": _aggregated(entry["Checks"]),
            }
            for key, value in (service.get("Meta") or {}).items():
                labels[f"__meta_consul_service_metadata_{_sanitized(key)}"] = value
            targets.append({"targets": [address], "labels": labels})
    return targets


def _aggregated(checks: list[dict[str, Any]]) -> str:
    statuses = {check["Status"] for check in checks}
    for status in ("maintenance", "critical", "warning"):
        if status in statuses:
            return status
    return "passing"


def _sanitized(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def with_file_sd(config: str, targets_file: Path) -> str:
    """``config`` with its consul_sd_configs block replaced by a file_sd_configs one."""
    lines = config.splitlines()
    start = lines.index("    consul_sd_configs:")
    end = start + 1
    while lines[end].startswith("      "):
        end += 1
    block = ["    file_sd_configs:", f"      - files: [{json.dumps(str(targets_file))}]"]
    return "\n".join([*lines[:start], *block, *lines[end:]]) + "\n"
