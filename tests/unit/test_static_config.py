"""Static discovery's file format: Go's fixtures, Go's decoding rules, stable IDs, errors."""

from __future__ import annotations

import json
import re
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.state.discovery import CheckSpec, CheckType, DiscoveryPolicy, Observed, Rejected
from sidecar.state.model import Port, Status
from sidecar.state.static_config import (
    StaticConfigError,
    keep_created,
    parse_static,
    static_id,
)
from sidecar.state.views import MAX_NAME_LENGTH
from tests.builders import T0, service

POLICY = DiscoveryPolicy(hostname="vm", advertise_ip="192.168.1.10")
NOW = T0 + 123_456_789  # with nanoseconds, as a clock gives them

# sidecar-behaviour.md §3.4: fixtures/static.json of the Go Sidecar (current version).
GO_STATIC = """[
    {
        "Service": {
            "Name": "some_service",
            "Image": "bb6268ff91dc42a51f51db53846f72102ed9ff3f",
            "Ports": [
                {
                    "Type": "tcp",
                    "Port": 10234,
                    "ServicePort": 9999
                }
            ],
            "ProxyMode": "http"
        },
        "Check": {
            "Type": "HttpGet",
            "Args": "http://:10234/"
        },
        "ListenPort": 9999
    }
]
"""
# fixtures/static-hostnamed.json: the same with a Hostname and no ListenPort.
GO_STATIC_HOSTNAMED = """[
    {
        "Service": {
            "Name": "some_service",
            "Image": "bb6268ff91dc42a51f51db53846f72102ed9ff3f",
            "Hostname": "chaucer",
            "Ports": [
                {
                    "Type": "tcp",
                    "Port": 10234,
                    "ServicePort": 9999
                }
            ],
            "ProxyMode": "http"
        },
        "Check": {
            "Type": "HttpGet",
            "Args": "http://:10234/"
        }
    }
]
"""
# The older Go fixture: an unknown key ("Profile") and no ProxyMode.
GO_STATIC_OLD = """[{"Service": {"Name": "some_service",
  "Image": "bb6268ff91dc42a51f51db53846f72102ed9ff3f",
  "Ports": [{"Type": "tcp", "Port": 10234, "ServicePort": 9999}],
  "Profile": "longtimeout"},
 "Check": {"Type": "HttpGet", "Args": "http://:10234/"}}]"""

# Go dials the empty host of its fixture's URL as this host: we fill in the advertise IP.
HTTP_CHECK = CheckSpec(CheckType.HTTP_GET, "http://192.168.1.10:10234/", rise=1, fall=2)
HEX12 = re.compile(r"[0-9a-f]{12}")


# The record the Go fixtures describe, as observed at NOW (not yet stamped, its status unknown).
fixture_service = partial(
    service,
    name="some_service",
    image="bb6268ff91dc42a51f51db53846f72102ed9ff3f",
    ports=((10234, 9999),),
    ip="192.168.1.10",
    at=0,
    created=NOW,
    status=Status.UNKNOWN,
)


def only(observed: tuple[Observed, ...]) -> Observed:
    assert len(observed) == 1
    return observed[0]


def test_go_fixture_gives_the_expected_observation():
    [observed] = parse_static(GO_STATIC, POLICY, now=NOW)
    assert HEX12.fullmatch(observed.service.id)
    assert observed == Observed(
        service=fixture_service(host="vm", sid=observed.service.id),
        check=HTTP_CHECK,
        listener="http://vm:9999/sidecar/update",
    )


def test_hostnamed_fixture_keeps_the_files_hostname_and_has_no_listener():
    [observed] = parse_static(GO_STATIC_HOSTNAMED, POLICY, now=NOW)
    assert observed == Observed(
        service=fixture_service(host="chaucer", sid=observed.service.id),
        check=HTTP_CHECK,
        listener=None,
    )
    plain = only(parse_static(GO_STATIC, POLICY, now=NOW))
    assert observed.service.id != plain.service.id  # another host's instance


def test_bytes_and_text_parse_alike():
    assert parse_static(GO_STATIC.encode(), POLICY, now=NOW) == parse_static(
        GO_STATIC, POLICY, now=NOW
    )


def test_old_fixture_unknown_keys_ignored_and_empty_proxy_mode_becomes_http():
    observed = only(parse_static(GO_STATIC_OLD, POLICY, now=NOW))
    assert observed.service.proxy_mode == "http"
    assert observed.service == fixture_service(host="vm", sid=observed.service.id)


