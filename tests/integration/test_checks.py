"""Health checks against real endpoints on 127.0.0.1: HTTP, TCP, processes, and the runner's
scheduling (immediate first check, no pile-up, removal, spec change, wake-ups, timing) and its
cost per service. No Docker needed. The checks that touch nothing are in
tests/unit/test_checks.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web

from sidecar.adapters import checks
from sidecar.adapters.checks import CheckOutcome, CheckRunner, run_check
from sidecar.state.discovery import CheckSpec, CheckType

T = TypeVar("T")
TEST_BOUND = 5.0  # seconds any one test may take


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in a fresh event loop, bounded in time."""

    async def bounded() -> T:
        async with asyncio.timeout(TEST_BOUND):
            return await make()

    return asyncio.run(bounded())


# ---------------------------------------------------------------- loopback endpoints


@dataclass
class Server:
    """An HTTP server on 127.0.0.1 that counts the requests that reach each path."""

    port: int
    hits: Counter[str] = field(default_factory=Counter)
    healthy: bool = True  # what /flip answers

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def http_server() -> AsyncIterator[Server]:
    server = Server(port=0)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/down"})

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def flip(request: web.Request) -> web.Response:
        return web.Response(status=200 if server.healthy else 500)

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        server.hits[request.path] += 1
        return await handler(request)

    app = web.Application(middlewares=[count])
    for path, handler in [("/ok", ok), ("/redirect", redirect), ("/down", down),
                          ("/hang", hang), ("/flip", flip)]:  # fmt: skip
        app.router.add_get(path, handler)
    # handler_cancellation: a hung handler ends when the check gives up on it.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.port = runner.addresses[0][1]
        yield server
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nobody else takes it), not
    listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.asynccontextmanager
async def tcp_listener() -> AsyncIterator[tuple[int, list[int]]]:
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1], accepted
    finally:
        listener.close()
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def http(url: str) -> CheckSpec:
    return CheckSpec(CheckType.HTTP_GET, url)


def external(command: str) -> CheckSpec:
    return CheckSpec(CheckType.EXTERNAL, command)


async def check(spec: CheckSpec, limit: float = 2.0, **kwargs: str | None) -> CheckOutcome:
    async with client() as session:
        return await run_check(spec, timeout=limit, session=session, **kwargs)


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------- HttpGet


def test_http_2xx_and_3xx_are_healthy_and_redirects_are_not_followed() -> None:
    async def scenario() -> tuple[CheckOutcome, CheckOutcome, Counter[str]]:
        async with http_server() as server:
            ok = await check(http(server.url("/ok")))
            moved = await check(http(server.url("/redirect")))
            return ok, moved, server.hits

    ok, moved, hits = run(scenario)
    assert ok == CheckOutcome(healthy=True, detail="HTTP 200")
    assert moved == CheckOutcome(healthy=True, detail="HTTP 302")
    assert hits["/down"] == 0  # the 302's target was never fetched


def test_http_error_status_is_unhealthy_with_the_status() -> None:
    async def scenario() -> CheckOutcome:
        async with http_server() as server:
            return await check(http(server.url("/down")))

    assert run(scenario) == CheckOutcome(healthy=False, detail="HTTP 503")


def test_http_hung_endpoint_times_out_within_the_timeout() -> None:
    async def scenario() -> tuple[CheckOutcome, float]:
        async with http_server() as server:
            start = time.monotonic()
            outcome = await check(http(server.url("/hang")), limit=0.3)
            return outcome, time.monotonic() - start

    outcome, took = run(scenario)
    assert outcome == CheckOutcome(healthy=False, detail="timed out after 0.3 s")
    assert 0.25 < took < 1.5


def test_http_connection_refused_and_bad_url_are_unhealthy_not_raised() -> None:
    async def scenario() -> tuple[CheckOutcome, CheckOutcome]:
        with refusing_port() as port:
            refused = await check(http(f"http://127.0.0.1:{port}/"))
        bad = await check(http("not a url"))
        return refused, bad

    refused, bad = run(scenario)
    assert refused == CheckOutcome(healthy=False, detail="connection refused")
    assert bad.healthy is False
    assert bad.detail


# ---------------------------------------------------------------- Tcp, AlwaysSuccessful, Docker


