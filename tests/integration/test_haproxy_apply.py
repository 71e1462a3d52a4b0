"""The reconcile loop drives a real HAProxy carrying real requests to real backends.

Backends are busybox httpd processes on 127.0.0.x, each answering with its own name, so a
test can tell which instance served a request. HAProxy binds a 127.0.0.x address of its
own; its files and sockets live in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.adapters.haproxy import Haproxy, HaproxyOptions, parse_servers_state
from sidecar.reconcile.desired import HaproxySettings
from sidecar.reconcile.loop import Reconciler
from sidecar.state import merge, times, views
from sidecar.state.model import ClusterState, Port, Service, Status

from .conftest import http_request, wait_for

pytestmark = pytest.mark.haproxy

T0 = 1_700_000_000 * times.NANOS_PER_SECOND


class Backend:
    """One instance: where it listens and the record the cluster would hold for it."""

    def __init__(self, host: str, sid: str, ip: str, port: int, service_port: int = 8080):
        self.host, self.sid, self.ip, self.port = host, sid, ip, port
        self.service_port = service_port

    @property
    def name(self) -> str:
        return f"{self.host}-{self.sid}"

    def record(self, *, name: str = "web") -> Service:
        return Service(
            id=self.sid,
            name=name,
            image=f"{name}:1",
            created=T0,
            hostname=self.host,
            ports=(Port(type="tcp", port=self.port, service_port=self.service_port, ip=self.ip),),
            updated=T0,
            proxy_mode="http",
            status=Status.ALIVE,
        )


def table(*backends: Backend):
    state = merge.merge_records(
        ClusterState(hostname="me"), [b.record() for b in backends], now=T0
    ).state
    return views.routing_table(state)


@pytest.fixture
def backend(spawn, loopback, tmp_path):
    """Factory: a busybox httpd on a fresh 127.0.0.x answering `/` with its own name."""
    count = 0

    def make(host: str, sid: str, service_port: int = 8080) -> Backend:
        nonlocal count
        count += 1
        ip = loopback.address()
        port = loopback.port(ip)
        root = tmp_path / f"www-{count}"
        root.mkdir()
        made = Backend(host, sid, ip, port, service_port)
        (root / "index.html").write_text(made.name)
        spawn.start(
            ["busybox", "httpd", "-f", "-p", f"{ip}:{port}", "-h", str(root)], name=made.name
        )
        wait_for(lambda: http_request(f"http://{ip}:{port}/").status == 200, what=made.name)
        return made

    return make


@pytest.fixture
def site(tmp_path, loopback):
    """Where this test's HAProxy lives: options, and settings with free stats ports."""
    bind_ip = loopback.address()
    options = HaproxyOptions(
        config_file=tmp_path / "haproxy" / "haproxy.cfg",
        pid_file=tmp_path / "haproxy" / "haproxy.pid",
        master_socket=tmp_path / "haproxy" / "master.sock",
        admin_socket=tmp_path / "haproxy" / "admin.sock",
        drain_timeout=0.3,
    )
    settings = HaproxySettings(
        bind_ip=bind_ip,
        admin_socket=str(options.admin_socket),
        stats_port=loopback.port(),
        stats_backend_port=loopback.port(),
    )
    return options, settings


class Bound:
    """Stands in for the address adapter: the bind IP is a loopback address, always there."""

    def __init__(self, *ips: str) -> None:
        self.ips = frozenset(ips)

    def bound(self) -> frozenset[str]:
        return self.ips

    def bind(self, ip: str) -> bool:
        raise AssertionError(f"asked to bind {ip}, which is already there")


@contextlib.asynccontextmanager
async def reconciling(options: HaproxyOptions, settings: HaproxySettings, **kwargs):
    haproxy = Haproxy(options)
    reconciler = Reconciler(haproxy, Bound(settings.bind_ip), settings, **kwargs)
    haproxy._on_exit = reconciler.poke
    task = asyncio.create_task(reconciler.run())
    try:
        yield haproxy, reconciler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await haproxy.close(stop=True)


async def apply(reconciler: Reconciler, *backends: Backend):
    reconciler.update(table(*backends))
    async with asyncio.timeout(30):
        return await reconciler.settled()


async def served_by(url: str, requests: int = 20) -> set[str]:
    """The names of the instances that answered `requests` GETs in a row (all must be 200)."""

    def fetch() -> set[str]:
        names = set()
        for _ in range(requests):
            reply = http_request(url)
            assert reply.status == 200, (reply.status, reply.body[:200])
            names.add(reply.body.decode())
        return names

    return await asyncio.to_thread(fetch)


