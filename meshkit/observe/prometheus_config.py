"""The Prometheus scrape configuration for a mesh: ``meshkit prometheus-config`` prints it.

Prometheus finds the instances the way the mesh does, in the registry (Consul service
discovery, ``consul_sd_configs``), and scrapes each one's admin port, which every
instance publishes in its registration metadata (``admin_port``); the service port is
mTLS-only and serves no metrics. Relabelling turns the registry's view into target
labels: ``job`` is the service's name, ``namespace`` its namespace, ``version`` its
version, so a series says whose it is without the app labelling it.

The text is YAML written by hand (strings as JSON strings, which YAML reads the same):
a scrape configuration has a fixed shape and meshkit carries no YAML dependency.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from meshkit.errors import ConfigError
from meshkit.registry.consul import parse_address

#: Instances without a numeric admin port (e.g. Consul itself) are not meshkit's.
_ADMIN_PORT = "[0-9]+"


@dataclass(frozen=True, kw_only=True)
class ScrapeSettings:
    """What the printed configuration depends on."""

    registry: str = "127.0.0.1:8500"  # CONSUL_HTTP_ADDR's forms
    job: str = "meshkit"
    interval: str = "15s"  # Prometheus duration
    datacenter: str | None = None

    def __post_init__(self) -> None:
        parse_address(self.registry)  # ConfigError names CONSUL_HTTP_ADDR
        if not _is_duration(self.interval):
            raise ConfigError(
                f"interval: expected a duration such as 15s or 1m, got {self.interval!r}"
            )


def _is_duration(text: str) -> bool:
    number = text.rstrip("smhdwy")
    return bool(number.isdigit() and text[len(number) :] in ("ms", "s", "m", "h", "d", "w", "y"))


def _q(text: str) -> str:
    return json.dumps(text)


def _relabel(
    source: list[str], target: str, *, regex: str = "(.+)", replacement: str = "$1"
) -> str:
    sources = ", ".join(source)
    return (
        f"      - source_labels: [{sources}]\n"
        f"        regex: {_q(regex)}\n"
        f"        target_label: {target}\n"
        f"        replacement: {_q(replacement)}\n"
    )


def scrape_config(settings: ScrapeSettings) -> str:
    """The whole ``prometheus.yml``: global intervals and one consul_sd scrape job."""
    scheme, host, port = parse_address(settings.registry)
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    admin = "__meta_consul_service_metadata_admin_port"
    datacenter = f"        datacenter: {_q(settings.datacenter)}\n" if settings.datacenter else ""
    return (
        "# meshkit: every instance's admin /metrics, found in the registry (consul_sd).\n"
        "global:\n"
        f"  scrape_interval: {settings.interval}\n"
        f"  evaluation_interval: {settings.interval}\n"
        "scrape_configs:\n"
        f"  - job_name: {_q(settings.job)}\n"
        "    metrics_path: /metrics\n"
        "    consul_sd_configs:\n"
        f"      - server: {_q(server)}\n"
        f"        scheme: {scheme}\n"
        f"{datacenter}"
        "        # With ACLs, add: token: <CONSUL_HTTP_TOKEN's value> (not printed here).\n"
        "    relabel_configs:\n"
        "      # Only meshkit instances: they publish their admin port.\n"
        f"      - source_labels: [{admin}]\n"
        f"        regex: {_q(_ADMIN_PORT)}\n"
        "        action: keep\n"
        "      # The admin port at the node's address, then at the service's own when it\n"
        "      # has one (bracketed when it is IPv6), as the registry's HTTP check does.\n"
        + _relabel(
            ["__meta_consul_address", admin],
            "__address__",
            regex=f"([^:]+);({_ADMIN_PORT})",
            replacement="$1:$2",
        )
        + _relabel(
            ["__meta_consul_service_address", admin],
            "__address__",
            regex=f"([^:]+);({_ADMIN_PORT})",
            replacement="$1:$2",
        )
        + _relabel(
            ["__meta_consul_service_address", admin],
            "__address__",
            regex=f"(.*:.*);({_ADMIN_PORT})",
            replacement="[$1]:$2",
        )
        + "      # Whose series these are: the service, its namespace, version and instance.\n"
        + _relabel(["__meta_consul_service"], "job")
        + _relabel(["__meta_consul_service_metadata_namespace"], "namespace")
        + _relabel(["__meta_consul_service_metadata_version"], "version")
        + _relabel(["__meta_consul_service_id"], "service_instance_id")
    )
