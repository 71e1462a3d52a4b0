"""The daemon's own decisions without running it: what SIGHUP takes, what metrics say."""

from __future__ import annotations

import asyncio
import socket
import time
from functools import partial

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar import config as configuration
from sidecar.adapters.listeners import service_name
from sidecar.daemon import Daemon, DaemonFailed
from sidecar.host import HostObservation
from sidecar.state.model import Status
from tests.builders import T0, service

ENV = {"SIDECAR_DISCOVERY": "static", "HAPROXY_BIND_IP": "127.0.0.9"}


def daemon(clock=lambda: T0, **env):
    config = configuration.load(path=None, environ={**ENV, **env})
    return Daemon(config, hostname="me", advertise_ip="127.0.0.1", clock=clock)


web = partial(service, "me", ports=((30001, 8080),), ip="127.0.0.1", at=0)


def test_sighup_applies_what_can_change_live_and_names_the_rest():
    d = daemon()
    new = configuration.load(
        path=None,
        environ={
            **ENV,
            "HAPROXY_APPLY": "false",
            "HAPROXY_DEBOUNCE_MAX": "2s",
            "SIDECAR_CHECK_INTERVAL": "9s",
        },
    )

    async def scenario():
        return d.reload(new, template="# mine\n")

    said = asyncio.run(scenario())
    assert "haproxy.apply is now False" in said
    assert "haproxy.debounce_max is now 2.0" in said
    assert "sidecar.check_interval changed: takes effect at the next start" in said
    assert d.reconciler.apply is False
    assert d.reconciler.max_wait == 2.0
    assert d.reconciler.settings.template == "# mine\n"


def test_observations_become_own_records_and_metrics_count_them():
    d = daemon()

    async def scenario():
        d.observe(HostObservation((web("a1"), web("b2", status=Status.UNHEALTHY)), (), T0))
        return d.metrics()

    families = {f.name: f for f in text_string_to_metric_families(asyncio.run(scenario()).decode())}
    by_status = {s.labels["status"]: s.value for s in families["sidecar_services"].samples}
    assert by_status["alive"] == 1
    assert by_status["unhealthy"] == 1
    assert by_status["tombstone"] == 0
    assert families["sidecar_peers"].samples[0].value == 0
    assert families["sidecar_state_changes"].samples[0].value == 1
    assert {r.id: r.status for r in d.state().own_records()} == {
        "a1": Status.ALIVE,
        "b2": Status.UNHEALTHY,
    }


def test_a_drain_is_refused_for_an_unknown_or_foreign_id():
    d = daemon()

    async def scenario():
        d.observe(HostObservation((web("a1"),), (), T0))
        return await d.drain("nope"), await d.drain("a1")

    missing, drained = asyncio.run(scenario())
    assert missing is None
    assert drained.status is Status.DRAINING


def test_sighup_keeps_naming_what_waits_for_a_restart():
    d = daemon()
    new = configuration.load(
        path=None, environ={**ENV, "HAPROXY_STOP_ON_EXIT": "true", "SIDECAR_CHECK_INTERVAL": "9s"}
    )
    first = d.reload(new)
    again = d.reload(new)
    assert "haproxy.stop_on_exit is now True" in first
    assert d.config.haproxy.stop_on_exit is True
    assert d.config.sidecar.check_interval == 3.0  # still the running value
    assert again == ["sidecar.check_interval changed: takes effect at the next start"]


def test_health_fails_while_haproxy_does_not_follow_the_state():
    from sidecar.reconcile.loop import Outcome

    d = daemon()
    assert d.health()[0] is True  # nothing tried yet
    d.reconciler.last = Outcome((), error="HAProxy did not start: [ALERT] cannot bind")
    healthy, details = d.health()
    assert healthy is False
    assert "cannot bind" in details["haproxy_error"]
    d.reconciler.last = Outcome(())
    assert d.health()[0] is True


