"""The one home of hypothesis strategies for the core: small universes, to force collisions."""

from __future__ import annotations

from hypothesis import strategies as st

from sidecar.state import times
from sidecar.state.model import Port, Service, Status

BASE = 1_700_000_000 * times.NANOS_PER_SECOND

HOSTS = ("alpha", "bravo", "charlie")
IDS = ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc")

# Timestamps from a tiny range, so equal versions (ties) are common.
small_times = st.integers(min_value=0, max_value=6).map(lambda k: BASE + k * 1_000)

statuses = st.sampled_from(list(Status))

ports = st.builds(
    Port,
    type=st.sampled_from(["tcp", "udp"]),
    port=st.integers(min_value=1, max_value=65535),
    service_port=st.sampled_from([0, 8080, 9000]),
    ip=st.sampled_from(["127.0.0.1", "10.0.0.2", "::1"]),
)


def records(
    *,
    hosts: tuple[str, ...] = HOSTS,
    ids: tuple[str, ...] = IDS,
    updated: st.SearchStrategy[int] = small_times,
) -> st.SearchStrategy[Service]:
    """Records over a small universe of keys and versions, differing in content on ties."""
    return st.builds(
        Service,
        id=st.sampled_from(ids),
        name=st.sampled_from(["web", "api"]),
        image=st.sampled_from(["web:1", "web:2"]),
        created=st.just(BASE - times.NANOS_PER_SECOND),
        hostname=st.sampled_from(hosts),
        ports=st.one_of(st.none(), st.lists(ports, max_size=2).map(tuple)),
        updated=updated,
        proxy_mode=st.sampled_from(["http", "tcp"]),
        status=statuses,
    )


# Any text Go could carry in a string field, control characters, HTML and surrogates aside.
go_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]),
    max_size=30,
)

# Any time Go can encode: years 0000-9999, nanosecond precision.
any_time = st.integers(min_value=times.MIN_ENCODABLE, max_value=times.MAX_ENCODABLE)

any_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

any_port = st.builds(Port, type=go_text, port=any_int64, service_port=any_int64, ip=go_text)

any_record = st.builds(
    Service,
    id=go_text,
    name=go_text,
    image=go_text,
    created=any_time,
    hostname=go_text,
    ports=st.one_of(st.none(), st.lists(any_port, max_size=3).map(tuple)),
    updated=any_time,
    proxy_mode=go_text,
    status=statuses,
)
