"""The CA client every ServiceApp uses: bootstrap trust, enroll, store, renew forever.

Trust starts from one pin, the root's SHA-256 fingerprint (``MESHKIT_CA_FINGERPRINT``):
the root is fetched over an unauthenticated connection and accepted only if it hashes
to the pin; every later request verifies the CA server's chain against it and checks
the server holds the CA's SPIFFE ID. The private key is generated on this machine, by
``python -m meshkit.ca.keygen`` (the service itself never loads cryptography: it reads
certificates with the ssl module), and never sent.

HTTP is a few requests per certificate lifetime, so each is one httpx request on a
fresh connection (through meshkit/_httpx.py): no pool, no dependency on the mesh
client. Its errors become ``CAError`` here, at one boundary.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio

from meshkit._httpx import (
    AsyncClient,
    HTTPError,
    InvalidURL,
    PeerCheck,
    PeerGate,
    Response,
    Timeout,
)
from meshkit._statedir import write_private
from meshkit.ca import CA_NAMESPACE, CA_SERVICE
from meshkit.errors import CAError, CARefused, CertificateError, ConfigError, MeshError
from meshkit.identity import SpiffeId, identity_from_peercert
from meshkit.settings import MeshSettings
from meshkit.tls import (
    TLSContexts,
    TLSMaterial,
    client_context,
    decode_ca_certificate,
    pem_certificates,
    pem_fingerprint,
)

logger = logging.getLogger("meshkit.ca.client")
_MAX_RESPONSE = 1024 * 1024
REQUEST_TIMEOUT = 10.0  # seconds for one whole exchange: connect, TLS, request, answer
CERT_FILE = "svid.pem"
KEY_FILE = "svid-key.pem"
BUNDLE_FILE = "bundle.pem"


def ca_identity(trust_domain: str) -> SpiffeId:
    return SpiffeId.for_service(trust_domain, CA_NAMESPACE, CA_SERVICE)


def normalize_fingerprint(pin: str) -> str:
    """``sha256:<64 hex>`` in lower case (colons between bytes tolerated)."""
    digest = pin.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"CA fingerprint must be sha256:<64 hex digits>, got {pin!r}")
    return "sha256:" + digest


def _fingerprints(pem_text: str) -> list[str]:
    """The pin form of each certificate in a PEM text, in order; none if it is not PEM."""
    try:
        return [pem_fingerprint(pem) for pem in pem_certificates(pem_text)]
    except CertificateError:
        return []


def _ca_trust_domain(anchor_pem: str) -> str:
    """The trust domain a meshkit CA certificate names in its ``spiffe://<td>`` URI SAN."""
    decoded = decode_ca_certificate(anchor_pem)
    for kind, uri in decoded.get("subjectAltName", ()):
        if kind == "URI" and uri.startswith("spiffe://") and "/" not in uri[len("spiffe://") :]:
            return str(uri[len("spiffe://") :])
    raise CertificateError("CA certificate names no spiffe:// trust domain")


KeyAndCSR = tuple[str, str]
"""A private key and a certificate signing request for it, PEM."""


async def new_key_and_csr(named: SpiffeId | None) -> KeyAndCSR:
    """A new private key and its CSR (PEM), from ``python -m meshkit.ca.keygen``."""
    argv = [sys.executable, "-m", "meshkit.ca.keygen", *([str(named)] if named else [])]
    try:
        done = await anyio.run_process(argv, check=False)
        answer = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot make a key with {' '.join(argv[1:])}: {exc}") from exc
    if not isinstance(answer, dict):
        error = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise CertificateError(f"{' '.join(argv[1:])} failed: {''.join(error)}")
    return str(answer["key"]), str(answer["csr"])


def _trusting(bundle_pem: str) -> ssl.SSLContext:
    # Hostnames prove nothing in the mesh: the CA is recognised by its SPIFFE ID.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=bundle_pem)
    return context


def _unverified() -> ssl.SSLContext:
    # Only to fetch the root a pin names; what comes back is checked by its hash.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch_bundle(url: str, pin: str) -> str:
    """The CA's trust bundle, authenticated by the pinned root; refused if it lacks it."""
    pin = normalize_fingerprint(pin)
    status, body = await _exchange(url, "GET", f"/v1/roots/{pin}", _unverified())
    roots = body.decode(errors="replace") if status == 200 else ""
    if _fingerprints(roots)[:1] != [pin]:
        raise CAError(
            f"the CA at {url} does not hold the pinned root {pin} (MESHKIT_CA_FINGERPRINT: "
            "the fingerprint `meshkit ca init` printed)"
        )
    anchor_pem = pem_certificates(roots)[0]
    expected = ca_identity(_ca_trust_domain(anchor_pem))
    status, body = await _exchange(
        url, "GET", "/v1/bundle", _trusting(anchor_pem), expect_peer=expected
    )
    if status != 200:
        raise CAError(f"the CA at {url} answered {status} for its bundle")
    bundle = body.decode()
    if pin not in _fingerprints(bundle):
        raise CAError(f"the trust bundle from {url} lacks the pinned root {pin}; refusing it")
    return bundle