def test_tcp_connect_is_healthy_and_refused_is_not() -> None:
    async def scenario() -> tuple[CheckOutcome, list[int], CheckOutcome]:
        async with tcp_listener() as (port, accepted):
            up = await check(CheckSpec(CheckType.TCP, f"127.0.0.1:{port}"))
            for _ in range(100):  # the server side runs its handler a moment later
                if accepted:
                    break
                await asyncio.sleep(0.01)
        with refusing_port() as closed:
            refused = await check(CheckSpec(CheckType.TCP, f"127.0.0.1:{closed}"))
        return up, accepted, refused

    up, accepted, refused = run(scenario)
    assert up.healthy is True
    assert accepted == [1]
    assert refused == CheckOutcome(healthy=False, detail="connection refused")


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:", "127.0.0.1:99999", "::1:80", ""])
def test_tcp_bad_address_is_unhealthy_with_the_reason(address: str) -> None:
    outcome = run(lambda: check(CheckSpec(CheckType.TCP, address)))
    assert outcome.healthy is False
    assert repr(address) in outcome.detail


# ---------------------------------------------------------------- External


def test_external_exit_status_decides() -> None:
    assert run(lambda: check(external("true"))) == CheckOutcome(healthy=True, detail="exit 0")
    assert run(lambda: check(external("false"))) == CheckOutcome(healthy=False, detail="exit 1")


def test_external_is_split_with_shell_quoting_and_reports_the_first_line() -> None:
    outcome = run(lambda: check(external("sh -c 'echo broken; echo more; exit 3'")))
    assert outcome == CheckOutcome(healthy=False, detail="exit 3: broken")


def test_external_runs_without_a_shell() -> None:
    # A shell would expand $HOME and run the second command; exec passes them as arguments.
    outcome = run(lambda: check(external("echo $HOME; false")))
    assert outcome == CheckOutcome(healthy=True, detail="exit 0")


def test_external_large_output_is_bounded_and_does_not_block() -> None:
    outcome = run(lambda: check(external("sh -c 'yes | head -c 2000000; exit 4'")))
    assert outcome.healthy is False
    assert outcome.detail.startswith("exit 4: y")
    assert len(outcome.detail) <= 250


@pytest.mark.parametrize(
    ("command", "reason"),
    [("", "empty command"), ("sh -c 'unbalanced", "cannot split"),
     ("/nonexistent/check --x", "cannot run '/nonexistent/check'")],
)  # fmt: skip
def test_external_bad_command_is_unhealthy_with_the_reason(command: str, reason: str) -> None:
    outcome = run(lambda: check(external(command)))
    assert outcome.healthy is False
    assert reason in outcome.detail


def test_external_timeout_kills_and_reaps_the_process(tmp_path: Path) -> None:
    start = time.monotonic()
    outcome = run(lambda: check(external("sleep 10"), limit=0.3))
    assert outcome == CheckOutcome(healthy=False, detail="timed out after 0.3 s")
    assert time.monotonic() - start < 2.0

    # The same, with the pids visible: the check itself and a child it started.
    pids = tmp_path / "pids"
    script = f"sleep 10 & echo $$ $! > {pids}; wait"
    outcome = run(lambda: check(external(f"sh -c '{script}'"), limit=0.3))
    assert outcome.detail == "timed out after 0.3 s"
    shell, child = (int(pid) for pid in pids.read_text().split())
    assert not alive(shell)
    for _ in range(100):  # the orphaned child is reaped by init, eventually
        if not alive(child):
            break
        time.sleep(0.01)
    assert not alive(child)


# ---------------------------------------------------------------- CheckRunner


async def outcomes_within(
    queue: asyncio.Queue[tuple[str, CheckOutcome, int]], seconds: float
) -> list[tuple[str, CheckOutcome, int]]:
    """Collect what arrives on `queue` during `seconds`."""
    got: list[tuple[str, CheckOutcome, int]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                got.append(await queue.get())
    return got


def test_runner_checks_a_new_service_immediately() -> None:
    async def scenario() -> tuple[float, tuple[str, CheckOutcome, int]]:
        async with http_server() as server:
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=3.0, clock=lambda: 42)
            try:
                start = time.monotonic()
                runner.update({"abc": http(server.url("/ok"))})
                first = await queue.get()
                return time.monotonic() - start, first
            finally:
                await runner.close()

    took, first = run(scenario)
    assert first == ("abc", CheckOutcome(healthy=True, detail="HTTP 200"), 42)
    assert took < 1.0  # the interval is 3 s


