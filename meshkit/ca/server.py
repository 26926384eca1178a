"""The CA's HTTPS API (``meshkit ca serve``), served by uvicorn.

    POST /v1/sign          {"csr": PEM} + ``Authorization: Bearer <join token>``
    POST /v1/renew         {"csr": PEM} over mutual TLS with the caller's current SVID
    GET  /v1/bundle        the trust bundle (PEM; may hold several roots)
    GET  /v1/roots/<sha256> one root by fingerprint (how a client bootstraps its pin)
    GET  /healthz, /metrics

Errors are JSON ``{"error": message, "reason": code}``: 400 malformed, 401 no or unknown
credential, 403 refused credential or identity, 413 body too large, 429 after
too many failed authentications from one address (with Retry-After), 500 an issued
certificate failed its own checks. Signing is inline and short; what a slow or
hostile client can hold is bounded by the connection policy (``CA_LIMITS``). A join
token is checked before any signature is.
Client certificates are optional at the TLS layer (only /v1/renew needs one) and, when
sent, verified against the bundle during the handshake.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from cryptography import x509
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshkit.ca.audit import AuditLog
from meshkit.ca.authority import Authority, Issued
from meshkit.ca.guard import FailedAuthLimiter
from meshkit.ca.store import CAStore
from meshkit.ca.tokens import TokenStore
from meshkit.ca.x509 import (
    LEAF_TTL,
    certificate_pem,
    fingerprint,
    load_certificates,
    new_private_key,
    private_key_pem,
    public_key_sha256,
)
from meshkit.errors import CAError, CARefused
from meshkit.identity import SpiffeId
from meshkit.serving.listen import listen
from meshkit.serving.server import Server
from meshkit.settings import ConnectionLimits
from meshkit.tls import TLSContexts, TLSMaterial

logger = logging.getLogger("meshkit.ca")
#: A CSR and a token fit in a few KiB; nothing the CA is sent is larger.
#: Connections are capped so that what they may hold (bodies up to 64 KiB, heads up to
#: 16 KiB) stays within ~80 MiB; signing itself is inline and takes ~0.2 ms.
CA_LIMITS = ConnectionLimits(
    max_body_bytes=64 * 1024, max_header_bytes=16 * 1024, max_connections=1024
)
MAX_BODY = 64 * 1024
_STATUS = {
    "malformed_request": 400,
    "malformed_csr": 400,
    "bad_signature": 400,
    "unsupported_key": 400,
    "csr_missing_identity": 400,
    "token_missing": 401,
    "token_invalid": 401,
    "client_cert_missing": 401,
    "token_expired": 403,
    "token_used": 403,
    "csr_requests_identity": 403,
    "wrong_trust_domain": 403,
    "reserved_identity": 403,
    "cert_expired": 403,
    "cert_invalid": 403,
    "body_too_large": 413,
    "rate_limited": 429,
    "issuance_failed": 500,
}
#: Refusals that mean "you did not prove who you are": counted against the source.
_AUTHENTICATION_FAILURES = frozenset(
    {
        "token_missing",
        "token_invalid",
        "token_expired",
        "token_used",
        "client_cert_missing",
        "cert_expired",
        "cert_invalid",
    }
)
DEV_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! meshkit CA in DEV MODE: it signs ANY identity a CSR names, WITHOUT a token. !!
!! Anyone who can reach this port can impersonate any service. Local demos only.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"""