class CAIdentity:
    """A workload's certificate from the meshkit CA, kept in ``settings.state_dir``."""

    def __init__(self, settings: MeshSettings) -> None:
        if not settings.ca_url or not settings.ca_fingerprint:
            raise ConfigError("CAIdentity needs ca_url and ca_fingerprint")
        self.settings = settings
        self.url = settings.ca_url
        self.pin = normalize_fingerprint(settings.ca_fingerprint)
        self.directory = settings.state_dir
        self._ca_id = ca_identity(settings.trust_domain)

    async def obtain(self) -> TLSMaterial:
        """The stored certificate while it is valid, else a new one from the CA."""
        stored = self.load_stored()
        if stored is not None:
            logger.info("reusing stored certificate for %s", stored.spiffe_id)
            return stored
        return await self.enroll()

    def load_stored(self) -> TLSMaterial | None:
        paths = [self.directory / name for name in (CERT_FILE, KEY_FILE, BUNDLE_FILE)]
        if not all(path.exists() for path in paths):
            return None
        try:
            material = TLSMaterial.from_files(*paths)
            self._check(material)
        except CertificateError as exc:
            logger.warning("stored certificate not reused: %s", exc)
            return None
        if material.not_after <= time.time():
            return None
        if self.pin not in _fingerprints(material.bundle_pem):
            return None  # pinned to another CA since it was stored
        return material

    async def enroll(self) -> TLSMaterial:
        """A new key and certificate, authorized by the join token (or a dev-mode CA)."""
        bundle = await fetch_bundle(self.url, self.pin)
        token = self.settings.join_token
        # Without a token only a CA in --dev mode signs, for the ID the CSR names.
        named = None if token else self.settings.spiffe_id
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return await self._request_certificate("/v1/sign", _trusting(bundle), named, headers)

    async def renew(self, current: TLSMaterial, keys: KeyAndCSR | None = None) -> TLSMaterial:
        """A new certificate for the same identity, over mTLS with ``current``, for
        ``keys`` (made in advance) or a new key."""
        if current.not_after <= time.time():
            raise CAError("the certificate has expired: it cannot renew; a new token is needed")
        context = client_context(current)
        return await self._request_certificate("/v1/renew", context, None, {}, keys)

    async def renew_forever(
        self,
        contexts: TLSContexts,
        *,
        on_expiry: Callable[[float], None] | None = None,
    ) -> None:
        """Renew at 50% of each lifetime (±10% jitter) and swap it into ``contexts``.

        While the CA is unreachable the current certificate stays in use and renewal
        retries with jittered, capped backoff. ``on_expiry`` gets each notAfter (Unix
        time), for the ``meshkit_cert_expiry_timestamp_seconds`` gauge.
        """
        while True:
            material = contexts.material
            if on_expiry is not None:
                on_expiry(material.not_after)
            fraction = random.uniform(0.4, 0.6)
            # The next key is made now, so that renewing is one exchange with the CA
            # (the key generator is a process start away).
            keys = await self._next_keys()
            await anyio.sleep(max(0.0, material.leaf.renewal_time(fraction) - time.time()))
            contexts.update(await self._renew_until_done(material, keys))

    async def _next_keys(self) -> KeyAndCSR | None:
        try:
            return await new_key_and_csr(None)
        except CertificateError as exc:
            logger.warning("no key made ahead of renewal (tried again then): %s", exc)
            return None

    async def _renew_until_done(self, material: TLSMaterial, keys: KeyAndCSR | None) -> TLSMaterial:
        attempt = 0
        while True:
            try:
                if material.not_after <= time.time() and self.settings.join_token:
                    return await self.enroll()  # a multi-use token can re-enroll
                return await self.renew(material, keys)
            except MeshError as exc:
                delay = _backoff(attempt, material)
                logger.warning(
                    "certificate renewal failed (%s); serving with the current one "
                    "(expires %s), retrying in %.1fs",
                    exc,
                    dt.datetime.fromtimestamp(material.not_after, dt.UTC).isoformat(),
                    delay,
                )
                await anyio.sleep(delay)
                attempt += 1

    async def _request_certificate(
        self,
        path: str,
        context: ssl.SSLContext,
        named: SpiffeId | None,
        headers: Mapping[str, str],
        keys: KeyAndCSR | None = None,
    ) -> TLSMaterial:
        key_pem, csr = keys or await new_key_and_csr(named)
        body = json.dumps({"csr": csr}).encode()
        status, answer = await _exchange(
            self.url,
            "POST",
            path,
            context,
            body=body,
            headers={"content-type": "application/json", **headers},
            expect_peer=self._ca_id,
        )
        document = _json(status, answer)
        material = TLSMaterial("".join(document["chain"]), key_pem, document["bundle"])
        self._check(material)
        self._store(material)
        logger.info(
            "certificate for %s issued, expires %s", material.spiffe_id, document["expires_at"]
        )
        return material

    def _check(self, material: TLSMaterial) -> None:
        material.validate()
        if material.spiffe_id != self.settings.spiffe_id:
            raise CertificateError(
                f"the CA issued {material.spiffe_id}, but this service is "
                f"{self.settings.spiffe_id}: was MESHKIT_JOIN_TOKEN made for another service, "
                "or do MESHKIT_SERVICE / MESHKIT_NAMESPACE differ from it?"
            )

    def _store(self, material: TLSMaterial) -> None:
        # Key first: a crash between the writes leaves a pair load_stored rejects.
        write_private(self.directory / KEY_FILE, material.key_pem)
        write_private(self.directory / CERT_FILE, material.chain_pem)
        write_private(self.directory / BUNDLE_FILE, material.bundle_pem)


