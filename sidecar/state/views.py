"""Read-only views of the cluster state: services by name, and the routing table.

Pure. The routing table is what the local HAProxy must serve (DESIGN.md decisions 5 and 6):

* Only ALIVE records with at least one TCP port that has a service port are served.
* An empty ProxyMode is `http`, its documented default: Go's static discovery leaves it
  empty when the file names none (Go's own HAProxy then renders `mode ` and every render
  fails, spec `sidecar-behaviour.md` §12 item 5).
* Every value that would reach the HAProxy config is checked against a strict pattern
  (`_unsafe_reason`); a record that fails is excluded, with the reason.
* Instances of one name must agree on their shape (proxy mode and set of service ports).
  The shape with the most instances wins, ties broken by the newest instance, then by the
  shape itself; instances of other shapes are excluded. Go keeps whichever it saw first, in
  random map order.
* One service port belongs to one name. When two names claim it, the older claim keeps it
  (the name whose oldest served instance was created first, then by name); the other name
  loses that port, and its instances are reported. Go renders two frontends on one address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

from sidecar.state.model import ClusterState, Service, Status


def by_service(state: ClusterState) -> Mapping[str, tuple[Service, ...]]:
    """Return every record grouped by name, each group oldest `updated` first.

    Pure. Every status is included, tombstones too, as Go's `/api/services.json` does. Ties
    are ordered by hostname and ID, so the output is stable.
    """
    groups: dict[str, list[Service]] = defaultdict(list)
    for record in state.records():
        groups[record.name].append(record)
    return {
        name: tuple(sorted(group, key=lambda r: (r.updated, r.hostname, r.id)))
        for name, group in sorted(groups.items())
    }


PROXY_MODES: Final = frozenset({"http", "tcp", "ws"})
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})", re.ASCII)
_SERVICE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_NAME_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
MAX_NAME_LENGTH: Final = 255


class Endpoint(NamedTuple):
    """One instance behind a service port: where HAProxy sends a request."""

    hostname: str
    service_id: str
    ip: str
    port: int


class PortRoute(NamedTuple):
    """A service port and the instances behind it, sorted by (hostname, ID)."""

    service_port: int
    endpoints: tuple[Endpoint, ...]


class ServiceRoute(NamedTuple):
    """A service name, its proxy mode, and its ports, sorted by service port."""

    name: str
    mode: str
    ports: tuple[PortRoute, ...]


class Exclusion(NamedTuple):
    """An ALIVE instance (or one of its ports) that is not served, and why."""

    hostname: str
    service_id: str
    name: str
    reason: str


class RoutingTable(NamedTuple):
    """The services to serve, sorted by name, and the instances left out."""

    services: tuple[ServiceRoute, ...]
    excluded: tuple[Exclusion, ...]


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def proxy_mode(record: Service) -> str:
    """Return the mode a record is served in: its ProxyMode, `http` when that is empty."""
    return record.proxy_mode or "http"


def _unsafe_reason(record: Service) -> str | None:
    """Return why a record cannot be rendered safely, or None."""
    if proxy_mode(record) not in PROXY_MODES:
        return f"ProxyMode {_short(record.proxy_mode)} is not one of http, tcp, ws"
    if _HOSTNAME.fullmatch(record.hostname) is None:
        return f"Hostname {_short(record.hostname)} is not a valid host name"
    if _SERVICE_ID.fullmatch(record.id) is None:
        return f"ID {_short(record.id)} is not a valid service ID"
    if not record.name or len(record.name) > MAX_NAME_LENGTH:
        return f"Name {_short(record.name)} is empty or longer than {MAX_NAME_LENGTH}"
    if _NAME_FORBIDDEN.search(record.name):
        return f"Name {_short(record.name)} contains a control character"
    for port in record.ports or ():
        if port.type != "tcp" or port.service_port == 0:
            continue
        if not 1 <= port.service_port <= 65535:
            return f"ServicePort {port.service_port} is out of range"
        if not 1 <= port.port <= 65535:
            return f"Port {port.port} (service port {port.service_port}) is out of range"
        if not _is_address(port.ip):
            return f"IP {_short(port.ip)} (service port {port.service_port}) is not an address"
    return None


@functools.lru_cache(maxsize=65536)
def _is_address(text: str) -> bool:
    """Return whether `text` is an IPv4 or IPv6 address (memoized: hosts repeat)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _service_ports(record: Service) -> dict[int, Endpoint]:
    """Return service port -> endpoint for the record's TCP ports, first port winning."""
    found: dict[int, Endpoint] = {}
    for port in record.ports or ():
        if port.type == "tcp" and port.service_port != 0 and port.service_port not in found:
            found[port.service_port] = Endpoint(record.hostname, record.id, port.ip, port.port)
    return found


