"""payments: charges, made at most once per Idempotency-Key (SQLite).

``create_plain_app`` is the same service with no mesh at all (plain Starlette, plaintext
HTTP): ``meshkit demo --consul-native`` runs it behind an Envoy sidecar, which does the
mTLS and the authorization (RBAC from Consul's intentions) that ``@allow`` does here.

The first request with a key decides the outcome and stores the answer; a repeat with
the same key and the same body gets the stored answer back (``Idempotent-Replayed:
true``) without charging again; the same key with a different body is refused with
422, as Stripe does. The payment method ``tok_declined`` is always declined (402).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.shop._mesh import allow
from examples.shop.common import JSON_ERROR_HANDLERS, HTTPProblem, json_body, positive_int, text
from examples.shop.db import Database, database_lifespan
from meshkit import MeshSettings, ServiceApp

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'declined')),
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    reference TEXT,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""
DECLINED_METHODS = frozenset({"tok_declined"})
_COLUMNS = "id, status, amount_cents, currency, payment_method, reference, created_at"


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _status_code(charge: dict[str, Any], *, replayed: bool) -> int:
    if charge["status"] == "declined":
        return 402
    return 200 if replayed else 201


def charge_once(
    connection: sqlite3.Connection, key: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any], bool]:
    """(status, charge, replayed) for the charge ``body`` under idempotency ``key``."""
    fingerprint = request_hash(body)
    row = connection.execute(
        f"SELECT request_hash, {_COLUMNS} FROM charges WHERE idempotency_key = ?", (key,)
    ).fetchone()
    if row is not None:
        if row["request_hash"] != fingerprint:
            raise HTTPProblem(422, "Idempotency-Key was used with a different request")
        charge = dict(row)
        del charge["request_hash"]
        return _status_code(charge, replayed=True), charge, True
    method = text(body, "payment_method")
    status = "declined" if method in DECLINED_METHODS else "succeeded"
    charge_id = f"ch_{uuid.uuid4().hex[:16]}"
    connection.execute(
        "INSERT INTO charges (id, idempotency_key, request_hash, status, amount_cents, "
        "currency, payment_method, reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            charge_id,
            key,
            fingerprint,
            status,
            positive_int(body, "amount_cents"),
            text(body, "currency").upper(),
            method,
            body.get("reference"),
        ),
    )
    charge = get_charge(connection, charge_id)
    return _status_code(charge, replayed=False), charge, False


def get_charge(connection: sqlite3.Connection, charge_id: str) -> dict[str, Any]:
    row = connection.execute(
        f"SELECT {_COLUMNS} FROM charges WHERE id = ?", (charge_id,)
    ).fetchone()
    if row is None:
        raise HTTPProblem(404, f"no charge {charge_id!r}")
    return dict(row)


def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


@allow("cart")
async def create_charge(request: Request) -> JSONResponse:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise HTTPProblem(400, "the Idempotency-Key header is required")
    body = await json_body(request)
    status, charge, replayed = await _db(request).write(lambda c: charge_once(c, key, body))
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return JSONResponse(charge, status_code=status, headers=headers)


@allow("cart")
async def show_charge(request: Request) -> JSONResponse:
    charge_id = request.path_params["id"]
    return JSONResponse(await _db(request).read(lambda c: get_charge(c, charge_id)))


ROUTES = [
    Route("/charges", create_charge, methods=["POST"]),
    Route("/charges/{id}", show_charge),
]


def create_app(*, settings: MeshSettings | None = None, database: Path | None = None) -> ServiceApp:
    return ServiceApp(
        service="payments",
        settings=settings,
        routes=ROUTES,
        exception_handlers=JSON_ERROR_HANDLERS,
        lifespan=database_lifespan("payments", schema=SCHEMA, path=database),
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_plain_app(*, database: Path | None = None) -> Starlette:
    """payments outside the mesh: no identity, no policy, no telemetry (its sidecar's job).
    ``@allow`` only marks the routes, so the same handlers serve; ``/healthz`` is for
    whoever starts it (a sidecar has no admin port of the app's to ask)."""
    return Starlette(
        routes=[*ROUTES, Route("/healthz", healthz)],
        exception_handlers=JSON_ERROR_HANDLERS,
        lifespan=database_lifespan("payments", schema=SCHEMA, path=database),
    )


app = create_app()