def test_rejections_name_what_the_routing_table_left_out(tmp_path):
    d = daemon(
        HAPROXY_APPLY="false",  # observe only: HAProxy is read (it is not running), never run
        HAPROXY_CONFIG_FILE=str(tmp_path / "haproxy.cfg"),
        HAPROXY_MASTER_SOCKET=str(tmp_path / "master.sock"),
    )
    udp_only = web("u1", name="dns", ports=((30053, 53),), kind="udp", mode="tcp")

    assert d.reconciler is not None
    d.reconciler.addresses = None  # a unit test: no `ip` run (127.0.0.9 needs no binding)

    async def scenario():
        assert d.reconciler is not None
        task = asyncio.create_task(d.reconciler.run())
        try:
            d.follow()
            d.observe(HostObservation((web("a1"), udp_only), (), T0))
            await d.reconciler.settled()
            return d.rejections()
        finally:
            task.cancel()

    assert asyncio.run(scenario()) == [
        {
            "stage": "routing",
            "hostname": "me",
            "id": "u1",
            "name": "dns",
            "reason": "no TCP port with a service port",
        }
    ]
    assert not (tmp_path / "haproxy.cfg").exists()  # observe-only wrote nothing


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_part_that_stops_stops_the_daemon_naming_it(tmp_path, caplog):
    d = daemon(
        HAPROXY_DISABLE="true",
        SIDECAR_HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        STATIC_CONFIG_FILE=str(tmp_path / "static.json"),
    )

    def broken_tick() -> None:
        raise ZeroDivisionError("division by zero")

    d.owner.tick = broken_tick  # the 1 s tick: re-stamp and expire

    async def scenario() -> float:
        began = time.monotonic()
        async with asyncio.timeout(10):
            with pytest.raises(DaemonFailed) as failed:
                await d.run(asyncio.Event())  # never set: only the failure ends it
        assert str(failed.value) == "ticks stopped: ZeroDivisionError('division by zero')"
        return time.monotonic() - began

    took = asyncio.run(scenario())
    assert took < 5  # the first tick, a second in
    assert "ticks stopped (ZeroDivisionError('division by zero')); stopping" in caplog.text


def test_without_seeds_the_members_are_this_host_alone():
    alone = daemon()
    assert alone.gossip is None
    assert [(m["Name"], m["State"]) for m in alone.member_list()] == [("me", "alive")]
    assert list(alone.members()) == ["me"]


def test_with_seeds_the_daemon_is_a_cluster_member_that_has_not_started():
    member = daemon(SIDECAR_SEEDS="127.0.0.1")
    assert member.gossip is not None
    assert member.gossip.peer.name == "me"
    assert [(m["Name"], m["State"]) for m in member.member_list()] == [("me", "alive")]


def test_the_daemon_feeds_every_listener_and_shows_them_in_metrics():
    d = daemon(HAPROXY_DISABLE="true", LISTENERS_URLS="http://127.0.0.1:9/a")
    mine = service_name("web", "a1")

    async def scenario():
        d.observe(
            HostObservation(
                (web("a1"), web("b2")),
                (),
                T0,
                listeners=((mine, "http://127.0.0.1:30001/sidecar/update"),),
            )
        )
        return d.metrics()

    text = asyncio.run(scenario()).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    queued = {
        s.labels["listener"]: s.value for s in families["sidecar_listener_queue_length"].samples
    }
    # Both services' appearances, for both listeners: the new one hears of its own.
    assert queued == {"UrlListener(http://127.0.0.1:9/a)": 2, mine: 2}
    drops = {
        (s.labels["listener"], s.labels["reason"]): s.value
        for s in families["sidecar_listener_drops"].samples
    }
    assert drops[(mine, "overflow")] == 0
    assert drops[(mine, "failed")] == 0
    for family in ("sidecar_listener_deliveries", "sidecar_listener_retries"):
        assert {s.labels["listener"] for s in families[family].samples} == set(queued)


class CountedStats:
    """Stands in for the HAProxy adapter's `server_stats`: counts the looks, says the server
    of own instance a1 is UP."""

    def __init__(self) -> None:
        self.looks = 0

    async def server_stats(self):
        self.looks += 1
        return [("web-8080", "me-a1", "no check", 0)]


def test_the_ui_looks_at_haproxy_once_for_many_pages_and_again_after_a_change():
    d = daemon(clock=time.time_ns)
    stats = CountedStats()
    d.haproxy = stats  # a unit test: no HAProxy runs

    async def scenario():
        d.observe(HostObservation((web("a1"),), (), T0))
        views = [await d.local_view() for _ in range(5)]  # five pages asking at once
        looks_then = stats.looks
        d.observe(HostObservation((web("a1"), web("b2")), (), T0))  # a new state
        after = await d.local_view()
        return views, looks_then, after

    views, looks_then, after = asyncio.run(scenario())
    assert looks_then == 1
    assert stats.looks == 2
    servers = views[0]["haproxy"]["servers"]
    assert [(s["id"], s["status"]) for s in servers] == [("a1", "UP")]
    assert all(v["haproxy"] == views[0]["haproxy"] for v in views)
    assert after["haproxy"]["servers"] == servers
