"""`DockerDiscovery` against the real Engine: what runs appears, what stops goes, within 1 s;
Docker's HEALTHCHECK status comes through; an Engine restart is one outage, then recovery.

The adapter runs on its own asyncio loop in a background thread; every value it emits is
copied, with its arrival time, into a thread-safe queue the test reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sidecar.adapters.docker import DockerDiscovery
from sidecar.state.discovery import ContainerListing, EngineUnreachable
from sidecar.state.times import parse_time
from tests.conftest import missing

if TYPE_CHECKING:
    from sidecar.state.discovery import ContainerFacts

pytestmark = pytest.mark.docker

DOCKERD_LOG = Path(os.environ.get("SIDECAR_DOCKERD_LOG", "/var/log/sidecar-test-dockerd.log"))
DOCKERD_PIDFILE = Path(os.environ.get("SIDECAR_DOCKERD_PIDFILE", "/run/sidecar-test-dockerd.pid"))
DOCKER_SOCKET = "/var/run/docker.sock"
FAST = 1.0  # seconds: the bound on "within milliseconds" that a loaded CI machine still meets


@dataclass(frozen=True)
class Arrival:
    value: ContainerListing | EngineUnreachable
    wall_ns: int  # time.time_ns() when the test thread's loop received it
    mono: float  # time.monotonic() at the same moment


class Watcher:
    """Runs a DockerDiscovery on a loop in a background thread; collects what it emits."""

    def __init__(self, discovery: DockerDiscovery) -> None:
        self._discovery = discovery
        self.arrivals: queue.Queue[Arrival] = queue.Queue()
        self.seen: list[Arrival] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())

    async def _main(self) -> None:
        out: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        runner = asyncio.create_task(self._discovery.run(out))
        try:
            while True:
                value = await out.get()
                self.arrivals.put(Arrival(value, time.time_ns(), time.monotonic()))
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(5)

    def stop(self) -> float:
        """Cancels the adapter; returns how long the thread took to finish (seconds)."""
        assert self._loop is not None
        assert self._task is not None
        t0 = time.monotonic()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the adapter did not stop within 10 s of cancel"
        return time.monotonic() - t0

    def next(self, timeout: float) -> Arrival | None:
        try:
            arrival = self.arrivals.get(timeout=max(timeout, 0))
        except queue.Empty:
            return None
        self.seen.append(arrival)
        return arrival

    def wait_for(
        self, pred: Callable[[ContainerListing], bool], *, timeout: float, what: str
    ) -> Arrival:
        """The first listing (from now on) for which `pred` holds, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (arrival := self.next(deadline - time.monotonic())) is not None:
            if isinstance(arrival.value, ContainerListing) and pred(arrival.value):
                return arrival
        last = next(
            (a.value for a in reversed(self.seen) if isinstance(a.value, ContainerListing)), None
        )
        pytest.fail(f"no ContainerListing within {timeout:g}s where {what}; last: {last!r}")


def find(snapshot: ContainerListing, container_id: str) -> ContainerFacts | None:
    return next((c for c in snapshot.containers if c.id == container_id), None)


@pytest.fixture
def watcher(docker_client) -> Iterator[Callable[..., Watcher]]:
    """Factory: start a DockerDiscovery (kwargs to its constructor); stopped at teardown."""
    made: list[Watcher] = []

    def make(**kwargs: Any) -> Watcher:
        w = Watcher(DockerDiscovery(**kwargs))
        made.append(w)
        w.start()
        first = w.next(20)
        assert first is not None
        assert isinstance(first.value, ContainerListing), first
        return w

    try:
        yield make
    finally:
        for w in made:
            print(f"adapter stopped {w.stop() * 1000:.0f} ms after cancel")


def event_time_ns(docker_client, container_id: str, action: str, since: float) -> int:
    """When the Engine says `action` happened to the container (its own timeNano)."""
    events = docker_client.api.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"type": "container", "container": container_id, "event": action},
        decode=True,
    )
    try:
        times = [int(e["timeNano"]) for e in events]
    finally:
        events.close()
    assert times, f"the Engine has no {action} event for {container_id}"
    return times[-1]