def test_keys_match_case_insensitively_and_the_last_one_wins():
    text = """[{"service": {"NAME": "a", "name": "b", "image": "img",
                 "PORTS": [{"type": "tcp", "PORT": 80, "serviceport": 8080, "ip": "10.0.0.1"}],
                 "proxymode": "tcp"},
                "CHECK": {"type": "AlwaysSuccessful", "ARGS": ""},
                "listenPort": 7000}]"""
    observed = only(parse_static(text, POLICY, now=NOW))
    assert observed.service.name == "b"
    assert observed.service.image == "img"
    assert observed.service.ports == (Port(type="tcp", port=80, service_port=8080, ip="10.0.0.1"),)
    assert observed.service.proxy_mode == "tcp"
    assert observed.check == CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "", rise=1, fall=2)
    assert observed.listener == "http://vm:7000/sidecar/update"


def test_id_created_updated_status_in_the_file_are_overwritten():
    text = """[{"Service": {"ID": "given", "Name": "a", "Created": "2020-01-01T00:00:00Z",
                 "Updated": "2020-01-01T00:00:00Z", "Status": 7}}]"""
    service = only(parse_static(text, POLICY, now=NOW)).service
    assert service.id != "given"
    assert (service.created, service.updated, service.status) == (NOW, 0, Status.UNKNOWN)


def test_missing_keys_and_nulls_are_zero_values():
    empty = only(parse_static("[{}]", POLICY, now=NOW))
    nulls = only(
        parse_static('[{"Service": null, "Check": null, "ListenPort": null}]', POLICY, now=NOW)
    )
    for observed in (empty, nulls):
        assert observed.service.name == ""
        assert observed.service.ports is None
        assert observed.service.hostname == "vm"
        assert observed.listener is None
    assert empty == nulls
    assert parse_static("null", POLICY, now=NOW) == ()
    assert parse_static("[]", POLICY, now=NOW) == ()


def test_identical_targets_are_served_once_and_the_others_reported_as_duplicates():
    target = json.loads(GO_STATIC)[0]
    text = json.dumps([target, target, target])
    served, *duplicates = parse_static(text, POLICY, now=NOW)
    assert isinstance(served, Observed)
    # The ID is the one the target has alone: stable across restarts and re-reads, and
    # whatever duplicates are added or removed.
    alone = only(parse_static(GO_STATIC, POLICY, now=NOW))
    assert served == alone
    assert parse_static(text, POLICY, now=NOW + 10**9)[0].service.id == served.service.id
    assert [(type(d), d.id, d.name, d.reason) for d in duplicates] == [
        (
            Rejected,
            served.service.id,
            "some_service",
            f"target {index} is a duplicate of target 0 (the same Hostname, Name and Ports), "
            f"which is served as ID {served.service.id}",
        )
        for index in (1, 2)
    ]


def test_a_duplicate_is_the_same_host_name_and_ports_whatever_else_differs():
    base = {
        "Service": {
            "Name": "web",
            "Image": "web:1",
            "Ports": [
                {"Type": "tcp", "Port": 8001, "ServicePort": 9001},
                {"Type": "tcp", "Port": 8002, "ServicePort": 9002, "IP": "192.168.1.10"},
            ],
        }
    }
    reordered = json.loads(json.dumps(base))
    reordered["Service"]["Ports"].reverse()  # the empty IP is the advertise IP: the same
    reordered["Service"]["Image"] = "web:2"
    reordered["Check"] = {"Type": "Tcp", "Args": "{{ host }}:8001"}
    reordered["ListenPort"] = 7000
    other_port = json.loads(json.dumps(base))
    other_port["Service"]["Ports"][0]["Port"] = 8003
    other_host = json.loads(json.dumps(base))
    other_host["Service"]["Hostname"] = "elsewhere"
    other_name = json.loads(json.dumps(base))
    other_name["Service"]["Name"] = "web2"
    doc = [base, reordered, other_port, other_host, other_name]
    results = parse_static(json.dumps(doc), POLICY, now=NOW)
    assert [type(r) for r in results] == [Observed, Rejected, Observed, Observed, Observed]
    assert "target 1 is a duplicate of target 0" in results[1].reason
    served = [r.service.id for r in results if isinstance(r, Observed)]
    assert len(set(served)) == len(served)


