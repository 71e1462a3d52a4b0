"""A bad day for the reconcile loop and its real HAProxy: drift made by hand, a refused
config while HAProxy dies, a stop in the middle of a reload or of a request.

Each test runs the real `Reconciler` over a real managed HAProxy carrying requests to busybox
httpd backends on 127.0.0.x (see haproxy_kit.py). Resyncs are made short (RESYNC) so drift is
seen quickly; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from dataclasses import replace

import pytest

from sidecar.adapters.haproxy import STOP_GRACE, Haproxy, cli
from sidecar.reconcile.errors import ConfigRejected, ProcessFailed

from .conftest import Loopback, http_request, wait_for
from .haproxy_kit import apply, master, reconciling, served_by

pytestmark = pytest.mark.haproxy

RESYNC = 0.3
BOUND = 20.0  # generous: drift is expected to be corrected within one RESYNC


async def eventually(probe, *, what: str, within: float = BOUND, interval: float = 0.1):
    """Return the first truthy `await probe()`; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"gave up after {within:g}s waiting for {what}; last result: {last!r}")


async def admin(haproxy: Haproxy, command: str) -> str:
    """Return the running worker's answer to `command`, sent as an operator would by hand."""
    return await haproxy.runtime(command)


async def in_maintenance(haproxy: Haproxy, backend: str, server: str) -> bool:
    from sidecar.reconcile.haproxy_answers import parse_servers_state

    _, disabled = parse_servers_state(await admin(haproxy, "show servers state"))
    return (backend, server) in disabled


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda raw: raw + b"\n# edited by hand\n", id="a-line-added"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"", id="emptied"),
        pytest.param(lambda raw: raw.replace(b"frontend", b"frontnd", 1), id="a-typo"),
        pytest.param(lambda raw: raw + b"\n# \xff\xfe not UTF-8\n", id="bytes-not-text"),
        pytest.param(None, id="deleted"),
    ],
)
def test_a_config_file_changed_by_hand_is_put_back_by_the_resync(haproxy_site, backend, edit):
    options, settings = haproxy_site
    a = backend("h1", "a1")
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings, resync=RESYNC) as (_, reconciler):
            first = await apply(reconciler, a)
            assert first.error is None, first.error
            good = options.config_file.read_bytes()
            if edit is None:
                options.config_file.unlink()
            else:
                options.config_file.write_bytes(edit(good))

            async def put_back():
                return options.config_file.exists() and options.config_file.read_bytes() == good

            await eventually(put_back, what="the config file written again")
            assert reconciler.last.error is None, reconciler.last.error
            assert await served_by(url) == {a.name}

    asyncio.run(scenario())


def test_servers_changed_by_hand_through_the_runtime_api_are_put_back(haproxy_site, backend):
    options, settings = haproxy_site
    a, b = backend("h1", "a1"), backend("h2", "b2")
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings, resync=RESYNC) as (haproxy, reconciler):
            await apply(reconciler, a, b)
            before = await master(haproxy)
            # One server put in maintenance, the other deleted, as an operator might by hand.
            assert await admin(haproxy, f"disable server web-8080/{a.name}") == "\n"
            await admin(haproxy, f"set server web-8080/{b.name} state maint")
            assert "Server deleted" in await admin(haproxy, f"del server web-8080/{b.name}")

            async def both_back():
                try:
                    return await served_by(url) == {a.name, b.name}
                except AssertionError:  # a 503 while neither serves
                    return False

            await eventually(both_back, what="both servers serving again")
            assert not await in_maintenance(haproxy, "web-8080", a.name)
            after = await master(haproxy)
            assert after.reloads == before.reloads  # put back at runtime, no reload
            kinds = reconciler.stats.by_kind
            assert kinds.get("enable-server", 0) >= 1, kinds
            assert kinds.get("add-server", 0) >= 1, kinds

    asyncio.run(scenario())


