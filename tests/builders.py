"""The one home of test records and times: the epoch, `Service` records, states built of them.

Each test file binds its own defaults with `functools.partial` (or a one-line wrapper where
its factory's arguments are spelled differently), so the data of every test is written once.
"""

from __future__ import annotations

from sidecar.state import merge, times
from sidecar.state.model import ClusterState, Port, Service, Status

S = times.NANOS_PER_SECOND
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z


def service(
    host: str,
    sid: str,
    *,
    name: str = "web",
    image: str | None = None,
    ports: tuple[tuple[int, int], ...] | None = ((32000, 8080),),
    ip: str = "10.0.0.2",
    kind: str = "tcp",
    at: int = T0,
    created: int = T0,
    status: Status = Status.ALIVE,
    mode: str = "http",
) -> Service:
    """Return the record of instance `sid` of service `name` on `host`, version `at`.

    `image` defaults to `name:1`. `ports` are (port, service port) pairs, all of type `kind`
    at `ip`; `None` is Go's nil slice. An observation not yet stamped has `at=0`.
    """
    return Service(
        id=sid,
        name=name,
        image=f"{name}:1" if image is None else image,
        created=created,
        hostname=host,
        ports=None
        if ports is None
        else tuple(Port(type=kind, port=p, service_port=sp, ip=ip) for p, sp in ports),
        updated=at,
        proxy_mode=mode,
        status=status,
    )


def cluster_state(hostname: str, *records: Service, now: int = T0) -> ClusterState:
    """Return the state of a node named `hostname` that merged `records` at `now`."""
    return merge.merge_records(ClusterState(hostname=hostname), records, now=now).state
