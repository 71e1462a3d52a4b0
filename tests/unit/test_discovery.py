"""The Go label contract: container facts -> observation or rejection, templating, health."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.state import discovery, times, views
from sidecar.state.discovery import (
    CheckSpec,
    CheckType,
    ContainerFacts,
    DiscoveryPolicy,
    Health,
    Observed,
    PublishedPort,
    Rejected,
)
from sidecar.state.model import Port, Status
from sidecar.state.views import MAX_NAME_LENGTH

CREATED = times.parse_time("2026-11-25T07:00:00.123456789Z")
POLICY = DiscoveryPolicy(hostname="indomitable", advertise_ip="10.0.0.5")
FULL_ID = "d419fa7ad1a7" + "0" * 52


def facts(labels=None, ports=None, *, name="/nginx-1", image="nginx:latest", health=None):
    return ContainerFacts(
        id=FULL_ID,
        name=name,
        image=image,
        created=CREATED,
        labels=labels or {},
        ports=tuple(ports if ports is not None else ()),
        health=health,
    )


def observed(f, policy=POLICY) -> Observed:
    result = discovery.observe_container(f, policy)
    assert isinstance(result, Observed), result
    return result


def rejected(f, policy=POLICY) -> Rejected:
    result = discovery.observe_container(f, policy)
    assert isinstance(result, Rejected), result
    return result


# The seed's "Testing" example: nginx run with -P and these labels.
SEED_LABELS = {
    "HealthCheck": "HttpGet",
    "ServicePort_80": "8080",
    "ServicePort_443": "8443",
    "HealthCheckArgs": "http://{{ host }}:{{ tcp 8080 }}/",
}
SEED_PORTS = [  # as Docker 20.10 lists -P bindings: each port on 0.0.0.0 and on ::
    PublishedPort(80, "tcp", 49153, "0.0.0.0"),
    PublishedPort(80, "tcp", 49153, "::"),
    PublishedPort(443, "tcp", 49154, "0.0.0.0"),
    PublishedPort(443, "tcp", 49154, "::"),
]


def test_the_seed_example_is_observed_as_the_go_sidecar_would_see_it():
    result = observed(facts(SEED_LABELS, SEED_PORTS))
    service = result.service
    assert service.id == "d419fa7ad1a7"
    assert service.name == "nginx:latest"  # no ServiceName label: the image name
    assert service.image == "nginx:latest"
    assert service.created == CREATED
    assert service.hostname == "indomitable"
    assert service.proxy_mode == "http"
    assert service.status is Status.UNKNOWN
    assert service.ports == (
        Port(type="tcp", port=49153, service_port=8080, ip="10.0.0.5"),
        Port(type="tcp", port=49154, service_port=8443, ip="10.0.0.5"),
    )
    assert result.check == CheckSpec(CheckType.HTTP_GET, "http://10.0.0.5:49153/", 1, 2)
    assert result.listener is None


def test_service_name_label_and_proxy_mode():
    service = observed(facts({"ServiceName": "web", "ProxyMode": "tcp"})).service
    assert (service.name, service.proxy_mode) == ("web", "tcp")


def test_a_port_bound_to_a_specific_host_ip_keeps_it_and_ipv6_only_is_kept():
    ports = [PublishedPort(80, "tcp", 8000, "127.0.0.2"), PublishedPort(53, "udp", 5353, "::1")]
    service = observed(facts({"ServicePort_53": "53"}, ports)).service
    assert service.ports == (
        Port(type="udp", port=5353, service_port=53, ip="::1"),
        Port(type="tcp", port=8000, service_port=0, ip="127.0.0.2"),
    )


@pytest.mark.parametrize("value", ["false", "False", "FALSE", " false "])
def test_sidecar_discover_false_in_any_case_hides_the_container(value):
    assert discovery.observe_container(facts({"SidecarDiscover": value}), POLICY) is None


def test_sidecar_discover_other_values_do_not_hide_it():
    assert discovery.observe_container(facts({"SidecarDiscover": "no"}), POLICY) is not None


def test_regex_namer_uses_group_one_of_the_container_name_else_the_image():
    namer = discovery.regex_namer(r"^/(.+)(-[0-9a-z]{7,14})$")
    policy = DiscoveryPolicy(hostname="h", advertise_ip="10.0.0.5", namer=namer)
    assert observed(facts(name="/awesome-svc-1231b1b12323"), policy).service.name == "awesome-svc"
    assert observed(facts(name="/plain"), policy).service.name == "nginx:latest"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("", "no capture group"), ("^/web$", "no capture group"), ("(", "not a valid regex")],
)
def test_a_regex_namer_that_cannot_work_is_refused_naming_it(pattern, message):
    with pytest.raises(discovery.NamerError, match=message) as info:
        discovery.regex_namer(pattern)
    assert repr(pattern) in str(info.value)


def test_docker_healthcheck_is_the_check_when_no_label_names_one():
    assert observed(facts(health="starting")).check.type is CheckType.DOCKER
    labelled = observed(facts({"HealthCheck": "AlwaysSuccessful"}, health="healthy"))
    assert labelled.check.type is CheckType.ALWAYS_SUCCESSFUL


def test_default_check_is_http_get_on_the_first_tcp_port_at_the_default_endpoint():
    ports = [PublishedPort(53, "udp", 5353, ""), PublishedPort(8080, "tcp", 32768, "")]
    assert observed(facts(ports=ports)).check == CheckSpec(
        CheckType.HTTP_GET, "http://10.0.0.5:32768/version", 1, 2
    )
    assert observed(facts()).check.type is CheckType.ALWAYS_SUCCESSFUL  # no tcp port


def test_tcp_check_defaults_to_the_first_tcp_port_and_thresholds_come_from_labels():
    ports = [PublishedPort(6379, "tcp", 32000, "0.0.0.0")]
    labels = {"HealthCheck": "Tcp", "HealthCheckRise": "3", "HealthCheckFall": "5"}
    assert observed(facts(labels, ports)).check == CheckSpec(CheckType.TCP, "10.0.0.5:32000", 3, 5)


def test_an_unknown_check_type_runs_as_http_get_as_in_go():
    check = observed(facts({"HealthCheck": "Awesome-sauce", "HealthCheckArgs": "http://x/"})).check
    assert check == CheckSpec(CheckType.HTTP_GET, "http://x/", 1, 2)


def test_external_checks_are_refused_unless_enabled():
    labels = {"HealthCheck": "External", "HealthCheckArgs": "/bin/check --port {{ tcp 80 }}"}
    ports = [PublishedPort(80, "tcp", 32001, "")]
    assert "external checks disabled" in rejected(facts(labels, ports)).reason
    enabled = DiscoveryPolicy(hostname="h", advertise_ip="10.0.0.5", external_checks=True)
    assert observed(facts({**labels, "ServicePort_80": "80"}, ports), enabled).check == (
        CheckSpec(CheckType.EXTERNAL, "/bin/check --port 32001", 1, 2)
    )


def test_listener_label_points_at_the_published_port_of_that_service_port():
    ports = [PublishedPort(9000, "tcp", 32100, "0.0.0.0")]
    labels = {"ServicePort_9000": "10000", "SidecarListener": "10000"}
    assert observed(facts(labels, ports)).listener == "http://10.0.0.5:32100/sidecar/update"


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"ServicePort_80": "http"}, "label ServicePort_80='http' is not a port number (1-65535)"),
        ({"ServicePort_80": "70000"}, "is not a port number"),
        (
            {"ServicePort_eighty": "8080"},
            "label 'ServicePort_eighty' does not name a container port",
        ),
        ({"ProxyMode": "udp"}, "label ProxyMode='udp' is not one of http, tcp, ws"),
        ({"ProxyMode": "http\n    bind :1"}, "contains a control character"),
        ({"ServiceName": "web\nlisten evil"}, "label ServiceName 'web\\nlisten evil' contains"),
        ({"HealthCheckArgs": "http://x/\r\nHost: y"}, "label HealthCheckArgs"),
        ({"HealthCheckRise": "0"}, "label HealthCheckRise='0' is not a count from 1 to 100"),
        ({"HealthCheckFall": "many"}, "label HealthCheckFall='many'"),
        ({"SidecarListener": "8080"}, "names no published tcp port"),
        ({"HealthCheck": "HttpGet", "HealthCheckArgs": "{{ .ID }}"}, "'{{ .ID }}' is not one of"),
        ({"HealthCheck": "HttpGet", "HealthCheckArgs": "{{ tcp 9 }}"}, "no published tcp port"),
    ],
)
def test_bad_labels_reject_the_container_with_the_label_and_value(labels, reason):
    result = rejected(facts(labels, [PublishedPort(80, "tcp", 32768, "0.0.0.0")]))
    assert result.id == "d419fa7ad1a7"
    assert result.name == "/nginx-1"
    assert reason in result.reason


def test_a_bad_image_name_is_a_rejection_too():
    assert "image" in rejected(facts(image="evil\nimage")).reason


def test_a_name_longer_than_routing_allows_is_rejected_at_discovery():
    longest, too_long = "n" * MAX_NAME_LENGTH, "n" * (MAX_NAME_LENGTH + 1)
    assert observed(facts({"ServiceName": longest})).service.name == longest
    reason = rejected(facts({"ServiceName": too_long})).reason
    assert reason == (
        f"label ServiceName '{'n' * 76}... is 256 characters long, "
        "more than the 255 a service name may have"
    )
    # Whichever way the name came: the regex namer's group, or the image name.
    by_regex = DiscoveryPolicy(
        hostname="h", advertise_ip="10.0.0.5", namer=discovery.regex_namer("^/(.+)$")
    )
    assert "service name 'nnn" in rejected(facts(name="/" + too_long), by_regex).reason
    assert "256 characters long" in rejected(facts(image=too_long)).reason


def test_the_name_limit_is_the_routing_tables():
    assert discovery.MAX_NAME_LENGTH is views.MAX_NAME_LENGTH == 255


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("http://{{ host }}:{{ tcp 8080 }}/status/check", "http://10.0.0.5:1234/status/check"),
        ("http://{{container}}:{{  tcp   8080 }}/", "http://indefatigable:1234/"),
        ("{{ udp 53 }}", "5353"),
        ("no placeholders", "no placeholders"),
        ("", ""),
    ],
)
def test_templating_fills_host_container_and_ports_by_service_port(template, expected):
    service = observed(
        facts(
            {"ServicePort_80": "8080", "ServicePort_53": "53"},
            [PublishedPort(80, "tcp", 1234, ""), PublishedPort(53, "udp", 5353, "")],
        ),
        DiscoveryPolicy(hostname="indefatigable", advertise_ip="10.0.0.5"),
    ).service
    assert discovery.render_check_args(template, service, host="10.0.0.5") == expected


@pytest.mark.parametrize(
    "template",
    ["{{ .Name }}", '{{ printf "%s" 1 }}', "{{ host }}{{", "{{ tcp }}", "{{ index . 0 }}"],
)
def test_templating_refuses_anything_else(template):
    service = observed(facts()).service
    with pytest.raises(discovery.TemplateRejected):
        discovery.render_check_args(template, service, host="h")


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "ServiceName",
                "ServicePort_80",
                "ServicePort_x",
                "ProxyMode",
                "HealthCheck",
                "HealthCheckArgs",
                "SidecarDiscover",
                "SidecarListener",
                "HealthCheckRise",
            ]
        )
        | st.text(max_size=5),
        st.text(max_size=20),
        max_size=6,
    )
)
def test_any_labels_give_an_observation_a_rejection_or_none_never_an_error(labels):
    result = discovery.observe_container(
        facts(labels, [PublishedPort(80, "tcp", 32768, "0.0.0.0")]), POLICY
    )
    assert result is None or isinstance(result, Observed | Rejected)


# ---------------------------------------------------------------------- health


def run_results(results, *, rise=1, fall=2):
    health = Health()
    statuses = []
    for healthy in results:
        health = discovery.record_result(health, healthy=healthy, rise=rise, fall=fall)
        statuses.append(health.status)
    return statuses


A, U = Status.ALIVE, Status.UNHEALTHY


def test_the_first_result_decides_at_once():
    assert run_results([True]) == [A]
    assert run_results([False]) == [U]


def test_fall_needs_that_many_failures_in_a_row():
    assert run_results([True, False, True, False, False]) == [A, A, A, A, U]


def test_rise_needs_that_many_passes_in_a_row():
    assert run_results([False, True, True, False, True, True, True], rise=3) == [
        U,
        U,
        U,
        U,
        U,
        U,
        A,
    ]


def test_thresholds_of_one_follow_every_result():
    assert run_results([True, False, True], rise=1, fall=1) == [A, U, A]


def test_docker_health_maps_to_check_results():
    assert discovery.status_from_docker_health("healthy") is True
    assert discovery.status_from_docker_health("unhealthy") is False
    assert discovery.status_from_docker_health("starting") is None
    assert discovery.status_from_docker_health(None) is None


# ---------------------------------------------------------------------- serving policy

S = times.NANOS_PER_SECOND


def test_a_short_engine_outage_keeps_the_last_listing_and_a_long_one_drops_it():
    listing = (facts(),)
    assert discovery.containers_to_serve(listing, unreachable_since=None, now=100 * S) == listing
    kept = discovery.containers_to_serve(listing, unreachable_since=80 * S, now=100 * S)
    assert kept == listing
    gone = discovery.containers_to_serve(listing, unreachable_since=60 * S, now=100 * S)
    assert gone == ()
    custom = discovery.containers_to_serve(
        listing, unreachable_since=95 * S, now=100 * S, grace=2 * S
    )
    assert custom == ()


def test_observed_records_take_the_status_their_checks_decided():
    first = observed(facts())
    second = observed(ContainerFacts(id="e" * 64, name="/b", image="b:1", created=CREATED))
    services = discovery.with_health(
        [first, second], {first.service.id: Health(Status.UNHEALTHY, -2)}
    )
    assert [s.status for s in services] == [Status.UNHEALTHY, Status.UNKNOWN]
    assert services[0].id == first.service.id


def test_the_advertise_ip_is_the_first_private_ipv4_not_excluded():
    addresses = ["127.0.0.1", "192.0.2.2", "fd00::1", "192.168.168.168", "172.17.0.1", "10.1.1.1"]
    assert discovery.choose_advertise_ip(addresses, excluded=["192.168.168.168"]) == "172.17.0.1"
    assert discovery.choose_advertise_ip(addresses) == "192.168.168.168"
    assert discovery.choose_advertise_ip(["127.0.0.1", "203.0.113.9", "172.32.0.1"]) is None
