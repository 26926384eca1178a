"""The one error the dev registry's request handlers raise."""

from __future__ import annotations

import ipaddress


class DecodeError(ValueError):
    """A body or value Consul's decoder refuses; the message is Go's error text."""


class AgentError(Exception):
    """A request Consul would refuse: ``status`` and Consul's plain-text ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def bad_request(reason: str) -> AgentError:
    return AgentError(400, reason)


def rpc_error(reason: str) -> AgentError:
    """Errors Consul's catalog RPCs return: the HTTP layer answers them with a 500."""
    return AgentError(500, reason)


def is_any_address(address: str) -> bool:
    """0.0.0.0 or :: — Consul refuses them as a service address."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False
