"""Benchmark: `sidecar run` on a bad day (issue 10) — how long SIGTERM takes to stop it
whatever is in flight, how soon HAProxy serves again after `kill -9`, and what a Docker Engine
restart does to what is served.

    .venv/bin/python bench/faults.py [--tries 20] [--kills 5] [--engine]

Needs HAProxy and busybox (`busybox httpd` is the backend); `--engine` also needs a local
`dockerd --live-restore` this script may restart, and the image `sidecar-test-busybox:latest`
(`bash scripts/build-test-image.sh`). Each daemon is started as bench/daemon.py starts it
(`DaemonProcess`: `[sys.executable, "-m", "sidecar", "run"]`, an environment built from
scratch, its API and HAProxy's frontends on fresh 127.0.0.x addresses, HAProxy's files in a
temporary directory). In parts 1 and 2 it discovers one static service, `web8080`
(`AlwaysSuccessful`), whose server is a `busybox httpd` on a 127.0.0.x address (the daemon's
advertise IP) answering `/` with its own name; no Docker Engine is needed for them.

1. **SIGTERM → exit**, TRIES times (`--tries`) for each situation, a fresh daemon per try,
   with both cores loaded: one `nice -n 19` busy loop per core, started before the first try
   and stopped after the last (each also ends itself after 15 minutes). The time is from
   `kill(SIGTERM)` to `waitpid` returning (10 s at most, then SIGKILL: a failure).
   (a) *right after a reload* — `HAPROXY_STOP_ON_EXIT=true`. The static file gets a second
       service port, so the daemon writes, validates and reloads; the daemon's log is polled
       every 5 ms and SIGTERM sent as soon as it shows
       `write  (frontends, backends or settings changed)` (the reload follows at once).
       Expected of HAProxy: its master exits by itself (the soft stop), within 5 s.
   (b) *a frontend connection held open* — `HAPROXY_STOP_ON_EXIT=true`,
       `HAPROXY_HARD_STOP_AFTER=2s`. A half-sent `GET /` (its head not finished) and an idle
       connection (not a byte sent) on the frontend, both seen in the worker's `show fd`
       before SIGTERM. Expected: after the daemon's exit the held request, completed then,
       still gets its 200 and the backend's name; the master is gone after hard-stop-after
       (2 s, the idle connection still open), within 7 s of SIGTERM.
   (c) *API requests half sent* — `HAPROXY_STOP_ON_EXIT=false` (the default). On the
       daemon's API: a POST to `/api/services/x/drain` with 50 of its 100 body bytes, a
       request head never finished, and an `/api/watch` stream (its first document read).
       Expected: HAProxy still serves `web8080` (a 200 with the backend's name) after the
       daemon's exit.
   Figures per situation: max, p50 and min of SIGTERM → exit over the tries that exited,
   the exit codes, whether HAProxy ended as expected; a try that fails is counted and its
   error printed, and the run goes on.
2. **kill -9 of HAProxy**, KILLS times each (`--kills`), one daemon, machine not loaded:
   of the master's process group (master and worker: HAProxy runs in a session of its own),
   of the worker alone, and of the master alone. After each, `http://BIND_IP:8080/` is
   requested every 10 ms (0.25 s timeout each) until it answers 200 with the backend's name;
   polling starts once the killed processes are gone (no answer from a dying worker can be
   counted). Also: whether the other HAProxy processes outlived the kill and for how long,
   the new master's pid (a new HAProxy, not the old one), and `/metrics`'
   `sidecar_haproxy_restarts_total` and `_exits_total` before and after.
3. **Docker Engine restart** (`--engine` only: it restarts this host's Engine, once). A daemon
   with `SIDECAR_DISCOVERY=docker` (logging at debug, for the Docker adapter's stream lines)
   and one container of the busybox image (labels `ServiceName` and `ServicePort_80`, `-P`,
   httpd answering `/` with its hostname), served through HAProxy; the time from its
   `docker run` returning to its record ALIVE in `/api/services.json` (polled every 10 ms)
   is the baseline. Then two pollers, every 50 ms: HAProxy's frontend (a request fails when
   it does not answer 200 with the container's hostname within 0.5 s) and the daemon's
   `/api/services.json` (the container's record: its status, or missing). Meanwhile: SIGTERM
   to `dockerd`, wait for it to exit, start it again as it was started
   (`setsid dockerd --live-restore </dev/null >>/var/log/sidecar-test-dockerd.log 2>&1 &`:
   its own session, so it outlives this script; appended to, not truncated), poll `/_ping`
   on its socket every 50 ms until it answers; then at once a second labelled container,
   timed from the Engine answering to its record ALIVE (polled every 10 ms: discovery follows
   the Engine again), and 3 s more of polling. Figures: the Engine's stop and start times,
   the requests that failed through HAProxy (with their time after the SIGTERM), the longest
   time between two 200s, the statuses `/api/services.json` showed (no TOMBSTONE expected),
   the second container's times, and the daemon's log lines about Docker from the SIGTERM
   on. Should anything fail after dockerd was stopped, it is started again before the
   script ends (also on Ctrl-C or SIGTERM).

Traffic goes to loopback only (the daemons' APIs, HAProxy's frontends, the backend, the
container's published port through the daemon's checks) and to the Engine's Unix socket.
Everything is bounded in count and time; the daemons, their HAProxy (any process naming the
temporary directory), the backend, the busy loops and the containers carrying this run's
label are stopped or removed on the way out, also on error or Ctrl-C. Exit code 1 when a try
failed or an expectation was not met.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import daemon as d
from procs import alive, kill_pids, pids_mentioning, sigterm_as_interrupt

SERVICE_PORT = 8080
NEW_PORT = 9090  # the second service port that makes situation (a) reload
STOP_BOUND = 1.0  # s from SIGTERM to exit, by design (issue 10 §1)
HARD_STOP_AFTER = 2.0  # s, HAPROXY_HARD_STOP_AFTER in situation (b)
HAPROXY_GONE_LIMIT = 5.0  # s after the daemon's exit for a soft-stopped master to go (a)
HOG_LIMIT = 900.0  # s: a busy loop ends itself after this, whatever happens to us
SERVE_LIMIT = 30.0  # s for a fresh daemon to serve web8080
LOG_POLL = 0.005  # s between reads of the daemon's log in (a)
KILL_POLL = 0.01  # s between requests after a kill
KILL_REQUEST_TIMEOUT = 0.25  # s per request after a kill
KILL_LIMIT = 20.0  # s for HAProxy to serve again after a kill
ENGINE_POLL = 0.05  # s between requests during the Engine restart
ENGINE_STOP_LIMIT = 30.0  # s for dockerd to exit after SIGTERM (then SIGKILL)
ENGINE_START_LIMIT = 60.0  # s for dockerd to answer after its start
ENGINE_BACK_LIMIT = 60.0  # s for the daemon to log the Engine reachable again
ENGINE_PORT = 19077  # the container's service port (others' tests use 8080, 18xxx)
DOCKERD_LOG = Path("/var/log/sidecar-test-dockerd.log")
DOCKER_SOCKET = "/var/run/docker.sock"
SERVES_ITS_NAME = ["sh", "-c", "hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
STATUS_NAMES = {0: "ALIVE", 1: "TOMBSTONE", 2: "UNHEALTHY", 3: "UNKNOWN", 4: "DRAINING"}
WRITE_FOR_RELOAD = "write  (frontends, backends or settings changed)"


# ---------------------------------------------------------------------------- helpers


def get_text(host: str, port: int, *, timeout: float) -> tuple[int, str]:
    """Return (status, body) of `GET http://host:port/` (loopback only, via bench/daemon.py)."""
    reply = d.http_get(host, port, "/", timeout=timeout)
    return reply.status, reply.body.decode(errors="replace")


def half_sent(host: str, port: int, data: bytes) -> socket.socket:
    """Return a connection to a loopback `host:port` that has sent `data` and nothing more."""
    if not host.startswith("127."):
        raise ValueError(f"this benchmark only sends traffic to loopback, not to {host}")
    conn = socket.create_connection((host, port), timeout=10)
    conn.sendall(data)
    return conn


def read_all(conn: socket.socket, *, limit: float) -> bytes:
    """Return what `conn` sends until it closes, or what came within `limit` seconds."""
    deadline = time.monotonic() + limit
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def seconds_until(probe: Callable[[], bool], *, limit: float, interval: float) -> float | None:
    """Return the seconds until `probe()` is true, polled every `interval`; None after `limit`."""
    began = time.monotonic()
    for _ in range(int(limit / interval) + 2):
        if probe():
            return time.monotonic() - began
        if time.monotonic() - began > limit:
            return None
        time.sleep(interval)
    return None


class LogFollower:
    """Reads what a log file gains from now on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.text = ""

    def read(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        self.text += data.decode(errors="replace")
        return self.text


@contextlib.contextmanager
def cpu_load() -> Iterator[list[int]]:
    """Both cores busy, as on CI: one `nice -n 19` busy loop per core, each ending by itself
    after HOG_LIMIT seconds at the latest, and killed when the block ends."""
    loop = f"import time\nend = time.monotonic() + {HOG_LIMIT}\nwhile time.monotonic() < end: pass"
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(os.cpu_count() or 2):
            hogs.append(subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", loop]))
        yield [hog.pid for hog in hogs]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)


class Backend:
    """A `busybox httpd` on a fresh 127.0.0.x answering `/` with NAME."""

    name = "faults-backend"

    def __init__(self, root: Path, loopback: d.Loopback) -> None:
        self.ip = loopback.address()
        self.port = loopback.port()
        www = root / "www"
        www.mkdir()
        (www / "index.html").write_text(self.name)
        self.proc = subprocess.Popen(
            ["busybox", "httpd", "-f", "-p", f"{self.ip}:{self.port}", "-h", str(www)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        d.wait_for(
            lambda: get_text(self.ip, self.port, timeout=1.0) == (200, self.name),
            what="the busybox backend",
            limit=10,
            interval=0.05,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def write_static(path: Path, backend: Backend, service_ports: Sequence[int]) -> None:
    """Write the static file atomically: the backend under one service per service port."""
    targets = [
        {
            "Service": {
                "Name": f"web{port}",
                "Image": "busybox:1",
                "Ports": [{"Type": "tcp", "Port": backend.port, "ServicePort": port}],
            },
            "Check": {"Type": "AlwaysSuccessful", "Args": ""},
        }
        for port in service_ports
    ]
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps(targets))
    os.replace(fresh, path)


def static_daemon(
    root: Path, name: str, backend: Backend, settings: dict[str, str]
) -> d.DaemonProcess:
    """Return a daemon (not started) serving `web8080` from a static file of its own."""
    loopback = d.Loopback()  # fresh per daemon: the addresses of an earlier try are free again
    static = root / f"{name}.json"
    write_static(static, backend, [SERVICE_PORT])
    return d.DaemonProcess(
        root,
        name,
        loopback,
        {
            "SIDECAR_DISCOVERY": "static",
            "STATIC_CONFIG_FILE": str(static),
            "SIDECAR_ADVERTISE_IP": backend.ip,
            "HAPROXY_BIND_IP": loopback.address(ports=[SERVICE_PORT, NEW_PORT]),
            **settings,
        },
    )


def serves(daemon: d.DaemonProcess, backend: Backend, *, timeout: float = 2.0) -> bool:
    """Whether HAProxy's frontend answers 200 with the backend's name."""
    try:
        return get_text(daemon.bind_ip, SERVICE_PORT, timeout=timeout) == (200, backend.name)
    except OSError:
        return False


def start_serving(daemon: d.DaemonProcess, backend: Backend) -> int:
    """Start the daemon, wait for it to serve web8080; return HAProxy's master pid."""
    daemon.start()
    daemon.wait_up()
    d.wait_for(
        lambda: serves(daemon, backend),
        what="web8080 served through HAProxy",
        limit=SERVE_LIMIT,
        interval=0.05,
    )
    pids = daemon.haproxy_pids()
    if pids is None:
        raise RuntimeError("HAProxy is not running")
    return pids[0]


def taken_in(daemon: d.DaemonProcess, conns: Sequence[socket.socket]) -> bool:
    """Whether the running worker holds each of `conns` (`show fd`: their client ports; a
    connection that has not sent a whole request head has no session in `show sess`)."""
    listing = d.master_cli(daemon.dir / "master.sock", "@1 show fd")
    return all(f" rport={conn.getsockname()[1]} " in listing for conn in conns)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _counter(values: tuple[float, float] | None) -> str:
    if values is None:
        return "-"
    return f"+{values[1] - values[0]:.0f} ({values[0]:.0f} -> {values[1]:.0f})"


def _spread(values: Sequence[float]) -> str:
    """Return "max / p50 / min" in ms."""
    if not values:
        return "-"
    return (
        f"{max(values) * 1000:.0f} / {statistics.median(values) * 1000:.0f} / "
        f"{min(values) * 1000:.0f} ms"
    )


# ---------------------------------------------------------------------------- part 1: SIGTERM


@dataclass
class StopTry:
    seconds: float | None = None  # SIGTERM -> exit
    code: int | None = None
    expected: bool = False  # HAProxy ended as expected
    haproxy_gone: float | None = None  # s from SIGTERM to the master gone, (a) and (b)
    reloaded: bool | None = None  # (a): the reload was logged as done before the exit
    error: str | None = None


@dataclass
class Situation:
    key: str
    title: str
    expectation: str
    settings: dict[str, str]
    tries: list[StopTry] = field(default_factory=list)


def sigterm(daemon: d.DaemonProcess, result: StopTry) -> None:
    """SIGTERM the daemon; record the time to its exit and its exit code."""
    daemon.stop()
    result.seconds, result.code = daemon.exit_seconds, daemon.exit_code
    if result.seconds is None:
        raise RuntimeError(f"the daemon did not exit within {d.STOP_LIMIT:g} s of SIGTERM")


def after_a_reload(daemon: d.DaemonProcess, backend: Backend, master: int) -> StopTry:
    result = StopTry()
    log = LogFollower(daemon.log_path)
    write_static(Path(daemon.env["STATIC_CONFIG_FILE"]), backend, [SERVICE_PORT, NEW_PORT])
    d.wait_for(
        lambda: WRITE_FOR_RELOAD in log.read(),
        what="the new config written",
        limit=SERVE_LIMIT,
        interval=LOG_POLL,
    )
    signalled = time.monotonic()
    sigterm(daemon, result)
    result.reloaded = "HAProxy reloaded" in log.read()
    gone = seconds_until(lambda: not alive(master), limit=HAPROXY_GONE_LIMIT, interval=0.01)
    if gone is not None:
        result.haproxy_gone = time.monotonic() - signalled
    result.expected = gone is not None
    return result


def with_a_frontend_connection_held(
    daemon: d.DaemonProcess, backend: Backend, master: int
) -> StopTry:
    result = StopTry()
    finishing = half_sent(daemon.bind_ip, SERVICE_PORT, b"GET / HTTP/1.1\r\nHost: t\r\n")
    idle = half_sent(daemon.bind_ip, SERVICE_PORT, b"")
    with finishing, idle:
        d.wait_for(
            lambda: taken_in(daemon, [finishing, idle]),
            what="both connections taken in by HAProxy's worker",
            limit=10,
            interval=0.02,
        )
        signalled = time.monotonic()
        sigterm(daemon, result)
        finishing.sendall(b"Connection: close\r\n\r\n")
        answer = read_all(finishing, limit=5.0)
        answered = answer.startswith(b"HTTP/1.1 200") and answer.endswith(backend.name.encode())
        limit = HARD_STOP_AFTER + HAPROXY_GONE_LIMIT
        gone = seconds_until(lambda: not alive(master), limit=limit, interval=0.01)
        if gone is not None:
            result.haproxy_gone = time.monotonic() - signalled
    result.expected = answered and result.haproxy_gone is not None
    if not answered:
        result.error = f"the held request got {answer[:80]!r}"
    return result


def with_api_requests_half_sent(daemon: d.DaemonProcess, backend: Backend, master: int) -> StopTry:
    result = StopTry()
    api = daemon.api_ip
    held = [
        half_sent(
            api,
            7777,
            b"POST /api/services/x/drain HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
            + b"x" * 50,
        ),
        half_sent(api, 7777, b"GET /api/services.json HTTP/1.1\r\nHost: t\r\n"),
        half_sent(api, 7777, b"GET /api/watch HTTP/1.1\r\nHost: t\r\n\r\n"),
    ]
    try:
        held[2].settimeout(10)
        if not held[2].recv(65536).startswith(b"HTTP/1.1 200"):
            raise RuntimeError("/api/watch did not answer 200")
        sigterm(daemon, result)
    finally:
        for conn in held:
            conn.close()
    result.expected = alive(master) and serves(daemon, backend)
    return result


SITUATIONS = {
    "a": after_a_reload,
    "b": with_a_frontend_connection_held,
    "c": with_api_requests_half_sent,
}


def situations() -> list[Situation]:
    return [
        Situation(
            "a",
            "(a) right after a reload",
            "master exits by itself",
            {"HAPROXY_STOP_ON_EXIT": "true"},
        ),
        Situation(
            "b",
            "(b) frontend connection held open",
            "held request 200, master gone after hard-stop-after",
            {"HAPROXY_STOP_ON_EXIT": "true", "HAPROXY_HARD_STOP_AFTER": f"{HARD_STOP_AFTER:g}s"},
        ),
        Situation(
            "c",
            "(c) API requests half sent",
            "HAProxy still serving",
            {"HAPROXY_STOP_ON_EXIT": "false"},
        ),
    ]


def run_stops(root: Path, backend: Backend, args: argparse.Namespace) -> list[Situation]:
    found = situations()
    with cpu_load() as hogs:
        print(f"[sigterm] both cores loaded: nice -n 19 busy loops {hogs}")
        for situation in found:
            for index in range(args.tries):
                name = f"stop-{situation.key}-{index:02d}"
                daemon = static_daemon(root, name, backend, situation.settings)
                try:
                    master = start_serving(daemon, backend)
                    result = SITUATIONS[situation.key](daemon, backend, master)
                except Exception as exc:
                    result = StopTry(
                        seconds=daemon.exit_seconds,
                        code=daemon.exit_code,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    print(f"  daemon log (last lines):\n{daemon.log_tail(12)}")
                finally:
                    daemon.kill()
                situation.tries.append(result)
                print(
                    f"[sigterm] {situation.key} {index:2d}: exit {_ms(result.seconds)} "
                    f"(code {result.code}); HAProxy "
                    + ("as expected" if result.expected else "NOT as expected")
                    + (f", master gone {_ms(result.haproxy_gone)} after SIGTERM")
                    * (result.haproxy_gone is not None)
                    + (f", reload logged before exit: {result.reloaded}")
                    * (result.reloaded is not None)
                    + (f"; FAILED: {result.error}" if result.error else ""),
                    flush=True,
                )
    return found


# ---------------------------------------------------------------------------- part 2: kill -9


@dataclass
class KillTry:
    served: float | None = None  # kill -> first 200
    requests: int = 0
    other: str = ""  # the HAProxy process not killed ("master" or "worker"), if any
    other_gone: float | None = None  # s from the kill to its exit (None: alive 5 s later)
    new_master: bool = False
    error: str | None = None


@dataclass
class KillKind:
    key: str
    title: str
    tries: list[KillTry] = field(default_factory=list)
    restarts: tuple[float, float] | None = None  # sidecar_haproxy_restarts_total before, after
    exits: tuple[float, float] | None = None


def first_served(daemon: d.DaemonProcess, backend: Backend, since: float) -> tuple[float, int]:
    """Return the seconds from `since` (perf_counter) to the first 200 with the backend's name
    (requests every KILL_POLL s), and how many requests it took."""
    deadline = time.monotonic() + KILL_LIMIT
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        if serves(daemon, backend, timeout=KILL_REQUEST_TIMEOUT):
            return time.perf_counter() - since, tries
        time.sleep(KILL_POLL)
    raise RuntimeError(f"not served again within {KILL_LIMIT:g} s ({tries} requests)")


def one_kill(daemon: d.DaemonProcess, backend: Backend, kind: str) -> KillTry:
    result = KillTry()
    pids = daemon.haproxy_pids()
    if pids is None:
        raise RuntimeError("HAProxy is not running")
    master, workers = pids
    in_hand(daemon, master)
    victims = {"group": [master, *workers], "worker": workers, "master": [master]}[kind]
    others = [p for p in [master, *workers] if p not in victims]
    killed = time.perf_counter()
    if kind == "group":
        os.killpg(master, signal.SIGKILL)
    else:
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    if seconds_until(lambda: not any(map(alive, victims)), limit=5.0, interval=0.001) is None:
        raise RuntimeError(f"{victims} still alive 5 s after SIGKILL")
    if others:
        result.other = "master" if master in others else "worker"
        if seconds_until(lambda: not any(map(alive, others)), limit=5.0, interval=0.001):
            result.other_gone = time.perf_counter() - killed
    result.served, result.requests = first_served(daemon, backend, killed)
    again = d.wait_for(daemon.haproxy_pids, what="HAProxy's master", limit=10, interval=0.05)
    result.new_master = again[0] != master
    # HAProxy serves a little before the daemon's start-up poll sees it and counts it.
    in_hand(daemon, again[0])
    return result


def in_hand(daemon: d.DaemonProcess, master: int) -> None:
    """Wait for the daemon's log to say it has started `master` (and counted it): one killed
    before that is a failed start to the daemon (retried after a backoff, not a restart)."""
    d.wait_for(
        lambda: (
            f"started: master {master}," in (text := daemon.log_path.read_text())
            or f"restarted: master {master}," in text
        ),
        what=f"the daemon's log line for HAProxy master {master} started",
        limit=10,
        interval=0.02,
    )


def run_kills(root: Path, backend: Backend, args: argparse.Namespace) -> list[KillKind]:
    kinds = [
        KillKind("group", "master's process group (master + worker)"),
        KillKind("worker", "worker only"),
        KillKind("master", "master only"),
    ]
    daemon = static_daemon(
        root,
        "kills",
        backend,
        {"HAPROXY_STOP_ON_EXIT": "true", "HAPROXY_HARD_STOP_AFTER": f"{HARD_STOP_AFTER:g}s"},
    )
    try:
        start_serving(daemon, backend)
        for kind in kinds:
            before = daemon.metrics()
            for index in range(args.kills):
                try:
                    result = one_kill(daemon, backend, kind.key)
                except Exception as exc:
                    result = KillTry(error=f"{type(exc).__name__}: {exc}")
                    print(f"  daemon log (last lines):\n{daemon.log_tail(12)}")
                    d.wait_for(
                        lambda: serves(daemon, backend),
                        what="web8080 served again",
                        limit=SERVE_LIMIT,
                        interval=0.1,
                    )
                kind.tries.append(result)
                print(
                    f"[kill -9] {kind.key:6} {index}: served again {_ms(result.served)} after "
                    f"({result.requests} requests); new master: {result.new_master}"
                    + (f"; the {result.other} exited after {_ms(result.other_gone)}")
                    * bool(result.other)
                    + (f"; FAILED: {result.error}" if result.error else ""),
                    flush=True,
                )
            after = daemon.metrics()
            for attr, key in (
                ("restarts", "sidecar_haproxy_restarts_total"),
                ("exits", "sidecar_haproxy_exits_total"),
            ):
                if key in before and key in after:
                    setattr(kind, attr, (before[key], after[key]))
    finally:
        daemon.kill()
    return kinds


# ---------------------------------------------------------------------------- part 3: Engine


@dataclass
class EngineFigures:
    skipped: str | None = None
    stopped: float | None = None  # SIGTERM -> dockerd gone
    answers: float | None = None  # dockerd started -> /_ping 200
    outage: float | None = None  # SIGTERM -> /_ping 200
    requests: int = 0
    failures: list[str] = field(default_factory=list)  # "+offset from SIGTERM, what"
    longest_gap: float = 0.0  # longest time between two 200s through HAProxy
    polls: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # from /api/services.json
    docker_lines: list[str] = field(default_factory=list)  # the daemon's, from the SIGTERM on
    first_alive: float | None = None  # before the restart: docker run returned -> ALIVE
    probe_run: float | None = None  # dockerd answers -> `docker run` of a second one returned
    probe_alive: float | None = None  # dockerd answers -> that second container ALIVE
    restarted: bool = False
    error: str | None = None


def engine_answers() -> bool:
    """Whether the Engine answers /_ping on its socket (a socket of our own, always closed)."""
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


def stop_engine() -> float:
    """SIGTERM dockerd and return the seconds until it is gone (SIGKILL after the limit)."""
    began = time.monotonic()
    pids = dockerd_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if seconds_until(lambda: not any(map(alive, pids)), limit=ENGINE_STOP_LIMIT, interval=0.01):
        return time.monotonic() - began
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    raise RuntimeError(f"dockerd {pids} ignored SIGTERM for {ENGINE_STOP_LIMIT:g} s: killed")


def start_engine() -> float:
    """Start dockerd as it was started, in a session of its own (it outlives this script);
    return the seconds until it answers."""
    began = time.monotonic()
    subprocess.run(
        ["sh", "-c", f'setsid dockerd --live-restore </dev/null >>"{DOCKERD_LOG}" 2>&1 &'],
        cwd="/",
        check=True,
        timeout=10,
    )
    waited = seconds_until(engine_answers, limit=ENGINE_START_LIMIT, interval=ENGINE_POLL)
    if waited is None:
        raise RuntimeError(f"dockerd did not answer within {ENGINE_START_LIMIT:g} s")
    return time.monotonic() - began


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def engine_restartable(client: Any) -> str | None:
    """Return why the Engine must not be restarted here, or None."""
    pids = dockerd_pids()
    if len(pids) != 1:
        return f"expected one local dockerd, found {pids}"
    if "--live-restore" not in cmdline(pids[0]):
        return f"dockerd {pids[0]} runs without --live-restore: its containers would stop"
    if not client.info().get("LiveRestoreEnabled"):
        return "the Engine does not report LiveRestoreEnabled"
    return None


def ensure_engine() -> None:
    """Start dockerd again unless one runs (then wait for it to answer): never leave this
    host without the Engine other runs use."""
    if dockerd_pids():
        if seconds_until(engine_answers, limit=ENGINE_START_LIMIT, interval=0.2) is None:
            print(f"[engine] dockerd runs but does not answer; see {DOCKERD_LOG}")
        return
    print("[engine] dockerd is not running: starting it again")
    try:
        start_engine()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"[engine] starting dockerd failed: {exc}; see {DOCKERD_LOG}")


class Poller:
    """Calls `probe()` every `interval` s in a thread; keeps (monotonic, wall, result)."""

    def __init__(self, probe: Callable[[], Any], interval: float) -> None:
        self.samples: list[tuple[float, float, Any]] = []
        self._probe, self._interval = probe, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.samples.append((began, time.time(), self._probe()))
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - began)))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run_engine(root: Path) -> EngineFigures:
    import docker

    figures = EngineFigures()
    client = docker.from_env()
    loopback = d.Loopback()
    daemon = d.DaemonProcess(
        root,
        "engine",
        loopback,
        {
            "SIDECAR_DISCOVERY": "docker",
            "SIDECAR_LOGGING_LEVEL": "debug",  # the Docker adapter's stream lost/reconnected
            "HAPROXY_BIND_IP": loopback.address(ports=[ENGINE_PORT, ENGINE_PORT + 1]),
        },
    )
    engine_down = False
    try:
        figures.skipped = engine_restartable(client)
        if figures.skipped:
            print(f"[engine] skipped: {figures.skipped}")
            return figures
        client.images.get(d.IMAGE)
        daemon.start()
        daemon.wait_up()
        short_id = run_labelled(client, ENGINE_PORT)
        ran = time.monotonic()
        if seconds_until(
            lambda: api_status(daemon, short_id) == "ALIVE", limit=SERVE_LIMIT, interval=0.01
        ):
            figures.first_alive = time.monotonic() - ran

        def served() -> str | None:
            """None when HAProxy served the container, else what it did."""
            try:
                status, body = get_text(daemon.bind_ip, ENGINE_PORT, timeout=0.5)
            except OSError as exc:
                return type(exc).__name__
            return None if (status, body.strip()) == (200, short_id) else f"HTTP {status}"

        d.wait_for(
            lambda: served() is None and api_status(daemon, short_id) == "ALIVE",
            what="the container ALIVE and served through HAProxy",
            limit=SERVE_LIMIT,
            interval=0.05,
        )
        print(f"[engine] container {short_id} served on {daemon.bind_ip}:{ENGINE_PORT}")
        log = LogFollower(daemon.log_path)
        with (
            Poller(served, ENGINE_POLL) as requests,
            Poller(lambda: api_status(daemon, short_id), ENGINE_POLL) as polls,
        ):
            time.sleep(0.5)
            began, began_wall = time.monotonic(), time.time()
            engine_down = True
            figures.stopped = stop_engine()
            print(f"[engine] dockerd stopped in {_ms(figures.stopped)}; starting it again")
            figures.answers = start_engine()
            answered = time.monotonic()
            engine_down = False
            figures.restarted = True
            figures.outage = answered - began
            print(f"[engine] dockerd answers {_ms(figures.answers)} after its start")
            # Is discovery following the Engine again? A second container, started at once.
            probe_id = run_labelled(client, ENGINE_PORT + 1)
            figures.probe_run = time.monotonic() - answered
            if seconds_until(
                lambda: api_status(daemon, probe_id) == "ALIVE", limit=60.0, interval=0.01
            ):
                figures.probe_alive = time.monotonic() - answered
            else:
                figures.error = "a container started after the restart was not ALIVE within 60 s"
            time.sleep(3.0)
        for line in log.read().splitlines():
            if any(x in line for x in ("Docker Engine", "Docker event stream")):
                at = d.log_time(line)
                offset = "?" if at is None else f"+{(at - began_wall) * 1000:.0f} ms"
                figures.docker_lines.append(f"{offset}: {line.split(': ', 1)[-1][:90]}")
        window = [s for s in requests.samples if s[0] >= began]
        figures.requests = len(window)
        figures.failures = [f"+{(s[0] - began) * 1000:.0f} ms {s[2]}" for s in window if s[2]]
        ok_times = [s[0] for s in requests.samples if s[2] is None]
        figures.longest_gap = max((b - a for a, b in itertools.pairwise(ok_times)), default=0.0)
        seen = [s for s in polls.samples if s[0] >= began]
        figures.polls = len(seen)
        for sample in seen:
            figures.statuses[sample[2]] = figures.statuses.get(sample[2], 0) + 1
    except Exception as exc:
        figures.error = f"{type(exc).__name__}: {exc}"
        print(f"[engine] FAILED: {figures.error}\n  daemon log (last lines):\n{daemon.log_tail()}")
    finally:
        if engine_down:
            ensure_engine()
        daemon.kill()
        client.close()
        with contextlib.closing(docker.from_env()) as fresh:  # the old one's pool is stale
            d.remove_containers(fresh)
    return figures


