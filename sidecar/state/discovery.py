"""What runs on this host, as the core sees it: containers' facts -> service observations.

Pure. The Docker adapter gathers `ContainerFacts` (what the Engine says, uninterpreted); this
module applies the label contract of the Go Sidecar (sidecar-behaviour.md §3.2-§3.3, §4.3-§4.4)
and returns, per container, an `Observed` (the service record, its health check, its listener)
or a `Rejected` with a reason that names the bad label and value. Bad labels never raise.

Labels, as Go reads them:

* `ServiceName` (the `docker_label` namer; the label name is configurable) or the `regex`
  namer on the container name (capture group 1); the image name when neither gives a name.
* `ServicePort_<container port>=<service port>` maps a published port to a proxy port.
* `ProxyMode` = http | tcp | ws (default http); `SidecarDiscover=false` (any case) hides the
  container; `SidecarListener=<service port>` subscribes it to state changes.
* `HealthCheck` (HttpGet, Tcp, AlwaysSuccessful, Docker, External) and `HealthCheckArgs`
  (templated: `{{ host }}`, `{{ container }}`, `{{ tcp N }}`, `{{ udp N }}`),
  `HealthCheckRise` / `HealthCheckFall` (thresholds, ours).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from sidecar.state.model import Port, Service, Status
from sidecar.state.views import MAX_NAME_LENGTH

ID_LENGTH: Final = 12


@dataclass(frozen=True, slots=True)
class PublishedPort:
    """One published binding of a container port, as the Engine lists it."""

    private_port: int
    type: str  # "tcp" or "udp"
    public_port: int
    host_ip: str  # "0.0.0.0", "::", "" or a specific address


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """What the Engine says about one running container, uninterpreted.

    `created` is nanoseconds since the epoch. `health` is Docker's own HEALTHCHECK status
    (`starting`, `healthy`, `unhealthy`) or None when the image has no HEALTHCHECK.
    """

    id: str
    name: str  # the first name, with Docker's leading "/"
    image: str
    created: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PublishedPort, ...] = ()
    health: str | None = None


@dataclass(frozen=True, slots=True)
class ContainerListing:
    """Every running container on this host, as of `at` (ns since the epoch)."""

    containers: tuple[ContainerFacts, ...]
    at: int


@dataclass(frozen=True, slots=True)
class EngineUnreachable:
    """The Engine stopped answering at `since` (ns since the epoch); sent once per outage."""

    since: int


DockerObservation = ContainerListing | EngineUnreachable


class CheckType(enum.StrEnum):
    """The health check kinds (Go's names; `Tcp` and `Docker` are ours)."""

    HTTP_GET = "HttpGet"
    TCP = "Tcp"
    ALWAYS_SUCCESSFUL = "AlwaysSuccessful"
    DOCKER = "Docker"
    EXTERNAL = "External"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How to health-check one service: the kind, its rendered arguments, thresholds.

    For HttpGet `args` is the URL; for Tcp `host:port`; for External the command line (split
    with shell rules by the runner, never run by a shell); empty for the others.
    """

    type: CheckType
    args: str
    rise: int = 1
    fall: int = 2


@dataclass(frozen=True, slots=True)
class Observed:
    """A container this node serves: its record (status UNKNOWN until checked), its check,
    and the URL of its state-change listener, if it asked for one."""

    service: Service
    check: CheckSpec
    listener: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A container that cannot be served, and why (names the label and the value)."""

    id: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class LabelNamer:
    """Name a service from a label (Go's `docker_label` namer), else from the image."""

    label: str = "ServiceName"


@dataclass(frozen=True, slots=True)
class RegexNamer:
    """Name a service from capture group 1 of a regex on the container name (with its
    leading "/"), else from the image. Build it with `regex_namer`, which checks the group."""

    pattern: re.Pattern[str]


Namer = LabelNamer | RegexNamer


class NamerError(ValueError):
    """A namer configuration that cannot work; the message names the value."""


def regex_namer(pattern: str) -> RegexNamer:
    """Return a regex namer, or raise NamerError naming a pattern that does not compile or
    has no capture group (Go panics on the first container instead)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise NamerError(f"services name_match {pattern!r} is not a valid regex: {exc}") from None
    if compiled.groups < 1:
        raise NamerError(
            f"services name_match {pattern!r} has no capture group; the service name is "
            "group 1, e.g. '^/(.+)(-[0-9a-z]{7,14})$'"
        )
    return RegexNamer(compiled)


@dataclass(frozen=True, slots=True)
class DiscoveryPolicy:
    """This node's settings that turn facts into observations."""

    hostname: str
    advertise_ip: str
    namer: Namer = field(default_factory=LabelNamer)
    default_check_endpoint: str = "/version"
    external_checks: bool = False
    rise: int = 1
    fall: int = 2


def short_id(container_id: str) -> str:
    """Return the service ID of a container: the first 12 characters of its ID."""
    return container_id[:ID_LENGTH]


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_SERVICE_PORT_LABEL: Final = "ServicePort_"
PROXY_MODES: Final = ("http", "tcp", "ws")
MAX_THRESHOLD: Final = 100


class _Refused(Exception):
    """Internal: a label that cannot be honoured; the message is the rejection reason."""


def quoted(value: str, limit: int = 80) -> str:
    """Return `repr(value)`, cut to `limit` characters with "..." when longer."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_problem(what: str, value: str) -> str | None:
    """Return why `value` cannot go into a record, a check or a log line (it contains a control
    character or line break), or None. `what` names where it came from."""
    if _CONTROL.search(value):
        return f"{what} {quoted(value)} contains a control character or line break"
    return None


def name_problem(what: str, name: str) -> str | None:
    """Return why `name` cannot be a service name (a control character or line break, or
    longer than MAX_NAME_LENGTH, which routing refuses), or None."""
    if len(name) > MAX_NAME_LENGTH:
        return (
            f"{what} {quoted(name)} is {len(name)} characters long, "
            f"more than the {MAX_NAME_LENGTH} a service name may have"
        )
    return text_problem(what, name)


def _text(what: str, value: str) -> str:
    problem = text_problem(what, value)
    if problem is not None:
        raise _Refused(problem)
    return value


def _service_name(what: str, name: str) -> str:
    problem = name_problem(what, name)
    if problem is not None:
        raise _Refused(problem)
    return name


def _port_number(value: str, *, label: str) -> int:
    text = value.strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _Refused(f"label {label}={value!r} is not a port number (1-65535)")
    return int(text)


def _threshold(labels: Mapping[str, str], label: str, default: int) -> int:
    value = labels.get(label)
    if value is None:
        return default
    text = value.strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_THRESHOLD:
        raise _Refused(f"label {label}={value!r} is not a count from 1 to {MAX_THRESHOLD}")
    return int(text)


def _name(facts: ContainerFacts, namer: Namer) -> str:
    if isinstance(namer, LabelNamer):
        name = facts.labels.get(namer.label, "")
        return _service_name(f"label {namer.label}", name) if name else facts.image
    match = namer.pattern.search(facts.name)
    if match is None or not match.group(1):
        return facts.image
    return match.group(1)


def _service_ports(facts: ContainerFacts) -> dict[int, int]:
    """Return container port -> service port from the `ServicePort_<port>` labels."""
    mapping: dict[int, int] = {}
    for label, value in facts.labels.items():
        if label.startswith(_SERVICE_PORT_LABEL):
            suffix = label[len(_SERVICE_PORT_LABEL) :]
            if not suffix.isascii() or not suffix.isdigit() or not 1 <= int(suffix) <= 65535:
                raise _Refused(
                    f"label {label!r} does not name a container port: "
                    f"{suffix!r} is not a port number (1-65535)"
                )
            mapping[int(suffix)] = _port_number(value, label=label)
    return mapping


def _is_ipv6(address: str) -> bool:
    return ":" in address


def _ports(facts: ContainerFacts, policy: DiscoveryPolicy) -> tuple[Port, ...]:
    """Return the service's ports: IPv4 bindings preferred, IPv6 twins of them dropped."""
    service_ports = _service_ports(facts)
    has_ipv4 = {(p.private_port, p.type) for p in facts.ports if not _is_ipv6(p.host_ip)}
    kept = sorted(
        (p.private_port, p.type, p.public_port, p.host_ip)
        for p in facts.ports
        if not (_is_ipv6(p.host_ip) and (p.private_port, p.type) in has_ipv4)
    )
    ports: list[Port] = []
    for private, kind, public, host_ip in kept:
        port = observed_port(
            PublishedPort(private, kind, public, host_ip),
            service_port=service_ports.get(private, 0),
            advertise_ip=policy.advertise_ip,
        )
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def _url_host(address: str) -> str:
    return f"[{address}]" if _is_ipv6(address) else address


def _default_check(service: Service, policy: DiscoveryPolicy, rise: int, fall: int) -> CheckSpec:
    tcp = next((p for p in service.ports or () if p.type == "tcp"), None)
    if tcp is None:
        return CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "", rise, fall)
    url = f"http://{_url_host(policy.advertise_ip)}:{tcp.port}{policy.default_check_endpoint}"
    return CheckSpec(CheckType.HTTP_GET, url, rise, fall)


