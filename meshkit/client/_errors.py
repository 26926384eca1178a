"""The mesh client's errors: ``MeshError`` and httpx exceptions at once.

The tree is drawn in ``meshkit.errors``. A mesh call failure is an
``httpx.RequestError`` (each kind the ``TransportError`` or ``TimeoutException`` that
means the same), so a handler written for httpx catches it, and ``MeshError`` catches
every failure meshkit raises. They live here, not in the core, because the core
imports no httpx; ``meshkit`` and ``meshkit.client`` re-export them.

httpx's ``client.send`` sets ``request`` on an ``httpx.RequestError`` raised by its transport,
so ``exc.request`` is the request that failed, as with httpx's own errors.
"""

from __future__ import annotations

from meshkit._httpx import HttpxRequestError, TimeoutException, TransportError
from meshkit.errors import MeshError


class MeshCallError(MeshError, HttpxRequestError):
    """A call through the mesh client failed; ``destination`` names the service."""

    def __init__(self, message: str, *, destination: str) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination


class NoHealthyInstances(MeshCallError, TransportError):
    """The registry knows no healthy, non-ejected instance of the destination."""


class CircuitOpen(MeshCallError, TransportError):
    """The destination's circuit breaker is open: calls fail fast."""


class RetryBudgetExhausted(MeshCallError, TransportError):
    """A retry was needed but the destination's retry budget is spent."""


class DeadlineExceeded(MeshCallError, TimeoutException):
    """The call's deadline (its own or the incoming request's) ran out."""


class PeerIdentityMismatch(MeshCallError, TransportError):
    """The server reached did not present the destination's SPIFFE ID."""


class Overloaded(MeshCallError, TransportError):
    """Too many requests to the destination are already pending."""


class UpstreamFailed(MeshCallError, TransportError):
    """The last attempt failed below HTTP (refused, reset, per-try timeout) and no
    further attempt was allowed; ``__cause__`` holds the transport error."""