def run_labelled(client: Any, service_port: int) -> str:
    """Start a labelled busybox container serving its hostname; return its short ID."""
    container = client.containers.run(
        d.IMAGE,
        SERVES_ITS_NAME,
        detach=True,
        publish_all_ports=True,
        labels={
            "ServiceName": f"faults-{d.RUN_ID}-{service_port}",
            "ServicePort_80": str(service_port),
            "sidecar-bench": "faults",
            "sidecar-bench-run": d.RUN_ID,
        },
    )
    return str(container.id[:12])


def api_status(daemon: d.DaemonProcess, short_id: str) -> str:
    """Return the status of record `short_id` in the daemon's /api/services.json."""
    try:
        document = json.loads(daemon.get("/api/services.json", timeout=2.0).body)
    except (OSError, ValueError, RuntimeError) as exc:
        return f"no answer ({type(exc).__name__})"
    for records in (document.get("Services") or {}).values():
        for record in records:
            if record.get("ID") == short_id:
                return STATUS_NAMES.get(record.get("Status"), str(record.get("Status")))
    return "missing"


# ---------------------------------------------------------------------------- report


def others_text(tries: Sequence[KillTry]) -> str:
    """Return what became of the HAProxy process that was not killed."""
    with_other = [t for t in tries if t.other]
    if not with_other:
        return "-"
    gone = [t.other_gone for t in with_other if t.other_gone is not None]
    text = f"the {with_other[0].other} exited by itself in {len(gone)}/{len(with_other)}"
    if gone:
        text += f", {min(gone) * 1000:.0f}-{max(gone) * 1000:.0f} ms after the kill"
    return text


