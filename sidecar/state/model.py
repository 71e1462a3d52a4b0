"""The values the cluster is made of: service records, per-host servers, the cluster state.

`Port` and `Service` are the records that travel between nodes (Go's `service.Port` and
`service.Service`); they are frozen pydantic dataclasses, validated (strictly) when built.
Dataclasses with slots rather than `BaseModel`s because a node keeps several generations of
every record (observed, checked, stamped): a `BaseModel` instance carries a `__dict__` and a
set of the fields given, ~1.2 KiB for a `Service`, against ~0.1 KiB with slots. `Server` and
`ClusterState` are the containers this node keeps them in: frozen dataclasses built only by
the core's own functions from already-validated records, which keeps a merge into a
10,000-record state cheap (no re-validation of what did not change).

Every time is an `int` of nanoseconds since the Unix epoch (`sidecar.state.times`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Final

import pydantic.dataclasses
from pydantic import ConfigDict, Field

from sidecar.state.times import UNIX_EPOCH, ZERO_TIME

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class Status(enum.IntEnum):
    """A record's status; the integers travel on the wire (Go's `iota` order)."""

    ALIVE = 0
    TOMBSTONE = 1
    UNHEALTHY = 2
    UNKNOWN = 3
    DRAINING = 4

    def label(self) -> str:
        """Return Go's `StatusString()` text, e.g. `"Alive"`."""
        return self.name.capitalize()


_RECORD: Final = ConfigDict(strict=True, extra="forbid")


@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=_RECORD)
class Port:
    """One published port of a service (Go `service.Port`)."""

    type: str = ""
    port: Int64 = 0
    service_port: Int64 = 0
    ip: str = ""


@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=_RECORD)
class Service:
    """One service instance as every node stores and gossips it (Go `service.Service`).

    `updated` is the version: the record with the greater `updated` wins a merge.
    `ports` is `None` where Go holds a nil slice (encoded as JSON `null`).
    """

    id: str = ""
    name: str = ""
    image: str = ""
    created: int = ZERO_TIME
    hostname: str = ""
    ports: tuple[Port, ...] | None = None
    updated: int = ZERO_TIME
    proxy_mode: str = ""
    status: Status = Status.ALIVE

    def with_status(self, status: Status, *, updated: int) -> Service:
        """Return this record with another status and version, validated."""
        return Service(
            id=self.id,
            name=self.name,
            image=self.image,
            created=self.created,
            hostname=self.hostname,
            ports=self.ports,
            updated=updated,
            proxy_mode=self.proxy_mode,
            status=status,
        )

    def with_updated(self, updated: int) -> Service:
        """Return this record with another version and the same content, validated."""
        return self.with_status(self.status, updated=updated)

    def same_content(self, other: Service) -> bool:
        """Return whether the two records differ at most in `updated`."""
        return (
            self.status == other.status
            and self.id == other.id
            and self.name == other.name
            and self.image == other.image
            and self.created == other.created
            and self.hostname == other.hostname
            and self.ports == other.ports
            and self.proxy_mode == other.proxy_mode
        )


NEVER: Final = ZERO_TIME - 1
"""A time older than any a record can carry: "no such version seen"."""


@dataclass(frozen=True, slots=True)
class Server:
    """The records of one host (Go `catalog.Server`), keyed by service ID."""

    name: str
    entries: Mapping[str, Service] = field(default_factory=dict)
    """Service ID -> the greatest version of that record received (by `merge.precedes`)."""
    last_updated: int = UNIX_EPOCH
    last_changed: int = UNIX_EPOCH

    def services(self) -> Iterator[Service]:
        """Yield every record, the least recently updated first, as Go's `SortedServices`
        (equal `updated` by ID, so the order is always the same)."""
        yield from sorted(self.entries.values(), key=lambda r: (r.updated, r.id))


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Everything this node knows about the cluster (Go `catalog.ServicesState`).

    `hostname` is this node's name: records whose `hostname` equals it are own records.
    """

    hostname: str
    cluster_name: str = "default"
    servers: Mapping[str, Server] = field(default_factory=dict)
    last_changed: int = UNIX_EPOCH

    def get(self, hostname: str, service_id: str) -> Service | None:
        """Return the record for (hostname, id), or None."""
        server = self.servers.get(hostname)
        return None if server is None else server.entries.get(service_id)

    def records(self) -> Iterator[Service]:
        """Yield every record: servers by name, each server's records as `services()`."""
        for hostname in sorted(self.servers):
            yield from self.servers[hostname].services()

    def own_records(self) -> Iterator[Service]:
        """Yield this node's own records, in `Server.services()` order."""
        server = self.servers.get(self.hostname)
        if server is not None:
            yield from server.services()


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A record appeared or changed status (Go `catalog.ChangeEvent`).

    `previous_status` is UNKNOWN for a record never seen before, as in Go.
    """

    service: Service
    previous_status: Status
    time: int
