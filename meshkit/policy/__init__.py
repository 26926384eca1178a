"""Policy: who may call an endpoint and how much of it they may use.

``decorators`` attaches policies to handlers (``@allow``, ``@deny``, ``@timeout``,
``@rate_limit``, ``@concurrency``, ``@idempotent``) and compiles them per route;
``intentions`` holds the service-to-service rules kept in the registry (meshkit's or
Consul's), watched at run time; ``idempotency`` the stores ``@idempotent`` keeps its
keys in (memory, SQLite, Consul KV, or yours). Enforcement is ``meshkit.middleware``.
"""

from meshkit.policy.decorators import (
    Allow,
    Concurrency,
    Deny,
    Idempotent,
    RateLimit,
    Timeout,
    allow,
    concurrency,
    deny,
    idempotent,
    policy_manifest,
    rate_limit,
    timeout,
)

__all__ = [
    "Allow",
    "Concurrency",
    "Deny",
    "Idempotent",
    "RateLimit",
    "Timeout",
    "allow",
    "concurrency",
    "deny",
    "idempotent",
    "policy_manifest",
    "rate_limit",
    "timeout",
]
