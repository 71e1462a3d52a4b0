"""Plans by example: what each kind of change costs the running HAProxy."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.reconcile import desired, plans
from sidecar.reconcile.desired import HaproxySettings
from sidecar.reconcile.plans import Actual
from sidecar.state import views
from tests.builders import T0, cluster_state, service

SETTINGS = HaproxySettings(bind_ip="192.168.168.168")


def svc(host, sid, port=30001, service_port=8080, ip="10.0.0.1"):
    return service(host, sid, ports=((port, service_port),), ip=ip)


def want(*records):
    state = cluster_state("me", *records)
    return desired.desired(views.routing_table(state), SETTINGS)


def running(*records):
    return plans.apply(Actual(), plans.plan(want(*records), Actual()))


def kinds(actions):
    return [(a.kind, getattr(a, "server", "")) for a in actions]


def test_nothing_running_binds_writes_and_starts():
    actions = plans.plan(want(svc("h1", "a1")), Actual())
    assert [a.kind for a in actions] == ["bind", "write", "start"]
    assert actions[0].address == "192.168.168.168"
    assert "not on the interface" in actions[0].reason


def test_converged_means_an_empty_plan():
    assert plans.plan(want(svc("h1", "a1")), running(svc("h1", "a1"))) == ()


def test_a_new_instance_is_a_runtime_add_and_a_file_rewrite_without_reload():
    actions = plans.plan(want(svc("h1", "a1"), svc("h2", "b2")), running(svc("h1", "a1")))
    assert kinds(actions) == [("add-server", "h2-b2"), ("write", "")]
    assert actions[0].backend == "web-8080"
    assert (actions[0].address, actions[0].port) == ("10.0.0.1", 30001)
    assert "no reload" in actions[1].reason


def test_a_removed_instance_is_a_runtime_delete():
    actions = plans.plan(want(svc("h1", "a1")), running(svc("h1", "a1"), svc("h2", "b2")))
    assert kinds(actions) == [("del-server", "h2-b2"), ("write", "")]


def test_a_replaced_instance_is_added_before_the_old_one_is_deleted():
    # The deletion waits for the old one's requests in flight: the backend must have the
    # new server meanwhile (make before break).
    actions = plans.plan(want(svc("h1", "new", port=30002)), running(svc("h1", "old")))
    assert kinds(actions) == [("add-server", "h1-new"), ("del-server", "h1-old"), ("write", "")]


def test_a_moved_instance_is_a_runtime_address_change():
    actions = plans.plan(want(svc("h1", "a1", port=30009)), running(svc("h1", "a1")))
    assert kinds(actions) == [("set-server-addr", "h1-a1"), ("write", "")]
    assert "from 10.0.0.1:30001 to 10.0.0.1:30009" in actions[0].reason


def test_a_new_service_port_is_one_reload():
    actions = plans.plan(
        want(svc("h1", "a1"), svc("h2", "b2", service_port=9000)), running(svc("h1", "a1"))
    )
    assert [a.kind for a in actions] == ["write", "reload"]


def test_a_server_in_maintenance_that_should_serve_is_enabled():
    actual = running(svc("h1", "a1"))
    actual = plans.replace(actual, disabled=frozenset({("web-8080", "h1-a1")}))
    actions = plans.plan(want(svc("h1", "a1")), actual)
    assert kinds(actions) == [("enable-server", "h1-a1")]
    assert "maintenance" in actions[0].reason


def test_add_server_leaves_out_the_cookie_where_the_backend_declares_none():
    actions = plans.plan(want(svc("h1", "a1"), svc("h2", "b2")), running(svc("h1", "a1")))
    assert "server h2-b2 10.0.0.1:30001 cookie h2-30001" in actions[-1].config
    assert actions[0].kind == "add-server"
    assert actions[0].options == ()


COOKIE_TEMPLATE = """\
defaults
\tmode http
{% for frontend in frontends %}
backend {{ frontend.backend }}
\tcookie SRV insert
{%- for server in backends[frontend.backend].servers %}
\tserver {{ server.name }} {{ server.address }}:{{ server.port }} {{ ""
}}cookie {{ server.cookie }} weight 10
{%- endfor %}
{% endfor %}"""


def test_a_new_server_in_a_backend_with_cookies_is_a_reload():
    settings = HaproxySettings(bind_ip="192.168.168.168", template=COOKIE_TEMPLATE)

    def with_cookies(*records):
        state = cluster_state("me", *records)
        return desired.desired(views.routing_table(state), settings)

    before = plans.apply(Actual(), plans.plan(with_cookies(svc("h1", "a1")), Actual()))
    actions = plans.plan(with_cookies(svc("h1", "a1"), svc("h2", "b2")), before)
    assert [a.kind for a in actions] == ["write", "reload"]
    assert "declares a cookie" in actions[0].reason


def test_runtime_options_drop_only_the_cookie_and_its_value():
    assert plans.runtime_options(("cookie", "x", "weight", "10", "check")) == (
        "weight",
        "10",
        "check",
    )


def test_a_changed_server_option_is_a_reload():
    before = running(svc("h1", "a1"))
    config = before.config.replace("cookie h1-30001", "cookie h1-30001 weight 5")
    actions = plans.plan(want(svc("h1", "a1")), plans.replace(before, config=config))
    assert [a.kind for a in actions] == ["write", "reload"]
    assert "options of web-8080/h1-a1 changed" in actions[0].reason


EVERY_KIND = (
    plans.Bind(address="192.168.168.168", reason="r1"),
    plans.Write(config="global\n", reason="r2"),
    plans.Start(reason="r3"),
    plans.Reload(reason="r4"),
    plans.DelServer(backend="web-8080", server="h1-a1", reason="r5"),
    plans.AddServer(
        backend="web-8080",
        server="h2-b2",
        address="[fd00::2]",
        port=30002,
        options=("weight", "10"),
        reason="r6",
    ),
    plans.EnableServer(backend="web-8080", server="h3-c3", reason="r7"),
    plans.SetServerAddr(
        backend="web-8080", server="h4-d4", address="10.0.0.4", port=30004, reason="r8"
    ),
)


def test_every_kind_of_action_is_a_frozen_type_of_its_own():
    assert tuple(a.kind for a in EVERY_KIND) == plans.KINDS
    assert plans.KINDS == (
        "bind",
        "write",
        "start",
        "reload",
        "del-server",
        "add-server",
        "enable-server",
        "set-server-addr",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVERY_KIND[0].reason = "changed"


def test_every_kind_of_action_says_what_and_why():
    assert [a.describe() for a in EVERY_KIND] == [
        "bind 192.168.168.168  (r1)",
        "write  (r2)",
        "start  (r3)",
        "reload  (r4)",
        "del-server web-8080/h1-a1  (r5)",
        "add-server web-8080/h2-b2 [fd00::2]:30002 weight 10  (r6)",
        "enable-server web-8080/h3-c3  (r7)",
        "set-server-addr web-8080/h4-d4 10.0.0.4:30004  (r8)",
    ]


def test_describe_says_what_and_why():
    actions = plans.plan(want(svc("h1", "a1"), svc("h2", "b2")), running(svc("h1", "a1")))
    assert (
        actions[0].describe() == "add-server web-8080/h2-b2 10.0.0.1:30001  (h2-b2 joined web-8080)"
    )


NOW_TEMPLATE = """\
# written at {{ now }}
{% for frontend in frontends %}
backend {{ frontend.backend }}
{%- for server in backends[frontend.backend].servers %}
\tserver {{ server.name }} {{ server.address }}:{{ server.port }}
{%- endfor %}
{% endfor %}"""


def test_a_template_that_prints_now_is_not_a_change_every_time():
    settings = HaproxySettings(bind_ip="192.168.168.168", template=NOW_TEMPLATE)

    def at(now, *records):
        state = cluster_state("me", *records)
        return desired.desired(views.routing_table(state), settings, now=now)

    first = at(T0, svc("h1", "a1"))
    assert "# written at 2023-11-14 22:13:20 +0000 UTC\n" in first.config
    before = plans.apply(Actual(), plans.plan(first, Actual()))
    later = at(T0 + 1_500_000_000, svc("h1", "a1"))
    assert "22:13:21.5 +0000 UTC" in later.config
    assert plans.plan(later, before) == ()
    moved = plans.plan(at(T0 + 2, svc("h1", "a1"), svc("h2", "b2")), before)
    assert [a.kind for a in moved] == ["add-server", "write"]