def test_observe_only_shows_drift_as_pending_at_the_next_resync(haproxy_site, backend):
    options, settings = haproxy_site
    a = backend("h1", "a1")

    async def scenario():
        async with reconciling(options, settings, resync=RESYNC) as (haproxy, reconciler):
            await apply(reconciler, a)
            reconciler.apply = False
            await admin(haproxy, f"disable server web-8080/{a.name}")
            drifted = time.time()

            async def resynced():
                return reconciler.last.at > drifted and reconciler.last_report

            report = await eventually(resynced, what="a resync after the drift")
            assert report["pending"] is True
            assert [x["kind"] for x in report["actions"]] == ["enable-server"]
            assert reconciler.last.applied is False
            assert await in_maintenance(haproxy, "web-8080", a.name)  # observed, not touched

    asyncio.run(scenario())


BROKEN = "global\n\tno-such-directive {{ bind_ip }}\n"


@pytest.mark.parametrize("damaged", [False, True], ids=["file-intact", "file-damaged-meanwhile"])
def test_a_dead_haproxy_comes_back_from_the_last_good_config_while_a_new_one_is_refused(
    haproxy_site, backend, damaged
):
    options, settings = haproxy_site
    a, b = backend("h1", "a1"), backend("h2", "b2")
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings, resync=RESYNC) as (haproxy, reconciler):
            await apply(reconciler, a)
            good = options.config_file.read_text()
            reconciler.settings = replace(settings, template=BROKEN, template_name="bad.j2")
            refused = await apply(reconciler, a, b)
            assert "no-such-directive" in (refused.error or ""), refused
            if damaged:  # the last good config is then the one kept in memory
                options.config_file.write_text("this is not a config\n")

            killed = (await master(haproxy)).master
            os.killpg(killed, signal.SIGKILL)  # master and workers: nothing serves

            async def serving_again():
                info = await haproxy.proc_info()
                return info is not None and info.workers and info.master != killed

            await eventually(serving_again, what="HAProxy started again")
            assert await served_by(url) == {a.name}  # the last good config: a only
            assert options.config_file.read_text() == good
            # The refused config is still what is reported, and it is not retried in a loop.
            assert "no-such-directive" in (reconciler.last.error or ""), reconciler.last
            failures = reconciler.stats.failures
            await asyncio.sleep(10 * RESYNC)
            assert reconciler.stats.failures - failures <= 1
            assert haproxy.counters.restarts == 1

    asyncio.run(scenario())


def held_connection(host: str, port: int) -> socket.socket:
    """Return a connection to HAProxy with half a request sent (its head is not finished)."""
    conn = socket.create_connection((host, port), timeout=10)
    conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n")
    return conn


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stop_with_requests_in_flight_is_bounded_and_lets_them_finish(haproxy_site, backend):
    options, settings = haproxy_site
    settings = replace(settings, hard_stop_after=3.0)
    a = backend("h1", "a1")

    async def scenario():
        loop = asyncio.get_running_loop()
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            pid = (await master(haproxy)).master
            finishing = await asyncio.to_thread(held_connection, settings.bind_ip, 8080)
            idle = await asyncio.to_thread(held_connection, settings.bind_ip, 8080)
            began = loop.time()
            stopped = await haproxy.close(stop=True)
            took = loop.time() - began
        return pid, finishing, idle, stopped, took

    pid, finishing, idle, stopped, took = asyncio.run(scenario())
    assert took < STOP_GRACE + 0.5, took  # bounded by design, whatever is in flight
    assert not stopped  # still finishing what is in flight...
    assert alive(pid)
    # ...but it takes no new connection: its worker closes its listeners on the master's
    # word, a moment after the master confirmed the stop (later on a loaded machine).
    try:
        wait_for(
            lambda: refused(settings.bind_ip, 8080), what="no new connection taken", timeout=10
        )
    except BaseException:
        finishing.close()  # not left to the next test's garbage collection
        idle.close()
        raise
    with finishing:
        finishing.sendall(b"Connection: close\r\n\r\n")  # the rest of the request
        answer = b""
        while chunk := finishing.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]  # not cut: served
    assert answer.rstrip().endswith(a.name.encode())
    with idle:  # never finished: ended by hard-stop-after (3 s), not by a kill from us
        wait_for(lambda: not alive(pid), what="HAProxy gone after hard-stop-after", timeout=20)


