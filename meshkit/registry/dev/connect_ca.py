"""The dev registry's Connect CA: Consul's built-in provider, on meshkit's x509 code.

What Consul's leader keeps (agent/consul/leader_connect_ca.go, structs.IndexedCARoots,
structs.CAConfiguration) and what its agents hand out (agent/leafcert): a trust domain
``<cluster-id>.consul``; roots, one active; leaf certificates for services, signed by
the active root, with the URI ``spiffe://<td>/ns/<ns>/dc/<dc>/svc/<svc>``, renewed at a
random point between 60% and 90% of their life, or at once when the active root changes.

A new root (``PUT /v1/connect/ca/configuration`` with another ``PrivateKey``, and its
``RootCert`` or none: then one is made for the key) is cross-signed by the old root's
key, and the cross-signed certificate travels in the new root's ``IntermediateCerts`` and
in every new leaf's ``CertPEM``: a peer that still trusts only the old root verifies new
leaves, and one that already trusts both verifies old ones. The old root stays in the
roots list, inactive, until twice the leaf TTL has passed (Consul prunes likewise).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshkit.ca.x509 import (
    LocalAuthority,
    PrivateKey,
    build_ca_certificate,
    certificate_pem,
    load_private_key,
    new_private_key,
    private_key_pem,
    utcnow,
)
from meshkit.errors import CertificateError
from meshkit.identity import SpiffeId
from meshkit.registry.dev.durations import SECOND, format_duration, parse_duration
from meshkit.registry.dev.errors import AgentError, DecodeError, bad_request

ROOT_TTL = dt.timedelta(days=3650)
#: structs.DefaultLeafCertTTL and the bounds CommonCAProviderConfig.Validate enforces
#: unless ``SkipValidate`` is set (tests use it for short-lived leaves, as Consul's do).
DEFAULT_LEAF_TTL = "72h"
MIN_LEAF_TTL = dt.timedelta(hours=1)
MAX_LEAF_TTL = dt.timedelta(days=365)
#: agent/leafcert: renewal at a random point in this span of the leaf's life.
RENEW_BETWEEN = (0.6, 0.9)
DEFAULT_NAMESPACE = "default"
ROOTS_TOPIC = "connect-ca-roots"


def leaf_topic(service: str) -> str:
    return f"connect-ca-leaf:{service}"


def colon_hex(raw: bytes) -> str:
    """Consul's form of serial numbers and key IDs: ``0f:a2:...``."""
    return ":".join(f"{byte:02x}" for byte in raw)


