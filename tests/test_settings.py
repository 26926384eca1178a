from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.errors import ConfigError
from meshkit.settings import MeshSettings


def test_defaults_are_valid() -> None:
    settings = MeshSettings(service="payments")
    assert str(settings.spiffe_id) == "spiffe://meshkit.local/ns/default/svc/payments"
    assert settings.tls_mode == "strict"


def test_from_env_reads_variables() -> None:
    env = {
        "MESHKIT_SERVICE": "cart",
        "MESHKIT_NAMESPACE": "shop",
        "MESHKIT_PORT": "8443",
        "MESHKIT_ADMIN_PORT": "9100",
        "MESHKIT_CERT_FILE": "/c.pem",
        "MESHKIT_KEY_FILE": "/k.pem",
        "MESHKIT_BUNDLE_FILE": "/b.pem",
        "CONSUL_HTTP_ADDR": "consul:8500",
        "CONSUL_HTTP_TOKEN": "secret",
        "MESHKIT_ACCESS_LOG": "true",
    }
    settings = MeshSettings.from_env(env)
    assert settings.service == "cart"
    assert settings.port == 8443
    assert settings.admin_port == 9100
    assert settings.cert_file == Path("/c.pem")
    assert settings.consul_http_addr == "consul:8500"
    assert settings.consul_token == "secret"
    assert settings.access_log is True
    assert "secret" not in repr(settings)


def test_overrides_win_over_env() -> None:
    settings = MeshSettings.from_env({"MESHKIT_SERVICE": "cart"}, service="web")
    assert settings.service == "web"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MESHKIT_PORT": "abc"}, "MESHKIT_PORT='abc': expected a port number"),
        ({"MESHKIT_PORT": "70000"}, "MESHKIT_PORT='70000': expected a port number"),
        ({"MESHKIT_DRAIN_TIMEOUT": "-1"}, "MESHKIT_DRAIN_TIMEOUT='-1'"),
        ({"MESHKIT_ACCESS_LOG": "maybe"}, "MESHKIT_ACCESS_LOG='maybe': expected true or false"),
        ({"MESHKIT_SERVICE": "Bad_Name"}, "MESHKIT_SERVICE=Bad_Name: must be a DNS label"),
        ({"MESHKIT_TLS_MODE": "off"}, "MESHKIT_TLS_MODE=off: must be strict or permissive"),
        ({"MESHKIT_TRUST_DOMAIN": "Upper.Case"}, "MESHKIT_TRUST_DOMAIN=Upper.Case"),
        ({"MESHKIT_CERT_FILE": "/c.pem"}, "MESHKIT_CERT_FILE=/c.pem: cert_file, key_file"),
    ],
)
def test_invalid_env_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MeshSettings.from_env(env)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_invalid_argument_names_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"^port: must be a port number"):
        MeshSettings(port=-1)


def test_env_wins_over_code_defaults() -> None:
    base = MeshSettings(service="payments", port=8443)
    settings = MeshSettings.from_env({"MESHKIT_PORT": "9443"}, base=base)
    assert (settings.service, settings.port) == ("payments", 9443)


def test_identity_source_is_validated() -> None:
    assert MeshSettings().identity == "auto"
    assert MeshSettings.from_env({"MESHKIT_IDENTITY": "consul"}).identity == "consul"
    with pytest.raises(ConfigError, match="MESHKIT_IDENTITY=vault: must be auto, files"):
        MeshSettings.from_env({"MESHKIT_IDENTITY": "vault"})
    with pytest.raises(ConfigError, match="identity: consul needs consul_http_addr"):
        MeshSettings(identity="consul", consul_http_addr=None)
    with pytest.raises(ConfigError, match="identity: ca needs ca_url"):
        MeshSettings(identity="ca")