def _check(facts: ContainerFacts, service: Service, policy: DiscoveryPolicy) -> CheckSpec:
    labels = facts.labels
    rise = _threshold(labels, "HealthCheckRise", policy.rise)
    fall = _threshold(labels, "HealthCheckFall", policy.fall)
    kind = _text("label HealthCheck", labels.get("HealthCheck", "")).strip()
    template = _text("label HealthCheckArgs", labels.get("HealthCheckArgs", ""))
    if not kind:
        if facts.health is not None:
            return CheckSpec(CheckType.DOCKER, "", rise, fall)
        return _default_check(service, policy, rise, fall)
    try:
        check_type = CheckType(kind)
    except ValueError:
        check_type = CheckType.HTTP_GET  # Go runs any unknown type as HttpGet
    if check_type is CheckType.EXTERNAL and not policy.external_checks:
        raise _Refused(
            "external checks disabled: label HealthCheck=External runs a command, "
            "which this node's configuration does not allow"
        )
    try:
        args = render_check_args(template, service, host=policy.advertise_ip)
    except TemplateRejected as exc:
        raise _Refused(str(exc)) from None
    if not args and check_type is CheckType.HTTP_GET:
        return _default_check(service, policy, rise, fall)
    if not args and check_type is CheckType.TCP:
        tcp = next((p for p in service.ports or () if p.type == "tcp"), None)
        if tcp is None:
            raise _Refused("label HealthCheck=Tcp without HealthCheckArgs needs a tcp port")
        args = f"{_url_host(policy.advertise_ip)}:{tcp.port}"
    if check_type is CheckType.EXTERNAL and not args.strip():
        raise _Refused("label HealthCheck=External needs a command in HealthCheckArgs")
    return CheckSpec(check_type, args, rise, fall)


