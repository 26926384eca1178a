from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar, Token
from typing import Any

def encode_span(span: Any) -> bytes | None: ...
def configure(
    unset_status: object,
    span_kinds: tuple[object, ...],
    status_codes: tuple[object, ...],
    bounded_list_type: type,
    default_trace_state: object,
    mesh_span_type: type,
) -> None: ...

class ObservedSend:
    status: int
    sent: int
    def __init__(self, send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None: ...
    def __call__(self, message: MutableMapping[str, Any]) -> Awaitable[None]: ...

class HistogramObserver:
    def __init__(
        self,
        by_key: dict[tuple[object, ...], list[float]],
        bounds: tuple[float, ...],
        add_series: Callable[[tuple[object, ...]], list[float]],
    ) -> None: ...
    def __call__(self, key: tuple[object, ...], value: float) -> None: ...

def enter_span(
    var: ContextVar[Any], context_type: type[Any], key: str, span: Any
) -> Token[Any]: ...