def test_a_refused_target_does_not_make_the_next_identical_one_a_duplicate():
    refused = {"Service": {"Name": "a"}, "Check": {"Type": "External", "Args": "/bin/true"}}
    fine = {"Service": {"Name": "a"}}
    first, second = parse_static(json.dumps([refused, fine]), POLICY, now=NOW)
    assert isinstance(first, Rejected)
    assert "external checks disabled" in first.reason
    assert isinstance(second, Observed)


@pytest.mark.parametrize(
    ("service", "check", "field"),
    [
        ({"Name": "web\nlisten evil"}, {}, "target 1.Service.Name 'web\\nlisten evil'"),
        ({"Name": "web\u2028x"}, {}, "target 1.Service.Name 'web\\u2028x'"),
        ({"Image": "img\r\n"}, {}, "target 1.Service.Image 'img\\r\\n'"),
        ({"Hostname": "host\tx"}, {}, "target 1.Service.Hostname 'host\\tx'"),
        ({"ProxyMode": "http\n  bind :1"}, {}, "target 1.Service.ProxyMode 'http\\n  bind :1'"),
        (
            {"Ports": [{"Type": "tcp\x00", "Port": 1, "ServicePort": 2}]},
            {},
            "target 1.Service.Ports[0].Type 'tcp\\x00'",
        ),
        (
            {"Ports": [{"Type": "tcp", "Port": 1, "ServicePort": 2, "IP": "10.0.0.1\n"}]},
            {},
            "target 1.Service.Ports[0].IP '10.0.0.1\\n'",
        ),
        ({}, {"Type": "HttpGet\n"}, "target 1.Check.Type 'HttpGet\\n'"),
        ({}, {"Args": "http://x/\r\nHost: y"}, "target 1.Check.Args 'http://x/\\r\\nHost: y'"),
    ],
)
def test_a_control_character_in_any_field_rejects_that_target_naming_field_and_value(
    service: dict[str, object], check: dict[str, object], field: str
):
    bad = {"Service": {"Name": "bad", "Image": "img", **service}, "Check": check}
    text = json.dumps([{"Service": {"Name": "fine"}}, bad, {"Service": {"Name": "fine too"}}])
    first, refused, last = parse_static(text, POLICY, now=NOW)
    assert isinstance(refused, Rejected), refused
    assert refused.reason == f"{field} contains a control character or line break"
    assert HEX12.fullmatch(refused.id)
    assert isinstance(first, Observed)  # the others are unaffected
    assert isinstance(last, Observed)


def test_a_name_longer_than_routing_allows_is_rejected_at_discovery():
    longest, too_long = "n" * MAX_NAME_LENGTH, "n" * (MAX_NAME_LENGTH + 1)
    text = json.dumps([{"Service": {"Name": longest}}, {"Service": {"Name": too_long}}])
    served, refused = parse_static(text, POLICY, now=NOW)
    assert isinstance(served, Observed)
    assert isinstance(refused, Rejected)
    assert refused.name == too_long
    assert refused.reason.startswith("target 1.Service.Name 'nnnnn")
    assert refused.reason.endswith(
        "n... is 256 characters long, more than the 255 a service name may have"
    )
    assert len(refused.reason) < 200  # the value is cut, not copied whole


def test_an_unknown_proxy_mode_is_rejected_as_a_label_would_be():
    text = json.dumps([{"Service": {"Name": "a", "ProxyMode": "grpc"}}])
    (refused,) = parse_static(text, POLICY, now=NOW)
    assert isinstance(refused, Rejected)
    assert refused.reason == "target 0.Service.ProxyMode 'grpc' is not one of http, tcp, ws"


def test_id_follows_the_content():
    base = json.loads(GO_STATIC)
    changed = json.loads(GO_STATIC)
    changed[0]["Service"]["Ports"][0]["Port"] = 10235
    check_only = json.loads(GO_STATIC)
    check_only[0]["Check"]["Args"] = "http://:10234/health"

    def the_id(doc: object) -> str:
        return only(parse_static(json.dumps(doc), POLICY, now=NOW)).service.id

    assert the_id(base) != the_id(changed)
    assert the_id(base) == the_id(check_only)
    assert HEX12.fullmatch(static_id("x", 0))


