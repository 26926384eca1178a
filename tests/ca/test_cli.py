from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from meshkit.ca.store import CAStore
from meshkit.ca.tokens import TokenStore
from meshkit.cli import main
from meshkit.cli.ca import parse_duration


def test_init_prints_the_root_pin_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "init", "--dir", str(tmp_path / "ca"), "--trust-domain", "x.org"]) == 0
    pin = capsys.readouterr().out.strip()
    assert pin == CAStore.open(tmp_path / "ca").root_fingerprint
    assert main(["ca", "init", "--dir", str(tmp_path / "ca"), "--trust-domain", "x.org"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_token_create_prints_the_token_alone_on_the_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["ca", "init", "--dir", str(tmp_path), "--trust-domain", "x.org"])
    capsys.readouterr()
    command = ["ca", "token", "create", "--dir", str(tmp_path), "--service", "cart"]
    assert main([*command, "--namespace", "shop", "--ttl", "5m", "--uses", "2"]) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    tokens = TokenStore(tmp_path / "tokens.db")
    assert str(tokens.consume(token)) == "spiffe://x.org/ns/shop/svc/cart"
    tokens.close()


def test_the_ca_identity_cannot_get_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["ca", "init", "--dir", str(tmp_path), "--trust-domain", "x.org"])
    command = ["ca", "token", "create", "--dir", str(tmp_path), "--service", "ca"]
    assert main([*command, "--namespace", "meshkit"]) == 1
    assert "reserved" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("24h", 86400), ("1d", 86400), ("2.5", 2.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "-1m", "10 minutes", "1w"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
