"""The reconcile loop against an in-memory HAProxy (the plan model): debounce, observe-only,
and what each kind of failure leads to. The real HAProxy is in tests/integration."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace

import pytest

from sidecar.reconcile import loop as loop_module
from sidecar.reconcile import plans
from sidecar.reconcile.desired import HaproxySettings
from sidecar.reconcile.errors import (
    AddressFailed,
    ConfigRejected,
    ProcessFailed,
    RuntimeRefused,
    ServerBusy,
)
from sidecar.reconcile.loop import Reconciler
from sidecar.state import views
from sidecar.state.model import Service
from tests.builders import cluster_state, service

SETTINGS = HaproxySettings(bind_ip="192.168.168.168")


def svc(sid: str, port: int = 30001, service_port: int = 8080) -> Service:
    return service("h1", sid, ports=((port, service_port),), ip="10.0.0.1")


def table(*records: Service):
    return views.routing_table(cluster_state("me", *records))


class ModelHaproxy:
    """HAProxy as the plan model says it behaves; records every call; can be told to fail."""

    def __init__(self) -> None:
        self.actual = plans.Actual()
        self.calls: list[str] = []
        self.reload_follows: list[bool] = []  # each write's word that a reload checks it
        self._before_write: str | None = None
        self.fail: dict[str, Exception] = {}

    def _do(self, action: plans.Action) -> None:
        self.calls.append(action.kind)
        if action.kind in self.fail:
            raise self.fail.pop(action.kind)
        self.actual = plans.apply(self.actual, (action,))

    async def read_actual(self) -> plans.Actual:
        return replace(self.actual, bound_ips=frozenset())

    async def write(self, config: str, *, reload_follows: bool = False) -> None:
        self.reload_follows.append(reload_follows)
        self._before_write = self.actual.config
        self._do(plans.Write(config=config, reason=""))

    async def start(self) -> None:
        self._do(plans.Start(reason=""))

    async def reload(self) -> None:
        try:
            self._do(plans.Reload(reason=""))
        except ConfigRejected:  # refused as it loaded: the adapter puts the old file back
            self.actual = replace(self.actual, config=self._before_write)
            raise

    async def add_server(self, backend, server, address, port, options) -> None:
        self._do(
            plans.AddServer(
                backend=backend,
                server=server,
                address=address,
                port=port,
                options=options,
                reason="",
            )
        )

    async def enable_server(self, backend, server) -> None:
        self._do(plans.EnableServer(backend=backend, server=server, reason=""))

    async def del_server(self, backend, server) -> None:
        self._do(plans.DelServer(backend=backend, server=server, reason=""))

    async def set_server_addr(self, backend, server, address, port) -> None:
        self._do(
            plans.SetServerAddr(
                backend=backend, server=server, address=address, port=port, reason=""
            )
        )


class Addresses:
    def __init__(self) -> None:
        self.ips: set[str] = set()

    def bound(self) -> frozenset[str]:
        return frozenset(self.ips)

    def bind(self, ip: str) -> bool:
        self.ips.add(ip)
        return True


@contextlib.asynccontextmanager
async def running(haproxy, **kwargs):
    reconciler = Reconciler(haproxy, Addresses(), SETTINGS, **kwargs)
    task = asyncio.create_task(reconciler.run())
    try:
        yield reconciler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_burst_of_changes_is_one_apply_of_the_last_table():
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy, min_wait=0.2, max_wait=2.0) as reconciler:
            for n in range(10):
                reconciler.update(table(*(svc(f"s{i}", 30000 + i) for i in range(n + 1))))
                await asyncio.sleep(0.005)
            await reconciler.settled()
            return reconciler

    reconciler = asyncio.run(scenario())
    assert haproxy.calls == ["write", "start"]  # the bind went to the address adapter
    assert reconciler.stats.applies == 1
    assert len(haproxy.actual.servers["web-8080"]) == 10


def test_changes_that_never_pause_are_applied_at_least_every_max_wait():
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy, min_wait=0.1, max_wait=0.3) as reconciler:
            for n in range(40):  # a change every 25 ms for a second: never quiet for 100 ms
                reconciler.update(table(*(svc(f"s{i}", 30000 + i) for i in range(n + 1))))
                await asyncio.sleep(0.025)
            await reconciler.settled()
            return reconciler

    reconciler = asyncio.run(scenario())
    assert 2 <= reconciler.stats.applies <= 8, reconciler.stats
    assert len(haproxy.actual.servers["web-8080"]) == 40  # the last table won


def test_observe_only_plans_and_touches_nothing():
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy, apply=False) as reconciler:
            reconciler.update(table(svc("s1")))
            return await reconciler.settled()

    outcome = asyncio.run(scenario())
    assert haproxy.calls == []
    assert not outcome.applied
    assert [a.kind for a in outcome.actions] == ["bind", "write", "start"]


def test_a_template_that_fails_is_reported_and_nothing_is_done():
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy) as reconciler:
            reconciler.settings = replace(SETTINGS, template="{{ nope }}", template_name="t.j2")
            reconciler.update(table(svc("s1")))
            return await reconciler.settled(), reconciler

    outcome, reconciler = asyncio.run(scenario())
    assert haproxy.calls == []
    assert outcome.error.startswith("t.j2: ")
    assert reconciler.stats.failures == 1


def test_a_rejected_config_stops_the_plan_before_it_reloads():
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy) as reconciler:
            reconciler.update(table(svc("s1")))
            await reconciler.settled()
            haproxy.fail["write"] = ConfigRejected("HAProxy refused the new config: [ALERT] x")
            reconciler.update(table(svc("s1"), svc("s2", service_port=9000)))
            return await reconciler.settled()

    outcome = asyncio.run(scenario())
    assert haproxy.calls[-1] == "write"
    assert "reload" not in haproxy.calls
    assert "[ALERT] x" in outcome.error


def test_a_failed_reload_is_tried_again_though_the_file_is_already_written():
    # The new config was validated and written, then HAProxy did not load it (a port taken
    # by another process, say): the old workers serve on. With no change after, the retry
    # must still reload: the file on disk is not what runs.
    haproxy = ModelHaproxy()

    async def scenario():
        reconciler = Reconciler(haproxy, Addresses(), SETTINGS)
        reconciler.update(table(svc("s1")))
        await reconciler.reconcile()
        haproxy.fail["reload"] = ProcessFailed("HAProxy did not load the new config: [ALERT] y")
        reconciler.update(table(svc("s1"), svc("s2", service_port=9000)))
        failed = await reconciler.reconcile()
        haproxy.calls.clear()
        retried = await reconciler.reconcile()  # the retry after the backoff: no new table
        calls, haproxy.calls = haproxy.calls, []
        after = await reconciler.reconcile()
        return failed, retried, calls, after

    failed, retried, calls, after = asyncio.run(scenario())
    assert "[ALERT] y" in failed.error
    assert calls == ["write", "reload"]
    assert retried.error is None
    assert [a.reason for a in retried.actions][-1] == (
        "HAProxy does not run the config on disk: its reload failed"
    )
    assert after.actions == ()
    assert "web-9000" in haproxy.actual.servers


def test_a_write_leaves_the_check_to_a_reload_only_when_one_follows_it():
    haproxy = ModelHaproxy()

    async def scenario():
        reconciler = Reconciler(haproxy, Addresses(), SETTINGS)
        reconciler.update(table(svc("s1")))
        await reconciler.reconcile()  # not running: write, start
        reconciler.update(table(svc("s1"), svc("s2", 30002)))
        await reconciler.reconcile()  # a server more: at runtime, then the file in step
        reconciler.update(table(svc("s1", 30001, 9000), svc("s2", 30002, 9000)))
        await reconciler.reconcile()  # another frontend: write, reload

    asyncio.run(scenario())
    assert haproxy.calls == ["write", "start", "add-server", "write", "write", "reload"]
    assert haproxy.reload_follows == [False, False, True]


def test_a_config_the_reload_refuses_is_a_refusal_like_a_refused_write():
    # The write left the check to the reload (managed mode), which refused the config and
    # put the old file back: reported, and not tried again before the next change.
    haproxy = ModelHaproxy()

    async def scenario():
        reconciler = Reconciler(haproxy, Addresses(), SETTINGS)
        reconciler.update(table(svc("s1")))
        await reconciler.reconcile()
        haproxy.fail["reload"] = ConfigRejected("HAProxy refused the new config: [ALERT] z")
        reconciler.update(table(svc("s1"), svc("s2", service_port=9000)))
        refused = await reconciler.reconcile()
        haproxy.calls.clear()
        again = await reconciler.reconcile()  # a resync: the same view
        return refused, again

    refused, again = asyncio.run(scenario())
    assert "[ALERT] z" in refused.error
    assert haproxy.reload_follows[-1] is True
    assert again.error == refused.error
    assert haproxy.calls == []  # the refused config is not written or loaded again
    assert "web-9000" not in haproxy.actual.servers


def test_a_refused_runtime_command_falls_back_to_write_and_reload():
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy) as reconciler:
            reconciler.update(table(svc("s1")))
            await reconciler.settled()
            haproxy.fail["add-server"] = RuntimeRefused("'add server web-8080/h1-s2': nope")
            reconciler.update(table(svc("s1"), svc("s2", 30002)))
            return await reconciler.settled(), reconciler

    outcome, reconciler = asyncio.run(scenario())
    assert outcome.error is None
    assert outcome.fallback
    assert haproxy.calls[-3:] == ["add-server", "write", "reload"]
    assert set(haproxy.actual.servers["web-8080"]) == {"h1-s1", "h1-s2"}
    assert reconciler.stats.fallbacks == 1


def test_a_busy_server_is_retried_without_a_new_change(monkeypatch):
    monkeypatch.setattr(loop_module, "BUSY_RETRY", 0.05)
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy) as reconciler:
            reconciler.update(table(svc("s1"), svc("s2", 30002)))
            await reconciler.settled()
            haproxy.fail["del-server"] = ServerBusy("web-8080/h1-s2 still has requests")
            reconciler.update(table(svc("s1")))
            busy = await reconciler.settled()
            for _ in range(100):
                if "h1-s2" not in haproxy.actual.servers["web-8080"]:
                    break
                await asyncio.sleep(0.02)
            return busy, reconciler

    busy, reconciler = asyncio.run(scenario())
    assert busy.error is None
    assert "still has requests" in busy.deferred
    assert haproxy.calls.count("del-server") == 2
    assert set(haproxy.actual.servers["web-8080"]) == {"h1-s1"}
    assert reconciler.stats.failures == 0
    assert "reload" not in haproxy.calls


def test_min_wait_may_not_exceed_max_wait():
    with pytest.raises(ValueError, match="min_wait <= max_wait"):
        Reconciler(ModelHaproxy(), None, SETTINGS, min_wait=2.0, max_wait=1.0)


def test_a_resync_of_the_same_view_reuses_the_render_and_new_settings_render_again(
    monkeypatch,
):
    class CountingHaproxy(ModelHaproxy):
        reads = 0

        async def read_actual(self) -> plans.Actual:
            self.reads += 1
            return await super().read_actual()

    haproxy = CountingHaproxy()
    renders: list[HaproxySettings] = []
    real_desired = loop_module.desired

    def counting_desired(table, settings, *, now):
        renders.append(settings)
        return real_desired(table, settings, now=now)

    monkeypatch.setattr(loop_module, "desired", counting_desired)

    async def scenario():
        async with running(haproxy, min_wait=0.0, max_wait=0.05, resync=0.05) as reconciler:
            view = table(svc("a"))
            reconciler.update(view)
            await reconciler.settled()
            await asyncio.sleep(0.3)  # several resyncs of the same view
            resynced = haproxy.reads
            rendered_then = len(renders)
            reconciler.settings = replace(SETTINGS, stats_port=3213)
            reconciler.poke()
            await asyncio.sleep(0.2)
            return resynced, rendered_then

    resynced, rendered_then = asyncio.run(scenario())
    assert resynced >= 3, resynced  # the resyncs did read HAProxy and plan...
    assert rendered_then == 1  # ...on the one render of that view
    assert renders[-1].stats_port == 3213  # new settings: rendered again
    assert "bind 192.168.168.168:3213" in haproxy.actual.config
    assert haproxy.calls == ["write", "start", "write", "reload"]


def test_the_plan_report_is_made_when_asked_for_and_shows_no_servers():
    haproxy = ModelHaproxy()

    async def scenario():
        async with running(haproxy, apply=False, min_wait=0.0) as reconciler:
            assert reconciler.last_report is None  # nothing planned yet
            reconciler.update(table(svc("a")))
            await reconciler.settled()
            return reconciler

    reconciler = asyncio.run(scenario())
    report = reconciler.last_report
    assert report is not None
    assert report is reconciler.last_report  # made once, then kept
    assert report["pending"] is True
    assert [a["kind"] for a in report["actions"]] == ["bind", "write", "start"]
    assert "+frontend web-8080" in report["diff"]
    assert report["haproxy_running"] is False


def test_what_runs_cannot_be_read_is_a_failure_retried_not_the_end_of_the_loop(caplog):
    haproxy = ModelHaproxy()

    class FlakyAddresses(Addresses):
        failures = 2

        def bound(self) -> frozenset[str]:
            if self.failures:
                self.failures -= 1
                raise AddressFailed("cannot list the addresses on lo: `ip` timed out")
            return super().bound()

    class UnreadableHaproxy(ModelHaproxy):
        unreadable = True

        async def read_actual(self) -> plans.Actual:
            if self.unreadable:
                self.unreadable = False
                raise PermissionError(13, "Permission denied", "/etc/haproxy/haproxy.cfg")
            return await super().read_actual()

    async def scenario(haproxy, addresses):
        reconciler = Reconciler(haproxy, addresses, SETTINGS, min_wait=0.0, max_wait=0.05)
        task = asyncio.create_task(reconciler.run())
        try:
            reconciler.update(table(svc("a")))
            await reconciler.settled()
            first = reconciler.last
            for _ in range(100):  # the backoff retries (0.5 s, then 1 s) until it works
                if reconciler.last is not None and reconciler.last.error is None:
                    break
                await asyncio.sleep(0.05)
            assert not task.done()
            return first, reconciler.last, reconciler.stats.failures
        finally:
            task.cancel()

    first, last, failures = asyncio.run(scenario(haproxy, FlakyAddresses()))
    assert first is not None
    assert first.error == "cannot read what runs: cannot list the addresses on lo: `ip` timed out"
    assert last is not None
    assert last.error is None
    assert failures == 2
    # The same failure met again by the retry is said once (an error until it changes).
    said = [r for r in caplog.records if r.getMessage().startswith("HAProxy not updated")]
    assert [(r.levelname, r.getMessage()) for r in said] == [
        ("ERROR", f"HAProxy not updated: {first.error}")
    ]
    caplog.clear()
    assert haproxy.calls == ["write", "start"]

    unreadable = UnreadableHaproxy()
    first, last, failures = asyncio.run(scenario(unreadable, Addresses()))
    assert first is not None
    assert first.error is not None
    assert first.error.startswith("cannot read what runs: ")
    assert "Permission denied" in first.error
    assert last is not None
    assert last.error is None
    assert unreadable.calls == ["write", "start"]


def test_a_bug_in_a_reconcile_is_reported_and_the_loop_goes_on(monkeypatch):
    haproxy = ModelHaproxy()
    real_plan = loop_module.plan
    calls = []

    def plan_with_a_bug(want, actual):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("web-8080")
        return real_plan(want, actual)

    monkeypatch.setattr(loop_module, "plan", plan_with_a_bug)

    async def scenario():
        async with running(haproxy, min_wait=0.0, max_wait=0.05) as reconciler:
            reconciler.update(table(svc("a")))
            first = await reconciler.settled()
            for _ in range(40):  # retried after the 0.5 s backoff
                if reconciler.last is not None and reconciler.last.error is None:
                    break
                await asyncio.sleep(0.05)
            return first, reconciler.last

    first, last = asyncio.run(scenario())
    assert first is not None
    assert first.error == "internal error: KeyError('web-8080')"
    assert last is not None
    assert last.error is None
    assert haproxy.calls == ["write", "start"]


@pytest.mark.parametrize(("limit", "in_a_thread"), [(1000, False), (0, True)])
def test_the_pure_part_of_a_large_reconcile_runs_off_the_event_loop(
    monkeypatch, limit, in_a_thread
):
    haproxy = ModelHaproxy()
    threads: dict[str, bool] = {}
    real_desired, real_plan = loop_module.desired, loop_module.plan

    def desired_seen(table, settings, *, now):
        threads["desired"] = threading.current_thread() is not threading.main_thread()
        return real_desired(table, settings, now=now)

    def plan_seen(want, actual):
        threads["plan"] = threading.current_thread() is not threading.main_thread()
        return real_plan(want, actual)

    monkeypatch.setattr(loop_module, "desired", desired_seen)
    monkeypatch.setattr(loop_module, "plan", plan_seen)
    monkeypatch.setattr(loop_module, "OFFLOAD_SERVICES", limit)

    async def scenario():
        async with running(haproxy, min_wait=0.0) as reconciler:
            reconciler.update(table(svc("a")))  # one service: over a limit of 0
            return await reconciler.settled()

    outcome = asyncio.run(scenario())
    assert outcome is not None
    assert outcome.error is None
    assert threads == {"desired": in_a_thread, "plan": in_a_thread}
    assert haproxy.calls == ["write", "start"]
