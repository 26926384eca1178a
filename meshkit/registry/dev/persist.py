"""``meshkit registry serve --data-dir``: the registry's state survives a restart.

A Consul dev agent keeps nothing; a single-node Consul server with a data directory keeps
its catalog, KV store and CA, and its agent keeps its own services and checks and runs
them again. This does the same with one JSON file, rewritten (to a temporary file, then
renamed into place, so a crash leaves the previous state) after every write that
changed something. The registry is a development tool: every change rewrites the whole
state, which stays small.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshkit.errors import ConfigError
from meshkit.registry.dev.agent import DevAgent
from meshkit.registry.dev.connect_api import ConnectRegistryApp
from meshkit.registry.dev.connect_ca import ConnectCA
from meshkit.registry.dev.decode import CheckDefinition

logger = logging.getLogger("meshkit.registry")

STATE_FILE = "registry-state.json"
FORMAT = 1


@dataclass(frozen=True)
class Saved:
    """What the agent alone cannot hold: the CA and the config entries."""

    ca: ConnectCA
    config_entries: list[dict[str, Any]]


class DataDir:
    """Where one registry keeps its state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path / STATE_FILE

    def load(self, agent: DevAgent) -> Saved | None:
        """Restore ``agent``'s state; the CA and config entries as they were, or None on a
        first start."""
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"--data-dir {self.path}: cannot read {self.file}: {exc}") from exc
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            agent.store.restore(data["store"])
            agent.node_id = str(data["node_id"])
            definitions = {k: CheckDefinition(**v) for k, v in data["definitions"].items()}
            agent.restore_checks(definitions)
            ca = ConnectCA.restored(agent.store.datacenter, data["ca"])
            return Saved(ca, list(data["config_entries"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--data-dir {self.path}: {self.file} is not usable: {exc}") from exc

    def save(self, app: ConnectRegistryApp) -> None:
        agent = app.agent
        data: dict[str, Any] = {
            "format": FORMAT,
            "node_id": agent.node_id,
            "store": agent.store.snapshot(),
            "definitions": {k: asdict(v) for k, v in agent.definitions.items()},
            "ca": app.ca.snapshot(),
            "config_entries": app.config_entries.dump(),
        }
        temporary = self.file.with_name(self.file.name + ".tmp")
        # The file holds the CA's private keys: readable by its owner only.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as handle:
            json.dump(data, handle, separators=(",", ":"))
        temporary.replace(self.file)

    def prepare(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--data-dir {self.path}: {exc.strerror}") from exc