def test_a_started_container_appears_and_a_stopped_one_goes_within_a_second(
    docker_client, run_container, watcher
):
    w = watcher()
    started = time.time()

    t0 = time.monotonic()
    container = run_container(
        publish_all_ports=True,
        labels={"ServiceName": "web", "ServicePort_80": "8080"},
        stop_signal="SIGKILL",
    )
    ran = time.monotonic()
    seen = w.wait_for(lambda s: find(s, container.id) is not None, timeout=FAST, what="it runs")
    start_latency = (
        seen.wall_ns - event_time_ns(docker_client, container.id, "start", started)
    ) / 1e6
    print(f"run() took {(ran - t0) * 1000:.0f} ms; start event -> listing {start_latency:.1f} ms")
    assert start_latency < FAST * 1000

    facts = find(seen.value, container.id)
    assert facts is not None
    assert facts.name == f"/{container.name}"
    assert facts.image == "sidecar-test-busybox:latest"
    assert facts.labels["ServiceName"] == "web"
    assert facts.labels["ServicePort_80"] == "8080"
    assert facts.health is None
    published = container.attrs["NetworkSettings"]["Ports"]
    expected = {
        (int(key.split("/")[0]), key.split("/")[1], int(b["HostPort"]), b["HostIp"])
        for key, bindings in published.items()
        for b in bindings or ()
    }
    got = {(p.private_port, p.type, p.public_port, p.host_ip) for p in facts.ports}
    assert got == expected
    assert {p.private_port for p in facts.ports} == {80, 443}
    created = docker_client.api.inspect_container(container.id)["Created"]
    assert facts.created == parse_time(created)
    assert abs(facts.created / 1e9 - started) < 5

    t1 = time.monotonic()
    container.stop(timeout=0)
    stopped = time.monotonic()
    gone = w.wait_for(lambda s: find(s, container.id) is None, timeout=FAST, what="it is gone")
    stop_latency = (gone.wall_ns - event_time_ns(docker_client, container.id, "die", started)) / 1e6
    print(
        f"stop() took {(stopped - t1) * 1000:.0f} ms; gone {(gone.mono - stopped) * 1000:.1f} ms "
        f"after stop() returned; die event -> ContainerListing {stop_latency:.1f} ms"
    )
    assert gone.mono - stopped < FAST
    assert not any(isinstance(a.value, EngineUnreachable) for a in w.seen)


def test_a_periodic_resync_emits_full_snapshots_without_events(run_container, watcher):
    container = run_container(stop_signal="SIGKILL")
    w = watcher(resync_interval=0.2)
    t0 = time.monotonic()
    for _ in range(3):
        w.wait_for(lambda s: find(s, container.id) is not None, timeout=FAST, what="it runs")
    assert time.monotonic() - t0 < 3 * FAST


def test_docker_healthcheck_status_reaches_a_snapshot(run_container, watcher):
    w = watcher()
    container = run_container(
        healthcheck={
            "test": ["CMD", "true"],
            "interval": 500_000_000,
            "timeout": 2_000_000_000,
            "retries": 1,
            "start_period": 0,
        },
        stop_signal="SIGKILL",
    )
    t0 = time.monotonic()
    w.wait_for(
        lambda s: (f := find(s, container.id)) is not None and f.health == "healthy",
        timeout=20,
        what="its health is healthy",
    )
    print(f"healthy in a listing {(time.monotonic() - t0) * 1000:.0f} ms after run() returned")
    # Before that, any listing of it said "starting" (or healthy), never no health at all.
    healths = [
        f.health
        for a in w.seen
        if isinstance(a.value, ContainerListing) and (f := find(a.value, container.id)) is not None
    ]
    assert set(healths) <= {"starting", "healthy"}, healths


# ---------------------------------------------------------------------- Engine restart


