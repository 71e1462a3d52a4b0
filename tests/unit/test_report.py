"""The plan as `sidecar plan` prints it: on a fresh host (nothing running) and on a live one."""

from __future__ import annotations

import json

from sidecar.reconcile import desired, plans, report
from sidecar.reconcile.desired import HaproxySettings
from sidecar.reconcile.plans import Actual
from sidecar.state import views
from sidecar.state.model import Status
from tests.builders import T0, cluster_state, service

SETTINGS = HaproxySettings(bind_ip="192.168.168.168")
CONFIG_FILE = "/etc/haproxy.cfg"


def svc(host, sid, *, name="web", port=30001, service_port=8080, ip="10.0.0.1"):
    return service(host, sid, name=name, ports=((port, service_port),), ip=ip)


def routing(*records):
    state = cluster_state("me", *records)
    table = views.routing_table(state)
    return table, desired.desired(table, SETTINGS)


def applied(*records):
    """What a host has once the plan for these records ran from nothing."""
    return plans.apply(Actual(), plans.plan(routing(*records)[1], Actual()))


def document(actual, *records):
    table, want = routing(*records)
    actions = plans.plan(want, actual)
    return report.plan_report(want, actual, actions, table.excluded, config_file=CONFIG_FILE)


FRESH = (
    svc("h1", "a1"),
    svc("h2", "b2", ip="10.0.0.2"),
    svc("h3", "c3", name="api", port=9, service_port=9000),
)


def test_nothing_running_reports_the_start_every_frontend_and_server_and_the_bind_ip():
    shown = document(Actual(), *FRESH)
    assert shown["haproxy_running"] is False
    assert [a["kind"] for a in shown["actions"]] == ["bind", "write", "start"]
    assert shown["bind_ips"] == ["192.168.168.168"]
    assert shown["start"] == {
        "config_file": CONFIG_FILE,
        "frontends": [
            {
                "name": "api-9000",
                "service": "api",
                "bind": "192.168.168.168:9000",
                "mode": "http",
                "servers": [{"name": "h3-c3", "address": "10.0.0.1", "port": 9}],
            },
            {
                "name": "web-8080",
                "service": "web",
                "bind": "192.168.168.168:8080",
                "mode": "http",
                "servers": [
                    {"name": "h1-a1", "address": "10.0.0.1", "port": 30001},
                    {"name": "h2-b2", "address": "10.0.0.2", "port": 30001},
                ],
            },
        ],
    }
    assert json.loads(json.dumps(shown)) == shown  # plain JSON types

    text = report.render_text(shown)
    assert text.startswith(
        "HAProxy is not running: it would be started with the config below, written to "
        f"{CONFIG_FILE}.\n3 action(s) pending (HAProxy to be started):\n"
    )
    assert "one reload" not in text
    assert "bind 192.168.168.168  (HAProxy binds 192.168.168.168" in text
    assert (
        "2 frontend(s) and 3 server(s), all new:\n"
        "  frontend api-9000 on 192.168.168.168:9000 (http)\n"
        "    server h3-c3 10.0.0.1:9\n"
        "  frontend web-8080 on 192.168.168.168:8080 (http)\n"
        "    server h1-a1 10.0.0.1:30001\n"
        "    server h2-b2 10.0.0.2:30001\n"
    ) in text
    assert f"--- {CONFIG_FILE} (missing)" in text
    assert "+frontend web-8080" in text


def test_nothing_running_with_a_file_left_from_an_earlier_run_diffs_against_that_file():
    left = Actual(config=applied(svc("h1", "a1")).config, running=False)
    shown = document(left, svc("h1", "a1"), svc("h2", "b2", ip="10.0.0.2"))
    assert [a["kind"] for a in shown["actions"]] == ["bind", "write", "start"]
    assert f"--- {CONFIG_FILE} (on disk)" in shown["diff"]
    assert "+\tserver h2-b2 10.0.0.2:30001" in shown["diff"]
    assert "+frontend web-8080" not in shown["diff"]  # already in the file
    assert "HAProxy is not running" in report.render_text(shown)


def test_a_running_haproxy_has_no_start_section():
    live = applied(svc("h1", "a1"))
    assert live.running
    shown = document(live, svc("h1", "a1"))
    assert shown["start"] is None
    assert report.render_text(shown) == (
        "Nothing to change: this host's HAProxy matches the cluster state.\n"
    )
    grown = document(live, svc("h1", "a1"), svc("h2", "b2", ip="10.0.0.2"))
    text = report.render_text(grown)
    assert "2 action(s) pending (no reload):" in text
    assert "not running" not in text


