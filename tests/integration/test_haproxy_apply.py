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
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.adapters.haproxy import Haproxy
from sidecar.reconcile.haproxy_answers import parse_servers_state

from .conftest import http_request, wait_for
from .haproxy_kit import Backend, apply, master, reconciling, served_by, table

pytestmark = pytest.mark.haproxy


def test_serves_every_instance_and_follows_server_changes_without_reloading(haproxy_site, backend):
    options, settings = haproxy_site
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


def test_a_new_service_port_is_one_seamless_reload(haproxy_site, backend):
    options, settings = haproxy_site
    a = backend("h1", "a1")
    api = backend("h2", "b2", service_port=9000)

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            before = await master(haproxy)
            reconciler.update(table(a, api, names={api.name: "api"}))
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
    ("template", "expected", "loads_tried"),
    [
        pytest.param("{{ no_such_variable }}", "'no_such_variable' is undefined", 0, id="render"),
        # Refused by the master as it loads it (a write before a managed reload leaves the
        # check to the reload): one failed load, the old file put back, the old worker on.
        pytest.param(
            "frontend broken\n\tno_such_directive 42\n", "no_such_directive", 1, id="haproxy"
        ),
    ],
)
def test_a_bad_template_keeps_the_running_config(
    haproxy_site, backend, template, expected, loads_tried
):
    options, settings = haproxy_site
    a, b = backend("h1", "a1"), backend("h2", "b2")

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            before, written = await master(haproxy), options.config_file.read_text()

            reconciler.settings = replace(settings, template=template, template_name="bad.j2")
            outcome = await apply(reconciler, a, b)

            assert outcome.error is not None
            assert expected in outcome.error, outcome.error
            assert options.config_file.read_text() == written
            assert list(options.config_file.parent.glob(".*.new")) == []
            after = await master(haproxy)
            assert after.workers[0].pid == before.workers[0].pid
            assert after.reloads == before.reloads + loads_tried
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name}
            assert reconciler.stats.failures == 1
            # HAProxy loads again what it is given next (a master whose load failed waits).
            reconciler.settings = settings
            assert (await apply(reconciler, a, b)).error is None
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name, b.name}

    asyncio.run(scenario())


def test_a_killed_haproxy_is_started_again_and_serves(haproxy_site, backend):
    options, settings = haproxy_site
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


def test_a_runtime_refusal_falls_back_to_one_reload(haproxy_site, backend):
    # HAProxy 2.6 accepts `redir` in the file but refuses it on a server added at runtime.
    options, settings = haproxy_site
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


def slow_backend(spawn, loopback, tmp_path) -> Backend:
    """Return instance h9/s9: an HTTP server on a fresh 127.0.0.x that takes 2.5 s to answer
    each request, one at a time."""
    ip = loopback.address()
    slow = Backend("h9", "s9", ip, loopback.port(ip))
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SERVER)
    spawn.start([sys.executable, str(script), ip, str(slow.port), "2.5"], name="slow")
    wait_for(lambda: listening(ip, slow.port), what="the slow instance listening")
    return slow


def listening(ip: str, port: int) -> bool:
    """Whether something accepts TCP connections on ip:port (OSError while nothing does)."""
    with socket.create_connection((ip, port), timeout=2):
        return True


def test_a_server_with_a_request_in_flight_is_drained_then_deleted(
    haproxy_site, backend, spawn, loopback, tmp_path
):
    options, settings = haproxy_site
    a = backend("h1", "a1")
    slow = slow_backend(spawn, loopback, tmp_path)
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, slow)
            replies: list = []
            request = threading.Thread(target=lambda: replies.append(http_request(url)))
            request.start()
            await asyncio.sleep(0.5)  # the request is now waiting on the slow instance

            outcome = await apply(reconciler, a)
            assert outcome.error is None, outcome
            assert "in flight" in outcome.deferred, outcome
            actual = await haproxy.read_actual()
            assert ("web-8080", slow.name) in actual.disabled
            assert await served_by(url, 6) == {a.name}  # no new request reaches it

            async def deleted() -> None:
                while True:
                    actual = await haproxy.read_actual()
                    if slow.name not in actual.servers.get("web-8080", {}):
                        return
                    await asyncio.sleep(0.1)

            async with asyncio.timeout(15):
                await deleted()
            await asyncio.to_thread(request.join, 10)
            assert [r.status for r in replies] == [200]
            assert replies[0].body == b"slow"
            assert reconciler.stats.reloads == 0

    asyncio.run(scenario())


def test_a_replaced_instance_leaves_its_backend_with_a_server_at_every_moment(
    haproxy_site, backend, spawn, loopback, tmp_path
):
    """The old instance drains (a request in flight) while its replacement comes in, in one
    apply: the new server is added before the old one goes into maintenance, so the backend
    is never without a server taking requests (deleting first left it with none for the
    drain timeout: every request then got a 503)."""
    options, settings = haproxy_site
    a = backend("h1", "a1")
    slow = slow_backend(spawn, loopback, tmp_path)
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, slow)
            request = threading.Thread(target=lambda: http_request(url))
            request.start()
            await asyncio.sleep(0.5)  # the request is now waiting on the slow instance
            taking: list[int] = []  # servers of web-8080 not in maintenance, polled

            async def poll() -> None:
                while True:
                    stats = await haproxy.server_stats()
                    taking.append(
                        sum(1 for s in stats if s.backend == "web-8080" and s.status != "MAINT")
                    )
                    await asyncio.sleep(0.005)

            poller = asyncio.create_task(poll())
            outcome = await apply(reconciler, a)
            await asyncio.sleep(0.1)
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await asyncio.to_thread(request.join, 10)
            return outcome, taking

    outcome, taking = asyncio.run(scenario())
    assert "in flight" in outcome.deferred, outcome  # the old one was still draining
    assert len(taking) >= 20, taking  # looked at throughout the apply
    assert min(taking) >= 1, taking


def test_a_second_adapter_adopts_the_running_master(haproxy_site, backend):
    options, settings = haproxy_site
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


def test_external_mode_reloads_with_the_go_command_and_changes_servers_at_runtime(
    haproxy_site, backend
):
    options, settings = haproxy_site
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

            reconciler.update(table(a, api, names={api.name: "api"}))
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