def _listener(facts: ContainerFacts, service: Service) -> str | None:
    value = facts.labels.get("SidecarListener")
    if value is None:
        return None
    service_port = _port_number(value, label="SidecarListener")
    for port in service.ports or ():
        if port.type == "tcp" and port.service_port == service_port:
            return f"http://{_url_host(port.ip)}:{port.port}/sidecar/update"
    raise _Refused(
        f"label SidecarListener={value!r} names no published tcp port with that service port"
    )


def observe_container(facts: ContainerFacts, policy: DiscoveryPolicy) -> Observed | Rejected | None:
    """Return the observation of a running container, its rejection, or None if it asked
    not to be discovered (`SidecarDiscover=false`, any case).

    Pure. The record has status UNKNOWN and `updated` 0: health and `merge.stamp` fill them.
    """
    if facts.labels.get("SidecarDiscover", "").strip().lower() == "false":
        return None
    service_id = short_id(facts.id)
    try:
        name = _service_name("service name", _name(facts, policy.namer))
        if not name:
            raise _Refused("the container has no service name and no image name")
        mode = _text("label ProxyMode", facts.labels.get("ProxyMode", "http"))
        if mode not in PROXY_MODES:
            raise _Refused(f"label ProxyMode={mode!r} is not one of {', '.join(PROXY_MODES)}")
        service = Service(
            id=service_id,
            name=name,
            image=_text("image", facts.image),
            created=facts.created,
            hostname=policy.hostname,
            ports=_ports(facts, policy),
            updated=0,
            proxy_mode=mode,
            status=Status.UNKNOWN,
        )
        return Observed(service, _check(facts, service, policy), _listener(facts, service))
    except _Refused as refused:
        return Rejected(service_id, facts.name, str(refused))


_PLACEHOLDER: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PORT_FUNCTION: Final = re.compile(r"(tcp|udp)\s+(\d{1,5})", re.ASCII)


class TemplateRejected(ValueError):
    """A `HealthCheckArgs` template asks for something the restricted renderer refuses."""