def test_empty_ip_gets_the_advertise_ip_and_a_given_ip_is_kept():
    text = """[{"Service": {"Name": "a", "Ports": [
        {"Type": "tcp", "Port": 1, "ServicePort": 2},
        {"Type": "udp", "Port": 3, "ServicePort": 4, "IP": ""},
        {"Type": "tcp", "Port": 5, "ServicePort": 6, "IP": "10.9.8.7"}]}}]"""
    ports = only(parse_static(text, POLICY, now=NOW)).service.ports
    assert ports is not None
    assert [p.ip for p in ports] == ["192.168.1.10", "192.168.1.10", "10.9.8.7"]


def test_empty_check_type_gets_the_default_check_on_the_first_tcp_port():
    text = """[{"Service": {"Name": "a", "Ports": [
        {"Type": "udp", "Port": 53, "ServicePort": 53},
        {"Type": "tcp", "Port": 10234, "ServicePort": 0},
        {"Type": "tcp", "Port": 10235, "ServicePort": 9999}]},
        "Check": {"Type": "", "Args": "ignored"}}]"""
    policy = DiscoveryPolicy(hostname="vm", advertise_ip="10.1.1.1", rise=3, fall=4)
    check = only(parse_static(text, policy, now=NOW)).check
    assert check == CheckSpec(CheckType.HTTP_GET, "http://10.1.1.1:10234/version", rise=3, fall=4)


def test_default_check_without_a_tcp_port_is_always_successful():
    text = '[{"Service": {"Name": "a", "Ports": [{"Type": "udp", "Port": 53}]}}]'
    check = only(parse_static(text, POLICY, now=NOW)).check
    assert check == CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "", rise=1, fall=2)


@pytest.mark.parametrize(
    ("given_type", "expected"),
    [
        ("HttpGet", CheckType.HTTP_GET),
        ("Tcp", CheckType.TCP),
        ("AlwaysSuccessful", CheckType.ALWAYS_SUCCESSFUL),
        ("Awesome-sauce", CheckType.HTTP_GET),  # Go: unknown types are HttpGet
        ("httpget", CheckType.HTTP_GET),
        ("Docker", CheckType.HTTP_GET),  # no container behind a static target
    ],
)
def test_check_types(given_type: str, expected: CheckType):
    text = json.dumps([{"Check": {"Type": given_type, "Args": "http://h:1/"}}])
    policy = DiscoveryPolicy(hostname="vm", advertise_ip="10.1.1.1", rise=2, fall=5)
    assert only(parse_static(text, policy, now=NOW)).check == CheckSpec(
        expected, "http://h:1/", rise=2, fall=5
    )


def test_external_check_only_when_enabled():
    text = json.dumps(
        [
            {"Service": {"Name": "ext"}, "Check": {"Type": "External", "Args": "/bin/true"}},
            {"Service": {"Name": "fine"}},
        ]
    )
    refused, fine = parse_static(text, POLICY, now=NOW)
    assert isinstance(refused, Rejected)
    assert refused.name == "ext"
    assert "target 0.Check.Type: external checks disabled" in refused.reason
    assert isinstance(fine, Observed)  # the other target is served
    text = json.dumps([{"Check": {"Type": "External", "Args": "/bin/true"}}])
    enabled = DiscoveryPolicy(hostname="vm", advertise_ip="10.1.1.1", external_checks=True)
    check = only(parse_static(text, enabled, now=NOW)).check
    assert check == CheckSpec(CheckType.EXTERNAL, "/bin/true", rise=1, fall=2)


