"""Views: services by name, and the deterministic, injection-safe routing table."""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial

import pytest

from sidecar.state import merge, views
from sidecar.state.model import Status
from tests.builders import T0, S, cluster_state
from tests.builders import service as record

state_of = partial(cluster_state, "me")


def served(table: views.RoutingTable) -> dict[tuple[str, int], list[str]]:
    return {
        (service.name, port.service_port): [f"{e.hostname}-{e.service_id}" for e in port.endpoints]
        for service in table.services
        for port in service.ports
    }


def test_by_service_groups_every_status_oldest_first():
    state = state_of(
        record("b", "2", at=T0 + 2),
        record("a", "1", at=T0 + 5, status=Status.TOMBSTONE),
        record("c", "3", at=T0 + 2),
        record("a", "9", name="api"),
    )
    grouped = views.by_service(state)
    assert list(grouped) == ["api", "web"]
    assert [(r.hostname, r.id) for r in grouped["web"]] == [("b", "2"), ("c", "3"), ("a", "1")]


def test_only_alive_instances_with_ports_are_served():
    state = state_of(
        record("a", "1"),
        record("b", "2", status=Status.UNHEALTHY),
        record("c", "3", status=Status.DRAINING),
        record("d", "4", status=Status.UNKNOWN),
        record("e", "5", status=Status.TOMBSTONE),
        record("f", "6", ports=()),
    )
    table = views.routing_table(state)
    assert served(table) == {("web", 8080): ["a-1"]}
    assert table.excluded == ()


def test_a_service_is_served_on_each_tcp_service_port_and_unexported_ports_are_skipped():
    state = state_of(
        record("a", "1", ports=((32000, 8080), (32001, 8443), (32002, 0))),
        record("a", "2", ports=((32003, 53),), kind="udp", name="dns"),
    )
    table = views.routing_table(state)
    assert served(table) == {("web", 8080): ["a-1"], ("web", 8443): ["a-1"]}
    assert [(e.name, e.reason) for e in table.excluded] == [
        ("dns", "no TCP port with a service port")
    ]


def test_mismatched_port_sets_are_resolved_by_majority_and_reported():
    state = state_of(
        record("a", "1", ports=((1, 8080),)),
        record("b", "2", ports=((2, 8080),)),
        record("c", "3", ports=((3, 8080), (4, 9090)), at=T0 + 9),
    )
    table = views.routing_table(state)
    assert served(table) == {("web", 8080): ["a-1", "b-2"]}
    (excluded,) = table.excluded
    assert (excluded.hostname, excluded.service_id) == ("c", "3")
    assert "service ports [8080, 9090] differ" in excluded.reason


def test_a_tie_between_port_sets_goes_to_the_newest_instance():
    state = state_of(
        record("a", "1", ports=((1, 8080),), at=T0),
        record("b", "2", ports=((2, 9090),), at=T0 + 1),
    )
    assert served(views.routing_table(state)) == {("web", 9090): ["b-2"]}


def test_the_table_does_not_depend_on_the_order_records_arrived_in():
    records = [
        record("a", "1", ports=((1, 8080),)),
        record("b", "2", ports=((2, 9090),)),
        record("c", "3", name="api", ports=((3, 8080),), created=T0 - S),
        record("d", "4", mode="tcp"),
    ]
    tables = {views.routing_table(state_of(*p)) for p in itertools.permutations(records)}
    assert len(tables) == 1


def test_a_service_port_claimed_by_two_names_goes_to_the_older_claim():
    state = state_of(
        record("a", "1", name="web", created=T0),
        record("b", "2", name="api", created=T0 - S, ports=((5, 8080), (6, 7070))),
    )
    table = views.routing_table(state)
    assert served(table) == {("api", 7070): ["b-2"], ("api", 8080): ["b-2"]}
    (excluded,) = table.excluded
    assert excluded.name == "web"
    assert excluded.reason == "service port 8080 belongs to the older service 'api'"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("proxy_mode", "http\n    bind :1", "ProxyMode"),
        ("proxy_mode", "udp", "ProxyMode"),
        ("hostname", "evil host", "Hostname"),
        ("hostname", "a\nserver x 1.2.3.4:1", "Hostname"),
        ("id", "id;x", "ID"),
        ("id", "", "ID"),
        ("name", "web\nlisten x", "control character"),
        ("name", "", "empty"),
    ],
)
def test_records_that_cannot_be_rendered_safely_are_excluded_with_the_reason(field, value, reason):
    bad = dataclasses.replace(record("a", "1"), **{field: value})
    table = views.routing_table(state_of(bad, record("b", "2")))
    assert served(table) == {("web", 8080): ["b-2"]}
    assert len(table.excluded) == 1
    assert reason in table.excluded[0].reason


@pytest.mark.parametrize(
    ("ip", "port", "service_port"),
    [("10.0.0.300", 1, 8080), ("not-an-ip", 1, 8080), ("10.0.0.1", 70000, 8080)],
)
def test_unusable_addresses_and_ports_are_excluded(ip, port, service_port):
    table = views.routing_table(state_of(record("a", "1", ip=ip, ports=((port, service_port),))))
    assert table.services == ()
    assert len(table.excluded) == 1


def test_an_empty_proxy_mode_is_served_as_http_beside_http_instances():
    # Go's static discovery leaves ProxyMode empty when the file names none (found joining
    # a Python host to Go hosts: their services were left out of its HAProxy).
    table = views.routing_table(state_of(record("go1", "1", mode=""), record("py", "2")))
    assert served(table) == {("web", 8080): ["go1-1", "py-2"]}
    assert [s.mode for s in table.services] == ["http"]
    assert table.excluded == ()


def test_ipv6_endpoints_are_served():
    table = views.routing_table(state_of(record("a", "1", ip="fd00::2")))
    assert table.services[0].ports[0].endpoints[0].ip == "fd00::2"


def test_a_hosts_services_come_least_recently_updated_first_as_gos_sorted_services():
    # IDs in the reverse order of their updates: ID order would put them the other way.
    records = [record("h1", f"id-{9 - i}", at=T0 + i * S) for i in range(5)]
    tie = record("h1", "id-0", at=T0 + 2 * S)  # the same `updated` as id-7: by ID then
    state = cluster_state("h1", *records, tie)
    expected = ["id-9", "id-8", "id-0", "id-7", "id-6", "id-5"]
    assert [r.id for r in state.servers["h1"].services()] == expected
    assert [r.id for r in state.own_records()] == expected
    other = merge.merge_records(state, [record("h0", "zzz", at=T0 + 9 * S)], now=T0).state
    assert [r.id for r in other.records()] == ["zzz", *expected]  # hosts by name first
