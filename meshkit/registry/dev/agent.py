"""The dev registry's agent: what Consul's agent endpoints do to the catalog.

Validation follows Consul's handlers (agent/agent_endpoint.go, structs.CheckType.Validate,
structs.ValidateServiceMetadata, structs.ValidateWeights) and fails with ``AgentError``
carrying Consul's text. Check durations arrive in nanoseconds and are run as Consul runs
them: an interval under a second is raised to one (``checks``), a timeout that is not
positive means the default, DeregisterCriticalServiceAfter is raised to its minimum.
Every mutation ends in one ``Store.commit()``: one new index, one wake-up.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from meshkit.registry.dev.catalog import apply_deregister, apply_register, prepare_register
from meshkit.registry.dev.checks import (
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_SCRIPT_TIMEOUT,
    CheckRunner,
    HTTPProbe,
    ScriptProbe,
    truncate,
)
from meshkit.registry.dev.decode import (
    CheckDefinition,
    ServiceDefinition,
    ports_problem,
    validate_meta,
    weights_problem,
)
from meshkit.registry.dev.durations import SECOND, format_duration
from meshkit.registry.dev.errors import AgentError, bad_request, is_any_address, rpc_error
from meshkit.registry.dev.state import CRITICAL, PASSING, STATUSES, Check, Node, Service, Store

SERVICE_MAINT_PREFIX = "_service_maintenance:"
NODE_MAINT_CHECK = "_node_maintenance"
DEFAULT_NODE_MAINT_REASON = (
    "Maintenance mode is enabled for this node, but no reason was provided. "
    "This is a default message."
)
DEFAULT_SERVICE_MAINT_REASON = (
    "Maintenance mode is enabled for this service, but no reason was provided. "
    "This is a default message."
)
SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent from remote calls; "
    "to enable, configure 'enable_script_checks' to true"
)
CONSUL_VERSION = "1.20.0"


class DevAgent:
    """One node, its services and checks, and the checks it runs."""

    def __init__(
        self,
        *,
        node_name: str | None = None,
        datacenter: str = "dc1",
        enable_script_checks: bool = False,
        reap_interval: float = 30.0,
        deregister_minimum: float = 60.0,
    ) -> None:
        self.store = Store(datacenter=datacenter)
        self.node_name = node_name or socket.gethostname()
        self.node_id = str(uuid.uuid4())
        self.enable_script_checks = enable_script_checks
        self.reap_interval = reap_interval
        self.deregister_minimum = deregister_minimum
        self.runner = CheckRunner(self._on_check_result)
        self._deregister_after: dict[str, float] = {}  # check id -> seconds
        #: The definitions of the agent's own checks, kept to run them again after a
        #: restart from ``--data-dir`` (``restore_checks``).
        self.definitions: dict[str, CheckDefinition] = {}
        self._restored: list[Check] = []
        self._bootstrap()

    @contextmanager
    def _write(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.store.commit()

    def _bootstrap(self) -> None:
        """What a fresh ``consul agent -dev`` holds: its node, serfHealth, the consul service."""
        with self._write():
            self.store.upsert_node(
                Node(
                    name=self.node_name,
                    address="127.0.0.1",
                    id=self.node_id,
                    datacenter=self.store.datacenter,
                    tagged_addresses={
                        "lan": "127.0.0.1",
                        "lan_ipv4": "127.0.0.1",
                        "wan": "127.0.0.1",
                        "wan_ipv4": "127.0.0.1",
                    },
                    meta={"consul-network-segment": "", "consul-version": CONSUL_VERSION},
                )
            )
        with self._write():
            self.store.upsert_check(
                Check(
                    node=self.node_name,
                    check_id="serfHealth",
                    name="Serf Health Status",
                    status=PASSING,
                    output="Agent alive and reachable",
                )
            )
        with self._write():
            self.store.upsert_service(
                Service(
                    node=self.node_name,
                    id="consul",
                    name="consul",
                    port=8300,
                    meta={
                        "raft_version": "3",
                        "serf_protocol_current": "2",
                        "serf_protocol_max": "5",
                        "serf_protocol_min": "1",
                        "version": CONSUL_VERSION,
                    },
                )
            )

    async def run(self) -> None:
        """Run the probes and the reaper until cancelled (the server's lifespan owns this)."""
        try:
            async with anyio.create_task_group() as task_group:
                self.runner.bind(task_group)
                with self._write():
                    for check in self._restored:
                        self._add_check(check, self.definitions[check.check_id])
                self._restored.clear()
                task_group.start_soon(self._reap_forever)
                await anyio.sleep_forever()
        finally:
            self.runner.stop_all()

    # -- services ------------------------------------------------------------------------

    def local_services(self) -> dict[str, Service]:
        """The agent's own registrations (the consul service lives in the catalog only)."""
        own = self.store.services.get(self.node_name, {})
        return {sid: s for sid, s in own.items() if sid != "consul"}

    def register_service(self, definition: ServiceDefinition, *, replace_checks: bool) -> None:
        service = self._validated_service(definition)
        count = len(definition.checks)
        checks = [
            (self._service_check(service, d, _default_check_id(service.id, i, count)), d)
            for i, d in enumerate(definition.checks)
        ]
        if any(d.script_args for d in definition.checks) and not self.enable_script_checks:
            raise rpc_error(SCRIPTS_DISABLED)
        with self._write():
            self.store.upsert_service(service)
            wanted = {check.check_id for check, _ in checks}
            if replace_checks:
                for stale in list(self.store.checks_of_service(self.node_name, service.id)):
                    if stale.check_id not in wanted:
                        self._remove_check(stale.check_id)
            for check, check_definition in checks:
                self._add_check(check, check_definition)

    def _validated_service(self, definition: ServiceDefinition) -> Service:
        if not definition.name:
            raise bad_request("Missing service name")
        if is_any_address(definition.address):
            raise bad_request("Invalid service address")
        problem = ports_problem(definition.port, definition.tagged_addresses)
        if problem:
            raise bad_request(problem)
        weights = {"Passing": 1, "Warning": 1}
        if definition.weights is not None:
            problem = weights_problem(definition.weights)
            if problem:
                raise bad_request(f"Invalid Weights: {problem}")
            weights = {"Passing": 0, "Warning": 0} | definition.weights  # Go's zeros
        meta_error = validate_meta(definition.meta)
        if meta_error:
            raise bad_request(f"Invalid Service Meta: {meta_error}")
        for check in definition.checks:
            problem = check.validate()
            if problem:
                raise bad_request(f"Invalid check: {problem}")
        for check in definition.checks:
            if check.status and check.status not in STATUSES:
                raise bad_request("Status for checks must 'passing', 'warning', 'critical'")
        return Service(
            node=self.node_name,
            id=definition.id or definition.name,
            name=definition.name,
            tags=list(definition.tags),
            address=definition.address,
            port=definition.port,
            meta=dict(definition.meta),
            weights=weights,
            enable_tag_override=definition.enable_tag_override,
            tagged_addresses=_default_tagged(definition),
            kind=definition.kind,
            connect=dict(definition.connect),
            proxy=dict(definition.proxy),
        )

    def _service_check(self, service: Service, check: CheckDefinition, default_id: str) -> Check:
        built = self._check_from_definition(check, check.check_id or default_id)
        built.name = check.name or f"Service '{service.name}' check"
        built.service_id, built.service_name = service.id, service.name
        built.service_tags = list(service.tags)
        return built

    def _check_from_definition(self, definition: CheckDefinition, check_id: str) -> Check:
        return Check(
            node=self.node_name,
            check_id=check_id,
            name=definition.name,
            status=definition.status or CRITICAL,
            notes=definition.notes,
            type=definition.type,
            interval=format_duration(definition.interval),
            timeout=format_duration(definition.timeout),
            definition=_check_definition_json(definition),
        )

    def deregister_service(self, service_id: str) -> None:
        if service_id not in self.local_services():
            raise AgentError(
                404,
                f'Unknown service ID "{service_id}". '
                "Ensure that the service ID is passed, not the service name.",
            )
        with self._write():
            self._remove_service(service_id)

    def _remove_service(self, service_id: str) -> None:
        for check in list(self.store.checks_of_service(self.node_name, service_id)):
            self._remove_check(check.check_id)
        self.store.remove_service(self.node_name, service_id)

    # -- checks --------------------------------------------------------------------------

    def register_check(self, definition: CheckDefinition) -> None:
        if not definition.name:
            raise bad_request("Missing check name")
        if definition.status and definition.status not in STATUSES:
            raise bad_request("Bad check status")
        problem = definition.validate()
        if problem:
            raise bad_request(f"Invalid check: {problem}")
        check = self._check_from_definition(definition, definition.check_id or definition.name)
        if definition.service_id:
            service = self.local_services().get(definition.service_id)
            if service is None:
                raise AgentError(404, f'ServiceID "{definition.service_id}" does not exist')
            check.service_id, check.service_name = service.id, service.name
            check.service_tags = list(service.tags)
        if definition.script_args and not self.enable_script_checks:
            raise rpc_error(SCRIPTS_DISABLED)
        with self._write():
            self._add_check(check, definition)

    def restore_checks(self, definitions: dict[str, CheckDefinition]) -> None:
        """Run the agent's restored checks again, from their definitions, once serving."""
        own = self.store.checks.get(self.node_name, {})
        self.definitions = {cid: d for cid, d in definitions.items() if cid in own}
        self._restored = [own[cid] for cid in self.definitions]

    def _add_check(self, check: Check, definition: CheckDefinition) -> None:
        self.definitions[check.check_id] = definition
        self.runner.stop(check.check_id)
        self.store.upsert_check(check)
        if definition.deregister_after > 0:
            # Consul raises the timeout to its minimum (one minute) and reaps periodically.
            after = max(definition.deregister_after / SECOND, self.deregister_minimum)
            self._deregister_after[check.check_id] = after
        else:
            self._deregister_after.pop(check.check_id, None)
        if definition.ttl > 0:
            self.runner.start_ttl(check.check_id, definition.ttl / SECOND)
        elif definition.http:
            self.runner.start_probe(check.check_id, _http_probe(definition))
        elif definition.script_args:
            self.runner.start_probe(
                check.check_id,
                ScriptProbe(
                    definition.script_args,
                    definition.interval / SECOND,
                    _timeout(definition, default=DEFAULT_SCRIPT_TIMEOUT),
                ),
            )

    def _unknown_check(self, check_id: str) -> AgentError:
        return AgentError(
            404,
            f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
            "not the check name.",
        )

    def deregister_check(self, check_id: str) -> None:
        if check_id not in self.store.checks.get(self.node_name, {}):
            raise self._unknown_check(check_id)
        with self._write():
            self._remove_check(check_id)

    def _remove_check(self, check_id: str) -> None:
        self.definitions.pop(check_id, None)
        self.runner.stop(check_id)
        self._deregister_after.pop(check_id, None)
        self.store.remove_check(self.node_name, check_id)

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        check = self.store.checks.get(self.node_name, {}).get(check_id)
        if check is None:
            raise self._unknown_check(check_id)
        if not self.runner.has_ttl(check_id):
            raise rpc_error(f'CheckID "{check_id}" does not have associated TTL')
        output = truncate(output)
        self.runner.reset_ttl(check_id, output)
        with self._write():
            self.store.set_check_status(check, status, output)

    def _on_check_result(self, check_id: str, status: str, output: str) -> None:
        check = self.store.checks.get(self.node_name, {}).get(check_id)
        if check is not None:
            with self._write():
                self.store.set_check_status(check, status, output)

    # -- maintenance ----------------------------------------------------------------------

    def service_maintenance(self, service_id: str, *, enable: bool, reason: str) -> None:
        service = self.local_services().get(service_id)
        if service is None:
            raise AgentError(404, f'No service registered with ID "{service_id}"')
        check_id = SERVICE_MAINT_PREFIX + service_id
        with self._write():
            if not enable:
                self.store.remove_check(self.node_name, check_id)
            elif check_id not in self.store.checks[self.node_name]:
                check = Check(
                    node=self.node_name,
                    check_id=check_id,
                    name="Service Maintenance Mode",
                    notes=reason or DEFAULT_SERVICE_MAINT_REASON,
                    service_id=service.id,
                    service_name=service.name,
                    service_tags=list(service.tags),
                    type="maintenance",
                )
                self.store.upsert_check(check)

    def node_maintenance(self, *, enable: bool, reason: str) -> None:
        with self._write():
            if not enable:
                self.store.remove_check(self.node_name, NODE_MAINT_CHECK)
            elif NODE_MAINT_CHECK not in self.store.checks[self.node_name]:
                check = Check(
                    node=self.node_name,
                    check_id=NODE_MAINT_CHECK,
                    name="Node Maintenance Mode",
                    notes=reason or DEFAULT_NODE_MAINT_REASON,
                    type="maintenance",
                )
                self.store.upsert_check(check)

    # -- reaping -------------------------------------------------------------------------

    async def _reap_forever(self) -> None:
        while True:
            await anyio.sleep(self.reap_interval)
            self.reap()

    def reap(self) -> None:
        """Deregister services whose check has been critical past DeregisterCriticalServiceAfter."""
        now = time.monotonic()
        local = self.store.checks.get(self.node_name, {})
        doomed = {
            check.service_id
            for check_id, after in self._deregister_after.items()
            if (check := local.get(check_id)) is not None
            and check.service_id
            and check.critical_since is not None
            and now - check.critical_since > after
        }
        for service_id in doomed:
            with self._write():
                self._remove_service(service_id)

    # -- catalog writes (PUT /v1/catalog/register|deregister) -------------------------------

    def catalog_register(self, body: Any) -> None:
        registration = prepare_register(self.store, body)
        with self._write():
            apply_register(self.store, registration)

    def catalog_deregister(self, body: Any) -> None:
        with self._write():
            apply_deregister(self.store, body)


def _default_tagged(definition: ServiceDefinition) -> dict[str, dict[str, Any]]:
    """The service's tagged addresses plus the defaults Consul's agent adds for an IP
    address (addServiceInternal): lan_ipv4/wan_ipv4, or lan_ipv6/wan_ipv6."""
    tagged = dict(definition.tagged_addresses)
    try:
        ip = ipaddress.ip_address(definition.address)
    except ValueError:
        return tagged
    default = {"Address": definition.address, "Port": definition.port}
    for network in ("lan", "wan"):
        tagged.setdefault(f"{network}_ipv{ip.version}", dict(default))
    return tagged


def _default_check_id(service_id: str, position: int, count: int) -> str:
    """Consul's IDs for unnamed service checks: service:<id>, or service:<id>:<n> for several."""
    return f"service:{service_id}" if count == 1 else f"service:{service_id}:{position + 1}"


def _timeout(definition: CheckDefinition, *, default: float) -> float:
    """Consul uses a check's Timeout only when it is positive; otherwise its default."""
    return definition.timeout / SECOND if definition.timeout > 0 else default


def _http_probe(definition: CheckDefinition) -> HTTPProbe:
    return HTTPProbe(
        url=definition.http,
        interval=definition.interval / SECOND,
        timeout=_timeout(definition, default=DEFAULT_HTTP_TIMEOUT),
        method=definition.method or "GET",
        header=definition.header,
        body=definition.body,
        tls_skip_verify=definition.tls_skip_verify,
    )


def _check_definition_json(definition: CheckDefinition) -> dict[str, Any]:
    """The check's ``Definition`` object as Consul shows it on health endpoints."""
    body: dict[str, Any] = {}
    if definition.http:
        body |= {
            "HTTP": definition.http,
            "TLSSkipVerify": definition.tls_skip_verify,
            "Header": definition.header or None,
            "Method": definition.method,
            "Body": definition.body,
        }
    if definition.script_args:
        body["ScriptArgs"] = definition.script_args
    if definition.interval:
        body["Interval"] = format_duration(definition.interval)
    if definition.timeout:
        body["Timeout"] = format_duration(definition.timeout)
    if definition.deregister_after:
        body["DeregisterCriticalServiceAfter"] = format_duration(definition.deregister_after)
    return body