def render_check_args(template: str, service: Service, *, host: str) -> str:
    """Return `HealthCheckArgs` with its `{{ ... }}` placeholders filled in.

    Pure. Understands exactly `{{ host }}` (this node's advertise IP), `{{ container }}`
    (the record's `Hostname`, as Go has it), `{{ tcp N }}` and `{{ udp N }}` (the published
    port whose service port is N). Anything else raises TemplateRejected: nothing is
    evaluated.
    """

    def fill(match: re.Match[str]) -> str:
        expression = " ".join(match.group(1).split())
        if expression == "host":
            return host
        if expression == "container":
            return service.hostname
        function = _PORT_FUNCTION.fullmatch(expression)
        if function is None:
            raise TemplateRejected(
                f"HealthCheckArgs placeholder {match.group(0)!r} is not one of "
                "{{ host }}, {{ container }}, {{ tcp N }}, {{ udp N }}"
            )
        kind, service_port = function.group(1), int(function.group(2))
        for port in service.ports or ():
            if port.type == kind and port.service_port == service_port:
                return str(port.port)
        raise TemplateRejected(
            f"HealthCheckArgs asks for {match.group(0)!r} but no published {kind} port "
            f"has service port {service_port}"
        )

    rendered = _PLACEHOLDER.sub(fill, template)
    if "{{" in rendered:
        raise TemplateRejected(f"HealthCheckArgs {template!r} has an unclosed '{{{{'")
    return rendered


# ---------------------------------------------------------------------- health thresholds


@dataclass(frozen=True, slots=True)
class Health:
    """A service's health as the thresholds see it: its status and the current streak."""

    status: Status = Status.UNKNOWN
    streak: int = 0  # consecutive results agreeing with the last one; sign = healthy(+)/not(-)


def record_result(health: Health, *, healthy: bool, rise: int, fall: int) -> Health:
    """Return the health after one check result.

    Pure. `rise` consecutive passes make a service ALIVE, `fall` consecutive failures make it
    UNHEALTHY; before its first result a service is UNKNOWN, and its first result decides
    at once (there is no earlier state to protect).
    """
    if healthy:
        streak = health.streak + 1 if health.streak > 0 else 1
    else:
        streak = health.streak - 1 if health.streak < 0 else -1
    status = health.status
    if status is Status.UNKNOWN:
        status = Status.ALIVE if healthy else Status.UNHEALTHY
    elif status is Status.ALIVE and -streak >= fall:
        status = Status.UNHEALTHY
    elif status is Status.UNHEALTHY and streak >= rise:
        status = Status.ALIVE
    return Health(status, streak)


def status_from_docker_health(health: str | None) -> bool | None:
    """Return Docker's HEALTHCHECK status as a check result: True, False, or None (starting
    or no HEALTHCHECK: no result yet)."""
    if health == "healthy":
        return True
    if health == "unhealthy":
        return False
    return None


def observed_port(port: PublishedPort, *, service_port: int, advertise_ip: str) -> Port:
    """Return the service's port for one published binding."""
    ip = advertise_ip if port.host_ip in ("", "0.0.0.0", "::") else port.host_ip
    return Port(type=port.type, port=port.public_port, service_port=service_port, ip=ip)


DOCKER_OUTAGE_GRACE: Final = 30 * 1_000_000_000


def containers_to_serve(
    last_listing: tuple[ContainerFacts, ...],
    *,
    unreachable_since: int | None,
    now: int,
    grace: int = DOCKER_OUTAGE_GRACE,
) -> tuple[ContainerFacts, ...]:
    """Return the containers to go on serving: the last listing, unless the Engine has been
    unreachable for longer than `grace` (then nothing: this host's services go).

    Pure. A short outage (an Engine restart) must not tombstone what still runs.
    """
    if unreachable_since is not None and now - unreachable_since > grace:
        return ()
    return last_listing


def with_health(observed: Iterable[Observed], health: Mapping[str, Health]) -> list[Service]:
    """Return the observed records with the status their checks decided (UNKNOWN before the
    first result): what `merge.stamp` takes.

    Pure.
    """
    out: list[Service] = []
    for item in observed:
        status = health.get(item.service.id, Health()).status
        service = item.service
        out.append(service if service.status is status else service.with_status(status, updated=0))
    return out


_PRIVATE_BLOCKS: Final = tuple(
    ipaddress.ip_network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)


def choose_advertise_ip(addresses: Iterable[str], *, excluded: Iterable[str] = ()) -> str | None:
    """Return Go's advertise IP among this host's addresses: the first IPv4 address in an
    RFC 1918 block (10/8, 172.16/12, 192.168/16) that is not excluded, or None."""
    skip = set(excluded)
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.version == 4 and text not in skip and any(address in b for b in _PRIVATE_BLOCKS):
            return text
    return None