async def master(haproxy: Haproxy):
    info = await haproxy.proc_info()
    assert info is not None and info.workers, "no HAProxy master with a worker answers"
    return info


def test_serves_every_instance_and_follows_server_changes_without_reloading(site, backend):
    options, settings = site
    a, b, c = backend("h1", "a1"), backend("h2", "b2"), backend("h3", "c3")
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            first = await apply(reconciler, a, b)
            assert first.error is None, first.error
            assert [x.kind for x in first.done] == ["write", "start"]
            assert await served_by(url) == {a.name, b.name}
            before = await master(haproxy)

            removed = await apply(reconciler, a)
            assert [x.kind for x in removed.done] == ["del-server", "write"], removed
            assert await served_by(url) == {a.name}

            added = await apply(reconciler, a, c)
            assert [x.kind for x in added.done] == ["add-server", "write"], added
            assert await served_by(url) == {a.name, c.name}

            after = await master(haproxy)
            assert after.reloads == before.reloads
            assert [w.pid for w in after.workers] == [w.pid for w in before.workers]
            assert reconciler.stats.reloads == 0
            assert options.config_file.read_text() == reconciler.last_desired.config
            return reconciler.stats

    stats = asyncio.run(scenario())
    assert stats.runtime_ops == 2


def test_a_new_service_port_is_one_seamless_reload(site, backend):
    options, settings = site
    a = backend("h1", "a1")
    api = backend("h2", "b2", service_port=9000)

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            before = await master(haproxy)
            reconciler.update(
                views.routing_table(
                    merge.merge_records(
                        ClusterState(hostname="me"),
                        [a.record(), api.record(name="api")],
                        now=T0,
                    ).state
                )
            )
            outcome = await reconciler.settled()
            assert outcome.error is None, outcome.error
            assert [x.kind for x in outcome.done] == ["write", "reload"]
            after = await master(haproxy)
            assert after.reloads == before.reloads + 1
            assert after.workers[0].pid != before.workers[0].pid
            assert await served_by(f"http://{settings.bind_ip}:9000/") == {api.name}
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name}

    asyncio.run(scenario())


BROKEN_OUTPUT = "{{ shipped }}\nfrontend broken\n\tno_such_directive 42\n"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("{{ no_such_variable }}", "'no_such_variable' is undefined", id="render"),
        pytest.param(
            "frontend broken\n\tno_such_directive 42\n", "no_such_directive", id="haproxy"
        ),
    ],
)
def test_a_bad_template_keeps_the_running_config(site, backend, template, expected):
    options, settings = site
    a, b = backend("h1", "a1"), backend("h2", "b2")

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            before, written = await master(haproxy), options.config_file.read_text()

            reconciler.settings = replace(settings, template=template, template_name="bad.j2")
            outcome = await apply(reconciler, a, b)

            assert outcome.error is not None and expected in outcome.error, outcome.error
            assert options.config_file.read_text() == written
            assert list(options.config_file.parent.glob(".*.new")) == []
            after = await master(haproxy)
            assert (after.reloads, after.workers[0].pid) == (before.reloads, before.workers[0].pid)
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name}
            assert reconciler.stats.failures == 1

    asyncio.run(scenario())


def test_a_killed_haproxy_is_started_again_and_serves(site, backend):
    options, settings = site
    a = backend("h1", "a1")
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            killed = (await master(haproxy)).master
            os.kill(killed, signal.SIGKILL)

            async def restarted():
                while True:
                    info = await haproxy.proc_info()
                    if info is not None and info.workers and info.master != killed:
                        return info
                    await asyncio.sleep(0.1)

            async with asyncio.timeout(20):
                await restarted()
            assert await served_by(url) == {a.name}
            assert haproxy.counters.exits == 1
            assert haproxy.counters.restarts == 1
            assert reconciler.stats.starts == 2

    asyncio.run(scenario())


REDIR_TEMPLATE = """\
global
\tstats socket {{ admin_socket }} mode 600 level admin expose-fd listeners
defaults
\tmode http
\ttimeout connect 5s
\ttimeout client 30s
\ttimeout server 30s
{% for frontend in frontends %}
frontend {{ frontend.name }}
\tbind {{ frontend.bind_ip }}:{{ frontend.port }}
\tdefault_backend {{ frontend.backend }}
backend {{ frontend.backend }}
{%- for server in backends[frontend.backend].servers %}
\tserver {{ server.name }} {{ server.address }}:{{ server.port }}{%
  if server.name.startswith('h2') %} redir http://{{ server.address }}:{{ server.port }}{% endif %}
{%- endfor %}
{% endfor %}"""


