"""The one exception tree of meshkit.

    MeshError
    ├── ConfigError                 invalid settings (names the variable or argument)
    ├── IdentityError               a malformed SPIFFE ID, or a peer without one
    ├── CertificateError            unusable certificate, key or trust bundle
    ├── CAError                     the CA refused or could not be reached
    ├── RegistryError
    │   └── RegistryUnavailable     the registry did not answer
    ├── PolicyDenied                an authorization policy refused the caller
    └── RequestError                a mesh call failed; names the destination
        ├── NoHealthyInstances
        ├── CircuitOpen
        ├── RetryBudgetExhausted
        ├── DeadlineExceeded
        ├── PeerIdentityMismatch    the server did not hold the expected identity
        ├── Overloaded              the per-destination pending limit was reached
        └── UpstreamFailed          every attempt failed to connect, or lost the connection

Lower-level errors (httpx, py-consul, cryptography, ssl) are translated into these
at one boundary per subsystem, with ``raise ... from exc``.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error meshkit raises on purpose."""


class ConfigError(MeshError):
    """A setting is invalid; the message names it and says what is wrong."""


class IdentityError(MeshError):
    """A SPIFFE ID is malformed, or a certificate carries no usable identity."""


class CertificateError(MeshError):
    """A certificate, private key or trust bundle cannot be used."""


class CAError(MeshError):
    """The certificate authority refused a request or could not be reached."""


class RegistryError(MeshError):
    """The service registry refused a request."""


class RegistryUnavailable(RegistryError):
    """The service registry could not be reached."""


class PolicyDenied(MeshError):
    """An authorization policy refused the caller."""


class RequestError(MeshError):
    """A call through the mesh client failed; ``destination`` names the service."""

    def __init__(self, message: str, *, destination: str) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination


class NoHealthyInstances(RequestError):
    """The registry knows no healthy, non-ejected instance of the destination."""


class CircuitOpen(RequestError):
    """The destination's circuit breaker is open: calls fail fast."""


class RetryBudgetExhausted(RequestError):
    """A retry was needed but the destination's retry budget is spent."""


class DeadlineExceeded(RequestError):
    """The call's deadline (its own or the incoming request's) ran out."""


class PeerIdentityMismatch(RequestError):
    """The server reached did not present the destination's SPIFFE ID."""


class Overloaded(RequestError):
    """Too many requests to the destination are already pending."""


class UpstreamFailed(RequestError):
    """The last attempt failed below HTTP (refused, reset, per-try timeout) and no
    further attempt was allowed; ``__cause__`` holds the transport error."""