def _backoff(attempt: int, material: TLSMaterial) -> float:
    # Capped at a tenth of the lifetime so short-lived certificates retry often enough.
    leaf = material.leaf
    lifetime = leaf.not_after - leaf.renewal_time(0.0)
    cap = max(0.2, min(30.0, lifetime / 10))
    return min(cap, 0.2 * 2.0**attempt) * random.uniform(0.5, 1.0)


def _json(status: int, body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise CAError(f"the CA answered {status} without a JSON body")
    if status != 200:
        reason = str(document.get("reason", status))
        hint = " (MESHKIT_JOIN_TOKEN)" if reason.startswith("token") else ""
        raise CARefused(f"the CA refused: {document.get('error', status)}{hint}", reason=reason)
    if not isinstance(document.get("chain"), list) or not isinstance(document.get("bundle"), str):
        raise CAError("the CA's answer lacks chain or bundle")
    return document


async def _exchange(
    url: str,
    method: str,
    target: str,
    context: ssl.SSLContext,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    expect_peer: SpiffeId | None = None,
) -> tuple[int, bytes]:
    """One HTTPS request on a fresh connection: (status, body).

    With ``expect_peer`` the server's identity is checked after the handshake, before
    the request (which may carry a join token) leaves this process.
    """
    origin = _origin(url)
    gate = PeerGate(_peer_is(expect_peer, url)) if expect_peer is not None else None
    try:
        with anyio.fail_after(REQUEST_TIMEOUT):
            async with (
                _client(context) as client,
                client.stream(
                    method,
                    origin + target,
                    content=body,
                    headers=headers,
                    extensions=gate.extensions if gate is not None else None,
                ) as response,
            ):
                answer = await _read_bounded(response)
        if gate is not None:
            gate.verify_ran()
    except (HTTPError, InvalidURL, OSError, TimeoutError) as exc:
        raise CAError(
            f"cannot reach the CA at {url} (MESHKIT_CA_URL): {exc or type(exc).__name__}"
        ) from exc
    return response.status_code, answer


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"CA URL must be https://host[:port], got {url!r}")
    return f"https://{parts.netloc}"


def _client(context: ssl.SSLContext) -> AsyncClient:
    # No proxies or netrc from the environment: trust comes from the pin and the bundle.
    # Bodies are read raw, never decompressed (a bootstrap answer is read before it is
    # authenticated, and inflating it would defeat the size limit): ask for them plain.
    return AsyncClient(
        verify=context,
        trust_env=False,
        timeout=Timeout(REQUEST_TIMEOUT),
        headers={"accept-encoding": "identity", "user-agent": "meshkit-ca-client"},
    )


def _hint(peer: SpiffeId | None) -> str:
    """What to fix when the CA is a CA of another trust domain (the usual mistake)."""
    if peer is None or peer != ca_identity(peer.trust_domain):
        return ""
    return f": if that is your CA, set MESHKIT_TRUST_DOMAIN={peer.trust_domain}"


def _peer_is(expected: SpiffeId, url: str) -> PeerCheck:
    def check(decoded: dict[str, Any] | None) -> None:
        peer = identity_from_peercert(decoded)
        if peer != expected:
            raise CAError(f"the server at {url} is {peer}, not the CA ({expected}){_hint(peer)}")

    return check


async def _read_bounded(response: Response) -> bytes:
    """The body as sent (never decoded), refused past ``_MAX_RESPONSE`` bytes."""
    received = bytearray()
    async for chunk in response.aiter_raw():
        received += chunk
        if len(received) > _MAX_RESPONSE:
            raise CAError("the CA's answer is too large")
    return bytes(received)
