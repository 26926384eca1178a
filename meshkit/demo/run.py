"""``meshkit demo`` runs the online shop in a mesh and shows its golden metrics;
``meshkit up`` runs only the control plane, for your own services.

The demo starts the control plane (dev registry + dev CA), then the shop (web,
payments, and two instances each of cart and inventory), drives bounded traffic
through web's JSON API as ``demo-user``, SIGKILLs one cart instance halfway, and
prints a table per edge (requests/s, success %, p50, p99) read from each instance's
own ``/metrics``. Every process runs in its own process group and is stopped on the
way out: at the end, on Ctrl-C, on SIGTERM, or on an error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

import anyio

from meshkit.ca.client import CAIdentity
from meshkit.ca.x509 import LocalAuthority
from meshkit.demo.canary import (
    CANARIES,
    PHASE_SETTLE,
    PHASES,
    SERVICE,
    Phase,
    RoutingWriter,
    VersionBoard,
    canary_env,
    phase_at,
    phase_results,
    version_table,
)
from meshkit.demo.traffic import HttpsSender, TrafficStats, drive
from meshkit.errors import MeshError
from meshkit.observe.dashboard import LISTENING
from meshkit.observe.golden import (
    Edge,
    Histogram,
    Scoreboard,
    edge_stats,
    format_table,
    parse_edges,
)
from meshkit.settings import MeshSettings
from meshkit.testing.processes import admin_get, context_for
from meshkit.testing.supervisor import Child, Supervisor
from meshkit.tls import client_context

#: (service, instances) in start order: callees before callers.
SHOP: tuple[tuple[str, int], ...] = (("inventory", 2), ("payments", 1), ("cart", 2), ("web", 1))
VICTIM = "cart-2"
DEMO_USER = "demo-user"
TRUST_DOMAIN = "meshkit.local"
EDGES = frozenset(
    {
        Edge(DEMO_USER, "web"),
        Edge("web", "cart"),
        Edge("web", "inventory"),
        Edge("cart", "inventory"),
        Edge("cart", "payments"),
    }
)
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
#: The checkout holding ``examples/shop`` (the shop is not part of the meshkit wheel).
CHECKOUT = Path(__file__).resolve().parents[2]


def meshkit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshkit", *args]


def free_port() -> int:
    # Picked, released, then passed to a child: a tiny race, acceptable on a dev machine.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int, path: str) -> bool:
    """Whether a plaintext HTTP server on 127.0.0.1:port answers ``path`` with 200."""
    try:
        return admin_get(port, path)[0] == 200
    except OSError:
        return False


# -- the control plane: the one part written against commands other branches build --------


@dataclass(frozen=True)
class ControlPlane:
    registry_port: int
    ca_url: str
    ca_fingerprint: str

    def env(self) -> dict[str, str]:
        """What a service needs to join this mesh."""
        return {
            "CONSUL_HTTP_ADDR": f"127.0.0.1:{self.registry_port}",
            "MESHKIT_CA_URL": self.ca_url,
            "MESHKIT_CA_FINGERPRINT": self.ca_fingerprint,
            # The CA's trust domain: services check it against the CA and each other.
            "MESHKIT_TRUST_DOMAIN": TRUST_DOMAIN,
        }


def start_control_plane(
    supervisor: Supervisor, directory: Path, *, registry_port: int = 0, ca_port: int = 0
) -> ControlPlane:
    """The dev registry (Consul's HTTP API) and the dev CA, both ready when this returns."""
    registry_port = start_registry(supervisor, directory, port=registry_port)
    ca_url, fingerprint = start_ca(supervisor, directory / "ca", port=ca_port)
    return ControlPlane(registry_port, ca_url, fingerprint)


def start_registry(
    supervisor: Supervisor, directory: Path, *, port: int = 0, args: Sequence[str] = ()
) -> int:
    """``meshkit registry serve`` (extra ``args``), answering; returns its port."""
    port = port or free_port()
    registry = supervisor.start(
        "registry",
        meshkit_argv("registry", "serve", "--port", str(port), *args),
        env={**os.environ, "MESHKIT_DATA_DIR": str(directory / "registry")},
    )
    registry.wait_until(lambda: answers(port, "/v1/status/leader"))
    return port


def start_dashboard(
    supervisor: Supervisor, registry_port: int, *, port: int = 0, apps: Sequence[str] = ()
) -> str:
    """``meshkit dashboard`` on the registry, showing the route policies of ``apps``
    (``module:attribute``, importable from the checkout); its URL once it listens."""
    argv = meshkit_argv("dashboard", "--registry", f"127.0.0.1:{registry_port}")
    argv += ["--port", str(port), *(arg for app in apps for arg in ("--app", app))]
    env = {**os.environ, "PYTHONPATH": with_checkout(os.environ.get("PYTHONPATH"))}
    return supervisor.start("dashboard", argv, env=env).wait_for(LISTENING)["url"]


def with_checkout(pythonpath: str | None) -> str:
    """A PYTHONPATH that imports ``examples`` from the checkout first."""
    return os.pathsep.join(filter(None, [str(CHECKOUT), pythonpath]))


def start_ca(supervisor: Supervisor, directory: Path, *, port: int = 0) -> tuple[str, str]:
    """``meshkit ca serve --dev`` on a CA in ``directory`` (made if missing): URL, pin."""
    port = port or free_port()
    if not directory.exists():
        argv = meshkit_argv("ca", "init", "--dir", str(directory), "--trust-domain", TRUST_DOMAIN)
        supervisor.run("ca-init", argv)
    # --dev: the CA signs any identity without a join token (demos only).
    ca = supervisor.start(
        "ca",
        meshkit_argv("ca", "serve", "--dir", str(directory), "--dev", "--port", str(port)),
        env={**os.environ, "MESHKIT_DATA_DIR": str(directory)},
    )
    # It prints "root fingerprint sha256:<hex>" once it listens.
    return f"https://127.0.0.1:{port}", ca.wait_for(_FINGERPRINT)[0]


# -- identities: who the instances and demo-user are --------------------------------------


class Identities(Protocol):
    def instance_env(self, service: str, directory: Path) -> dict[str, str]: ...

    def client_context(self, name: str) -> ssl.SSLContext: ...


class CAIdentities:
    """Instances get their certificates from the control plane's CA."""

    def __init__(self, plane: ControlPlane, directory: Path) -> None:
        self.plane = plane
        self.directory = directory

    def instance_env(self, service: str, directory: Path) -> dict[str, str]:
        return {
            "MESHKIT_CA_URL": self.plane.ca_url,
            "MESHKIT_CA_FINGERPRINT": self.plane.ca_fingerprint,
        }

    def client_context(self, name: str) -> ssl.SSLContext:
        """A certificate for ``name`` from the dev CA (which signs any name in --dev)."""
        settings = MeshSettings(
            service=name,
            trust_domain=TRUST_DOMAIN,
            ca_url=self.plane.ca_url,
            ca_fingerprint=self.plane.ca_fingerprint,
            data_dir=self.directory / name,
        )
        material = anyio.run(CAIdentity(settings).obtain)
        return client_context(material)


class LocalIdentities:
    """Certificates from an in-memory CA written to files ("bring your own PKI")."""

    def __init__(self, authority: LocalAuthority | None = None) -> None:
        self.authority = authority or LocalAuthority()

    def instance_env(self, service: str, directory: Path) -> dict[str, str]:
        cert, key, bundle = self.authority.issue(service).write(directory / "identity")
        return {
            "MESHKIT_CERT_FILE": str(cert),
            "MESHKIT_KEY_FILE": str(key),
            "MESHKIT_BUNDLE_FILE": str(bundle),
        }

    def client_context(self, name: str) -> ssl.SSLContext:
        return context_for(self.authority.issue(name), self.authority.bundle_pem)


# -- the shop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    name: str
    service: str
    port: int
    admin_port: int
    child: Child

    @property
    def running(self) -> bool:
        return self.child.running


def instance_env(
    service: str,
    directory: Path,
    *,
    shared_data: Path,
    mesh_env: Mapping[str, str],
    port: int,
    admin_port: int,
) -> dict[str, str]:
    """An instance's environment: its own state dir, the service's shared database dir."""
    env = {
        **os.environ,
        **mesh_env,
        "MESHKIT_SERVICE": service,
        "MESHKIT_PORT": str(port),
        "MESHKIT_ADMIN_PORT": str(admin_port),
        "MESHKIT_DATA_DIR": str(directory),
        "MESHKIT_DEREGISTER_DELAY": "1",
        "MESHKIT_DRAIN_TIMEOUT": "5",
        "SHOP_DATA_DIR": str(shared_data),
        # `meshkit run examples.shop.<service>:app` from wherever the demo was started.
        "PYTHONPATH": with_checkout(os.environ.get("PYTHONPATH")),
    }
    if service == "web":
        # Browsers have no mesh certificate: web also accepts TLS without one.
        env["MESHKIT_TLS_MODE"] = "permissive"
    return env


def start_shop(
    supervisor: Supervisor,
    directory: Path,
    identities: Identities,
    mesh_env: Mapping[str, str],
    *,
    shop: Sequence[tuple[str, int]] = SHOP,
    timeout: float = 30.0,
) -> list[Instance]:
    """Start every instance of ``shop`` and wait until each answers ``/readyz``."""
    if not (CHECKOUT / "examples" / "shop").is_dir():
        raise MeshError(f"the shop example is not here: {CHECKOUT / 'examples'} (use a checkout)")
    instances = [
        start_instance(supervisor, directory, identities, mesh_env, service, f"{service}-{number}")
        for service, count in shop
        for number in range(1, count + 1)
    ]
    wait_ready(instances, timeout)
    return instances


def start_instance(
    supervisor: Supervisor,
    directory: Path,
    identities: Identities,
    mesh_env: Mapping[str, str],
    service: str,
    name: str,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> Instance:
    """``meshkit run examples.shop.<service>:app`` as instance ``name`` (not waited for)."""
    home = directory / "instances" / name
    port, admin_port = free_port(), free_port()
    env = instance_env(
        service,
        home,
        shared_data=directory / "data",
        mesh_env={**mesh_env, **identities.instance_env(service, home)},
        port=port,
        admin_port=admin_port,
    )
    target = f"examples.shop.{service}:app"
    child = supervisor.start(name, meshkit_argv("run", target), env={**env, **(extra_env or {})})
    return Instance(name, service, port, admin_port, child)


def wait_ready(instances: list[Instance], timeout: float = 30.0) -> None:
    for instance in instances:
        instance.child.wait_until(
            functools.partial(answers, instance.admin_port, "/readyz"), timeout=timeout
        )


def scrape(
    instances: list[Instance], *, outside: Collection[str] = ()
) -> dict[str, dict[Edge, Histogram]]:
    """Server-side edges of every live instance (a dead one is simply not there); the
    edges to services ``outside`` meshkit (no /metrics of theirs) as their callers count
    them."""
    by_name = {instance.name: instance.service for instance in instances}
    texts = metrics_texts(instances)
    return {name: _edges(text, by_name[name], outside) for name, text in texts.items()}


def metrics_texts(instances: list[Instance]) -> dict[str, str]:
    """The ``/metrics`` exposition of every live instance, by name."""
    texts = {}
    for instance in instances:
        if not instance.running:
            continue
        try:
            status, body = admin_get(instance.admin_port, "/metrics")
        except OSError:
            continue
        if status == 200:
            texts[instance.name] = body.decode()
    return texts


def _edges(text: str, service: str, outside: Collection[str]) -> dict[Edge, Histogram]:
    edges = parse_edges(text, service=service)
    if outside:
        called = parse_edges(text, service=service, side="client")
        edges.update((e, h) for e, h in called.items() if e.destination in outside)
    return edges


# -- the run -------------------------------------------------------------------------------


@dataclass
class Display:
    """Live output: redrawn in place on a terminal, appended blocks otherwise."""

    out: TextIO
    interactive: bool

    def show(self, text: str) -> None:
        if self.interactive:
            self.out.write("\x1b[H\x1b[2J")
        self.out.write(text + "\n")
        self.out.flush()


def progress(elapsed: float, duration: float, stats: TrafficStats, events: list[str]) -> str:
    success = "-" if stats.success is None else f"{stats.success * 100:.2f}%"
    line = (
        f"meshkit demo  {elapsed:4.0f}s / {duration:.0f}s  ·  {DEMO_USER}: "
        f"{stats.requests} requests, {success} ok, {stats.checkouts} orders"
    )
    return "\n".join([line, *events])


def missing_edges(total: Mapping[Edge, Any]) -> list[Edge]:
    return sorted(edge for edge in EDGES if edge not in total or total[edge].count == 0)


@dataclass(frozen=True)
class DemoOptions:
    duration: float = 60.0
    rate: float = 10.0
    interval: float | None = None
    kill: bool = True
    canary: bool = False  # inventory 2.0.0 as a canary, then a bad 2.0.1 rolled back


MeshFactory = Callable[[Supervisor, Path], tuple[Identities, Mapping[str, str]]]


class Sidecars(Protocol):
    """Shop services run as something other than meshkit instances (a plain app behind
    an Envoy sidecar, in ``meshkit demo --consul-native``), started before the shop."""

    services: frozenset[str]

    def start(self, supervisor: Supervisor, directory: Path, mesh_env: Mapping[str, str]) -> None:
        """Start them and make them discoverable; return once they serve."""

    def describe(self) -> list[str]:
        """Lines saying what kind of member each shop service is, once all run."""

    def report(self) -> list[str]:
        """Lines for the summary: what they carried."""


def dev_control_plane(supervisor: Supervisor, directory: Path) -> tuple[Identities, dict[str, str]]:
    """The demo's mesh: a dev registry and a dev CA that issues every certificate."""
    plane = start_control_plane(supervisor, directory)
    return CAIdentities(plane, directory / "clients"), plane.env()


def run_demo(
    options: DemoOptions,
    supervisor: Supervisor,
    directory: Path,
    display: Display,
    *,
    mesh: MeshFactory = dev_control_plane,
    sidecars: Sidecars | None = None,
) -> int:
    plane = "dev registry, dev CA" if sidecars is None else "dev registry with Connect"
    display.show(f"starting the control plane ({plane})...")
    identities, mesh_env = mesh(supervisor, directory)
    context = identities.client_context(DEMO_USER)
    outside = sidecars.services if sidecars is not None else frozenset()
    display.show("starting the shop: " + ", ".join(f"{s} x{n}" for s, n in SHOP) + "...")
    if sidecars is not None:
        sidecars.start(supervisor, directory, mesh_env)
    shop = [(service, count) for service, count in SHOP if service not in outside]
    instances = start_shop(supervisor, directory, identities, mesh_env, shop=shop)
    routing = None
    if options.canary:
        display.show("starting inventory canaries: " + ", ".join(c[0] for c in CANARIES) + "...")
        instances += start_canaries(supervisor, directory, identities, mesh_env)
        routing = RoutingWriter(mesh_env["CONSUL_HTTP_ADDR"])
        routing.prepare()
    web = next(i for i in instances if i.service == "web")
    registry_port = int(mesh_env["CONSUL_HTTP_ADDR"].rpartition(":")[2])
    apps = [f"examples.shop.{service}:app" for service, _ in shop]
    dashboard = start_dashboard(supervisor, registry_port, apps=apps)
    events = [
        f"shop UI: https://127.0.0.1:{web.port}/  (dev certificates: the browser will warn)\n"
        f"dashboard: {dashboard}"
    ]
    events += sidecars.describe() if sidecars is not None else []
    stats, stop = TrafficStats(), threading.Event()
    threads = drive(lambda: HttpsSender(web.port, context), stats, stop, rate=options.rate)
    board: Scoreboard[Edge] = Scoreboard()
    started = time.monotonic()
    try:
        if routing is None:
            watch(options, instances, board, stats, events, display, started, outside=outside)
        else:
            watch_canary(options, instances, board, stats, events, display, started, routing)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    events += sidecars.report() if sidecars is not None else []
    summarize(board, stats, events, display, time.monotonic() - started)
    return 0


def watch(
    options: DemoOptions,
    instances: list[Instance],
    board: Scoreboard[Edge],
    stats: TrafficStats,
    events: list[str],
    display: Display,
    started: float,
    *,
    outside: Collection[str] = (),
) -> None:
    """Scrape and show the window's table every interval; kill the victim halfway.

    The last tick comes at the end of the run however slow the ticks were (a loaded
    machine), so the kill and at least one table always happen.
    """
    interval = options.interval or (2.0 if display.interactive else 5.0)
    end = started + options.duration
    last = started
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(max(0.0, min(interval, end - time.monotonic())))
            elapsed = time.monotonic() - started
            # Scrape first: what the victim counted until now stays in the totals.
            window = board.update(scrape(instances, outside=outside))
            if options.kill and elapsed >= options.duration / 2:
                _kill_victim(instances, events, elapsed)
            table = format_table(edge_stats(window, time.monotonic() - last))
            last = time.monotonic()
            display.show(progress(elapsed, options.duration, stats, events) + "\n\n" + table)
            if elapsed >= options.duration:
                return


def start_canaries(
    supervisor: Supervisor, directory: Path, identities: Identities, mesh_env: Mapping[str, str]
) -> list[Instance]:
    canaries = [
        start_instance(
            supervisor,
            directory,
            identities,
            mesh_env,
            SERVICE,
            name,
            extra_env=canary_env(version, faults),
        )
        for name, version, faults in CANARIES
    ]
    wait_ready(canaries)
    return canaries


def watch_canary(
    options: DemoOptions,
    instances: list[Instance],
    board: Scoreboard[Edge],
    stats: TrafficStats,
    events: list[str],
    display: Display,
    started: float,
    routing: RoutingWriter,
) -> None:
    """The canary's phases, a splitter written at the start of each; per tick, the edges
    and inventory's traffic per version; at the end, demo-user's success per phase."""
    interval = options.interval or (2.0 if display.interactive else 5.0)
    by_version = VersionBoard()
    boundaries: list[tuple[Phase, int, int]] = []
    end = started + options.duration
    last = started
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            elapsed = time.monotonic() - started
            index = phase_at(elapsed, options.duration)
            if len(boundaries) <= index:
                phase = PHASES[index]
                routing.write("service-splitter", phase.splitter())
                events.append(f"{elapsed:.0f}s: splitter written: {phase.name}")
                # A phase's calls count from a second after its write: the change reaches
                # every caller within it, and calls already sent finish where they went.
                time.sleep(PHASE_SETTLE)
                boundaries.append((phase, stats.requests, stats.failures))
            next_phase = started + (index + 1) * options.duration / len(PHASES)
            time.sleep(
                max(0.0, min(interval, end - time.monotonic(), next_phase - time.monotonic()))
            )
            texts = metrics_texts(instances)
            services = {instance.name: instance.service for instance in instances}
            edges = {name: _edges(text, services[name], ()) for name, text in texts.items()}
            window, versions_window = board.update(edges), by_version.update(texts)
            table = format_table(edge_stats(window, time.monotonic() - last))
            last = time.monotonic()
            elapsed = time.monotonic() - started
            body = table + "\n\n" + version_table(versions_window)
            display.show(progress(elapsed, options.duration, stats, events) + "\n\n" + body)
            if elapsed >= options.duration:
                break
    events.append("demo-user's success per phase:")
    events.extend(result.line() for result in phase_results(boundaries, stats))


def _kill_victim(instances: list[Instance], events: list[str], elapsed: float) -> None:
    for instance in instances:
        if instance.name == VICTIM and instance.running:
            instance.child.kill()
            events.append(f"{elapsed:.0f}s: killed {VICTIM} (SIGKILL, no deregistration)")


def summarize(
    board: Scoreboard[Edge],
    stats: TrafficStats,
    events: list[str],
    display: Display,
    elapsed: float,
) -> None:
    lines = ["", f"summary over {elapsed:.0f}s", format_table(edge_stats(board.total, elapsed)), ""]
    lines.append(progress(elapsed, elapsed, stats, events).splitlines()[0])
    lines.extend(events[1:])
    missing = missing_edges(board.total)
    if missing:
        lines.append("edges that carried no traffic: " + ", ".join(str(e) for e in missing))
    display.show("\n".join(lines)) if not display.interactive else display.out.write(
        "\n".join(lines) + "\n"
    )


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT unwind as KeyboardInterrupt, so the supervisor stops everything.

    SIGINT is set explicitly: a program started in the background by a shell inherits
    it ignored, and Ctrl-C must stop the demo wherever it was started from.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def workspace(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="meshkit-demo-") as temporary:
        yield Path(temporary)


def demo(
    options: DemoOptions,
    directory: Path | None,
    display: Display,
    *,
    mesh: MeshFactory = dev_control_plane,
    sidecars: Sidecars | None = None,
) -> int:
    """The whole demo; every process it started is stopped however it ends."""
    with (
        interruptible(),
        workspace(directory) as workdir,
        Supervisor(workdir / "logs") as supervisor,
    ):
        try:
            return run_demo(options, supervisor, workdir, display, mesh=mesh, sidecars=sidecars)
        except KeyboardInterrupt:
            display.out.write("interrupted: stopping everything\n")
            return 0
