"""``meshkit cert issue`` and ``meshkit call``: a mesh identity for a person or a script,
and one call to a service by name with it.

Both stand on what services use: the certificate comes from the CA client
(``CAIdentity``, the key made here and never sent), the call goes through the mesh
client (discovery in the registry, mTLS, the server's SPIFFE ID checked before the
request leaves). The CA signs with a join token: ``--token``, or one made on the spot
from a local CA directory (``--ca-dir``, for its admin), or none for a ``--dev`` CA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from meshkit._httpx import Response
from meshkit.ca.client import BUNDLE_FILE, CERT_FILE, KEY_FILE, CAIdentity
from meshkit.ca.store import CAStore
from meshkit.ca.tokens import TokenStore
from meshkit.cli._args import namespace_name, service_name
from meshkit.client import AttemptEnded, BaseClientHooks, MeshClientFactory, expected_identity
from meshkit.errors import ConfigError
from meshkit.mesh import first_mesh_error
from meshkit.registry import ConsulRegistry, WatchedCache
from meshkit.registry.base import Endpoint
from meshkit.settings import MeshSettings
from meshkit.tls import TLSContexts, TLSMaterial

#: A token made from ``--ca-dir`` lives long enough for the one signing it is made for.
_TOKEN_TTL = dt.timedelta(minutes=2)
_CALLER_DIR = Path(".meshkit") / "callers"


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``meshkit cert issue`` and ``meshkit call``."""
    cert = subparsers.add_parser("cert", help="certificates for people and scripts")
    cert_commands = cert.add_subparsers(dest="cert_command", metavar="COMMAND", required=True)
    issue = cert_commands.add_parser(
        "issue",
        help="a certificate for a SPIFFE ID from the CA, written as PEM files",
        description="Get a key and certificate for --service from the CA (MESHKIT_CA_URL, "
        "MESHKIT_CA_FINGERPRINT) and write svid.pem, svid-key.pem and bundle.pem to --out.",
    )
    issue.add_argument(
        "--service", required=True, type=service_name, help="the service name in the SPIFFE ID"
    )
    _add_identity_flags(issue)
    issue.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory for the three PEM files (made if missing)",
    )
    issue.set_defaults(handler=_issue_command)

    call = subparsers.add_parser(
        "call",
        help="one HTTP request to a mesh service by name, with a chosen identity",
        description="Find SERVICE in the registry (CONSUL_HTTP_ADDR), call PATH over mTLS as "
        "--as (a certificate from the CA) or with --cert-dir's files, and print the peer's "
        "verified SPIFFE ID, the status, the headers and the body. Exits 1 on a status of "
        "400 or more.",
    )
    call.add_argument("service", metavar="SERVICE", help="service name, or service.namespace")
    call.add_argument(
        "path", metavar="PATH", type=request_path, help="request path, e.g. /hello?x=1"
    )
    call.add_argument(
        "--as",
        dest="caller",
        default="meshkit-cli",
        type=service_name,
        metavar="NAME",
        help="the service name to call as, certified by the CA; the certificate is kept in "
        ".meshkit/callers/ and reused while valid (default: meshkit-cli)",
    )
    _add_identity_flags(call)
    call.add_argument(
        "--cert-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="call with the files `meshkit cert issue --out DIR` wrote, instead of --as",
    )
    call.add_argument(
        "-X",
        "--request",
        dest="method",
        default=None,
        metavar="METHOD",
        help="HTTP method (default: GET, or POST with -d)",
    )
    call.add_argument("-d", "--data", default=None, help="request body; @FILE reads it from FILE")
    call.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header; repeat for more",
    )
    call.add_argument(
        "--timeout", type=float, default=10.0, help="seconds for the whole call (default 10)"
    )
    call.set_defaults(handler=_call_command)


def request_path(text: str) -> str:
    """A path on the service: an absolute URL would leave the mesh (the client passes
    other hosts through), and the printed peer would not be who answered."""
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected a path starting with /, got {text!r}")
    return text


def _add_identity_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        default=None,
        type=namespace_name,
        help="namespace in the SPIFFE ID (default: MESHKIT_NAMESPACE, else default)",
    )
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token", default=None, help="a join token for this SPIFFE ID (`meshkit ca token create`)"
    )
    tokens.add_argument(
        "--ca-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the CA's directory: make a one-use join token there (CA admins); "
        "without --token or --ca-dir only a --dev CA signs",
    )


# -- cert issue ----------------------------------------------------------------------------


def _issue_command(args: argparse.Namespace) -> int:
    settings = identity_settings(args.service, args.namespace, args.out, args.token, args.ca_dir)
    material = anyio.run(CAIdentity(settings).enroll)
    directory = settings.state_dir
    print(f"certificate for {material.spiffe_id} written to {directory}:", file=sys.stderr)
    print(f"MESHKIT_CERT_FILE={directory / CERT_FILE}")
    print(f"MESHKIT_KEY_FILE={directory / KEY_FILE}")
    print(f"MESHKIT_BUNDLE_FILE={directory / BUNDLE_FILE}")
    return 0


