"""Raw HTTP to a dev registry (threaded or a real process), for what py-consul, or
requests, would not send: bad escapes, hostile bodies, methods no endpoint serves."""

from __future__ import annotations

import http.client
from typing import Protocol


class Served(Protocol):
    @property
    def address(self) -> str: ...


def raw(registry: Served, method: str, target: str, body: bytes = b"") -> tuple[int, str]:
    """One request as given, on its own connection: the status and the body's text."""
    host, port = registry.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, target, body=body or None)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()
