"""Path C's sidecars: two Envoys configured the way Istio wires a sidecar pair.

The configuration is ``meshkit.testing.envoy``'s (the one the Envoy interop tests and
``meshkit demo --consul-native`` run): mTLS with the SAN check outbound, RBAC on the
caller's SPIFFE ID inbound, HTTP/1.1 upstream like Istio without h2 upgrade. Not
included (so C is a lower bound of Istio's cost): Istio's stats and metadata-exchange
filters, tracing. Here each Envoy is owned by the bench's ExitStack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshkit.testing.envoy import RunningEnvoy, client_sidecar_config, server_sidecar_config
from meshkit.testing.envoy import SidecarFiles as Identity
from meshkit.testing.envoy import start_envoy as start_envoy_process
from meshkit.testing.supervisor import Child

__all__ = [
    "Identity",
    "RunningEnvoy",
    "client_sidecar_config",
    "server_sidecar_config",
    "start_envoy",
]


def start_envoy(
    stack: contextlib.ExitStack, name: str, config: dict[str, Any], workdir: Path
) -> RunningEnvoy:
    """``meshkit.testing.envoy.start_envoy``, stopped by ``stack``; output in ``name.log``."""

    def start(child_name: str, argv: Sequence[str]) -> Child:
        log = stack.enter_context((workdir / f"{child_name}.log").open("w+b"))
        child = Child.spawn(child_name, argv, output=log)
        stack.callback(child.stop)
        return child

    return start_envoy_process(start, name, config, workdir)