def engine_answers() -> bool:
    """Whether the Engine answers /_ping on its socket (a socket of our own, always closed:
    the SDK leaves a refused one to the garbage collector, a ResourceWarning)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(DOCKER_SOCKET)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status.split()[1:2] == [b"200"]


def dockerd_pids() -> list[int]:
    found = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def stop_dockerd(timeout: float = 30.0) -> None:
    """SIGTERM every dockerd and wait until they are gone (SIGKILL after `timeout`)."""
    pids = dockerd_pids()
    assert pids, "no dockerd process to stop (is the engine remote?)"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while dockerd_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in dockerd_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start_dockerd(timeout: float = 60.0) -> None:
    """Start dockerd as scripts/test.sh does (detached), record its pid, wait for it."""
    if not dockerd_pids():
        # setsid: its own session, so that it outlives this test and whatever ends the test
        # runner's process group, as the engine it replaces would have.
        started = subprocess.run(
            [
                "sh",
                "-c",
                f'setsid dockerd --live-restore </dev/null >>"{DOCKERD_LOG}" 2>&1 & echo $!',
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        with contextlib.suppress(OSError):
            DOCKERD_PIDFILE.write_text(started.stdout.strip() + "\n")
    deadline = time.monotonic() + timeout
    while not engine_answers():
        assert time.monotonic() < deadline, f"dockerd did not answer within {timeout:g}s"
        time.sleep(0.2)


def live_restore_enabled(client) -> bool:
    return bool(client.info().get("LiveRestoreEnabled"))


@pytest.mark.slow
def test_an_engine_restart_is_one_outage_and_running_containers_are_never_dropped(
    docker_client, run_container, watcher, caplog
):
    """With live-restore (as scripts/test.sh starts the Engine), containers outlive an Engine
    restart: the adapter reports one outage, never a listing without the survivor, and after
    reconnecting lists the survivor but not the container that died during the outage."""
    if not dockerd_pids() or not engine_answers():
        missing("docker", f"the engine is not a local dockerd on {DOCKER_SOCKET} to restart")
    if not live_restore_enabled(docker_client):
        stop_dockerd()  # an Engine started without it: restart it with it, before any container
        start_dockerd()
        assert live_restore_enabled(docker_client)
    test_started = time.monotonic()
    w = watcher(backoff_cap=1.0)
    survivor = run_container(stop_signal="SIGKILL")
    casualty = run_container(stop_signal="SIGKILL")
    casualty_pid = casualty.attrs["State"]["Pid"]
    assert casualty_pid > 0
    w.wait_for(
        lambda s: find(s, survivor.id) is not None and find(s, casualty.id) is not None,
        timeout=FAST,
        what="both run",
    )
    w.seen.clear()

    try:
        t_stop = time.monotonic()
        stop_dockerd()
        t_down = time.monotonic()
        print(f"dockerd stopped in {(t_down - t_stop) * 1000:.0f} ms")
        os.kill(casualty_pid, signal.SIGKILL)  # dies while nobody is watching
        # Let the adapter retry a few times while the engine is down: still one warning.
        while w.next(1.5 - (time.monotonic() - t_down)) is not None:
            pass
    finally:
        t_restart = time.monotonic()
        start_dockerd()
    print(f"dockerd answers again {(time.monotonic() - t_restart) * 1000:.0f} ms after start")

    back = w.wait_for(
        lambda s: find(s, casualty.id) is None and find(s, survivor.id) is not None,
        timeout=30,
        what="a listing after the restart: the survivor without the casualty",
    )
    print(f"listing after the restart {(back.mono - t_restart) * 1000:.0f} ms after dockerd start")

    for a in w.seen:
        v = a.value
        kind = type(v).__name__
        ids = [c.id[:12] for c in v.containers] if isinstance(v, ContainerListing) else []
        print(f"  {(a.mono - t_stop) * 1000:8.0f} ms after stop: {kind} {ids}")
    unreachable = [a for a in w.seen if isinstance(a.value, EngineUnreachable)]
    assert len(unreachable) == 1, [a.value for a in w.seen]
    warnings = [r for r in caplog.records if r.name == "sidecar.docker" and "unreachable" in r.msg]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    listings = [a for a in w.seen if isinstance(a.value, ContainerListing)]
    assert all(find(a.value, survivor.id) is not None for a in listings), (
        "a listing dropped the container that kept running"
    )
    outage_start = unreachable[0].mono
    assert [a for a in listings if outage_start <= a.mono < t_restart] == [], (
        "a listing was emitted while the engine was down"
    )
    assert survivor.id in {c.id for c in docker_client.containers.list()}
    assert time.monotonic() - test_started < 60
