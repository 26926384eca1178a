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
