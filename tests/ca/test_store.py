from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshkit.ca.store import INTERMEDIATE_KEY, ROOT_KEY, CAStore, init_ca
from meshkit.ca.x509 import fingerprint
from meshkit.errors import CAError


def test_init_writes_private_keys_0600_and_a_root_10_years_long(tmp_path: Path) -> None:
    store = init_ca(tmp_path / "ca", "example.org")
    for name in (ROOT_KEY, INTERMEDIATE_KEY):
        assert stat.S_IMODE((tmp_path / "ca" / name).stat().st_mode) == 0o600
    assert store.trust_domain == "example.org"
    assert store.root_fingerprint == fingerprint(store.root)
    assert store.root_fingerprint.startswith("sha256:") and len(store.root_fingerprint) == 71
    root_days = (store.root.not_valid_after_utc - store.root.not_valid_before_utc).days
    assert 3649 <= root_days <= 3651
    intermediate_days = (
        store.intermediate.not_valid_after_utc - store.intermediate.not_valid_before_utc
    ).days
    assert 364 <= intermediate_days <= 366


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", "example.org")
    with pytest.raises(CAError, match="already exists"):
        init_ca(tmp_path / "ca", "example.org")


def test_init_refuses_a_bad_trust_domain(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="invalid trust domain"):
        init_ca(tmp_path / "ca", "Example.org:443")


def test_open_refuses_group_or_world_readable_keys(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", "example.org")
    (tmp_path / "ca" / INTERMEDIATE_KEY).chmod(0o640)
    with pytest.raises(CAError, match="chmod 600"):
        CAStore.open(tmp_path / "ca")


def test_open_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="meshkit ca init"):
        CAStore.open(tmp_path)