def test_every_kind_of_action_is_shown_with_its_kind_reason_summary_and_fields_set():
    actions = (
        plans.Bind(address="192.168.168.168", reason="r1"),
        plans.Write(config="global\n", reason="r2"),  # the config is in the diff, not here
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
        plans.AddServer(
            backend="web-8080", server="h5-e5", address="10.0.0.5", port=1, reason="r7"
        ),
        plans.EnableServer(backend="web-8080", server="h3-c3", reason="r8"),
        plans.SetServerAddr(
            backend="web-8080", server="h4-d4", address="10.0.0.4", port=30004, reason="r9"
        ),
    )
    shown = report.plan_report(
        routing()[1], Actual(running=True), actions, (), config_file=CONFIG_FILE
    )["actions"]
    # Byte for byte as `/api/plan` and `sidecar plan --json` write them (keys in this order).
    assert [json.dumps(a) for a in shown] == [
        '{"kind": "bind", "reason": "r1", "summary": "bind 192.168.168.168  (r1)", '
        '"address": "192.168.168.168"}',
        '{"kind": "write", "reason": "r2", "summary": "write  (r2)"}',
        '{"kind": "start", "reason": "r3", "summary": "start  (r3)"}',
        '{"kind": "reload", "reason": "r4", "summary": "reload  (r4)"}',
        '{"kind": "del-server", "reason": "r5", "summary": "del-server web-8080/h1-a1  (r5)", '
        '"backend": "web-8080", "server": "h1-a1"}',
        '{"kind": "add-server", "reason": "r6", '
        '"summary": "add-server web-8080/h2-b2 [fd00::2]:30002 weight 10  (r6)", '
        '"backend": "web-8080", "server": "h2-b2", "address": "[fd00::2]", "port": 30002, '
        '"options": ["weight", "10"]}',
        '{"kind": "add-server", "reason": "r7", '
        '"summary": "add-server web-8080/h5-e5 10.0.0.5:1  (r7)", '
        '"backend": "web-8080", "server": "h5-e5", "address": "10.0.0.5", "port": 1}',
        '{"kind": "enable-server", "reason": "r8", '
        '"summary": "enable-server web-8080/h3-c3  (r8)", '
        '"backend": "web-8080", "server": "h3-c3"}',
        '{"kind": "set-server-addr", "reason": "r9", '
        '"summary": "set-server-addr web-8080/h4-d4 10.0.0.4:30004  (r9)", '
        '"backend": "web-8080", "server": "h4-d4", "address": "10.0.0.4", "port": 30004}',
    ]


def test_served_instances_says_what_haproxy_does_with_each_instance() -> None:
    own = svc("me", "a1")
    other = svc("h2", "b1", name="web.app", port=30002)
    drained = svc("h3", "c1", port=30003).with_status(Status.DRAINING, updated=T0 + 1)
    state = cluster_state("me", own, other, drained)
    stats = [
        ("stats_proxy", "localhost", "no check", 0),  # not an instance
        ("web-8080", "me-a1", "no check", 2),  # not checked by HAProxy: it serves it
        ("web-app-8080", "h2-b1", "DOWN", 0),  # the backend of a sanitized name
        ("web-8080", "h3-c1", "MAINT", 1),  # drained: in maintenance until its requests end
        ("web-8080", "h9-z9", "UP", 0),  # gone from the state
        ("other-8080", "me-a1", "UP", 0),  # a backend of another name
        ("web-x", "me-a1", "UP", 0),  # no service port
    ]
    assert report.served_instances(stats, state) == [
        {
            "hostname": "me",
            "id": "a1",
            "name": "web",
            "service_port": 8080,
            "backend": "web-8080",
            "server": "me-a1",
            "status": "UP",
            "sessions": 2,
        },
        {
            "hostname": "h2",
            "id": "b1",
            "name": "web.app",
            "service_port": 8080,
            "backend": "web-app-8080",
            "server": "h2-b1",
            "status": "DOWN",
            "sessions": 0,
        },
        {
            "hostname": "h3",
            "id": "c1",
            "name": "web",
            "service_port": 8080,
            "backend": "web-8080",
            "server": "h3-c1",
            "status": "MAINT",
            "sessions": 1,
        },
    ]