@pytest.mark.parametrize(
    ("interval", "timeout", "sample_at", "most"),
    [
        # The sample falls between two checks, when none is in flight.
        (0.4, 0.2, 1.5, 1.5 / 0.4 + 1),
        # Timeout longer than the interval: back to back, never two at once.
        (0.2, 0.5, 1.75, 1.75 / 0.5 + 1),
    ],
)
def test_runner_never_piles_up_on_a_hung_target(
    interval: float, timeout: float, sample_at: float, most: float
) -> None:
    async def scenario() -> tuple[int, list[tuple[str, CheckOutcome, int]]]:
        async with http_server() as server:
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=interval, timeout=timeout)
            try:
                runner.update({"hung": http(server.url("/hang"))})
                got = await outcomes_within(queue, sample_at)
                return server.hits["/hang"], got
            finally:
                await runner.close()

    requests, got = run(scenario)
    assert all(o == CheckOutcome(healthy=False, detail=f"timed out after {timeout:g} s")
               for _, o, _ in got)  # fmt: skip
    if timeout < interval:
        assert requests == len(got)
    else:  # one request is in flight at the sample
        assert requests == len(got) + 1
    assert 3 <= requests <= most


def test_runner_stops_checking_a_removed_service() -> None:
    async def scenario() -> tuple[int, int]:
        async with http_server() as server:
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=0.1)
            try:
                runner.update({"a": http(server.url("/ok")), "b": http(server.url("/down"))})
                for _ in range(4):  # two rounds each
                    await queue.get()
                runner.update({"b": http(server.url("/down"))})
                at_removal = server.hits["/ok"]
                await asyncio.sleep(0.5)
                return at_removal, server.hits["/ok"]
            finally:
                await runner.close()

    at_removal, later = run(scenario)
    assert at_removal >= 2
    assert later == at_removal


def test_runner_removed_service_reports_nothing_after_update() -> None:
    async def scenario() -> list[str]:
        async with http_server() as server:
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=0.1)
            try:
                runner.update({"a": http(server.url("/ok"))})
                await queue.get()
                runner.update({"b": CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "")})
                while not queue.empty():  # reported before the update
                    queue.get_nowait()
                return [sid for sid, _, _ in await outcomes_within(queue, 0.5)]
            finally:
                await runner.close()

    seen = run(scenario)
    assert "a" not in seen
    assert "b" in seen


def test_runner_changed_spec_switches_target_at_once() -> None:
    async def scenario() -> tuple[float, CheckOutcome, int, int]:
        async with http_server() as server:
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=3.0)
            try:
                runner.update({"s": http(server.url("/ok"))})
                await queue.get()
                start = time.monotonic()
                runner.update({"s": http(server.url("/down"))})
                _, after, _ = await queue.get()
                took = time.monotonic() - start
                ok_hits = server.hits["/ok"]
                await asyncio.sleep(0.3)
                return took, after, ok_hits, server.hits["/ok"]
            finally:
                await runner.close()

    took, after, ok_hits, ok_later = run(scenario)
    assert after == CheckOutcome(healthy=False, detail="HTTP 503")
    assert took < 1.0  # not a full interval
    assert ok_hits == ok_later == 1


def test_runner_docker_health_change_is_reported_at_once() -> None:
    async def scenario() -> tuple[CheckOutcome, CheckOutcome, float]:
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=3.0)
        spec = {"d": CheckSpec(CheckType.DOCKER, "")}
        try:
            runner.update(spec, {"d": "starting"})
            _, starting, _ = await queue.get()
            start = time.monotonic()
            runner.update(spec, {"d": "healthy"})
            _, healthy, _ = await queue.get()
            return starting, healthy, time.monotonic() - start
        finally:
            await runner.close()

    starting, healthy, took = run(scenario)
    assert starting.healthy is None
    assert healthy.healthy is True
    assert took < 1.0


def test_runner_close_kills_a_running_external_check(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def scenario() -> int:
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=3.0)
        try:
            runner.update({"x": external(f"sh -c 'echo $$ > {pid_file}; exec sleep 10'")})
            for _ in range(200):
                if pid_file.exists() and pid_file.read_text().strip():
                    break
                await asyncio.sleep(0.01)
        finally:
            await runner.close()
        assert queue.empty()
        return int(pid_file.read_text())

    pid = run(scenario)
    assert not alive(pid)


def test_runner_warns_when_a_healthy_check_turns_unhealthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with http_server() as server:
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=0.1)
            try:
                runner.update({"f": http(server.url("/flip"))})
                assert (await queue.get())[1].healthy is True
                server.healthy = False
                while (await queue.get())[1].healthy is not False:
                    pass
            finally:
                await runner.close()

    with caplog.at_level(logging.DEBUG, logger="sidecar.checks"):
        run(scenario)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "HTTP 500" in warnings[0].getMessage()


ALWAYS = CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "")
DOCKER = CheckSpec(CheckType.DOCKER, "")


