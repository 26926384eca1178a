"""Telemetry: what the mesh measures and traces, in the conventions its users query.

``metrics`` holds the Prometheus instruments (OpenTelemetry HTTP semantic conventions
in Prometheus form, plus ``meshkit_*`` internals), in a registry injected per app;
``propagation`` speaks W3C Trace Context and Baggage on the wire (``tracecontext``
holds the specification's parsing rules as pure functions); ``client`` turns the
resilient client's hooks into metrics and spans; ``export`` sends spans over OTLP;
``sdk`` sets the OpenTelemetry SDK up from ``OTEL_*`` for ``meshkit run`` (the
middleware and the client use only the API). ``_otel_sdk`` is the one module that
touches OpenTelemetry's private names, checked at import with the stock path as its
fallback.
"""
