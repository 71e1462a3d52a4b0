"""Benchmark: a real `sidecar run` process — its memory and CPU at idle, its memory with
1,000 services, and the end-to-end latency from `docker run` to HAProxy serving the container.

    .venv/bin/python bench/daemon.py [--containers 20] [--idle 20] [--services 1000]

Needs a running Docker Engine, the local image `sidecar-test-busybox:latest`
(`bash scripts/build-test-image.sh`) and HAProxy. The daemon is started as the tests start
it (`tests/integration/test_daemon.py`): `[sys.executable, "-m", "sidecar", "run"]` from the
repository, an environment built from scratch (every variable the daemon reads removed from
ours, then set), its API and HAProxy's frontends on fresh 127.0.0.x addresses, HAProxy's
files in a temporary directory, free stats ports, `HAPROXY_STOP_ON_EXIT=true`, and an empty
`SIDECAR_CONFIG_FILE` so no `sidecar.toml` is read. Two daemons, one after the other:

1. **Docker discovery, managed HAProxy, no service.** Once `/healthz` answers 200 and
   HAProxy runs, and 5 s later: the daemon's VmRSS (`/proc/PID/status`; the daemon only,
   HAProxy's master and worker shown apart). Then IDLE seconds without any change: the
   daemon's CPU time (utime + stime, `/proc/PID/stat`) as a % of one core.
   Then, one container at a time (N, `--containers`): `docker run -d -P` of the busybox
   image with a unique `ServiceName` and `ServicePort_80` (the default HttpGet check on
   `/version`, the default check interval), and the time from `docker run` returning (the
   container started) to the first HTTP 200 from HAProxy on `http://BIND_IP:PORT/` (polled
   every 10 ms, at most 30 s); also from `docker run` called, and, from the daemon's log,
   when it marked the service ALIVE. Each container is removed (force) and the frontend
   waited out before the next. Then SIGTERM: the exit code and how long it took.
2. **Static discovery of SERVICES targets** (`--services`), with Docker discovery on as on a
   real host (it adds any labelled container running then; the first phase removed its own):
   `svc-0000`..., service ports 20000 + i, check `AlwaysSuccessful` (nothing is probed),
   servers on 127.0.0.1 at made-up ports that nothing ever contacts (no request is sent to
   these frontends). Once the API lists all of them ALIVE, the config file has all their
   frontends and the running worker has all their backends (`@1 show backend` on the master
   socket), and 5 s later: VmRSS, then CPU over IDLE seconds, then SIGTERM.

Targets (issue 5): VmRSS <= 64 MiB idle and with 1,000 services; CPU <= 1 % of a core at
idle; p50 <= 0.5 s from the container's start to the first 200 through HAProxy.

Traffic goes to loopback only: the daemon's API, HAProxy's frontends on the bind IP, and the
containers' published ports (the daemon's checks). Everything is bounded in count and time;
the daemons, their HAProxy (through its pid file, and any process naming the temporary
directory) and the containers carrying this run's label are stopped or removed on the way
out, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
from procs import alive, kill_pids, pids_mentioning, sigterm_as_interrupt
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import ENV_VARS

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
IMAGE = "sidecar-test-busybox:latest"
RUN_ID = uuid.uuid4().hex[:8]
LABELS = {"sidecar-bench": "daemon", "sidecar-bench-run": RUN_ID}
MIB = 1024 * 1024
RSS_TARGET_MIB = 64.0
CPU_TARGET = 1.0  # % of one core
LATENCY_TARGET = 0.5  # s, p50

SETTLE = 5.0  # s between "up" and the memory reading
START_LIMIT = 30.0  # s for /healthz and for HAProxy to run
SERVE_LIMIT = 30.0  # s for one container to be served
GONE_LIMIT = 15.0  # s for a removed container's frontend to go
STOP_LIMIT = 10.0  # s for the daemon to exit after SIGTERM
API_LIMIT = 30.0  # s for one API request while measuring (a busy daemon answers late)
POLL = 0.01  # s between requests while waiting for the first 200
LATENCY_PORT_BASE = 18000
STATIC_PORT_BASE = 20000
STATIC_SERVER_PORT_BASE = 40000
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


# ---------------------------------------------------------------------------- loopback


def _loopback_only(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"this benchmark only sends traffic to loopback, not to {host}")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Loopback:
    """Hands out 127.0.0.x addresses (never 127.0.0.1) not given before in this run, on which
    the ports asked for are free now; and free ports (the kernel's pick)."""

    def __init__(self) -> None:
        self._given: set[str] = set()
        self._ports: set[int] = set()
        self._rng = random.Random()

    def address(self, ports: Sequence[int] = ()) -> str:
        candidates = [f"127.0.0.{x}" for x in range(2, 255)]
        self._rng.shuffle(candidates)
        for ip in candidates:
            if ip not in self._given and all(port_free(ip, p) for p in ports):
                self._given.add(ip)
                return ip
        raise RuntimeError(f"no free 127.0.0.x address with {len(ports)} ports free")

    def port(self) -> int:
        """A TCP port free on all interfaces (HAProxy's stats frontends bind 0.0.0.0)."""
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("0.0.0.0", 0))
                port = int(sock.getsockname()[1])
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise RuntimeError("no free port")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