class _CAMetrics:
    def __init__(self, registry: CollectorRegistry, authority: Authority, root: x509.Certificate):
        self.issuances = Counter(
            "meshkit_ca_issuances", "Certificates issued", ["method"], registry=registry
        )
        self.refusals = Counter(
            "meshkit_ca_refusals", "Requests refused", ["method", "reason"], registry=registry
        )
        self.latency = Histogram(
            "meshkit_ca_request_duration_seconds",
            "Time to answer a signing request",
            ["method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        expiry = Gauge(
            "meshkit_ca_expiry_timestamp_seconds",
            "When each CA certificate expires (Unix time)",
            ["ca"],
            registry=registry,
        )
        expiry.labels("root").set(root.not_valid_after_utc.timestamp())
        expiry.labels("intermediate").set(authority.not_after.timestamp())


@dataclass
class _Attempt:
    """What one signing request has established so far, for its audit line."""

    method: str
    peer: str | None
    spiffe_id: SpiffeId | None = None
    public_key_sha256: str | None = None


def _error(status: int, message: str, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status, headers=headers or None)


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise CARefused(f"request body over {limit} bytes", reason="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise CARefused(f"request body over {limit} bytes", reason="body_too_large")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise CARefused(f"body is not JSON: {exc}", reason="malformed_request") from exc
    if not isinstance(document, dict) or not isinstance(document.get("csr"), str):
        raise CARefused('body must be {"csr": "<PEM>"}', reason="malformed_request")
    return document


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _client_certificate(request: Request) -> x509.Certificate | None:
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain")
    return x509.load_pem_x509_certificate(chain[0].encode()) if chain else None


class CAService:
    """The API's handlers over one authority; per-request state stays in locals."""

    def __init__(
        self,
        authority: Authority,
        *,
        bundle_pem: str,
        tokens: TokenStore | None,
        audit: AuditLog,
        registry: CollectorRegistry,
        dev: bool = False,
        max_body: int = MAX_BODY,
        guard: FailedAuthLimiter | None = None,
    ) -> None:
        self.authority = authority
        self.bundle_pem = bundle_pem
        self.roots = {fingerprint(root): root for root in load_certificates(bundle_pem)}
        self.tokens = tokens
        self.audit = audit
        self.registry = registry
        self.dev = dev
        self.max_body = max_body
        self.metrics = _CAMetrics(registry, authority, next(iter(self.roots.values())))
        self.guard = guard or FailedAuthLimiter()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/sign", self.sign, methods=["POST"]),
                Route("/v1/renew", self.renew, methods=["POST"]),
                Route("/v1/bundle", self.bundle, methods=["GET"]),
                Route("/v1/roots/{digest}", self.root, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/metrics", self.prometheus, methods=["GET"]),
            ]
        )

    async def sign(self, request: Request) -> Response:
        return await self._answer(request, "sign", self._sign)

    async def renew(self, request: Request) -> Response:
        return await self._answer(request, "renew", self._renew)

    async def bundle(self, request: Request) -> Response:
        return Response(self.bundle_pem, media_type="application/x-pem-file")

    async def root(self, request: Request) -> Response:
        digest = request.path_params["digest"].lower().removeprefix("sha256:")
        root = self.roots.get("sha256:" + digest)
        if root is None:
            return _error(404, "no root with that SHA-256 fingerprint", "unknown_root")
        return Response(certificate_pem(root), media_type="application/x-pem-file")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def _answer(
        self,
        request: Request,
        method: str,
        issue: Callable[[Request, str, _Attempt], Issued],
    ) -> Response:
        started = time.perf_counter()
        attempt = _Attempt(method, request.client.host if request.client else None)
        source = attempt.peer or "?"
        wait = self.guard.retry_after(source)
        if wait:
            return self._limited(attempt, source, wait)
        try:
            # Read before it counts as in flight: a client slow to send its body holds
            # a connection (bounded by the connection policy), never a signing slot.
            document = await _read_json(request, self.max_body)
        except CARefused as exc:
            return self._refused(attempt, exc)
        try:
            # Signing is CPU-bound and short (~0.2 ms): done inline, not in a thread.
            issued = issue(request, document["csr"], attempt)
        except CARefused as exc:
            if exc.reason in _AUTHENTICATION_FAILURES:
                self.guard.failed(source)
            return self._refused(attempt, exc)
        except CAError as exc:
            logger.error("issuance failed its own checks: %s", exc)
            return self._refused(attempt, CARefused(str(exc), reason="issuance_failed"))
        finally:
            self.metrics.latency.labels(method).observe(time.perf_counter() - started)
        self.metrics.issuances.labels(attempt.method).inc()
        self._audit(attempt, "issued", issued=issued)
        return JSONResponse({**issued.as_json(), "bundle": self.bundle_pem})

    def _sign(self, request: Request, csr: str, attempt: _Attempt) -> Issued:
        token = _bearer(request)
        if token is None:
            return self._sign_dev(csr, attempt)
        if self.tokens is None:
            raise CARefused("this CA accepts no join tokens", reason="token_invalid")
        # The token is authenticated before any signature work (an anonymous request
        # costs a hash and a lookup), and spent only once the CSR is found valid.
        attempt.spiffe_id = self.tokens.check(token)
        signing_request = self.authority.parse_csr(csr)
        attempt.public_key_sha256 = public_key_sha256(signing_request.public_key)
        attempt.spiffe_id = self.tokens.consume(token)
        return self.authority.issue(signing_request, attempt.spiffe_id)

    def _sign_dev(self, csr: str, attempt: _Attempt) -> Issued:
        if not self.dev:
            raise CARefused(
                "a join token is required (Authorization: Bearer)", reason="token_missing"
            )
        attempt.method = "dev"
        signing_request = self.authority.parse_csr(csr, allow_identity=True)
        attempt.public_key_sha256 = public_key_sha256(signing_request.public_key)
        attempt.spiffe_id = signing_request.requested_id
        if attempt.spiffe_id is None:
            raise CARefused(
                "dev mode without a token: the CSR must name its SPIFFE ID in a URI SAN",
                reason="csr_missing_identity",
            )
        return self.authority.issue(signing_request, attempt.spiffe_id)

    def _renew(self, request: Request, csr: str, attempt: _Attempt) -> Issued:
        current = _client_certificate(request)
        if current is None:
            raise CARefused(
                "renewal needs the current certificate over mutual TLS",
                reason="client_cert_missing",
            )
        # Checked again here, not just at the handshake: a keep-alive connection can
        # outlive the certificate it was opened with.
        attempt.spiffe_id = self.authority.verify_svid(current)
        signing_request = self.authority.parse_csr(csr)
        attempt.public_key_sha256 = public_key_sha256(signing_request.public_key)
        return self.authority.issue(signing_request, attempt.spiffe_id)

    def _limited(self, attempt: _Attempt, source: str, wait: float) -> JSONResponse:
        """429 to a source that failed to authenticate too often; audited in bulk."""
        self.metrics.refusals.labels(attempt.method, "rate_limited").inc()
        count = self.guard.limited(source)
        if count is not None:
            self._audit(attempt, "refused", reason="rate_limited", count=count)
        retry_after = str(math.ceil(wait))
        return _error(
            429,
            "too many failed authentications from this address",
            "rate_limited",
            **{"Retry-After": retry_after},
        )

    def _refused(self, attempt: _Attempt, exc: CARefused) -> JSONResponse:
        self.metrics.refusals.labels(attempt.method, exc.reason).inc()
        self._audit(attempt, "refused", reason=exc.reason)
        return _error(_STATUS.get(exc.reason, 400), str(exc), exc.reason)

    def _audit(
        self,
        attempt: _Attempt,
        result: str,
        *,
        issued: Issued | None = None,
        reason: str | None = None,
        count: int | None = None,
    ) -> None:
        extra = {} if count is None else {"count": count}
        self.audit.record(
            result=result,
            reason=reason,
            **extra,
            method=attempt.method,
            peer=attempt.peer,
            spiffe_id=str(attempt.spiffe_id) if attempt.spiffe_id else None,
            public_key_sha256=attempt.public_key_sha256,
            serial=issued.serial if issued else None,
            not_after=issued.not_after.isoformat() if issued else None,
        )


def server_material(authority: Authority, bundle_pem: str) -> TLSMaterial:
    """A fresh key and certificate for the CA's own HTTPS server."""
    key = new_private_key()
    issued = authority.issue_server_certificate(key.public_key())
    return TLSMaterial("".join(issued.chain_pem), private_key_pem(key), bundle_pem)


async def _rotate_server_certificate(
    authority: Authority, bundle_pem: str, contexts: TLSContexts
) -> None:
    while True:
        await anyio.sleep(max(0.0, contexts.material.leaf.renewal_time() - time.time()))
        contexts.update(server_material(authority, bundle_pem))


async def serve(
    store: CAStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    dev: bool = False,
    leaf_ttl: dt.timedelta = LEAF_TTL,
    max_connections: int = CA_LIMITS.max_connections,
    on_listening: Callable[[str, int], None] | None = None,
) -> None:
    """Serve the CA API until SIGINT/SIGTERM; ``on_listening(host, port)`` once bound."""
    authority = Authority.from_store(store, leaf_ttl=leaf_ttl)
    contexts = TLSContexts(server_material(authority, store.bundle_pem), require_client_cert=False)
    tokens = TokenStore(store.tokens_path)
    audit = AuditLog(store.audit_path)
    service = CAService(
        authority,
        bundle_pem=store.bundle_pem,
        tokens=tokens,
        audit=audit,
        registry=CollectorRegistry(auto_describe=True),
        dev=dev,
    )
    server = Server(
        service.app(),
        name="ca",
        limits=CA_LIMITS.replace(max_connections=max_connections),
        mode="tls",
        tls=lambda: contexts.listening_context,
        lifespan="off",
    )
    server.hold_within_descriptors()
    sock = listen(host, port)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_rotate_server_certificate, authority, store.bundle_pem, contexts)
            if on_listening is not None:
                on_listening(*sock.getsockname()[:2])
            await server.serve(sockets=[sock])
            tasks.cancel_scope.cancel()
    finally:
        sock.close()
        tokens.close()
        audit.close()
