"""The one exception tree of meshkit.

    MeshError
    ├── ConfigError                 invalid settings (names the variable or argument)
    ├── IdentityError               a malformed SPIFFE ID, or a peer without one
    ├── CertificateError            unusable certificate, key or trust bundle
    ├── CAError                     the CA refused or could not be reached
    │   └── CARefused               the CA refused a request; ``reason`` says why
    ├── RegistryError
    │   └── RegistryUnavailable     the registry did not answer
    ├── PolicyDenied                an authorization policy refused the caller
    └── MeshCallError           also httpx.RequestError: a mesh call failed (``destination``)
        ├── NoHealthyInstances      httpx.TransportError    no healthy instance known
        ├── CircuitOpen             httpx.TransportError    the breaker is open: fail fast
        ├── RetryBudgetExhausted    httpx.TransportError    a retry was due, the budget spent
        ├── DeadlineExceeded        httpx.TimeoutException  the call's deadline ran out
        ├── PeerIdentityMismatch    httpx.TransportError    the server had the wrong identity
        ├── Overloaded              httpx.TransportError    too many calls already pending
        └── UpstreamFailed          httpx.TransportError    the last attempt failed below HTTP

Each call error is also the httpx exception beside it, so code written for httpx
(``except httpx.TransportError``, ``except httpx.TimeoutException``) catches mesh
failures too; no meshkit name is an httpx name.
The call errors are defined in ``meshkit.client._errors`` (re-exported by ``meshkit``
and ``meshkit.client``), not here: this module is the core, which imports no httpx
(.importlinter), and httpx is imported by ``meshkit._httpx`` alone.

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


class CARefused(CAError):
    """The CA refused a request; ``reason`` is a short code (audit log, metrics, API)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryError(MeshError):
    """The service registry refused a request."""


class RegistryUnavailable(RegistryError):
    """The service registry could not be reached."""


class PolicyDenied(MeshError):
    """An authorization policy refused the caller."""
