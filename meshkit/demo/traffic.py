"""Traffic for the demo: simulated shoppers on web's JSON API, paced and bounded.

Each shopper thread keeps one keep-alive mTLS connection (``http.client``: blocking
and in the standard library) and starts journeys at a fixed pace; together they make
``rate`` journeys per second until told to stop. A journey browses the catalog and,
now and then, fills a cart and checks out with an Idempotency-Key.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Send = Callable[[str, str, Any, Mapping[str, str]], tuple[int, Any]]


@dataclass
class TrafficStats:
    requests: int = 0
    failures: int = 0
    checkouts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, ok: bool, *, checkout: bool = False) -> None:
        with self.lock:
            self.requests += 1
            self.failures += not ok
            self.checkouts += ok and checkout

    @property
    def success(self) -> float | None:
        return None if self.requests == 0 else 1 - self.failures / self.requests


class Shopper:
    """One simulated user of web's JSON API: browses, and now and then buys."""

    def __init__(
        self, send: Send, stats: TrafficStats, rng: random.Random, *, buy_ratio: float = 0.3
    ) -> None:
        self.send = send
        self.stats = stats
        self.rng = rng
        self.buy_ratio = buy_ratio

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        checkout: bool = False,
    ) -> Any:
        try:
            status, answer = self.send(method, path, body, headers or {})
        except (OSError, http.client.HTTPException, ValueError):
            self.stats.record(False)
            return None
        ok = 200 <= status < 300
        self.stats.record(ok, checkout=checkout)
        return answer if ok else None

    def journey(self) -> None:
        catalog = self._call("GET", "/api/products")
        if not catalog or self.rng.random() >= self.buy_ratio:
            return
        cart = self._call("POST", "/api/carts")
        if not cart:
            return
        for product in self.rng.sample(catalog["products"], k=self.rng.randint(1, 2)):
            item = {"sku": product["sku"], "quantity": self.rng.randint(1, 3)}
            if self._call("POST", f"/api/carts/{cart['id']}/items", item) is None:
                return
        key = {"Idempotency-Key": uuid.uuid4().hex}
        self._call(
            "POST",
            f"/api/carts/{cart['id']}/checkout",
            {"payment_method": "tok_visa"},
            key,
            checkout=True,
        )


class HttpsSender:
    """A keep-alive HTTPS connection to web, reopened after a failure."""

    def __init__(self, port: int, context: ssl.SSLContext, *, timeout: float = 10.0) -> None:
        self.port = port
        self.context = context
        self.timeout = timeout
        self._connection: http.client.HTTPSConnection | None = None

    def __call__(
        self, method: str, path: str, body: Any, headers: Mapping[str, str]
    ) -> tuple[int, Any]:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.context, timeout=self.timeout
            )
        payload = None if body is None else json.dumps(body).encode()
        try:
            self._connection.request(
                method, path, body=payload, headers={"content-type": "application/json", **headers}
            )
            response = self._connection.getresponse()
            raw = response.read()
        except BaseException:
            self.close()
            raise
        return response.status, json.loads(raw) if raw else None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def drive(
    make_send: Callable[[], Send],
    stats: TrafficStats,
    stop: threading.Event,
    *,
    rate: float,
    workers: int = 4,
    seed: int = 0,
) -> list[threading.Thread]:
    """``workers`` shoppers together starting ``rate`` journeys per second until ``stop``."""

    def work(number: int) -> None:
        shopper = Shopper(make_send(), stats, random.Random(seed + number))
        period = workers / rate
        next_start = time.monotonic() + period * number / workers
        while not stop.wait(max(0.0, next_start - time.monotonic())):
            shopper.journey()
            next_start += period

    threads = [
        threading.Thread(target=work, args=(n,), daemon=True, name=f"shopper-{n}")
        for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    return threads
