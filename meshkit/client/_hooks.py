"""Instrumentation hooks: a Protocol the client calls with small immutable events.

Telemetry (metrics, spans, trace-context injection) implements ``ClientHooks``; the
client itself knows nothing about OpenTelemetry or Prometheus. What an ``on_*_start``
hook returns comes back in the matching end event as ``state`` (a span, a timer), so
hooks need no bookkeeping of their own. ``AttemptStarted.headers`` is where a hook
adds headers to one attempt (``traceparent``). With no hooks installed the client
builds no events at all.

The client reports a call and its attempts through a ``CallRecorder``: the four
hooks every call runs, with the events' fields as arguments. ``EventRecorder`` builds
the events for any ``ClientHooks``; a hooks object may offer a recorder of its own
(``call_recorder()``, as ``ClientTelemetry`` does), then none are built.

The events are typed ``NamedTuple``s rather than frozen dataclasses: four are built on
every call with hooks installed, and a frozen dataclass pays a generic
``object.__setattr__`` per field where a tuple is filled in one step.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol

from meshkit._httpx import URL
from meshkit.registry.base import Endpoint

BreakerState = Literal["closed", "open", "half-open"]


class CallStarted(NamedTuple):
    destination: str
    method: str
    path: str
    subset: str = ""  # the resolver subset the discovery chain sent the call to ("": none)


class CallEnded(NamedTuple):
    destination: str
    method: str
    path: str
    status: int | None  # None when the call raised
    duration: float
    attempts: int
    error: BaseException | None
    state: object  # what on_call_start returned
    subset: str = ""


class AttemptStarted(NamedTuple):
    destination: str
    method: str
    attempt: int  # 1-based
    endpoint: Endpoint | None  # None for a pass-through call to a non-mesh URL
    headers: list[tuple[str, str]]  # append headers to send with this attempt


class AttemptEnded(NamedTuple):
    destination: str
    method: str
    attempt: int
    endpoint: Endpoint | None
    status: int | None
    duration: float
    error: BaseException | None
    state: object  # what on_attempt_start returned
    subset: str = ""  # the call's


class RetryScheduled(NamedTuple):
    destination: str
    method: str
    attempt: int  # the attempt that failed
    delay: float
    reason: str  # "connect", "status 503", "timeout", ...


class RetryBudgetSpent(NamedTuple):
    destination: str
    method: str
    reason: str


class EndpointEjected(NamedTuple):
    destination: str
    endpoint: Endpoint
    duration: float
    ejections: int


class EndpointReadmitted(NamedTuple):
    destination: str
    endpoint: Endpoint


class BreakerChanged(NamedTuple):
    destination: str
    old: BreakerState
    new: BreakerState


class HedgeStarted(NamedTuple):
    destination: str
    method: str
    delay: float  # how long the first attempt had gone unanswered


class EndpointBusy(NamedTuple):
    destination: str
    endpoint: Endpoint
    status: int  # 429, or 503 with a Retry-After
    duration: float  # seconds the endpoint is chosen less


class MirrorEnded(NamedTuple):
    destination: str  # the call's destination
    mirror: str  # where the copy went
    method: str
    status: int | None  # None when the copy failed or was dropped
    dropped: bool  # too many copies in flight: not sent
    error: BaseException | None


class ClientHooks(Protocol):
    """What the mesh client reports. Called on the request path: keep them cheap, and
    never raise (an exception from a hook fails the call it reports on)."""

    def on_call_start(self, event: CallStarted) -> object: ...
    def on_call_end(self, event: CallEnded) -> None: ...
    def on_attempt_start(self, event: AttemptStarted) -> object: ...
    def on_attempt_end(self, event: AttemptEnded) -> None: ...
    def on_retry_scheduled(self, event: RetryScheduled) -> None: ...
    def on_retry_budget_spent(self, event: RetryBudgetSpent) -> None: ...
    def on_endpoint_ejected(self, event: EndpointEjected) -> None: ...
    def on_endpoint_readmitted(self, event: EndpointReadmitted) -> None: ...
    def on_breaker_changed(self, event: BreakerChanged) -> None: ...
    def on_hedge_started(self, event: HedgeStarted) -> None: ...
    def on_endpoint_busy(self, event: EndpointBusy) -> None: ...
    def on_mirror_ended(self, event: MirrorEnded) -> None: ...


class BaseClientHooks:
    """Hooks that do nothing: subclass and override the ones you need."""

    def on_call_start(self, event: CallStarted) -> object:
        return None

    def on_call_end(self, event: CallEnded) -> None:
        pass

    def on_attempt_start(self, event: AttemptStarted) -> object:
        return None

    def on_attempt_end(self, event: AttemptEnded) -> None:
        pass

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        pass

    def on_retry_budget_spent(self, event: RetryBudgetSpent) -> None:
        pass

    def on_endpoint_ejected(self, event: EndpointEjected) -> None:
        pass

    def on_endpoint_readmitted(self, event: EndpointReadmitted) -> None:
        pass

    def on_breaker_changed(self, event: BreakerChanged) -> None:
        pass

    def on_hedge_started(self, event: HedgeStarted) -> None:
        pass

    def on_endpoint_busy(self, event: EndpointBusy) -> None:
        pass

    def on_mirror_ended(self, event: MirrorEnded) -> None:
        pass


class CallRecorder(Protocol):
    """``on_call_start``, ``on_call_end``, ``on_attempt_start`` and ``on_attempt_end``
    with their events' fields as arguments. What a start method returns comes back to
    the matching end method (and a call's, to its attempts' start), so each field is
    passed once: the call's destination, method, URL (its path is the events'
    ``path``) and subset to ``call_started``; an attempt's number and endpoint to
    ``attempt_started``, which may append to ``headers`` (sent with that attempt)."""

    def call_started(self, destination: str, method: str, url: URL, subset: str) -> object: ...

    def call_ended(
        self,
        state: Any,  # what call_started returned (each recorder types its own)
        status: int | None,
        duration: float,
        attempts: int,
        error: BaseException | None,
    ) -> None: ...

    def attempt_started(
        self,
        call_state: Any,
        attempt: int,
        endpoint: Endpoint | None,
        headers: list[tuple[str, str]],
    ) -> object: ...

    def attempt_ended(
        self, state: Any, status: int | None, duration: float, error: BaseException | None
    ) -> None: ...


class EventRecorder:
    """The ``CallRecorder`` of any ``ClientHooks``: it builds the events."""

    def __init__(self, hooks: ClientHooks) -> None:
        self._hooks = hooks

    def call_started(
        self, destination: str, method: str, url: URL, subset: str
    ) -> tuple[object, CallStarted]:
        event = CallStarted(destination, method, url.path, subset)
        return self._hooks.on_call_start(event), event

    def call_ended(
        self,
        state: tuple[object, CallStarted],
        status: int | None,
        duration: float,
        attempts: int,
        error: BaseException | None,
    ) -> None:
        hook_state, (destination, method, path, subset) = state
        self._hooks.on_call_end(
            CallEnded(
                destination, method, path, status, duration, attempts, error, hook_state, subset
            )
        )

    def attempt_started(
        self,
        call_state: tuple[object, CallStarted],
        attempt: int,
        endpoint: Endpoint | None,
        headers: list[tuple[str, str]],
    ) -> tuple[object, AttemptStarted, str]:
        call = call_state[1]
        event = AttemptStarted(call.destination, call.method, attempt, endpoint, headers)
        return self._hooks.on_attempt_start(event), event, call.subset

    def attempt_ended(
        self,
        state: tuple[object, AttemptStarted, str],
        status: int | None,
        duration: float,
        error: BaseException | None,
    ) -> None:
        hook_state, (destination, method, attempt, endpoint, _), subset = state
        self._hooks.on_attempt_end(
            AttemptEnded(
                destination, method, attempt, endpoint, status, duration, error, hook_state, subset
            )
        )


def recorder_for(hooks: ClientHooks | None) -> CallRecorder | None:
    """How the client reports calls to ``hooks``: their own recorder if they offer one
    (``call_recorder()`` returning it, or None), else one that builds the events."""
    if hooks is None:
        return None
    offer = getattr(hooks, "call_recorder", None)
    recorder: CallRecorder | None = offer() if offer is not None else None
    return recorder if recorder is not None else EventRecorder(hooks)
