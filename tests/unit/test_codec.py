"""Go JSON compatibility: the examples in the spec, byte for byte, and Go's decoding rules."""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest

from sidecar.state import codec, merge, times
from sidecar.state.model import ClusterState, Port, Service, Status

# sidecar-behaviour.md §1.3, produced by Go.
GO_SERVICE = (
    b'{"ID":"deadbeef123","Name":"awesome-svc","Image":"awesome-svc:1.0",'
    b'"Created":"2023-01-02T03:04:05.6Z","Hostname":"indomitable",'
    b'"Ports":[{"Type":"tcp","Port":10450,"ServicePort":8080,"IP":"127.0.0.1"}],'
    b'"Updated":"2023-01-02T03:04:05.6Z","ProxyMode":"http","Status":0}'
)

# cluster-wire.md §6.6 (the image completed from the static.json fixture of §3.4).
GO_GOSSIP_SERVICE = (
    b'{"ID":"6d5930561529","Name":"some_service",'
    b'"Image":"bb6268ff91dc42a51f51db53846f72102ed9ff3f",'
    b'"Created":"2026-11-25T06:42:50.06042221Z","Hostname":"vm",'
    b'"Ports":[{"Type":"tcp","Port":10234,"ServicePort":9999,"IP":"127.0.0.1"}],'
    b'"Updated":"2026-11-25T06:43:51.060577079Z","ProxyMode":"http","Status":2}'
)


def test_go_service_example_decodes_to_the_fields_go_wrote():
    service = codec.decode_service(GO_SERVICE)
    assert service == Service(
        id="deadbeef123",
        name="awesome-svc",
        image="awesome-svc:1.0",
        created=times.parse_time("2023-01-02T03:04:05.6Z"),
        hostname="indomitable",
        ports=(Port(type="tcp", port=10450, service_port=8080, ip="127.0.0.1"),),
        updated=times.parse_time("2023-01-02T03:04:05.6Z"),
        proxy_mode="http",
        status=Status.ALIVE,
    )


@pytest.mark.parametrize("document", [GO_SERVICE, GO_GOSSIP_SERVICE])
def test_go_service_examples_round_trip_byte_for_byte(document):
    assert codec.encode_service(codec.decode_service(document)) == document


def test_nanoseconds_survive_a_round_trip():
    service = codec.decode_service(GO_GOSSIP_SERVICE)
    assert service.updated % times.NANOS_PER_SECOND == 60_577_079
    assert service.created % times.NANOS_PER_SECOND == 60_422_210


def test_go_state_example_round_trips_byte_for_byte():
    # The join reply of cluster-wire.md §6.6, with the abridged parts filled in by Go's rules:
    # a server that never changed keeps `time.Unix(0, 0)`.
    document = (
        b'{"Servers":{"vm":{"Name":"vm","Services":{"6d5930561529":'
        + GO_GOSSIP_SERVICE
        + b'},"LastUpdated":"2026-11-25T06:43:51.060577079Z",'
        b'"LastChanged":"1970-01-01T00:00:00Z"}},'
        b'"LastChanged":"2026-11-25T06:43:51.060577079Z","ClusterName":"default","Hostname":"vm"}'
    )
    assert codec.encode_state(codec.decode_state(document)) == document


def test_state_built_by_merging_encodes_like_go():
    service = codec.decode_service(GO_SERVICE)
    state = merge.merge_record(ClusterState(hostname="me"), service, now=service.updated).state
    assert codec.encode_state(state) == (
        b'{"Servers":{"indomitable":{"Name":"indomitable","Services":{"deadbeef123":'
        + GO_SERVICE
        + b'},"LastUpdated":"2023-01-02T03:04:05.6Z","LastChanged":"2023-01-02T03:04:05.6Z"}},'
        b'"LastChanged":"2023-01-02T03:04:05.6Z","ClusterName":"default","Hostname":"me"}'
    )


def test_empty_state_encodes_go_epoch_times():
    assert codec.encode_state(ClusterState(hostname="h", cluster_name="c")) == (
        b'{"Servers":{},"LastChanged":"1970-01-01T00:00:00Z","ClusterName":"c","Hostname":"h"}'
    )


def test_nil_ports_encode_as_null_and_empty_as_brackets():
    base = codec.decode_service(GO_SERVICE)
    nil = dataclasses.replace(base, ports=None)
    empty = dataclasses.replace(base, ports=())
    assert b'"Ports":null' in codec.encode_service(nil)
    assert b'"Ports":[]' in codec.encode_service(empty)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a<b>&c", r'"a\u003cb\u003e\u0026c"'),
        ('quote " and \\', r'"quote \" and \\"'),
        ("tab\tnl\ncr\r", r'"tab\tnl\ncr\r"'),
        ("bell\x07 backspace\x08 formfeed\x0c", r'"bell\u0007 backspace\u0008 formfeed\u000c"'),
        ("line\u2028para\u2029", r'"line\u2028para\u2029"'),
        ("héllo ☃ \x7f", '"héllo ☃ \x7f"'),
    ],
)
def test_strings_are_escaped_as_go_1_19_escapes_them(text, escaped):
    assert codec.quote(text) == escaped


