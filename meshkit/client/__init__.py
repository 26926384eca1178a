"""The resilient mesh client: httpx transports that wrap each other.

``OutsideClient`` calls URLs outside the mesh with the same telemetry.

``MeshClientFactory(source, tls, settings).client("payments")`` is an
``httpx.AsyncClient`` for ``http://payments``: discovery, P2C balancing, per-try and
call timeouts bounded by the incoming deadline, safe retries under a budget, outlier
ejection, a circuit breaker, and mTLS checked against the destination's SPIFFE ID.
"""

from meshkit.client._client import MeshClient, MeshClientFactory, expected_identity
from meshkit.client._errors import (
    CircuitOpen,
    DeadlineExceeded,
    MeshCallError,
    NoHealthyInstances,
    Overloaded,
    PeerIdentityMismatch,
    RetryBudgetExhausted,
    UpstreamFailed,
)
from meshkit.client._hooks import (
    AttemptEnded,
    AttemptStarted,
    BaseClientHooks,
    BreakerChanged,
    CallEnded,
    CallRecorder,
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
from meshkit.client._outside import OutsideClient
from meshkit.client._policy import ClientPolicy

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "BaseClientHooks",
    "BreakerChanged",
    "CallEnded",
    "CallRecorder",
    "CallStarted",
    "CircuitOpen",
    "ClientHooks",
    "ClientPolicy",
    "DeadlineExceeded",
    "EndpointBusy",
    "EndpointEjected",
    "EndpointReadmitted",
    "HedgeStarted",
    "MeshCallError",
    "MeshClient",
    "MeshClientFactory",
    "MirrorEnded",
    "NoHealthyInstances",
    "OutsideClient",
    "Overloaded",
    "PeerIdentityMismatch",
    "RetryBudgetExhausted",
    "RetryBudgetSpent",
    "RetryScheduled",
    "UpstreamFailed",
    "expected_identity",
]