def test_invalid_json_names_line_and_column():
    text = '[\n  {"Service": {"Name": "a"}\n   "Check": {}}\n]'
    with pytest.raises(StaticConfigError) as caught:
        parse_static(text, POLICY, now=NOW, source="/etc/sidecar/static.json")
    assert (caught.value.line, caught.value.column) == (3, 4)
    assert str(caught.value) == (
        "/etc/sidecar/static.json line 3 column 4: Expecting ',' delimiter"
    )
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"Service": {}}', r"^static\.json: expected a JSON array of targets"),
        ("[{}, 3]", r"^static\.json: target 1: expected a JSON object, got 3$"),
        ('[{"Service": []}]', r"target 0\.Service: expected a JSON object"),
        ('[{"Service": {"Ports": [{"Port": "80"}]}}]', r"target 0\.Service: Port\.port: .*integer"),
        ('[{"Service": {"Ports": [{"Port": 80.5}]}}]', r"target 0\.Service: Port\.port"),
        ('[{"Service": {"Ports": {}}}]', r"target 0\.Service: Service\.ports: expected an array"),
        ('[{"Service": {"Name": 5}}]', r"target 0\.Service: Service\.name: expected a string"),
        ('[{"Service": {"Created": "yesterday"}}]', r"target 0\.Service: Service\.created"),
        ('[{"Check": "HttpGet"}]', r"target 0\.Check: expected a JSON object"),
        ('[{"Check": {"Type": 1}}]', r"target 0\.Check\.Type: expected a string"),
        ('[{"Check": {"Args": ["a"]}}]', r"target 0\.Check\.Args: expected a string"),
        ('[{"ListenPort": "9999"}]', r"target 0\.ListenPort: expected a port number"),
        ('[{"ListenPort": true}]', r"target 0\.ListenPort: expected a port number"),
        ('[{"ListenPort": 70000}]', r"target 0\.ListenPort: expected a port number"),
        ("[NaN]", r"invalid JSON value NaN"),
        ("", r"line 1 column 1: Expecting value"),
        ("[" * 100_000, r"static\.json"),
    ],
)
def test_wrong_shapes_name_the_target_and_field(text: str, message: str):
    with pytest.raises(StaticConfigError, match=message):
        parse_static(text, POLICY, now=NOW)


def test_invalid_utf8_and_lone_surrogates_become_replacement_characters():
    raw = b'[{"Service": {"Name": "a\xffb"}, "Check": {"Type": "HttpGet", "Args": "\\ud800"}}]'
    observed = only(parse_static(raw, POLICY, now=NOW))
    assert observed.service.name == "a\ufffdb"
    assert observed.check.args == "\ufffd"


def test_keep_created_carries_the_first_created_of_an_unchanged_service():
    first = parse_static(GO_STATIC, POLICY, now=NOW)
    edited = [*json.loads(GO_STATIC), {"Service": {"Name": "new"}}]
    second = parse_static(json.dumps(edited), POLICY, now=NOW + 5)
    kept = keep_created(second, first)
    assert [o.service.created for o in kept] == [NOW, NOW + 5]
    assert kept[0] == first[0]
    assert keep_created(first, ()) == first


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
key_names = st.sampled_from(
    [
        "Service",
        "service",
        "Check",
        "ListenPort",
        "Type",
        "Args",
        "Name",
        "Image",
        "Hostname",
        "Ports",
        "Port",
        "ServicePort",
        "IP",
        "ProxyMode",
        "Status",
        "Created",
        "ID",
        "other",
    ]
)
targetish = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key_names, inner, max_size=5),
    max_leaves=25,
)


def assert_parses_or_refuses(text: str | bytes) -> None:
    try:
        observed = parse_static(text, POLICY, now=NOW)
    except StaticConfigError as exc:
        refusal = str(exc)
        assert refusal.startswith("static.json")
        return
    assert isinstance(observed, tuple)
    ids = [o.service.id if isinstance(o, Observed) else o.id for o in observed]
    assert all(isinstance(o, Observed | Rejected) for o in observed)
    assert all(HEX12.fullmatch(i) for i in ids)
    served = [o.service.id for o in observed if isinstance(o, Observed)]
    assert len(set(served)) == len(served)


@given(st.text() | st.binary())
def test_any_text_parses_or_is_refused(text: str | bytes):
    assert_parses_or_refuses(text)


@given(st.lists(targetish, max_size=4) | json_values)
def test_any_json_document_parses_or_is_refused(document: object):
    assert_parses_or_refuses(json.dumps(document))


def test_check_args_are_templated_and_a_refused_template_names_the_target():
    doc = json.loads(GO_STATIC)
    doc[0]["Check"]["Args"] = "http://{{ host }}:{{ tcp 9999 }}/status"
    check = only(parse_static(json.dumps(doc), POLICY, now=NOW)).check
    assert check.args == "http://192.168.1.10:10234/status"
    doc[0]["Check"]["Args"] = "{{ .ID }}"
    (refused,) = parse_static(json.dumps(doc), POLICY, now=NOW)
    assert isinstance(refused, Rejected)
    assert "target 0.Check.Args" in refused.reason
    assert "is not one of" in refused.reason