def _serial_hex(serial: int) -> str:
    return colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Root:
    """One CA root (structs.CARoot) and its key; the key never leaves this module."""

    id: str
    name: str
    serial: int
    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    intermediates: list[str] = field(default_factory=list)
    active: bool = True
    rotated_out_at: dt.datetime | None = None
    create_index: int = 0
    modify_index: int = 0

    @property
    def pem(self) -> str:
        return certificate_pem(self.cert)

    def to_json(self, trust_domain: str) -> dict[str, Any]:
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return {
            "ID": self.id,
            "Name": self.name,
            "SerialNumber": self.serial,
            "SigningKeyID": colon_hex(ski.digest),
            "ExternalTrustDomain": trust_domain.removesuffix(".consul"),
            "NotBefore": _rfc3339(self.cert.not_valid_before_utc),
            "NotAfter": _rfc3339(self.cert.not_valid_after_utc),
            "RootCert": self.pem,
            "IntermediateCerts": self.intermediates or None,
            "Active": self.active,
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Leaf:
    """A service's current leaf (structs.IssuedCert) and when the agent renews it."""

    service: str
    uri: str
    serial: int
    cert_pem: str
    key_pem: str = field(repr=False)
    valid_after: dt.datetime
    valid_before: dt.datetime
    renew_at: dt.datetime
    root_id: str
    index: int

    def to_json(self) -> dict[str, Any]:
        return {
            "SerialNumber": _serial_hex(self.serial),
            "CertPEM": self.cert_pem,
            "PrivateKeyPEM": self.key_pem,
            "Service": self.service,
            "ServiceURI": self.uri,
            "ValidAfter": _rfc3339(self.valid_after),
            "ValidBefore": _rfc3339(self.valid_before),
            "CreateIndex": self.index,
            "ModifyIndex": self.index,
        }


class ConnectCA:
    """Roots, CA configuration and the leaves handed out, for one datacenter.

    ``next_index`` gives the raft index a change commits at (the store's); the caller
    touches the returned topics and commits, so blocking readers wake.
    """

    def __init__(self, datacenter: str, *, cluster_id: str | None = None) -> None:
        self.datacenter = datacenter
        self.cluster_id = cluster_id or str(uuid.uuid4())
        self.trust_domain = f"{self.cluster_id}.consul"
        self.roots: list[Root] = []
        self.leaves: dict[str, Leaf] = {}
        self.config: dict[str, Any] = {
            "LeafCertTTL": DEFAULT_LEAF_TTL,
            "IntermediateCertTTL": "8760h",
            "RotationPeriod": "2160h",
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
        }
        self.config_index = 0
        self._serial = 0

    # -- state kept across restarts (--data-dir) -------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a restart must keep: the cluster ID, roots with their keys, the config.
        Leaves are not kept: an agent issues new ones after a restart too."""
        return {
            "cluster_id": self.cluster_id,
            "serial": self._serial,
            "config": self.config,
            "config_index": self.config_index,
            "roots": [
                {
                    "id": root.id,
                    "name": root.name,
                    "serial": root.serial,
                    "cert": root.pem,
                    "key": private_key_pem(root.key),
                    "intermediates": root.intermediates,
                    "active": root.active,
                    "rotated_out_at": root.rotated_out_at.isoformat()
                    if root.rotated_out_at
                    else None,
                    "create_index": root.create_index,
                    "modify_index": root.modify_index,
                }
                for root in self.roots
            ],
        }

    @classmethod
    def restored(cls, datacenter: str, data: dict[str, Any]) -> ConnectCA:
        ca = cls(datacenter, cluster_id=str(data["cluster_id"]))
        ca._serial = int(data["serial"])
        ca.config, ca.config_index = dict(data["config"]), int(data["config_index"])
        for raw in data["roots"]:
            rotated = raw["rotated_out_at"]
            ca.roots.append(
                Root(
                    id=raw["id"],
                    name=raw["name"],
                    serial=raw["serial"],
                    cert=x509.load_pem_x509_certificate(raw["cert"].encode()),
                    key=load_private_key(raw["key"]),
                    intermediates=list(raw["intermediates"]),
                    active=raw["active"],
                    rotated_out_at=dt.datetime.fromisoformat(rotated) if rotated else None,
                    create_index=raw["create_index"],
                    modify_index=raw["modify_index"],
                )
            )
        return ca

    # -- roots -------------------------------------------------------------------------

    @property
    def active_root(self) -> Root:
        return next(root for root in self.roots if root.active)

    def bootstrap(self, index: int) -> None:
        """The first root, as a new cluster's leader makes it."""
        if not self.roots:
            self.roots.append(self._new_root(new_private_key(), None, index))
            self.config_index = index

    def _new_root(self, key: PrivateKey, cert: x509.Certificate | None, index: int) -> Root:
        self._serial += 1
        if cert is None:
            cert = build_ca_certificate(
                trust_domain=self.trust_domain,
                # Unique per root (Consul: pri-<id>.consul.ca.<td8>.consul): an old and a
                # new root must not share a subject, or chains through the cross-signed
                # certificate would be ambiguous.
                common_name=f"pri-{uuid.uuid4().hex[:8]}.consul.ca.{self.cluster_id[:8]}.consul",
                key=key,
                path_length=1,  # room for the cross-signed certificate of the next root
                ttl=ROOT_TTL,
            )
        fingerprint = cert.fingerprint(hashes.SHA1())
        return Root(
            id=colon_hex(fingerprint),
            name="Consul CA Primary Cert",
            serial=self._serial,
            cert=cert,
            key=key,
            create_index=index,
            modify_index=index,
        )

    def roots_json(self) -> dict[str, Any]:
        """structs.IndexedCARoots."""
        return {
            "ActiveRootID": self.active_root.id,
            "TrustDomain": self.trust_domain,
            "Roots": [root.to_json(self.trust_domain) for root in self.roots],
        }

    def roots_index(self) -> int:
        return max(root.modify_index for root in self.roots)

    def roots_pem(self) -> str:
        return "".join(root.pem for root in self.roots)

    # -- configuration -------------------------------------------------------------------

    def config_json(self) -> dict[str, Any]:
        """structs.CAConfiguration as GET /v1/connect/ca/configuration shows it (the
        private key is never shown)."""
        shown = {k: v for k, v in self.config.items() if k != "PrivateKey"}
        return {
            "Provider": "consul",
            "Config": shown,
            "State": None,
            "ForceWithoutCrossSigning": False,
            "CreateIndex": self.config_index,
            "ModifyIndex": self.config_index,
        }

    def update_config(self, body: Any, index: int, now: dt.datetime | None = None) -> None:
        """PUT /v1/connect/ca/configuration: new settings, and a new root when the key
        or root certificate given differ from the active one's (or none is given)."""
        if not isinstance(body, dict):
            raise bad_request("Request decode failed: body must be a JSON object")
        provider = body.get("Provider", "")
        if provider != "consul":
            raise AgentError(500, f"Unknown CA provider {provider!r}")
        config = body.get("Config") or {}
        if not isinstance(config, dict):
            raise bad_request("Request decode failed: Config must be a JSON object")
        merged = {**self.config, **config}
        self._leaf_ttl(merged)  # validated before anything changes
        key, cert = self._given_root(config)
        self.config = merged
        self.config_index = index
        if key is not None:
            self._rotate(key, cert, index, now or utcnow())

    def _given_root(
        self, config: dict[str, Any]
    ) -> tuple[PrivateKey | None, x509.Certificate | None]:
        key_pem, cert_pem = config.get("PrivateKey") or "", config.get("RootCert") or ""
        if cert_pem and not key_pem:
            raise bad_request("RootCert given without its PrivateKey")
        if not key_pem:
            return None, None
        try:
            key = load_private_key(key_pem)
            cert = x509.load_pem_x509_certificate(cert_pem.encode()) if cert_pem else None
        except (ValueError, CertificateError) as exc:
            raise bad_request(f"error parsing private key or root cert: {exc}") from None
        if cert is not None and cert.public_key() != key.public_key():
            raise bad_request("RootCert does not match PrivateKey")
        active = self.active_root
        if key.public_key() == active.key.public_key():
            return None, None  # the same root: a configuration change only
        return key, cert

    def _rotate(
        self, key: PrivateKey, cert: x509.Certificate | None, index: int, now: dt.datetime
    ) -> None:
        old = self.active_root
        new = self._new_root(key, cert, index)
        # The old key vouches for the new one: leaves of the new root then chain to the
        # old root too, for peers that have not seen the new roots yet.
        cross = build_ca_certificate(
            trust_domain=self.trust_domain,
            common_name=str(new.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
            key=new.key,
            issuer=(old.cert, old.key),
            path_length=0,
            ttl=ROOT_TTL,
            now=now,
        )
        new.intermediates = [certificate_pem(cross)]
        old.active, old.rotated_out_at, old.modify_index = False, now, index
        self.roots.append(new)

    def prune(self, index: int, now: dt.datetime | None = None) -> bool:
        """Drop roots rotated out more than twice the leaf TTL ago; True if any went."""
        now = now or utcnow()
        keep_for = 2 * self._leaf_ttl(self.config)
        kept = [
            root
            for root in self.roots
            if root.active or root.rotated_out_at is None or now - root.rotated_out_at < keep_for
        ]
        if len(kept) == len(self.roots):
            return False
        self.roots = kept
        self.roots[-1].modify_index = index
        return True

    @staticmethod
    def _leaf_ttl(config: dict[str, Any]) -> dt.timedelta:
        raw = config.get("LeafCertTTL", DEFAULT_LEAF_TTL)
        try:
            nanos = parse_duration(str(raw))
        except DecodeError as exc:
            raise bad_request(f"error decoding config: LeafCertTTL: {exc}") from None
        ttl = dt.timedelta(seconds=nanos / SECOND)
        if not config.get("SkipValidate") and not MIN_LEAF_TTL <= ttl <= MAX_LEAF_TTL:
            bound = "greater or equal than 1h0m0s" if ttl < MIN_LEAF_TTL else "less than 8760h0m0s"
            raise bad_request(f"leaf cert TTL must be {bound}")
        if ttl <= dt.timedelta(0):
            raise bad_request("leaf cert TTL must be positive")
        return ttl

    # -- leaves --------------------------------------------------------------------------

    def current_leaf(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> Leaf | None:
        """The service's leaf if it is still good: signed by the active root, not due."""
        leaf = self.leaves.get(service)
        if leaf is None or leaf.root_id != self.active_root.id or utcnow() >= leaf.renew_at:
            return None
        return leaf

    def issue_leaf(self, service: str, index: int, namespace: str = DEFAULT_NAMESPACE) -> Leaf:
        """A new key and leaf for ``service``, signed by the active root."""
        root = self.active_root
        spiffe_id = SpiffeId.for_consul_service(
            self.trust_domain, namespace, self.datacenter, service
        )
        now = utcnow()
        signer = LocalAuthority(self.trust_domain, signer=(root.cert, root.key, root.pem))
        issued = signer.issue(
            service, ttl=self._leaf_ttl(self.config), now=now, spiffe_id=spiffe_id
        )
        cert = issued.certificate
        after, before = cert.not_valid_before_utc, cert.not_valid_after_utc
        life = (before - now).total_seconds()
        renew_at = now + dt.timedelta(seconds=life * random.uniform(*RENEW_BETWEEN))
        leaf = Leaf(
            service=service,
            uri=str(spiffe_id),
            serial=cert.serial_number,
            cert_pem=certificate_pem(cert) + "".join(root.intermediates),
            key_pem=issued.key_pem,
            valid_after=after,
            valid_before=before,
            renew_at=renew_at,
            root_id=root.id,
            index=index,
        )
        self.leaves[service] = leaf
        return leaf

    def leaf_ttl_text(self) -> str:
        return format_duration(int(self._leaf_ttl(self.config).total_seconds() * SECOND))
