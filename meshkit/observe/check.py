"""``meshkit check``: is this mesh healthy? One line per check, a mark, and a hint.

Like ``linkerd check`` it walks from the bottom up: the registry (reachable, answering
as Consul, clocks in step), the CA (reachable, holding the pinned root), the local
workload identity (a chain the mesh accepts, not near expiry, one trust domain), then
each service: instances passing, admin ports answering, the certificate each instance
really serves (read over a TLS connection to its service port, not from metadata) and
intentions that leave nobody able to call it.

Every check is a ``Result``; a failed one does not stop the next (an operator wants the
whole picture), except that services cannot be listed without a registry.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from cryptography import x509

from meshkit.ca.client import (
    BUNDLE_FILE,
    CERT_FILE,
    KEY_FILE,
    fetch_bundle,
    normalize_fingerprint,
)
from meshkit.ca.x509 import ca_trust_domain, fingerprint, leaf_facts, load_certificates
from meshkit.errors import MeshError, RegistryError
from meshkit.identity import identity_from_certificate
from meshkit.observe.scrape import Target, discover
from meshkit.policy.intentions import ANY, Intentions, IntentionStore
from meshkit.registry.consul import ConsulRegistry
from meshkit.settings import MeshSettings
from meshkit.tls import Leaf, TLSMaterial, client_context, handshake_in_memory, server_context

Status = Literal["ok", "warn", "fail", "skip"]
# linkerd check's marks: a check mark, a double exclamation mark, a multiplication sign.
MARKS: dict[Status, str] = {"ok": "\u221a", "warn": "\u203c", "fail": "\u00d7", "skip": "-"}
#: How far a peer's clock may be from ours before the check warns (fails at 10x): the
#: deadline header allows ``max_clock_skew``; certificates are backdated a minute.
SKEW_WARN = 1.0
#: Past this share of its lifetime a certificate should have been renewed (at half).
NEAR_EXPIRY = 0.8
TIMEOUT = 5.0  # seconds for any one network exchange
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Result:
    """One check: its group (``registry``, ``ca``, ``identity``, ``service NAME``)."""

    group: str
    status: Status
    message: str
    hint: str = ""


def failed(results: Iterable[Result]) -> bool:
    return any(result.status == "fail" for result in results)


def render_text(results: Sequence[Result]) -> str:
    lines: list[str] = []
    group = None
    for result in results:
        if result.group != group:
            group = result.group
            lines.append(("\n" if lines else "") + group)
            lines.append("-" * len(group))
        lines.append(f"{MARKS[result.status]} {result.message}")
        if result.hint and result.status != "ok":
            lines.append(f"    hint: {result.hint}")
    failures = sum(result.status == "fail" for result in results)
    summary = f"{failures} check(s) failed" if failures else "every check passed"
    return "\n".join([*lines, "", f"Status: {summary}"])


def render_json(results: Sequence[Result]) -> str:
    document = {"success": not failed(results), "checks": [asdict(r) for r in results]}
    return json.dumps(document, indent=2, ensure_ascii=False)


class Checker:
    """Runs every check for ``settings`` (``MeshSettings.from_env()`` in the CLI)."""

    def __init__(self, settings: MeshSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = ConsulRegistry.from_settings(settings)
        self.results: list[Result] = []
        self.identity: TLSMaterial | None = None

    def add(self, group: str, status: Status, message: str, hint: str = "") -> None:
        self.results.append(Result(group, status, message, hint))

    async def run(self, service: str | None = None) -> list[Result]:
        reachable = await self.check_registry()
        await self.check_ca()
        self.check_identity()
        if reachable:
            await self.check_services(service)
        return self.results

    # -- registry --------------------------------------------------------------------------

    async def check_registry(self) -> bool:
        where = self.registry.address
        try:
            agent, date = await _in_thread(self._agent_self)
            leader = await self.registry.call(lambda client: client.status.leader())
        except (OSError, http.client.HTTPException, ValueError, MeshError) as exc:
            self.add(
                "registry",
                "fail",
                f"registry at {where} does not answer: {exc}",
                "start one (meshkit up, meshkit registry serve) or set CONSUL_HTTP_ADDR",
            )
            return False
        datacenter = (agent.get("Config") or {}).get("Datacenter")
        if not datacenter or not leader:
            self.add(
                "registry",
                "fail",
                f"{where} answers, but not as Consul (no datacenter or leader)",
                "CONSUL_HTTP_ADDR must name a Consul agent's HTTP API",
            )
            return False
        self.add("registry", "ok", f"registry at {where} answers as Consul (dc {datacenter})")
        self.check_skew("registry", "the registry", date)
        return True

    def _agent_self(self) -> tuple[dict[str, Any], str | None]:
        registry = self.registry
        connection_class = (
            http.client.HTTPSConnection
            if registry.scheme == "https"
            else http.client.HTTPConnection
        )
        connection = connection_class(registry.host, registry.port, timeout=TIMEOUT)
        headers = {"X-Consul-Token": self.settings.consul_token or ""}
        try:
            connection.request("GET", "/v1/agent/self", headers=headers)
            response = connection.getresponse()
            body = response.read(1024 * 1024)
        finally:
            connection.close()
        if response.status != 200:
            raise RegistryError(f"/v1/agent/self answered {response.status}")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("/v1/agent/self is not a JSON object")
        return document, response.getheader("Date")

    def check_skew(self, group: str, peer: str, date: str | None) -> None:
        if date is None:
            self.add(group, "warn", f"{peer} sends no Date header: clock skew unknown")
            return
        try:
            theirs = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            self.add(group, "warn", f"{peer} sends an unreadable Date header: {date!r}")
            return
        # A Date header has whole seconds: up to 1 s of difference is rounding.
        skew = abs(self.clock() - theirs) - 1.0
        hint = "run NTP (chrony, systemd-timesyncd) on both hosts"
        if skew > 10 * SKEW_WARN:
            self.add(group, "fail", f"this clock is {skew:.0f} s away from {peer}'s", hint)
        elif skew > SKEW_WARN:
            self.add(group, "warn", f"this clock is {skew:.1f} s away from {peer}'s", hint)
        else:
            self.add(group, "ok", f"this clock is in step with {peer}'s")

    # -- CA --------------------------------------------------------------------------------

    async def check_ca(self) -> None:
        settings = self.settings
        if not settings.ca_url:
            self.add("ca", "skip", "no CA configured (MESHKIT_CA_URL): certificate files in use")
            return
        pin = settings.ca_fingerprint or ""
        try:
            bundle = await fetch_bundle(settings.ca_url, pin)
        except MeshError as exc:
            self.add("ca", "fail", str(exc), "check MESHKIT_CA_URL and MESHKIT_CA_FINGERPRINT")
            return
        self.add("ca", "ok", f"CA at {settings.ca_url} holds the pinned root {pin[:19]}…")
        root = next(
            c for c in load_certificates(bundle) if fingerprint(c) == normalize_fingerprint(pin)
        )
        domain = ca_trust_domain(root)
        if domain != settings.trust_domain:
            self.add(
                "ca",
                "fail",
                f"the CA signs for trust domain {domain}, settings say {settings.trust_domain}",
                f"set MESHKIT_TRUST_DOMAIN={domain}",
            )
        try:
            date = await _in_thread(_https_date, settings.ca_url)
        except (OSError, http.client.HTTPException) as exc:
            self.add("ca", "warn", f"cannot read the CA's clock: {exc}")
            return
        self.check_skew("ca", "the CA", date)

    # -- local identity -----------------------------------------------------------------------

    def check_identity(self) -> None:
        material, source = self._local_identity()
        if material is None:
            self.add("identity", "skip", f"no local workload identity ({source})")
            return
        try:
            identity = material.spiffe_id
            _handshake_with_itself(material)
        except (MeshError, ssl.SSLError) as exc:
            self.add(
                "identity",
                "fail",
                f"{source}: not a chain the mesh accepts: {exc}",
                "reissue it (delete the files; the CA enrolls anew) or fix the bundle",
            )
            return
        self.identity = material
        self.add("identity", "ok", f"{identity} ({source}) verifies against its bundle")
        self.check_expiry("identity", str(identity), material.leaf)
        if identity.trust_domain != self.settings.trust_domain:
            self.add(
                "identity",
                "fail",
                f"{identity} is of trust domain {identity.trust_domain}, settings say "
                f"{self.settings.trust_domain}",
                f"set MESHKIT_TRUST_DOMAIN={identity.trust_domain} or reissue the certificate",
            )
        else:
            self.add("identity", "ok", f"trust domain {identity.trust_domain} matches the settings")

    def _local_identity(self) -> tuple[TLSMaterial | None, str]:
        settings = self.settings
        if settings.cert_file and settings.key_file and settings.bundle_file:
            files = (settings.cert_file, settings.key_file, settings.bundle_file)
            source = "MESHKIT_CERT_FILE"
        else:
            directory = settings.state_dir
            files = (directory / CERT_FILE, directory / KEY_FILE, directory / BUNDLE_FILE)
            source = f"stored in {directory}"
            if not files[0].exists():
                return None, f"set MESHKIT_CERT_FILE or MESHKIT_DATA_DIR; nothing in {directory}"
        try:
            return TLSMaterial.from_files(*files), source
        except MeshError as exc:
            return None, f"{source}: {exc}"

    def check_expiry(self, group: str, what: str, leaf: Leaf) -> None:
        left = leaf.not_after - self.clock()
        if left <= 0:
            self.add(
                group,
                "fail",
                f"{what}: certificate expired {_duration(-left)} ago",
                "the instance no longer renews: look at its log (CA reachable? token?)",
            )
        elif self.clock() > leaf.renewal_time(NEAR_EXPIRY):
            self.add(
                group,
                "warn",
                f"{what}: certificate expires in {_duration(left)}, past renewal",
                "renewal should have happened at half its lifetime: is the CA reachable?",
            )
        else:
            self.add(group, "ok", f"{what}: certificate valid for {_duration(left)}")

    # -- services ---------------------------------------------------------------------------

    async def check_services(self, only: str | None) -> None:
        try:
            targets = await discover(self.registry)
        except MeshError as exc:
            self.add("services", "fail", f"cannot list services: {exc}")
            return
        intentions = await self._intentions()
        names = sorted({t.service for t in targets} | ({only} if only else set()))
        if only:
            names = [only]
        if not names:
            self.add(
                "services", "warn", "no service is registered", "start one: meshkit run MODULE:APP"
            )
        for name in names:
            await self.check_service(name, [t for t in targets if t.service == name], intentions)

    async def _intentions(self) -> Intentions | None:
        try:
            store = IntentionStore(self.registry.new_client())
            return Intentions(await _in_thread(store.rules))
        except MeshError as exc:
            self.add("services", "warn", f"cannot read intentions: {exc}")
            return None

    async def check_service(
        self, name: str, targets: list[Target], intentions: Intentions | None
    ) -> None:
        group = f"service {name}"
        passing = [t for t in targets if t.health == "passing"]
        if not passing:
            self.add(
                group,
                "fail",
                f"{len(passing)}/{len(targets)} instances passing",
                f"meshkit services {name} shows each instance's checks",
            )
        elif len(passing) < len(targets):
            self.add(
                group,
                "warn",
                f"{len(passing)}/{len(targets)} instances passing",
                f"meshkit services {name} shows each instance's checks",
            )
        else:
            self.add(group, "ok", f"{len(passing)}/{len(targets)} instances passing")
        for target in targets:
            await self.check_admin(group, target)
            await self.check_served_certificate(group, target)
        if intentions is not None:
            self.check_intentions(group, name, intentions)

    async def check_admin(self, group: str, target: Target) -> None:
        if target.admin_port is None:
            self.add(
                group,
                "warn",
                f"{target.instance_id}: no admin_port in its registration",
                "an instance not run by meshkit? its metrics cannot be scraped",
            )
            return
        where = f"{target.admin_host}:{target.admin_port}"
        try:
            status = await _in_thread(_admin_status, target.admin_host, target.admin_port)
        except (OSError, http.client.HTTPException) as exc:
            self.add(
                group,
                "fail",
                f"{target.instance_id}: admin port {where} does not answer ({exc})",
                "is the process alive? MESHKIT_ADMIN_HOST must be reachable from here",
            )
            return
        mark: Status = "ok" if status == 200 else "fail"
        self.add(group, mark, f"{target.instance_id}: admin port {where} answers /healthz {status}")

    async def check_served_certificate(self, group: str, target: Target) -> None:
        where = f"{target.address}:{target.port}"
        try:
            der = await _in_thread(_served_certificate, target.address, target.port, self.identity)
        except (OSError, ssl.SSLError) as exc:
            self.add(
                group,
                "fail",
                f"{target.instance_id}: no TLS handshake with {where} ({exc})",
                "is it serving? does it trust the same CA as this identity?",
            )
            return
        cert = x509.load_der_x509_certificate(der)
        served = identity_from_certificate(cert)
        expected = target.spiffe_id
        if served is None or (expected and str(served) != expected):
            self.add(
                group,
                "fail",
                f"{target.instance_id} serves {served}, registered as {expected}",
                "the instance's certificate and its registration disagree",
            )
            return
        self.check_expiry(group, f"{target.instance_id} ({served})", leaf_facts(cert))

    def check_intentions(self, group: str, name: str, intentions: Intentions) -> None:
        denied = _denies_everyone(intentions, name)
        if denied:
            self.add(
                group,
                "fail",
                f"intentions deny every caller of {name}",
                f"meshkit intentions allow SOURCE {name} (or delete the deny rules)",
            )
        elif len(intentions):
            self.add(group, "ok", f"no intention shuts every caller out of {name}")


def _denies_everyone(intentions: Intentions, destination: str) -> bool:
    """True when no source, named or not, has an allow rule that reaches ``destination``."""
    if intentions.action(None, destination) != "deny":
        return False  # anyone not named is allowed (or left to the default policy)
    named = {rule.source for rule in intentions if rule.source != ANY}
    return all(intentions.action(source, destination) == "deny" for source in named)


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f}d"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f}h"
    if seconds >= 120:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    with anyio.fail_after(TIMEOUT * 3):
        return await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True)


def _admin_status(host: str, port: int) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read(4096)
        return response.status
    finally:
        connection.close()


def _https_date(url: str) -> str | None:
    """The Date header of the CA's answer to ``/`` (whatever its status): only its clock
    is read, so the connection need not be verified."""
    parts = url.removeprefix("https://").split("/")[0]
    host, _, port = parts.rpartition(":") if ":" in parts else (parts, "", "443")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(host, int(port), timeout=TIMEOUT, context=context)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read(4096)
        return response.getheader("Date")
    finally:
        connection.close()


def _served_certificate(host: str, port: int, identity: TLSMaterial | None) -> bytes:
    """The DER certificate the server at host:port presents, over a real handshake.

    With a local identity it is presented (a strict server wants a client certificate)
    and the server's chain is verified against its bundle; without one the server's
    certificate is only read.
    """
    if identity is not None:
        context = client_context(identity)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the server presented no certificate")
    return der


def _handshake_with_itself(material: TLSMaterial) -> None:
    """Verify ``material`` as the mesh does: a TLS handshake in memory between a client
    and a server both holding it, each checking the other's chain against the bundle
    (an ``ssl.SSLError`` says what is wrong)."""
    handshake_in_memory(client_context(material), server_context(material))