def read_pid(pid_file: Path) -> int | None:
    text = pid_file.read_text() if pid_file.exists() else ""
    return int(text) if text.strip() else None


async def wait_for_pid(pid_file: Path) -> int:
    """Return the pid a check's process wrote to `pid_file`, once it has."""
    for _ in range(200):
        if (pid := read_pid(pid_file)) is not None:
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pid_file} never written")


def test_runner_costs_little_memory_and_no_task_per_service_between_checks() -> None:
    n = 1000
    specs = {f"svc-{i:04d}": ALWAYS for i in range(n)}
    warm_up = {f"warm-{i}": ALWAYS for i in range(10)}

    async def scenario() -> tuple[float, int, int, set[asyncio.Task[object]]]:
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=60.0)  # no second round during the test
        try:
            # One-off costs (the HTTP session, the scheduler) are paid before measuring.
            runner.update(warm_up)
            for _ in warm_up:
                await queue.get()
            runner.update({})
            await asyncio.sleep(0.05)
            idle_tasks = len(asyncio.all_tasks())
            gc.collect()
            tracemalloc.start(64)
            try:
                before = tracemalloc.take_snapshot()
                runner.update(specs)
                seen: set[str] = set()
                while len(seen) < n:
                    seen.add((await queue.get())[0])
                await asyncio.sleep(0.05)  # the checks' tasks have ended
                between_checks = len(asyncio.all_tasks())
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            assert runner.services() == frozenset(specs)
            assert queue.empty()  # each was checked once
        finally:
            await runner.close()
        # What was allocated with the runner's code on the stack and is still alive.
        mine = [tracemalloc.Filter(True, checks.__file__, all_frames=True)]
        retained = sum(
            stat.size_diff
            for stat in after.filter_traces(mine).compare_to(before.filter_traces(mine), "lineno")
        )
        return retained / n, idle_tasks, between_checks, asyncio.all_tasks()

    per_service, idle_tasks, between_checks, left = run(scenario)
    print(
        f"CheckRunner: {per_service:.0f} bytes retained per service; tasks alive with 0 "
        f"services: {idle_tasks}, between checks of {n}: {between_checks}"
    )
    assert per_service < 1000
    assert between_checks <= idle_tasks + 1  # O(1), not one per service
    assert len(left) == 1  # after close only the test's own task


def test_runner_wake_while_the_scheduler_sleeps_is_served_at_once() -> None:
    async def scenario() -> tuple[set[str], dict[str, bool | None], float, list[str]]:
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=3.0)
        try:
            runner.update({"a": ALWAYS, "d": DOCKER}, {"d": "starting"})
            first = {(await queue.get())[0] for _ in range(2)}
            await asyncio.sleep(0.2)  # the scheduler sleeps: the next check is 3 s away
            start = time.monotonic()
            runner.update({"a": ALWAYS, "d": DOCKER, "n": ALWAYS}, {"d": "healthy"})
            woken = {sid: o.healthy for sid, o, _ in [await queue.get() for _ in range(2)]}
            took = time.monotonic() - start
            later = [sid for sid, _, _ in await outcomes_within(queue, 0.3)]
            return first, woken, took, later
        finally:
            await runner.close()

    first, woken, took, later = run(scenario)
    assert first == {"a", "d"}
    assert woken == {"d": True, "n": True}
    assert took < 0.5
    assert later == []  # "a" waits for its interval


def test_runner_docker_health_change_during_a_check_runs_it_again_right_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str | None] = []

    async def scenario() -> tuple[list[bool | None], list[str]]:
        release = asyncio.Event()
        real = checks.run_check

        async def slow_first(
            spec: CheckSpec,
            *,
            timeout: float,  # noqa: ASYNC109
            session: aiohttp.ClientSession,
            docker_health: str | None = None,
        ) -> CheckOutcome:
            seen.append(docker_health)
            if len(seen) == 1:
                await release.wait()
            return await real(spec, timeout=timeout, session=session, docker_health=docker_health)

        monkeypatch.setattr(checks, "run_check", slow_first)
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=3.0)
        try:
            runner.update({"d": DOCKER}, {"d": "starting"})
            await asyncio.sleep(0.05)  # the first check is in flight
            runner.update({"d": DOCKER}, {"d": "healthy"})
            release.set()
            got = [(await queue.get())[1].healthy for _ in range(2)]
            later = [sid for sid, _, _ in await outcomes_within(queue, 0.3)]
            return got, later
        finally:
            await runner.close()

    got, later = run(scenario)
    assert got == [None, True]
    assert seen == ["starting", "healthy"]
    assert later == []