def test_a_stop_is_bounded_even_right_after_a_reload(haproxy_site, backend):
    options, settings = haproxy_site
    a = backend("h1", "a1")

    async def scenario():
        loop = asyncio.get_running_loop()
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            pid = (await master(haproxy)).master
            # `reload`, then at once the stop, while the master re-executes itself: a soft
            # stop sent then is lost (measured), and must be sent again.
            await cli(options.master_socket, "reload")
            began = loop.time()
            stopped = await haproxy.close(stop=True)
            took = loop.time() - began
        return pid, stopped, took

    for _ in range(3):
        pid, stopped, took = asyncio.run(scenario())
        assert took < STOP_GRACE + 0.5, took
        assert stopped, "HAProxy did not exit though nothing was in flight"
        assert not alive(pid)


def test_the_stats_answer_on_the_bind_ip_only(haproxy_site, backend, loopback):
    options, settings = haproxy_site
    a = backend("h1", "a1")
    elsewhere = loopback.address()  # another local address: 0.0.0.0 would answer there too

    async def scenario():
        async with reconciling(options, settings) as (_, reconciler):
            await apply(reconciler, a)
            for port in (settings.stats_port, settings.stats_backend_port):
                reply = await asyncio.to_thread(http_request, f"http://{settings.bind_ip}:{port}/")
                assert reply.status == 200
                assert b"Statistics Report" in reply.body
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((elsewhere, port), timeout=5).close()

    asyncio.run(scenario())


