"""Pure ASGI middleware, installed by ``Mesh`` (so ServiceApp) around every request.

Outermost first: ``telemetry`` (metrics, the SERVER span, the access log: what the
caller experiences, 500s included), ``deadline`` (the caller's budget bounds all
below), ``faults`` (injected delays and errors, only when asked for), ``authz`` (who
may call the route, from the verified peer identity, then the route's ``limits`` and
``idempotency``). Each passes non-HTTP scopes straight through and keeps per-request
state in locals.
"""