def test_a_runtime_refusal_falls_back_to_one_reload(site, backend):
    # HAProxy 2.6 accepts `redir` in the file but refuses it on a server added at runtime.
    options, settings = site
    settings = replace(settings, template=REDIR_TEMPLATE, template_name="redir.j2")
    a, b = backend("h1", "a1"), backend("h2", "b2")

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            before = await master(haproxy)
            outcome = await apply(reconciler, a, b)
            assert outcome.error is None, outcome.error
            assert outcome.fallback
            assert [x.kind for x in outcome.done] == ["write", "reload"]
            after = await master(haproxy)
            assert after.reloads == before.reloads + 1
            state = parse_servers_state(await haproxy.runtime("show servers state"))[0]
            assert set(state["web-8080"]) == {a.name, b.name}
            assert reconciler.stats.fallbacks == 1

    asyncio.run(scenario())


SLOW_SERVER = """\
import sys, time
from http.server import HTTPServer, BaseHTTPRequestHandler

class Slow(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(float(sys.argv[3]))
        body = b"slow"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer((sys.argv[1], int(sys.argv[2])), Slow).serve_forever()
"""


def test_a_server_with_a_request_in_flight_is_drained_then_deleted(
    site, backend, spawn, loopback, tmp_path
):
    options, settings = site
    a = backend("h1", "a1")
    ip = loopback.address()
    slow = Backend("h9", "s9", ip, loopback.port(ip))
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SERVER)
    spawn.start([sys.executable, str(script), ip, str(slow.port), "2.5"], name="slow")
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, slow)
            replies: list = []
            request = threading.Thread(target=lambda: replies.append(http_request(url)))
            request.start()
            await asyncio.sleep(0.5)  # the request is now waiting on the slow instance

            outcome = await apply(reconciler, a)
            assert outcome.error is not None and "in flight" in outcome.error, outcome
            actual = await haproxy.read_actual()
            assert ("web-8080", slow.name) in actual.disabled
            assert await served_by(url, 6) == {a.name}  # no new request reaches it

            async with asyncio.timeout(15):
                while slow.name in (await haproxy.read_actual()).servers.get("web-8080", {}):
                    await asyncio.sleep(0.1)
            await asyncio.to_thread(request.join, 10)
            assert [r.status for r in replies] == [200]
            assert replies[0].body == b"slow"
            assert reconciler.stats.reloads == 0

    asyncio.run(scenario())


def test_a_second_adapter_adopts_the_running_master(site, backend):
    options, settings = site
    a = backend("h1", "a1")

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            running = await master(haproxy)
            other = Haproxy(options)
            actual = await other.read_actual()
            assert actual.running
            assert actual.servers["web-8080"] == {a.name: (a.ip, a.port)}
            await other.start()
            assert (await master(other)).master == running.master
            await other.close(stop=True)  # stops only what it started: nothing
            assert (await master(haproxy)).master == running.master

    asyncio.run(scenario())


def test_external_mode_reloads_with_the_go_command_and_changes_servers_at_runtime(site, backend):
    options, settings = site
    options = replace(options, mode="external")
    a, b = backend("h1", "a1"), backend("h2", "b2")
    api = backend("h3", "c3", service_port=9000)

    def pid() -> int:
        return int(options.pid_file.read_text().split()[0])

    async def scenario():
        async with reconciling(options, settings) as (_, reconciler):
            first = await apply(reconciler, a)
            assert [x.kind for x in first.done] == ["write", "start"], first
            started = pid()
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name}

            second = await apply(reconciler, a, b)
            assert [x.kind for x in second.done] == ["add-server", "write"], second
            assert pid() == started
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name, b.name}

            reconciler.update(
                views.routing_table(
                    merge.merge_records(
                        ClusterState(hostname="me"), [a.record(), api.record(name="api")], now=T0
                    ).state
                )
            )
            third = await reconciler.settled()
            assert [x.kind for x in third.done] == ["write", "reload"], third
            assert pid() != started
            assert await served_by(f"http://{settings.bind_ip}:9000/") == {api.name}
            return started, pid()

    pids = []
    try:
        pids = list(asyncio.run(scenario()))
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids.append(pid())
        for each in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)
