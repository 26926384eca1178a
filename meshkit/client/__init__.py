"""The resilient mesh client: httpx transports that wrap each other.

``MeshClientFactory(source, tls, settings).client("payments")`` is an
``httpx.AsyncClient`` for ``http://payments``: discovery, P2C balancing, per-try and
call timeouts bounded by the incoming deadline, safe retries under a budget, outlier
ejection, a circuit breaker, and mTLS checked against the destination's SPIFFE ID.
"""

from meshkit.client._client import MeshClient, MeshClientFactory
from meshkit.client._hooks import (
    AttemptEnded,
    AttemptStarted,
    BaseClientHooks,
    BreakerChanged,
    CallEnded,
    CallStarted,
    ClientHooks,
    EndpointBusy,
    EndpointEjected,
    EndpointReadmitted,
    HedgeStarted,
    MirrorEnded,
    RetryBudgetSpent,
    RetryScheduled,
)
from meshkit.client._policy import ClientPolicy

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "BaseClientHooks",
    "BreakerChanged",
    "CallEnded",
    "CallStarted",
    "ClientHooks",
    "ClientPolicy",
    "EndpointBusy",
    "EndpointEjected",
    "EndpointReadmitted",
    "HedgeStarted",
    "MeshClient",
    "MeshClientFactory",
    "MirrorEnded",
    "RetryBudgetSpent",
    "RetryScheduled",
]