def http_get(host: str, port: int, path: str, *, timeout: float = 5.0) -> Reply:
    """One GET to a loopback address (any other is refused); no proxy is ever used."""
    _loopback_only(host)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return Reply(answer.status, answer.read())
    finally:
        conn.close()


def wait_for(probe: Callable[[], T | None], *, what: str, limit: float, interval: float) -> T:
    """Return the first truthy `probe()`; RuntimeError after `limit` s (OSError = not yet)."""
    deadline = time.monotonic() + limit
    last: object = None
    for _ in range(int(limit / interval) + 2):
        try:
            value = probe()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() + interval > deadline:
            break
        time.sleep(interval)
    raise RuntimeError(f"gave up after {limit:g} s waiting for {what}; last: {last!r:.300}")


# ---------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    """Return /proc/PID/stat from field 3 (state) on (the name may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Return /proc/PID/status's VmRSS (or another field given in kB) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """Return (utime + stime, cutime + cstime) of `pid` in seconds."""
    fields = _stat_fields(pid)
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return own / TICKS, children / TICKS


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def master_cli(path: Path, command: str, *, limit: float = 5.0) -> str:
    """Return HAProxy's master CLI answer to one command."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(limit)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # the master answers once our side is closed
        chunks = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


# ---------------------------------------------------------------------------- the daemon


@dataclass
class CpuWindow:
    seconds: float  # wall clock
    daemon: float  # daemon utime + stime, s
    children: float  # waited-for children's (haproxy -c ...), s
    haproxy: float  # master + workers, s (processes alive at both ends)
    state_changes: float | None = None
    applies: float | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.daemon / self.seconds

    @property
    def haproxy_percent(self) -> float:
        return 100.0 * self.haproxy / self.seconds


@dataclass
class Memory:
    daemon: int  # VmRSS
    peak: int  # VmHWM: the most it was resident so far
    master: int
    workers: tuple[int, ...]
    services: int | None  # own services the daemon reported (/healthz), read after
    api_seconds: float | None  # how long that /healthz took to answer


class DaemonProcess:
    """One `sidecar run` with its own environment, files and addresses."""

    def __init__(self, root: Path, name: str, loopback: Loopback, settings: dict[str, str]):
        self.dir = root / name
        self.dir.mkdir()
        self.name = name
        self.api_ip = loopback.address(ports=[7777])
        (self.dir / "sidecar.toml").write_text("")  # so no sidecar.toml of the cwd is read
        read = set(ENV_VARS)
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in read and not k.startswith(("SIDECAR_", "HAPROXY_"))
            },
            "SIDECAR_CONFIG_FILE": str(self.dir / "sidecar.toml"),
            "SIDECAR_HTTP_ADDRESS": f"{self.api_ip}:7777",
            "SIDECAR_HOSTNAME": f"bench-{RUN_ID}-{name}",
            "SIDECAR_ADVERTISE_IP": "127.0.0.1",
            "HAPROXY_CONFIG_FILE": str(self.dir / "haproxy.cfg"),
            "HAPROXY_PID_FILE": str(self.dir / "haproxy.pid"),
            "HAPROXY_MASTER_SOCKET": str(self.dir / "master.sock"),
            "HAPROXY_ADMIN_SOCKET": str(self.dir / "admin.sock"),
            "HAPROXY_STATS_PORT": str(loopback.port()),
            "HAPROXY_STATS_BACKEND_PORT": str(loopback.port()),
            "HAPROXY_STOP_ON_EXIT": "true",
            **settings,
        }
        self.bind_ip = self.env["HAPROXY_BIND_IP"]
        self.log_path = self.dir / "sidecar.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.exit_code: int | None = None
        self.exit_seconds: float | None = None
        self.master: int | None = None

    # -------------------------------------------------------------- running

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, *, timeout: float = 5.0) -> Reply:
        if not self.running():
            raise RuntimeError(f"the daemon exited (code {self.proc and self.proc.returncode})")
        return http_get(self.api_ip, 7777, path, timeout=timeout)

    def wait_up(self) -> float:
        """Wait for /healthz 200 and HAProxy's master with a worker; return the seconds from
        the start to /healthz answering 200."""
        wait_for(
            lambda: self.get("/healthz").status == 200,
            what="/healthz 200",
            limit=START_LIMIT,
            interval=0.05,
        )
        healthy = time.monotonic() - self.started_at
        wait_for(self.haproxy_pids, what="HAProxy's master and a worker", limit=15, interval=0.1)
        return healthy

    def haproxy_pids(self) -> tuple[int, list[int]] | None:
        """Return (master, workers) of this daemon's HAProxy, or None when it is not up."""
        if not self.running():
            raise RuntimeError("the daemon exited")
        try:
            master = int((self.dir / "haproxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not alive(master) or str(self.dir) not in _cmdline(master):
            return None
        workers = [p for p in children_of(master) if str(self.dir) in _cmdline(p) and alive(p)]
        if not workers:
            return None
        self.master = master
        return master, workers

    def own_services(self) -> tuple[int | None, float | None]:
        """Return the own services /healthz reports, and how long it took to answer."""
        began = time.monotonic()
        try:
            reply = self.get("/healthz", timeout=API_LIMIT)
        except OSError:
            return None, None
        return int(json.loads(reply.body)["services"]), time.monotonic() - began

    def memory(self) -> Memory:
        pids = self.haproxy_pids()
        if pids is None:
            raise RuntimeError("HAProxy is not running")
        master, workers = pids
        daemon, peak = rss_bytes(self.pid), rss_bytes(self.pid, "VmHWM")
        services, seconds = self.own_services()
        return Memory(
            daemon=daemon,
            peak=peak,
            master=rss_bytes(master),
            workers=tuple(rss_bytes(w) for w in workers),
            services=services,
            api_seconds=seconds,
        )

    def metrics(self) -> dict[str, float]:
        """Return the unlabelled samples of /metrics (empty when it does not answer)."""
        try:
            text = self.get("/metrics", timeout=API_LIMIT).body.decode()
        except OSError:
            return {}
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.labels:
                    found[sample.name] = sample.value
        return found

    def idle_cpu(self, seconds: float) -> CpuWindow:
        """Return the daemon's (and its HAProxy's) CPU over `seconds` of doing nothing to it."""
        before = self.metrics()
        pids = self.haproxy_pids()
        haproxy = [pids[0], *pids[1]] if pids else []
        t0 = time.monotonic()
        own0, kids0 = cpu_seconds(self.pid)
        hap0 = {p: cpu_seconds(p)[0] for p in haproxy}
        time.sleep(seconds)
        own1, kids1 = cpu_seconds(self.pid)
        hap1 = {}
        for p in haproxy:
            with contextlib.suppress(OSError, IndexError):
                hap1[p] = cpu_seconds(p)[0]
        t1 = time.monotonic()
        after = self.metrics()
        window = CpuWindow(
            seconds=t1 - t0,
            daemon=own1 - own0,
            children=kids1 - kids0,
            haproxy=sum(hap1[p] - hap0[p] for p in hap1),
        )
        key = "sidecar_state_changes_total"
        if key in before and key in after:
            window.state_changes = after[key] - before[key]
        key = "sidecar_haproxy_applies_total"
        if key in before and key in after:
            window.applies = after[key] - before[key]
        return window

    def stop(self) -> None:
        """SIGTERM; record the exit code and the time it took (SIGKILL after STOP_LIMIT)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=STOP_LIMIT)
            self.exit_seconds = time.monotonic() - began
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.exit_code = None  # did not exit by itself

    def haproxy_left(self) -> list[int]:
        """Return this daemon's HAProxy processes still alive (after a grace period)."""
        deadline = time.monotonic() + 5.0
        while True:
            left = pids_mentioning(str(self.dir))
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def kill(self) -> None:
        """Stop whatever of this daemon still runs: the daemon, then its HAProxy."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_LIMIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        leftovers = set(pids_mentioning(str(self.dir)))
        if (
            self.master is not None
            and alive(self.master)
            and str(self.dir) in _cmdline(self.master)
        ):
            leftovers.add(self.master)
        kill_pids(sorted(leftovers))

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, count: int = 25) -> str:
        return "\n".join(f"    | {line}" for line in self.log_lines()[-count:])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def log_time(line: str) -> float | None:
    """Return the wall-clock time of a daemon log line (text format, local time, ms)."""
    found = LOG_TIME.match(line)
    if found is None:
        return None
    return time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")) + (
        int(found.group(2)) / 1000
    )


# ---------------------------------------------------------------------------- part 1: docker


@dataclass
class Sample:
    from_start: float  # docker run returned -> first 200
    from_call: float  # docker run called -> first 200
    to_alive: float | None  # docker run returned -> the daemon's "-> ALIVE" log line
    unserved: float | None  # remove called -> 503 or refused
    gone: float | None  # remove called -> connection refused (the frontend removed)


@dataclass
class DockerFigures:
    up: float = 0.0
    idle: Memory | None = None
    cpu: CpuWindow | None = None
    after_idle: int | None = None
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    after_containers: int | None = None
    exit_code: int | None = None
    exit_seconds: float | None = None
    haproxy_left: list[int] = field(default_factory=list)
    error: str | None = None


def first_200(ip: str, port: int, limit: float) -> tuple[float, int]:
    """Return when (perf_counter) `http://ip:port/` first answers 200, polled every POLL s,
    and how many requests that took. RuntimeError after `limit` s."""
    deadline = time.monotonic() + limit
    tries = 0
    last = ""
    while time.monotonic() < deadline:
        tries += 1
        try:
            reply = http_get(ip, port, "/", timeout=1.0)
        except OSError as exc:
            last = type(exc).__name__
        else:
            if reply.status == 200:
                return time.perf_counter(), tries
            last = f"HTTP {reply.status}"
        time.sleep(POLL)
    raise RuntimeError(f"not served within {limit:g} s ({tries} requests, last: {last})")


def not_served(ip: str, port: int) -> bool:
    try:
        return http_get(ip, port, "/", timeout=1.0).status == 503
    except ConnectionRefusedError:
        return True


def refused(ip: str, port: int) -> bool:
    try:
        http_get(ip, port, "/", timeout=1.0)
    except ConnectionRefusedError:
        return True
    return False


def wait_seconds(probe: Callable[[], bool], *, since: float) -> float | None:
    """Return the seconds from `since` until `probe()` is true (None: not in GONE_LIMIT)."""
    try:
        wait_for(probe, what="a removed container to go", limit=GONE_LIMIT, interval=POLL)
    except RuntimeError:
        return None
    return time.perf_counter() - since


def alive_logged(daemon: DaemonProcess, service_id: str) -> float | None:
    """Return the wall-clock time the daemon logged `service_id` turning ALIVE."""
    for line in daemon.log_lines():
        if f"({service_id})" in line and line.rstrip().lower().endswith("-> alive"):
            return log_time(line)
    return None


def run_docker(root: Path, loopback: Loopback, args: argparse.Namespace) -> DockerFigures:
    figures = DockerFigures()
    ports = [LATENCY_PORT_BASE + i for i in range(args.containers)]
    daemon = DaemonProcess(
        root,
        "docker",
        loopback,
        {
            "SIDECAR_DISCOVERY": "docker",
            "HAPROXY_BIND_IP": loopback.address(ports=ports),
        },
    )
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
        print(
            f"[docker] daemon: API {daemon.api_ip}:7777, HAProxy bind IP {daemon.bind_ip}, "
            f"files in {daemon.dir}"
        )
        daemon.start()
        figures.up = daemon.wait_up()
        print(f"[docker] /healthz 200 after {figures.up:.2f} s; HAProxy running; settling")
        time.sleep(SETTLE)
        figures.idle = daemon.memory()
        print(f"[docker] VmRSS {figures.idle.daemon / MIB:.1f} MiB; idle CPU over {args.idle:g} s")
        figures.cpu = daemon.idle_cpu(args.idle)
        figures.after_idle = rss_bytes(daemon.pid)
        print(f"[docker] CPU {figures.cpu.percent:.2f} % of a core; {args.containers} containers")
        for index, port in enumerate(ports):
            try:
                figures.samples.append(measure_one(client, daemon, index, port))
            except RuntimeError as exc:
                figures.failures.append(f"container {index}: {exc}")
                print(f"[docker]   container {index}: FAILED: {exc}")
                if len(figures.failures) == 1:
                    print(f"  daemon log (last lines):\n{daemon.log_tail()}")
        figures.after_containers = rss_bytes(daemon.pid)
        daemon.stop()
        figures.exit_code, figures.exit_seconds = daemon.exit_code, daemon.exit_seconds
        figures.haproxy_left = daemon.haproxy_left()
        print(
            f"[docker] SIGTERM: exit code {figures.exit_code} after "
            f"{_s(figures.exit_seconds)}; HAProxy processes left: {figures.haproxy_left or 'none'}"
        )
    except Exception as exc:
        figures.error = f"{type(exc).__name__}: {exc}"
        print(f"[docker] FAILED: {figures.error}\n  daemon log (last lines):\n{daemon.log_tail()}")
    finally:
        daemon.kill()
        remove_containers(client)
        client.close()
    return figures


def measure_one(client: Any, daemon: DaemonProcess, index: int, port: int) -> Sample:
    name = f"bench-{RUN_ID}-{index:03d}"
    called = time.perf_counter()
    container = client.containers.run(
        IMAGE,
        detach=True,
        publish_all_ports=True,
        labels={"ServiceName": name, "ServicePort_80": str(port), **LABELS},
    )
    started = time.perf_counter()
    started_wall = time.time()
    try:
        served, tries = first_200(daemon.bind_ip, port, SERVE_LIMIT)
    finally:
        removing = time.perf_counter()
        container.remove(force=True)
    unserved = wait_seconds(lambda: not_served(daemon.bind_ip, port), since=removing)
    gone = wait_seconds(lambda: refused(daemon.bind_ip, port), since=removing)
    logged = alive_logged(daemon, container.id[:12])
    sample = Sample(
        from_start=served - started,
        from_call=served - called,
        to_alive=None if logged is None else logged - started_wall,
        unserved=unserved,
        gone=gone,
    )
    alive_text = "?" if sample.to_alive is None else f"{sample.to_alive * 1000:.0f} ms"
    print(
        f"[docker]   {index:3d} {name} :{port}  200 after {sample.from_start * 1000:4.0f} ms "
        f"(run called: {sample.from_call * 1000:4.0f} ms; ALIVE logged {alive_text}; "
        f"{tries} requests); after remove: 503 {_s(unserved)}, frontend gone {_s(gone)}"
    )
    return sample


def remove_containers(client: Any) -> None:
    with contextlib.suppress(Exception):
        for container in client.containers.list(
            all=True, filters={"label": f"sidecar-bench-run={RUN_ID}"}
        ):
            with contextlib.suppress(Exception):
                container.remove(force=True)


# ---------------------------------------------------------------------------- part 2: static


@dataclass
class StaticFigures:
    services: int
    up: float = 0.0
    served: float | None = None  # start -> all ALIVE, in the file and in the worker
    memory: Memory | None = None
    cpu: CpuWindow | None = None
    after_idle: int | None = None
    config_bytes: int = 0
    exit_code: int | None = None
    exit_seconds: float | None = None
    haproxy_left: list[int] = field(default_factory=list)
    error: str | None = None


def static_targets(count: int) -> list[dict[str, Any]]:
    return [
        {
            "Service": {
                "Name": f"svc-{i:04d}",
                "Image": "bench/static:1",
                "Ports": [
                    {
                        "Type": "tcp",
                        "Port": STATIC_SERVER_PORT_BASE + i % 20000,
                        "ServicePort": STATIC_PORT_BASE + i,
                        "IP": "127.0.0.1",
                    }
                ],
                "ProxyMode": "http",
            },
            "Check": {"Type": "AlwaysSuccessful", "Args": ""},
        }
        for i in range(count)
    ]


def all_served(daemon: DaemonProcess, count: int) -> bool:
    """Whether the API lists `count` own svc-* services ALIVE, the config file has their
    frontends, and HAProxy's current worker has their backends."""
    document = json.loads(daemon.get("/api/services.json", timeout=10.0).body)
    hostname = daemon.env["SIDECAR_HOSTNAME"]
    up = sum(
        1
        for name, records in (document.get("Services") or {}).items()
        if name.startswith("svc-")
        for record in records
        if record["Hostname"] == hostname and record["Status"] == 0
    )
    if up < count:
        return False
    config = (daemon.dir / "haproxy.cfg").read_text()
    if len(re.findall(r"^frontend svc-", config, re.MULTILINE)) < count:
        return False
    backends = master_cli(daemon.dir / "master.sock", "@1 show backend").splitlines()
    return sum(1 for line in backends if line.startswith("svc-")) >= count


def run_static(root: Path, loopback: Loopback, args: argparse.Namespace) -> StaticFigures:
    figures = StaticFigures(args.services)
    ports = [STATIC_PORT_BASE + i for i in range(args.services)]
    static = root / "static.json"
    static.write_text(json.dumps(static_targets(args.services), indent=1))
    daemon = DaemonProcess(
        root,
        "static",
        loopback,
        {
            # Docker discovery too, as on a real host: its SDK is a sixth of the memory.
            "SIDECAR_DISCOVERY": "docker,static",
            "STATIC_CONFIG_FILE": str(static),
            "HAPROXY_BIND_IP": loopback.address(ports=ports),
        },
    )
    try:
        print(
            f"[static] daemon: {args.services} targets, API {daemon.api_ip}:7777, HAProxy bind "
            f"IP {daemon.bind_ip} ports {ports[0]}-{ports[-1]}, files in {daemon.dir}"
        )
        daemon.start()
        figures.up = daemon.wait_up()
        wait_for(
            lambda: all_served(daemon, args.services),
            what=f"{args.services} services ALIVE and in HAProxy",
            limit=60.0 + 0.05 * args.services,
            interval=0.5,
        )
        figures.served = time.monotonic() - daemon.started_at
        figures.config_bytes = (daemon.dir / "haproxy.cfg").stat().st_size
        print(
            f"[static] /healthz 200 after {figures.up:.2f} s; all {args.services} ALIVE and in "
            f"HAProxy {figures.served:.1f} s after the start; settling"
        )
        time.sleep(SETTLE)
        figures.memory = daemon.memory()
        print(
            f"[static] VmRSS {figures.memory.daemon / MIB:.1f} MiB; idle CPU over {args.idle:g} s"
        )
        figures.cpu = daemon.idle_cpu(args.idle)
        figures.after_idle = rss_bytes(daemon.pid)
        print(f"[static] CPU {figures.cpu.percent:.2f} % of a core")
        daemon.stop()
        figures.exit_code, figures.exit_seconds = daemon.exit_code, daemon.exit_seconds
        figures.haproxy_left = daemon.haproxy_left()
        print(
            f"[static] SIGTERM: exit code {figures.exit_code} after "
            f"{_s(figures.exit_seconds)}; HAProxy processes left: {figures.haproxy_left or 'none'}"
        )
    except Exception as exc:
        figures.error = f"{type(exc).__name__}: {exc}"
        print(f"[static] FAILED: {figures.error}\n  daemon log (last lines):\n{daemon.log_tail()}")
    finally:
        daemon.kill()
    return figures


# ---------------------------------------------------------------------------- report


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f} MiB"


def _pct(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "-"}[ok]


def report(d: DockerFigures, s: StaticFigures, args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, value: str, target: str = "-", ok: bool | None = None) -> None:
        rows.append((what, value, target, _verdict(ok) if target != "-" else "-"))

    if d.idle is not None:
        mib = d.idle.daemon / MIB
        row("VmRSS idle (Docker, managed HAProxy)", _mib(d.idle.daemon), "<= 64 MiB", mib <= 64)
    else:
        row("VmRSS idle (Docker, managed HAProxy)", "failed", "<= 64 MiB", False)
    if d.cpu is not None:
        row(
            f"CPU idle over {d.cpu.seconds:.0f} s",
            f"{d.cpu.percent:.2f} %",
            "<= 1 % of a core",
            d.cpu.percent <= CPU_TARGET,
        )
    else:
        row("CPU idle", "failed", "<= 1 % of a core", False)
    if s.memory is not None:
        mib = s.memory.daemon / MIB
        row(
            f"VmRSS with {s.services:,} services (static)",
            _mib(s.memory.daemon),
            "<= 64 MiB",
            mib <= 64,
        )
    else:
        row(f"VmRSS with {s.services:,} services (static)", "failed", "<= 64 MiB", False)
    if s.served is not None:
        row(f"start -> {s.services:,} services ALIVE and in HAProxy", _s(s.served))
    if s.cpu is not None:
        row(
            f"CPU idle with {s.services:,} services, {s.cpu.seconds:.0f} s",
            f"{s.cpu.percent:.2f} %",
        )
    if d.samples:
        starts = [x.from_start for x in d.samples]
        calls = [x.from_call for x in d.samples]
        p50 = statistics.median(starts)
        row(
            f"start -> first 200 via HAProxy, p50 (n={len(starts)})",
            f"{p50 * 1000:.0f} ms",
            "<= 500 ms",
            p50 <= LATENCY_TARGET and not d.failures,
        )
        row("  p99 / max", f"{_pct(starts, 0.99) * 1000:.0f} / {max(starts) * 1000:.0f} ms")
        row(
            "docker run called -> first 200, p50 / p99 / max",
            f"{statistics.median(calls) * 1000:.0f} / {_pct(calls, 0.99) * 1000:.0f} / "
            f"{max(calls) * 1000:.0f} ms",
        )
        alive_at = [x.to_alive for x in d.samples if x.to_alive is not None]
        if alive_at:
            row(
                "  of which start -> ALIVE logged, p50 / max",
                f"{statistics.median(alive_at) * 1000:.0f} / {max(alive_at) * 1000:.0f} ms",
            )
        for what, values in (
            ("remove called -> 503 (no server), p50 / max", [x.unserved for x in d.samples]),
            ("remove called -> frontend gone, p50 / max", [x.gone for x in d.samples]),
        ):
            known = [v for v in values if v is not None]
            if known:
                row(
                    what + ("" if len(known) == len(values) else f" ({len(known)} seen)"),
                    f"{statistics.median(known) * 1000:.0f} / {max(known) * 1000:.0f} ms",
                )
    else:
        row("start -> first 200 via HAProxy, p50", "failed", "<= 500 ms", False)
    if d.failures:
        row("containers never served", f"{len(d.failures)} of {args.containers}", "0", False)
    for label, f in (("Docker", d), ("static", s)):
        if f.exit_code is not None or f.exit_seconds is not None:
            row(
                f"SIGTERM -> exit ({label} daemon)",
                f"code {f.exit_code}, {_s(f.exit_seconds)}",
                "code 0",
                f.exit_code == 0 and not f.haproxy_left,
            )

    print()
    print(f"sidecar run — figures (run {RUN_ID}, {os.cpu_count()} cores)")
    widths = [
        max(len(r[i]) for r in [*rows, ("figure", "measured", "target", "")]) for i in range(4)
    ]
    header = ("figure", "measured", "target", "")
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")

    print()
    print("for information:")
    if d.idle is not None:
        print(
            f"  Docker daemon: /healthz 200 {d.up:.2f} s after the start; at the reading: "
            f"{_memory_text(d.idle)}"
        )
        print(
            f"  Docker daemon VmRSS: idle {_mib(d.idle.daemon)}, after the idle window "
            f"{_mib(d.after_idle)}, after {len(d.samples)} containers {_mib(d.after_containers)}"
        )
    if d.cpu is not None:
        print(f"  Docker daemon idle window: {_cpu_text(d.cpu)}")
    if s.memory is not None:
        print(
            f"  static daemon: /healthz 200 {s.up:.2f} s after the start, all {s.services:,} "
            f"served {_s(s.served)} after the start (config {s.config_bytes:,} bytes); at the "
            f"reading: {_memory_text(s.memory)}"
        )
        print(
            f"  static daemon VmRSS: at the reading {_mib(s.memory.daemon)}, after the idle "
            f"window {_mib(s.after_idle)}"
        )
    if s.cpu is not None:
        print(f"  static daemon idle window: {_cpu_text(s.cpu)}")
    for failure in d.failures:
        print(f"  {failure}")
    for label, error in (("Docker part", d.error), ("static part", s.error)):
        if error:
            print(f"  {label} FAILED: {error}")


def _memory_text(m: Memory) -> str:
    api = "no answer" if m.api_seconds is None else f"{m.api_seconds * 1000:.0f} ms"
    return (
        f"VmRSS {_mib(m.daemon)}, VmHWM (peak so far) {_mib(m.peak)}; own services "
        f"{m.services} (/healthz answered in {api}); HAProxy master {_mib(m.master)}, "
        f"worker(s) {', '.join(_mib(w) for w in m.workers)}"
    )


def _cpu_text(w: CpuWindow) -> str:
    changes = "?" if w.state_changes is None else f"{w.state_changes:.0f}"
    applies = "?" if w.applies is None else f"{w.applies:.0f}"
    return (
        f"daemon {w.daemon:.2f} s CPU in {w.seconds:.1f} s ({w.percent:.2f} %), its waited-for "
        f"children {w.children:.2f} s; HAProxy {w.haproxy:.2f} s ({w.haproxy_percent:.2f} %); "
        f"state changes {changes}, HAProxy applies {applies} (the API's /metrics, read just "
        "before and after)"
    )


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=20, help="containers timed (20)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU (20)")
    parser.add_argument("--services", type=int, default=1000, help="static services (1000)")
    args = parser.parse_args()
    if not 1 <= args.containers <= 1000 or not 1 <= args.services <= 10000:
        parser.error("--containers must be 1..1000 and --services 1..10000")
    if not 1 <= args.idle <= 600:
        parser.error("--idle must be 1..600 seconds")
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed")
    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-daemon-"))
    loopback = Loopback()
    try:
        with sigterm_as_interrupt():
            d = run_docker(root, loopback, args)
            s = run_static(root, loopback, args)
            report(d, s, args)
    except KeyboardInterrupt:
        print("interrupted; stopping everything it started", flush=True)
        raise SystemExit(130) from None
    finally:
        kill_pids(pids_mentioning(str(root)))
        with contextlib.suppress(Exception):
            client = docker.from_env()
            remove_containers(client)
            client.close()
        shutil.rmtree(root, ignore_errors=True)
    if d.error or s.error or d.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
