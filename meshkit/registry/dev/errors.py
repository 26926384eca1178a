"""The errors the dev registry's request handlers raise, and how each reaches the client.

``DecodeError`` (a body or parameter Consul cannot decode) becomes a 400 with Consul's
"Request decode failed: ..." text; ``AgentError`` carries Consul's status and its exact
plain-text reason. Where Consul itself answers a client's own mistake with a 500 (its
catalog RPC refusals, an unparsable ``?cas``, an unknown ``?dc``), the dev registry keeps
Consul's text and answers 400: client input never gets a 5xx here.
"""

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
    """A refusal Consul's server RPCs return for bad input (Consul answers those 500;
    the text is Consul's, the status says whose mistake it was)."""
    return AgentError(400, reason)


def is_any_address(address: str) -> bool:
    """0.0.0.0 or :: — Consul refuses them as a service address."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False
