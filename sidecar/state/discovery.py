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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from sidecar.state.model import Port, Service, Status

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


def observe_container(facts: ContainerFacts, policy: DiscoveryPolicy) -> Observed | Rejected | None:
    """Return the observation of a running container, its rejection, or None if it asked
    not to be discovered (`SidecarDiscover=false`).

    Pure.
    """
    raise NotImplementedError


def render_check_args(template: str, service: Service, *, host: str) -> str:
    """Return `HealthCheckArgs` with its `{{ ... }}` placeholders filled in.

    Pure. Raises TemplateRejected for anything but `host`, `container`, `tcp N`, `udp N`.
    """
    raise NotImplementedError


class TemplateRejected(ValueError):
    """A `HealthCheckArgs` template asks for something the restricted renderer refuses."""


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
    raise NotImplementedError


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
