from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from meshkit.ca.tokens import TokenStore, hash_token
from meshkit.errors import CARefused
from meshkit.identity import SpiffeId

WEB = SpiffeId.parse("spiffe://example.org/ns/default/svc/web")


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    store = TokenStore(tmp_path / "tokens.db")
    yield store  # type: ignore[misc]
    store.close()


def test_a_token_is_single_use_by_default(tokens: TokenStore) -> None:
    token = tokens.create(WEB, ttl=60)
    assert tokens.consume(token) == WEB
    with pytest.raises(CARefused) as refused:
        tokens.consume(token)
    assert refused.value.reason == "token_used"


def test_a_token_allows_n_uses(tokens: TokenStore) -> None:
    token = tokens.create(WEB, ttl=60, uses=3)
    assert [tokens.consume(token) for _ in range(3)] == [WEB] * 3
    with pytest.raises(CARefused, match="already used"):
        tokens.consume(token)


def test_an_expired_token_is_refused(tokens: TokenStore) -> None:
    token = tokens.create(WEB, ttl=60, now=1000.0)
    with pytest.raises(CARefused) as refused:
        tokens.consume(token, now=1061.0)
    assert refused.value.reason == "token_expired"


def test_an_unknown_token_is_refused(tokens: TokenStore) -> None:
    with pytest.raises(CARefused) as refused:
        tokens.consume("mkjoin_guess")
    assert refused.value.reason == "token_invalid"


def test_only_the_hash_is_stored(tokens: TokenStore) -> None:
    token = tokens.create(WEB, ttl=60)
    dump = "\n".join(sqlite3.connect(tokens.path).iterdump())
    assert token not in dump
    assert hash_token(token) in dump


def test_the_database_is_private(tokens: TokenStore) -> None:
    assert tokens.path.stat().st_mode & 0o077 == 0


def _consume(path: str, token: str, start: multiprocessing.synchronize.Event) -> bool:
    store = TokenStore(Path(path))
    start.wait()
    try:
        store.consume(token)
    except CARefused:
        return False
    finally:
        store.close()
    return True


def test_concurrent_processes_spend_a_token_exactly_once(tokens: TokenStore) -> None:
    token = tokens.create(WEB, ttl=60)
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(6) as pool:
            pending = [
                pool.apply_async(_consume, (str(tokens.path), token, start)) for _ in range(6)
            ]
            start.set()
            results = [result.get(timeout=30) for result in pending]
    assert results.count(True) == 1
