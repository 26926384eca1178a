"""OTLP export through the stock exporter's HTTP session, against real collectors on
127.0.0.1: kept-alive connections, a connection the collector dropped, mutual TLS from
the standard variables, unreadable TLS files refused at startup."""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshkit.ca.x509 import LocalAuthority, certificate_pem, new_private_key, private_key_pem
from meshkit.errors import ConfigError
from meshkit.telemetry._otel_sdk import SpanPoster
from meshkit.telemetry.sdk import _otlp_exporter, configure_tracing_from_env
from tests._sink import PostSink, post_sink

BODIES = [b"first batch", b"second batch", b"third batch"]


def post_all(poster: SpanPoster) -> list[str]:
    try:
        return [poster.post(body, 1).name for body in BODIES]
    finally:
        poster.shutdown()


def to(sink: PostSink, environ: dict[str, str] | None = None) -> SpanPoster:
    """What posts spans in ``meshkit run``, pointed at ``sink``."""
    poster = _otlp_exporter(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.url("/v1/traces")} | (environ or {})
    )
    assert isinstance(poster, SpanPoster)
    return poster


def test_posts_share_one_kept_alive_connection() -> None:
    with post_sink(keep_alive=True) as sink:
        assert post_all(to(sink)) == ["SUCCESS"] * 3
    assert sink.bodies == BODIES
    assert sink.connections == 1


def test_a_connection_the_collector_dropped_is_reopened_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with post_sink(keep_alive=True, hang_up_after=1) as sink:
        assert post_all(to(sink)) == ["SUCCESS"] * 3
    assert sink.bodies == BODIES
    assert sink.connections == 3
    assert "retrying" not in caplog.text  # no backoff: the session reconnected


def test_headers_and_compression_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the stock exporter reads from the environment, the poster reads too."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret,x-tenant=shop%20one")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    with post_sink(keep_alive=True) as sink:
        assert post_all(to(sink)) == ["SUCCESS"] * 3
    assert [gzip.decompress(body) for body in sink.bodies] == BODIES
    for headers in sink.headers:
        assert (headers["api-key"], headers["x-tenant"]) == ("secret", "shop one")
        assert headers["content-encoding"] == "gzip"
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")


class CollectorTLS:
    """A collector's server certificate for 127.0.0.1, from a mesh authority's CA, which
    also issues the client certificates the collector accepts."""

    def __init__(self, directory: Path) -> None:
        self.authority = LocalAuthority()
        key = new_private_key()
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")]))
            .issuer_name(self.authority.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(self.authority.intermediate_key, hashes.SHA256())
        )
        self.bundle = directory / "bundle.pem"
        self.bundle.write_text(self.authority.bundle_pem)
        server_cert, server_key = directory / "collector.pem", directory / "collector-key.pem"
        server_cert.write_text(
            certificate_pem(certificate) + certificate_pem(self.authority.intermediate)
        )
        server_key.write_text(private_key_pem(key))
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.load_cert_chain(server_cert, server_key)
        self.server.load_verify_locations(cadata=self.authority.bundle_pem)
        self.server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
        client_cert, client_key, _ = self.authority.issue("orders").write(directory)
        self.client_cert, self.client_key = str(client_cert), str(client_key)


def test_mutual_tls_to_the_collector_from_the_standard_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = CollectorTLS(tmp_path)
    (tmp_path / "other").mkdir()
    stranger = CollectorTLS(tmp_path / "other")
    # As on hosts that set it: requests alone would trust this bundle instead of ours.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stranger.bundle))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # failures retry until then
    environ = {
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls.bundle),
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": tls.client_cert,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": tls.client_key,
    }
    with post_sink(tls=tls.server, keep_alive=True) as sink:
        assert post_all(to(sink, environ)) == ["SUCCESS"] * 3
        # Without a client certificate, or trusting another CA: no post gets through.
        anonymous = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls.bundle)}
        untrusting = environ | {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(stranger.bundle)}
        for refused in (anonymous, untrusting):
            poster = to(sink, refused)
            assert poster.post(b"nope", 1).name == "FAILURE"
            poster.shutdown()
    assert sink.bodies == BODIES


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE: CA bundle '"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE / OTEL_EXPORTER_OTLP_CLIENT_KEY: "
            "client certificate '",
        ),
    ],
)
def test_unreadable_tls_files_are_a_config_error_at_startup(
    tmp_path: Path, variable: str, message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    environ = {"OTEL_TRACES_EXPORTER": "otlp", variable: str(garbage)}
    with pytest.raises(ConfigError) as raised:
        configure_tracing_from_env("orders", environ)
    assert str(raised.value).startswith(message)
    assert "garbage.pem" in str(raised.value)