def test_a_master_that_reloads_after_its_stop_is_stopped_again(haproxy_site, backend):
    """HAProxy forgets a soft stop when a `reload` reaches its master afterwards (a reload the
    daemon sent just before its own stop): the new master serves on. The stop is sent again
    until the master says it exits and has not re-executed since."""
    options, settings = haproxy_site
    settings = replace(settings, hard_stop_after=3.0)
    a = backend("h1", "a1")
    url = f"http://{settings.bind_ip}:8080/"

    async def scenario():
        async with reconciling(options, settings) as (haproxy, reconciler):
            await apply(reconciler, a)
            pid = (await master(haproxy)).master
            # A request in flight keeps the stopping master alive long enough for the reload.
            held = await asyncio.to_thread(held_connection, settings.bind_ip, 8080)
            os.kill(pid, signal.SIGUSR1)  # the stop, as the adapter sends it...
            await eventually(
                lambda: asyncio.to_thread(refused, settings.bind_ip, 8080),
                what="the stopping HAProxy closed",
            )
            await cli(options.master_socket, "reload")  # ...then a reload reaches the master
            await eventually(
                lambda: asyncio.to_thread(answered, url),
                what="the re-executed master serving again (the stop forgotten)",
            )
            stopped = await haproxy.close(stop=True)
        return pid, held, stopped

    pid, held, stopped = asyncio.run(scenario())
    try:
        with held:
            assert not stopped  # the old worker still has the request in flight
            wait_for(
                lambda: refused(settings.bind_ip, 8080),
                what="nothing taking new connections any more",
                timeout=10,
            )
        # The held connection is closed: the old worker exits, and so does the master.
        wait_for(lambda: not alive(pid), what="HAProxy gone after the second stop", timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # a stop that did not work leaves nothing behind


def refused(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is refused."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def answered(url: str) -> bool:
    """Whether a GET of `url` is answered 200 (False while nothing listens)."""
    try:
        return http_request(url).status == 200
    except OSError:
        return False


def leftovers(options) -> list[str]:
    """Return the temporary files left beside the config file (new candidates, old files)."""
    found = [*options.config_file.parent.glob(".*.new"), *options.config_file.parent.glob(".*.old")]
    return sorted(path.name for path in found)


def test_a_config_left_for_the_reload_to_check_is_refused_as_a_checked_write_is(
    haproxy_site, backend
):
    # Before a managed reload the write leaves the check to the master's own load. A config
    # HAProxy refuses must end as a checked write ends: ConfigRejected in the same words, the
    # old file back byte for byte, the old worker serving, nothing left beside the file.
    options, settings = haproxy_site
    a = backend("h1", "a1")

    async def scenario():
        # The loop starts HAProxy serving a, then leaves it to the test (no resync meanwhile).
        async with reconciling(options, settings, resync=3600) as (haproxy, reconciler):
            await apply(reconciler, a)
            old = options.config_file.read_bytes()
            before = await master(haproxy)
            bad = old.decode() + "\nfrontend broken\n\tno_such_directive 42\n"
            with pytest.raises(ConfigRejected) as checked:
                await haproxy.write(bad)
            assert options.config_file.read_bytes() == old

            await haproxy.write(bad, reload_follows=True)
            assert options.config_file.read_text() == bad  # in place, for the master to load
            with pytest.raises(ConfigRejected) as loaded:
                await haproxy.reload()

            def words(refusal: pytest.ExceptionInfo[ConfigRejected]) -> str:
                return re.sub(r"\(\d+\)", "(pid)", str(refusal.value))  # the checker's pid

            assert words(loaded) == words(checked)
            assert "no_such_directive" in str(loaded.value)
            assert options.config_file.read_bytes() == old
            assert leftovers(options) == []
            after = await master(haproxy)
            assert (after.reloads, after.workers[0].pid) == (
                before.reloads + 1,
                before.workers[0].pid,
            )
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name}
            # The master whose load failed loads the next config it is given.
            await haproxy.write(old.decode(), reload_follows=True)
            await haproxy.reload()
            assert (await master(haproxy)).workers[0].pid != before.workers[0].pid
            assert leftovers(options) == []

    asyncio.run(scenario())


def test_a_load_that_fails_for_another_reason_keeps_the_new_file_for_the_retry(
    haproxy_site, backend, loopback: Loopback
):
    # A port another process holds: `haproxy -c` accepts the config (it binds nothing), the
    # load fails. Not a refusal: ProcessFailed, and the file is the new one, which the loop
    # reloads again (`Actual.loaded`) until it loads.
    options, settings = haproxy_site
    a = backend("h1", "a1")
    host = loopback.address()
    holder = socket.create_server((host, 0))  # no SO_REUSEPORT: HAProxy cannot share it
    port = holder.getsockname()[1]

    async def scenario():
        # The loop starts HAProxy serving a, then leaves it to the test (no resync meanwhile).
        async with reconciling(options, settings, resync=3600) as (haproxy, reconciler):
            await apply(reconciler, a)
            before = await master(haproxy)
            taken = options.config_file.read_text() + (
                f"\nfrontend taken\n\tbind {host}:{port}\n\tmode tcp\n"
            )
            await haproxy.write(taken, reload_follows=True)
            with pytest.raises(ProcessFailed, match="did not load the new config"):
                await haproxy.reload()
            assert options.config_file.read_text() == taken
            assert leftovers(options) == []
            after = await master(haproxy)
            assert after.workers[0].pid == before.workers[0].pid
            assert await served_by(f"http://{settings.bind_ip}:8080/") == {a.name}
            holder.close()
            await haproxy.reload()  # the port is free now: the same file loads
            assert (await master(haproxy)).workers[0].pid != before.workers[0].pid

    try:
        asyncio.run(scenario())
    finally:
        holder.close()