class _Instance(NamedTuple):
    record: Service
    endpoints: Mapping[int, Endpoint]
    shape: tuple[str, tuple[int, ...]]


def _describe_shape(shape: tuple[str, tuple[int, ...]]) -> str:
    mode, ports = shape
    return f"mode {mode}, service ports {list(ports)}"


def routing_table(state: ClusterState) -> RoutingTable:
    """Return the services HAProxy should serve, and the ALIVE instances it must not.

    Pure and deterministic: the same records give the same table, whatever the order.
    """
    excluded: list[Exclusion] = []
    groups: dict[str, list[_Instance]] = defaultdict(list)
    for record in state.records():
        if record.status is not Status.ALIVE or not record.ports:
            continue
        reason = _unsafe_reason(record)
        if reason is None:
            endpoints = _service_ports(record)
            if endpoints:
                shape = (proxy_mode(record), tuple(sorted(endpoints)))
                groups[record.name].append(_Instance(record, endpoints, shape))
                continue
            reason = "no TCP port with a service port"
        excluded.append(Exclusion(record.hostname, record.id, record.name, reason))

    chosen: dict[str, list[_Instance]] = {}
    for name, instances in groups.items():
        shape = _winning_shape(instances)
        chosen[name] = []
        for instance in instances:
            if instance.shape == shape:
                chosen[name].append(instance)
            else:
                excluded.append(
                    Exclusion(
                        instance.record.hostname,
                        instance.record.id,
                        name,
                        f"{_describe_shape(instance.shape)} differ from the "
                        f"{_describe_shape(shape)} of the other instances",
                    )
                )

    owner = _port_owners(chosen)
    services: list[ServiceRoute] = []
    for name in sorted(chosen):
        instances = chosen[name]
        mode, ports = instances[0].shape
        routes: list[PortRoute] = []
        for service_port in ports:
            if owner[service_port] != name:
                excluded.extend(
                    Exclusion(
                        i.record.hostname,
                        i.record.id,
                        name,
                        f"service port {service_port} belongs to the older service "
                        f"{owner[service_port]!r}",
                    )
                    for i in instances
                )
                continue
            behind = sorted(
                (i.endpoints[service_port] for i in instances),
                key=lambda e: (e.hostname, e.service_id),
            )
            routes.append(PortRoute(service_port, tuple(behind)))
        if routes:
            services.append(ServiceRoute(name, mode, tuple(routes)))
    excluded.sort(key=lambda e: (e.name, e.hostname, e.service_id, e.reason))
    return RoutingTable(tuple(services), tuple(excluded))


def _winning_shape(instances: Iterable[_Instance]) -> tuple[str, tuple[int, ...]]:
    count: dict[tuple[str, tuple[int, ...]], int] = defaultdict(int)
    newest: dict[tuple[str, tuple[int, ...]], int] = {}
    for instance in instances:
        shape = instance.shape
        count[shape] += 1
        newest[shape] = max(newest.get(shape, instance.record.updated), instance.record.updated)
    return max(count, key=lambda s: (count[s], newest[s], s))


def _port_owners(chosen: Mapping[str, list[_Instance]]) -> dict[int, str]:
    claims: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for name, instances in chosen.items():
        oldest = min(i.record.created for i in instances)
        for service_port in instances[0].endpoints:
            claims[service_port].append((oldest, name))
    return {port: min(claimants)[1] for port, claimants in claims.items()}