def test_runner_restart_during_a_check_drops_its_outcome_and_kills_its_process(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"

    async def scenario() -> tuple[int, list[str]]:
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=0.1, timeout=2.0)
        try:
            runner.update({"x": external(f"sh -c 'echo $$ > {pid_file}; sleep 0.4; exit 3'")})
            pid = await wait_for_pid(pid_file)
            runner.update({"x": ALWAYS})
            details = [o.detail for _, o, _ in await outcomes_within(queue, 0.8)]
            return pid, details
        finally:
            await runner.close()

    pid, details = run(scenario)
    assert len(details) >= 3
    assert set(details) == {"always successful"}  # never "exit 3"
    assert not alive(pid)


def test_runner_removal_during_an_external_check_kills_its_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def scenario() -> tuple[bool, bool, frozenset[str]]:
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=3.0)
        try:
            runner.update({"x": external(f"sh -c 'echo $$ > {pid_file}; exec sleep 10'")})
            pid = await wait_for_pid(pid_file)
            runner.update({})
            for _ in range(200):  # killed and reaped without waiting for close()
                if not alive(pid):
                    break
                await asyncio.sleep(0.01)
            killed = not alive(pid)
            await asyncio.sleep(0.1)
            return killed, queue.empty(), runner.services()
        finally:
            await runner.close()

    killed, nothing_reported, services = run(scenario)
    assert killed
    assert nothing_reported
    assert services == frozenset()


def test_runner_checks_services_due_together_concurrently() -> None:
    async def scenario() -> tuple[float, set[str]]:
        async with http_server() as server:
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=3.0, timeout=0.3)
            try:
                start = time.monotonic()
                runner.update({f"h{i}": http(server.url("/hang")) for i in range(20)})
                got = {(await queue.get())[0] for _ in range(20)}
                return time.monotonic() - start, got
            finally:
                await runner.close()

    took, got = run(scenario)
    assert got == {f"h{i}" for i in range(20)}
    assert took < 1.5  # one after the other would take 6 s


@pytest.mark.parametrize("kind", ["always", "tcp"])
def test_runner_runs_a_check_every_interval(kind: str) -> None:
    n = 10  # intervals of 0.1 s

    async def scenario() -> list[tuple[str, CheckOutcome, int]]:
        async with tcp_listener() as (port, _):
            spec = ALWAYS if kind == "always" else CheckSpec(CheckType.TCP, f"127.0.0.1:{port}")
            queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
            runner = CheckRunner(queue, interval=0.1)
            try:
                runner.update({"s": spec})
                return await outcomes_within(queue, n * 0.1)
            finally:
                await runner.close()

    got = run(scenario)
    print(f"{kind}: {len(got)} checks in {n} intervals")
    assert all(o.healthy is True for _, o, _ in got)
    assert 0.5 * n <= len(got) <= 1.5 * n + 2


def test_runner_keeps_scheduling_when_run_check_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    real = checks.run_check

    async def crash_once(
        spec: CheckSpec,
        *,
        timeout: float,  # noqa: ASYNC109
        session: aiohttp.ClientSession,
        docker_health: str | None = None,
    ) -> CheckOutcome:
        calls.append(spec.type)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return await real(spec, timeout=timeout, session=session, docker_health=docker_health)

    monkeypatch.setattr(checks, "run_check", crash_once)

    async def scenario() -> list[CheckOutcome]:
        queue: asyncio.Queue[tuple[str, CheckOutcome, int]] = asyncio.Queue()
        runner = CheckRunner(queue, interval=0.05)
        try:
            runner.update({"s": ALWAYS})
            return [(await queue.get())[1] for _ in range(3)]
        finally:
            await runner.close()

    with caplog.at_level(logging.ERROR, logger="sidecar.checks"):
        got = run(scenario)
    assert got[0] == CheckOutcome(healthy=False, detail="check crashed: RuntimeError: boom")
    assert [o.healthy for o in got[1:]] == [True, True]
    assert any("crashed" in r.getMessage() for r in caplog.records)


def test_runner_update_needs_a_running_loop_and_an_open_runner() -> None:
    async def closed() -> None:
        runner = CheckRunner(asyncio.Queue(), interval=1.0)
        runner.update({"s": ALWAYS})
        await runner.close()
        with pytest.raises(RuntimeError, match="closed"):
            runner.update({"s": ALWAYS})

    run(closed)
    with pytest.raises(RuntimeError):
        CheckRunner(asyncio.Queue(), interval=1.0).update({"s": ALWAYS})
