"""The desired HAProxy config: Go's naming, deterministic bytes, no injection."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sidecar.reconcile import desired
from sidecar.reconcile.desired import HaproxySettings
from sidecar.state import merge, views
from sidecar.state.model import ClusterState
from tests.builders import T0, cluster_state, service

SETTINGS = HaproxySettings(bind_ip="192.168.168.168")


def record(
    host="indomitable",
    sid="deadbeef123",
    *,
    name="awesome-svc",
    ip="127.0.0.1",
    port=10450,
    service_port=8080,
    mode="http",
    created=T0,
):
    return service(
        host,
        sid,
        name=name,
        image=f"{name}:1.0",
        ports=((port, service_port),),
        ip=ip,
        created=created,
        mode=mode,
    )


def render(*records, settings=SETTINGS):
    state = cluster_state("me", *records)
    return desired.desired(views.routing_table(state), settings)


def service_block(config: str) -> str:
    return config[config.index("# ----------- ") :]


def test_the_go_example_renders_with_go_names():
    result = render(record(), record("indefatigable", "deadbeef101", ip="127.0.0.3", port=32763))
    assert service_block(result.config) == (
        "# ----------- awesome-svc port 8080 --------------\n"
        "frontend awesome-svc-8080\n"
        "\tmode http\n"
        "\tbind 192.168.168.168:8080\n"
        "\tdefault_backend awesome-svc-8080\n"
        "\n"
        "backend awesome-svc-8080\n"
        "\tmode http\n"
        "\tserver indefatigable-deadbeef101 127.0.0.3:32763 cookie indefatigable-32763\n"
        "\tserver indomitable-deadbeef123 127.0.0.1:10450 cookie indomitable-10450\n"
    )
    assert [f.name for f in result.frontends] == ["awesome-svc-8080"]
    assert result.backends[0].servers[0].name == "indefatigable-deadbeef101"
    assert result.bind_ips == ("192.168.168.168",)


def test_the_admin_socket_is_not_world_writable():
    config = render(record()).config
    assert "stats   socket /var/run/haproxy_stats.sock mode 600 level admin" in config
    assert "mode 666" not in config


@pytest.mark.parametrize(
    ("name", "sanitized"),
    [("public/something-longish:latest", "public-something-longish-latest"), ("MySvc", "-y-vc")],
)
def test_names_are_sanitized_as_go_does_and_the_comment_keeps_the_raw_name(name, sanitized):
    config = render(record(name=name)).config
    assert f"frontend {sanitized}-8080\n" in config
    assert f"# ----------- {name} port 8080" in config


@given(st.text())
@example("web\nfrontend evil")
@example("web\r\n\tserver x 10.0.0.1:1\x00\x7f\u2028")
def test_a_sanitized_name_holds_only_lowercase_letters_digits_and_dashes(name):
    # On its own: the routing table refuses such names too, but each layer must hold.
    sanitized = desired.sanitize_name(name)
    assert re.fullmatch(r"[a-z0-9-]*", sanitized), sanitized
    assert len(sanitized) == len(name)  # one `-` for each character replaced


def test_ws_is_served_as_http_and_tcp_as_tcp():
    config = render(
        record(name="a", mode="ws"), record("h2", "b1", name="b", mode="tcp", service_port=9000)
    ).config
    assert "frontend a-8080\n\tmode http\n" in config
    assert "frontend b-9000\n\tmode tcp\n" in config


def test_use_hostnames_and_ipv6_endpoints():
    with_hostnames = HaproxySettings(bind_ip="10.0.0.1", use_hostnames=True)
    assert (
        "server indomitable-deadbeef123 indomitable:10450"
        in render(record(), settings=with_hostnames).config
    )
    assert "server indomitable-deadbeef123 [fd00::2]:10450" in render(record(ip="fd00::2")).config


def test_user_and_group_lines_only_when_set():
    config = render(record(), settings=HaproxySettings(user="haproxy", group="haproxy")).config
    assert "\tuser haproxy\n\tgroup haproxy\n" in config
    assert "\tuser" not in render(record()).config


@pytest.mark.parametrize("ip", ["0.0.0.0", "", "::", "127.0.0.55", "::1"])
def test_binding_on_all_interfaces_or_loopback_needs_no_address(ip):
    assert render(record(), settings=HaproxySettings(bind_ip=ip)).bind_ips == ()


def test_any_other_bind_ip_is_to_be_bound():
    assert render(record(), settings=HaproxySettings(bind_ip="10.1.2.3")).bind_ips == ("10.1.2.3",)


@pytest.mark.parametrize(
    ("bind_ip", "stats_ip", "listens"),
    [
        ("192.168.168.168", "", "192.168.168.168"),
        ("0.0.0.0", "", "127.0.0.1"),
        ("", "", "127.0.0.1"),
        ("::", "", "[::1]"),
        ("192.168.168.168", "10.0.0.5", "10.0.0.5"),
        ("0.0.0.0", "fd00::5", "[fd00::5]"),
    ],
)
def test_the_stats_listen_on_the_bind_ip_or_loopback_never_everywhere(bind_ip, stats_ip, listens):
    settings = dataclasses.replace(SETTINGS, bind_ip=bind_ip, stats_ip=stats_ip)
    config = render(settings=settings).config
    binds = re.findall(r"\n\tbind (\S+)", config)
    assert binds == [f"{listens}:3212", f"{listens}:32012"]  # no service: the stats alone
    assert f"\tserver localhost {listens}:32012\n" in config


@pytest.mark.parametrize(("seconds", "written"), [(30.0, "30s"), (0.25, "250ms"), (90.0, "90s")])
def test_hard_stop_after_bounds_how_long_an_old_haproxy_finishes_its_requests(seconds, written):
    config = render(settings=dataclasses.replace(SETTINGS, hard_stop_after=seconds)).config
    assert f"\n\thard-stop-after {written}\n" in config


def test_the_same_state_gives_the_same_bytes_whatever_the_order():
    records = [
        record(),
        record("h2", "aa11", port=1),
        record("h3", "bb22", name="api", service_port=9000),
        record("h4", "cc33", name="db", service_port=5432, mode="tcp"),
    ]
    configs = {render(*p).config for p in itertools.permutations(records)}
    assert len(configs) == 1


def test_a_user_template_gets_the_same_values():
    template = "{% for f in frontends %}{{ f.name }} {{ f.bind_ip }}:{{ f.port }}\n{% endfor %}"
    settings = HaproxySettings(bind_ip="127.0.0.9", template=template)
    assert render(record(), settings=settings).config == "awesome-svc-8080 127.0.0.9:8080\n"


@pytest.mark.parametrize("template", ["{% for x in %}", "{{ no_such_value }}"])
def test_a_broken_user_template_is_an_error_naming_it(template):
    settings = HaproxySettings(template=template, template_name="/etc/sidecar/my.cfg.j2")
    with pytest.raises(desired.TemplateError, match=re.escape("/etc/sidecar/my.cfg.j2")):
        render(record(), settings=settings)


@pytest.mark.parametrize(
    ("template", "line", "message"),
    [
        pytest.param("global\n\n{% for f in frontends %}\n", 3, "'endfor'", id="unclosed-for"),
        pytest.param("global\n  bind {{ bind_ip }\n", 2, "unexpected '}'", id="bad-braces"),
        pytest.param("a\nb\nc\n{{ x | no_such_filter }}", 4, "no_such_filter", id="filter"),
    ],
)
def test_check_template_names_the_file_the_line_and_jinjas_message(template, line, message):
    with pytest.raises(desired.TemplateError) as refused:
        desired.check_template(template, "/etc/sidecar/my.cfg.j2")
    assert str(refused.value).startswith(f"/etc/sidecar/my.cfg.j2, line {line}: ")
    assert message in str(refused.value)


def test_check_template_accepts_what_compiles_even_if_it_would_not_render():
    desired.check_template(desired.SHIPPED_TEMPLATE, "the shipped template")
    desired.check_template("{{ no_such_value }}", "t.j2")  # undefined: known only at render


# ---------------------------------------------------------------------- injection


def skeleton(config: str) -> list[str]:
    """Return each directive's first word, comments and blank lines left out."""
    return [
        line.split()[0]
        for line in config.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


CLEAN = skeleton(render(record()).config)
EMPTY = skeleton(render().config)
FIELDS = ["id", "name", "hostname", "proxy_mode", "image"]
PORT_FIELDS = ["ip", "type"]


@given(st.sampled_from(FIELDS + PORT_FIELDS), st.text(max_size=40))
def test_no_string_in_any_field_adds_a_directive(field, value):
    base = record()
    if field in PORT_FIELDS:
        port = base.ports[0]
        changed = dataclasses.replace(base, ports=(dataclasses.replace(port, **{field: value}),))
    else:
        changed = dataclasses.replace(base, **{field: value})
    result = render(changed)
    assert skeleton(result.config) in (CLEAN, EMPTY)
    for line in result.config.splitlines():
        assert "\r" not in line
    if skeleton(result.config) == EMPTY:
        state = merge.merge_record(ClusterState(hostname="me"), changed, now=T0).state
        assert views.routing_table(state).excluded  # left out, and reported


def test_user_templates_get_the_sanitize_name_filter():
    settings = HaproxySettings(
        template="{% for f in frontends %}{{ f.service | sanitize_name }}{% endfor %}"
    )
    assert render(record(name="My.Svc"), settings=settings).config == "-y--vc"
