"""Pure ASGI middleware installed by ServiceApp: telemetry, authorization, deadlines."""
