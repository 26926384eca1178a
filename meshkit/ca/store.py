"""The CA's directory on disk: root, intermediate, their keys, join tokens and audit log.

Layout of ``DIR``::

    root.pem  root-key.pem                  the root CA (10 years); its key is only
                                            needed again to cut a new intermediate
    intermediate.pem  intermediate-key.pem  the online signing CA (1 year, pathlen 0)
    bundle.pem                              the trust bundle served to workloads; may
                                            hold several roots during a rotation
    tokens.db                               join tokens, hashed (see tokens.py)
    audit.jsonl                             one JSON line per issuance or refusal

Every secret is written 0600 from its first byte; ``open`` refuses a directory whose key
files are readable by group or others, because a leaked intermediate key lets anyone mint
any identity in the trust domain.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from meshkit.ca.x509 import (
    INTERMEDIATE_TTL,
    ROOT_TTL,
    PrivateKey,
    build_ca_certificate,
    ca_trust_domain,
    certificate_pem,
    fingerprint,
    load_certificates,
    load_private_key,
    new_private_key,
    private_key_pem,
    write_private,
)
from meshkit.errors import CAError, CertificateError, IdentityError
from meshkit.identity import SpiffeId

ROOT = "root.pem"
ROOT_KEY = "root-key.pem"
INTERMEDIATE = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate-key.pem"
BUNDLE = "bundle.pem"
TOKENS = "tokens.db"
AUDIT = "audit.jsonl"
_SECRETS = (ROOT_KEY, INTERMEDIATE_KEY, TOKENS)


@dataclass(frozen=True)
class CAStore:
    """A loaded CA directory: what the signing core needs, nothing more (no root key)."""

    directory: Path
    trust_domain: str
    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: PrivateKey
    bundle_pem: str

    @property
    def tokens_path(self) -> Path:
        return self.directory / TOKENS

    @property
    def audit_path(self) -> Path:
        return self.directory / AUDIT

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.root)

    @classmethod
    def open(cls, directory: Path) -> CAStore:
        """Load the CA in ``directory`` after checking its secrets are private."""
        if not (directory / INTERMEDIATE_KEY).exists():
            raise CAError(f"no CA in {directory} (run: meshkit ca init --dir {directory})")
        check_permissions(directory)
        try:
            root = load_certificates((directory / ROOT).read_text())[0]
            intermediate = load_certificates((directory / INTERMEDIATE).read_text())[0]
            key = load_private_key((directory / INTERMEDIATE_KEY).read_text())
            bundle_pem = (directory / BUNDLE).read_text()
        except (OSError, CertificateError) as exc:
            raise CAError(f"cannot load the CA in {directory}: {exc}") from exc
        return cls(directory, ca_trust_domain(root), root, intermediate, key, bundle_pem)


def init_ca(directory: Path, trust_domain: str) -> CAStore:
    """Create a root and an intermediate CA in ``directory``; never overwrite one."""
    _check_trust_domain(trust_domain)
    if any((directory / name).exists() for name in (ROOT, ROOT_KEY, INTERMEDIATE_KEY)):
        raise CAError(f"a CA already exists in {directory}; refusing to overwrite it")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    root_key = new_private_key()
    root = build_ca_certificate(
        trust_domain=trust_domain,
        common_name=f"meshkit root CA {trust_domain}",
        key=root_key,
        path_length=1,
        ttl=ROOT_TTL,
    )
    key = new_private_key()
    intermediate = build_ca_certificate(
        trust_domain=trust_domain,
        common_name=f"meshkit intermediate CA {trust_domain}",
        key=key,
        issuer=(root, root_key),
        path_length=0,
        ttl=INTERMEDIATE_TTL,
    )
    # Keys first: a crash midway leaves no certificate pointing at a missing key.
    write_private(directory / ROOT_KEY, private_key_pem(root_key))
    write_private(directory / INTERMEDIATE_KEY, private_key_pem(key))
    (directory / ROOT).write_text(certificate_pem(root))
    (directory / INTERMEDIATE).write_text(certificate_pem(intermediate))
    (directory / BUNDLE).write_text(certificate_pem(root))
    return CAStore.open(directory)


def check_permissions(directory: Path) -> None:
    """Refuse secrets readable or writable by group or others, and a directory others
    may write to (they could swap a file in), like ssh does."""
    mode = directory.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CAError(
            f"{directory} is writable by group or others (mode {stat.S_IMODE(mode):o}); "
            f"refusing to use it. Fix with: chmod 700 {directory}"
        )
    for name in _SECRETS:
        path = directory / name
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CAError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
                f"refusing to use it. Fix with: chmod 600 {path}"
            )


def _check_trust_domain(trust_domain: str) -> None:
    try:
        SpiffeId(trust_domain, "/ca")
    except IdentityError as exc:
        raise CAError(f"invalid trust domain {trust_domain!r}: {exc}") from exc