def test_decoding_matches_keys_case_insensitively_and_the_last_one_wins():
    document = (
        b'{"id":"first","ID":"second","name":"n","HOSTNAME":"h",'
        b'"ports":[{"type":"tcp","port":1,"serviceport":2,"ip":"x"}],'
        b'"proxymode":"tcp","STATUS":2,"updated":"2023-01-02T03:04:05Z"}'
    )
    service = codec.decode_service(document)
    assert service.id == "second"
    assert service.name == "n"
    assert service.hostname == "h"
    assert service.ports == (Port(type="tcp", port=1, service_port=2, ip="x"),)
    assert service.proxy_mode == "tcp"
    assert service.status is Status.UNHEALTHY


def test_decoding_folds_unicode_case_like_go():
    # Go's EqualFold matches the Kelvin sign with "k" and the long s with "s".
    assert codec.decode_service('{"ſtatus": 1}'.encode()).status is Status.TOMBSTONE


def test_missing_and_null_keys_take_zero_values_and_unknown_keys_are_ignored():
    service = codec.decode_service(b'{"ID":null,"Name":"x","Extra":{"a":[1,2]},"Ports":null}')
    assert service == Service(name="x")
    assert service.created == times.ZERO_TIME
    assert service.ports is None
    assert service.status is Status.ALIVE
    assert b'"Created":"0001-01-01T00:00:00Z"' in codec.encode_service(service)


def test_records_from_old_versions_without_new_fields_are_accepted():
    old = b'{"ID":"a","Name":"b","Ports":[{"Type":"tcp","Port":80}],"Status":0}'
    service = codec.decode_service(old)
    assert service.proxy_mode == ""
    assert service.ports == (Port(type="tcp", port=80, service_port=0, ip=""),)


def test_invalid_utf8_and_lone_surrogates_become_replacement_characters():
    assert codec.decode_service(b'{"Name":"a\xffb"}').name == "a\ufffdb"
    assert codec.decode_service(b'{"Name":"a\\ud800b"}').name == "a\ufffdb"


@pytest.mark.parametrize(
    ("document", "names"),
    [
        (b"not json", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"ID": 12}', "Service.id: expected a string, got 12"),
        (b'{"Ports": [{"Port": "80"}]}', 'Port.port: expected an integer, got "80"'),
        (b'{"Ports": [{"Port": 80.0}]}', "Port.port: expected an integer, got 80.0"),
        (b'{"Ports": [{"Port": true}]}', "Port.port: expected an integer, got true"),
        (b'{"Ports": {"Port": 1}}', "Service.ports: expected an array"),
        (b'{"Ports": [{"Port": 9223372036854775808}]}', "ports.0.port"),
        (b'{"Status": 7}', "Service.status: expected 0..4, got 7"),
        (b'{"Status": -1}', "Service.status: expected 0..4, got -1"),
        (b'{"Updated": "yesterday"}', "Service.updated: not an RFC 3339 time: 'yesterday'"),
        (b'{"Updated": "2023-02-30T00:00:00Z"}', "out of range"),
        (b'{"Updated": 12345}', "Service.updated: expected a time, got 12345"),
    ],
)
def test_input_go_would_refuse_is_rejected_with_the_field_and_value(document, names):
    with pytest.raises(codec.RecordRejected) as info:
        codec.decode_service(document)
    assert names in str(info.value)


def test_state_decoding_rejects_a_bad_record_naming_it():
    with pytest.raises(codec.RecordRejected, match=r"Service\.status"):
        codec.decode_state(b'{"Servers":{"h":{"Services":{"x":{"Status":"up"}}}}}')


def test_state_decoding_accepts_missing_parts():
    state = codec.decode_state(b'{"servers":{"h":{"services":{"x":{"id":"x"}}}}}')
    assert state.get("h", "x") == Service(id="x")
    assert state.servers["h"].last_updated == times.ZERO_TIME


def test_deeply_nested_input_is_a_rejection_not_a_crash():
    with pytest.raises(codec.RecordRejected):
        codec.decode_service(b"[" * 100_000)


def test_records_are_validated_and_small():
    """A node keeps several generations of every record; each must stay a few slots."""
    base = codec.decode_service(b'{"ID":"a1","Ports":[{"Type":"tcp","Port":80}]}')
    with pytest.raises(Exception, match="updated"):
        dataclasses.replace(base, updated="yesterday")  # replace() validates, like the init
    assert not hasattr(base, "__dict__")
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        copies = [base.with_updated(n) for n in range(1000)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_copy = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(copies)
    print(f"{per_copy:.0f} bytes per record copy")
    assert per_copy < 300  # a BaseModel's __dict__ and fields-set made it ~1,200