def identity_settings(
    service: str,
    namespace: str | None,
    directory: Path,
    token: str | None,
    ca_dir: Path | None,
) -> MeshSettings:
    """The settings ``CAIdentity`` needs to certify ``service``: the CA from the
    environment, the token given or made in ``ca_dir`` (whose trust domain wins)."""
    overrides: dict[str, Any] = {"service": service, "data_dir": directory, "join_token": token}
    if namespace is not None:
        overrides["namespace"] = namespace
    store = CAStore.open(ca_dir) if ca_dir is not None else None
    if store is not None:
        overrides["trust_domain"] = store.trust_domain
    settings = MeshSettings.from_env(**overrides)
    if not settings.ca_url or not settings.ca_fingerprint:
        raise ConfigError(
            "no CA: set MESHKIT_CA_URL and MESHKIT_CA_FINGERPRINT (`meshkit up` prints them)"
        )
    if store is not None:
        settings = settings.replace(join_token=_one_use_token(store, settings))
    return settings


def _one_use_token(store: CAStore, settings: MeshSettings) -> str:
    tokens = TokenStore(store.tokens_path)
    try:
        return tokens.create(settings.spiffe_id, ttl=_TOKEN_TTL.total_seconds(), uses=1)
    finally:
        tokens.close()


# -- call ----------------------------------------------------------------------------------


class _Answered(BaseClientHooks):
    """Remembers the endpoint whose answer the call returned (its last attempt)."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None

    def on_attempt_end(self, event: AttemptEnded) -> None:
        self.endpoint = event.endpoint


def _call_command(args: argparse.Namespace) -> int:
    material, settings = _caller(args)
    body = _body(args.data)
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    headers = _headers(args.headers)
    hooks = _Answered()
    response = anyio.run(
        lambda: call(
            settings,
            material,
            args.service,
            method,
            args.path,
            body,
            headers,
            hooks,
            timeout=args.timeout,
        ),
        backend_options={"use_uvloop": True},
    )
    peer = expected_identity(args.service, settings)[1]
    where = f" at {hooks.endpoint.address}:{hooks.endpoint.port}" if hooks.endpoint else ""
    print(f"peer: {peer} (verified by mTLS){where}")
    print(format_response(response))
    return 0 if response.status_code < 400 else 1


def _caller(args: argparse.Namespace) -> tuple[TLSMaterial, MeshSettings]:
    """The identity to call with: --cert-dir's files, or a certificate for --as."""
    if args.cert_dir is not None:
        paths = [args.cert_dir / name for name in (CERT_FILE, KEY_FILE, BUNDLE_FILE)]
        material = TLSMaterial.from_files(*paths)
        identity = material.spiffe_id
        settings = MeshSettings.from_env(
            trust_domain=identity.trust_domain, namespace=identity.namespace
        )
        return material, settings.replace(service=identity.service)
    namespace = args.namespace
    home = _CALLER_DIR / (namespace or "default") / args.caller
    settings = identity_settings(args.caller, namespace, home, args.token, args.ca_dir)
    ca = CAIdentity(settings)
    # A token is for a new certificate; without one, a still valid stored one is reused.
    material = anyio.run(ca.enroll if settings.join_token else ca.obtain)
    return material, settings


async def call(
    settings: MeshSettings,
    material: TLSMaterial,
    service: str,
    method: str,
    path: str,
    body: bytes | None,
    headers: Sequence[tuple[str, str]],
    hooks: BaseClientHooks | None = None,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 (the call's own timeout, as the client takes it)
) -> Response:
    """One call to ``service`` through the mesh client, as ``material``'s identity."""
    if not settings.consul_http_addr:
        raise ConfigError("no registry: set CONSUL_HTTP_ADDR (`meshkit up` prints it)")
    registry = ConsulRegistry.from_settings(settings)
    try:
        async with WatchedCache(registry) as cache:
            clients = MeshClientFactory(cache, TLSContexts(material), settings, hooks=hooks)
            try:
                return await clients.client(service).request(
                    method, path, content=body, headers=headers, timeout=timeout
                )
            finally:
                await clients.aclose()
    except BaseExceptionGroup as group:
        # The cache's task group wraps the call's error: tell it as the one line it is.
        error = first_mesh_error(group)
        if error is None:
            raise
        raise error from None


def _body(data: str | None) -> bytes | None:
    if data is None or not data.startswith("@"):
        return None if data is None else data.encode()
    try:
        return Path(data[1:]).read_bytes()
    except OSError as exc:
        raise ConfigError(f"-d {data}: {exc.strerror or exc}") from exc


def _headers(lines: Sequence[str]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ConfigError(f"-H {line!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    return headers


def format_response(response: Response) -> str:
    """Status line, headers and body, as ``curl -i`` shows them."""
    lines = [f"{response.http_version} {response.status_code} {response.reason_phrase}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    return "\n".join([*lines, "", response.text])