def report(
    stops: list[Situation], kills: list[KillKind], engine: EngineFigures | None, took: float
) -> bool:
    """Print the figures as Markdown tables; return whether everything was as expected."""
    good = True
    if stops:
        print()
        print(
            f"SIGTERM -> exit, both cores loaded ({len(stops[0].tries)} tries each, a fresh "
            "daemon per try)"
        )
        print()
        print(
            "| situation | exited | max | p50 | min | <= 1 s | exit codes | HAProxy | "
            "expected of HAProxy |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for s in stops:
            times = [t.seconds for t in s.tries if t.seconds is not None]
            within = sum(1 for x in times if x < STOP_BOUND)
            codes = sorted({str(t.code) for t in s.tries})
            expected = sum(t.expected for t in s.tries)
            failed = sum(1 for t in s.tries if t.error)
            good &= within == len(s.tries) and expected == len(s.tries) and not failed
            print(
                f"| {s.title} | {len(times)}/{len(s.tries)} | "
                + (
                    f"{max(times):.3f} s | {statistics.median(times):.3f} s | {min(times):.3f} s"
                    if times
                    else "- | - | -"
                )
                + f" | {within}/{len(s.tries)} | {', '.join(codes)} | "
                f"{expected}/{len(s.tries)} as expected | {s.expectation} |"
            )
        print()
        for s in stops:
            gone = [t.haproxy_gone for t in s.tries if t.haproxy_gone is not None]
            if gone:
                print(f"- {s.title}: master gone after SIGTERM, max / p50 / min {_spread(gone)}")
            reloaded = [t.reloaded for t in s.tries if t.reloaded is not None]
            if reloaded:
                print(
                    f"- {s.title}: the reload was logged done before the exit in "
                    f"{sum(reloaded)} of {len(reloaded)} tries (the others: SIGTERM mid-reload)"
                )
            for index, t in enumerate(s.tries):
                if t.error:
                    print(f"- {s.title} try {index}: FAILED: {t.error}")
    if kills:
        print()
        print("kill -9 of HAProxy -> first 200 through the frontend (polled every 10 ms)")
        print()
        print(
            "| killed | served again | max | p50 | min | new master | restarts_total | "
            "exits_total | the rest of HAProxy |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for k in kills:
            times = [t.served for t in k.tries if t.served is not None]
            failed = sum(1 for t in k.tries if t.error)
            good &= not failed and len(times) == len(k.tries)
            restarts, exits = _counter(k.restarts), _counter(k.exits)
            survivors = others_text(k.tries)
            print(
                f"| {k.title} | {len(times)}/{len(k.tries)} | "
                + (
                    f"{max(times) * 1000:.0f} ms | {statistics.median(times) * 1000:.0f} ms | "
                    f"{min(times) * 1000:.0f} ms"
                    if times
                    else "- | - | -"
                )
                + f" | {sum(t.new_master for t in k.tries)}/{len(k.tries)} | {restarts} | "
                f"{exits} | {survivors} |"
            )
        for k in kills:
            for index, attempt in enumerate(k.tries):
                if attempt.error:
                    print(f"- {k.title} try {index}: FAILED: {attempt.error}")
    if engine is not None:
        print()
        print("Docker Engine restart (dockerd --live-restore, SIGTERM then started again)")
        print()
        if engine.skipped:
            print(f"skipped: {engine.skipped}")
        else:
            no_tombstone = "TOMBSTONE" not in engine.statuses
            good &= engine.error is None and not engine.failures and no_tombstone
            good &= engine.restarted
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(engine.statuses.items()))
            failures = f" ({'; '.join(engine.failures)})" if engine.failures else ""
            print("| figure | measured |")
            print("|---|---|")
            for what, value in (
                ("SIGTERM -> dockerd exited", _ms(engine.stopped)),
                ("dockerd started -> answers /_ping", _ms(engine.answers)),
                ("Engine out (SIGTERM -> answers)", _ms(engine.outage)),
                (
                    "requests through HAProxy from the SIGTERM on (every 50 ms), failed",
                    f"{len(engine.failures)} of {engine.requests}{failures}",
                ),
                ("longest time between two 200s through HAProxy", _ms(engine.longest_gap)),
                (
                    "/api/services.json polls from the SIGTERM on (every 50 ms): its status",
                    f"{statuses} (of {engine.polls})",
                ),
                ("TOMBSTONE seen", "no" if no_tombstone else "YES"),
                (
                    "before the restart: `docker run` returned -> ALIVE in /api/services.json",
                    _ms(engine.first_alive),
                ),
                (
                    "Engine answers -> a second container started: `docker run` returned",
                    _ms(engine.probe_run),
                ),
                (
                    "Engine answers -> that container ALIVE in /api/services.json",
                    _ms(engine.probe_alive),
                ),
            ):
                print(f"| {what} | {value} |")
            print()
            print("The daemon's log about Docker, from the SIGTERM to dockerd on:")
            for line in engine.docker_lines or ["(nothing)"]:
                print(f"- {line}")
            if engine.error:
                print(f"- FAILED: {engine.error}")
    print()
    print(
        f"run {d.RUN_ID}: {took:.0f} s in all; "
        + ("all as expected" if good else "NOT ALL AS EXPECTED")
    )
    return good


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20, help="SIGTERMs per situation (20)")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 per kind (5)")
    parser.add_argument(
        "--engine", action="store_true", help="also restart this host's Docker Engine, once"
    )
    args = parser.parse_args()
    if not 0 <= args.tries <= 100 or not 0 <= args.kills <= 50:
        parser.error("--tries must be 0..100 and --kills 0..50")
    for tool in ("haproxy", "busybox") + (("dockerd",) if args.engine else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-faults-"))
    began = time.monotonic()
    stops: list[Situation] = []
    kills: list[KillKind] = []
    engine: EngineFigures | None = None
    backend: Backend | None = None
    try:
        with sigterm_as_interrupt():
            backend = Backend(root, d.Loopback())
            print(f"[setup] backend {backend.ip}:{backend.port}; files in {root}")
            if args.tries:
                stops = run_stops(root, backend, args)
            if args.kills:
                kills = run_kills(root, backend, args)
            if args.engine:
                engine = run_engine(root)
            good = report(stops, kills, engine, time.monotonic() - began)
    except KeyboardInterrupt:
        print("interrupted; stopping everything it started", flush=True)
        raise SystemExit(130) from None
    finally:
        if backend is not None:
            backend.stop()
        kill_pids(pids_mentioning(str(root)))
        shutil.rmtree(root, ignore_errors=True)
    if not good:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
