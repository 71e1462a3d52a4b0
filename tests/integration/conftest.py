"""Fixtures for tests against real components: Docker, HAProxy, network namespaces.

Everything a test run creates is marked so that `scripts/clean-test-leftovers.sh` finds
what a crashed run left behind: containers carry the labels `sidecar-test=1` and
`sidecar-test-run=<RUN_ID>`, namespaces are named `sc-test-<random>`. Every fixture removes
what it made at teardown, and a test that uses one of the Docker or namespace fixtures is
given the matching marker, so it is skipped (or, under SIDECAR_REQUIRE, fails) cleanly.

Fixtures:
- `docker_client`: the Docker SDK client (`docker.from_env()`), one per session.
- `test_image`: the name of the local image built by scripts/build-test-image.sh.
- `run_container(image=None, command=None, **kwargs)`: creates and starts a container
  (default: the test image), returns it reloaded; removed at teardown.
- `netns()` (a factory): creates `sc-test-<random>` with `lo` up and returns a `Netns`; deleted at
  teardown, with every process started in it.
- `spawn`: `spawn.start(args, name=...)` starts a background process logging to
  `<tmp_path>/<name>.log` (`spawn.log(name)` reads it); all stopped at teardown.
- `loopback`: hands out free loopback addresses (127.0.N.x) and ports.
- `wait_until(probe, what=..., timeout=...)`: polls, bounded in count and time.
- `http_get(url)`: one GET to a loopback address (refuses any other), no proxies.
- `backend(host, sid, service_port=8080)` (a factory): a busybox httpd on a fresh 127.0.0.x
  answering with its own name, as a `haproxy_kit.Backend`.
- `haproxy_site`: (HaproxyOptions, HaproxySettings) for a test's own HAProxy: files and
  sockets in tmp_path, a fresh 127.0.0.x bind IP, free stats ports.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import pytest

# Only docker's submodules are imported by name: the repo's docker/ folder (the image) makes
# `import docker` first-party to isort in one checkout and third-party in another.
from docker.client import DockerClient
from docker.errors import NotFound

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from docker.models.containers import Container

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
IMAGE = "sidecar-test-busybox:latest"
BUILD_IMAGE = REPO / "scripts" / "build-test-image.sh"
RUN_ID = uuid.uuid4().hex[:8]
TEST_LABELS = {"sidecar-test": "1", "sidecar-test-run": RUN_ID}
NETNS_PREFIX = "sc-test-"
STOP_TIMEOUT = 10.0

# A test that uses one of these fixtures needs the component, marked or not.
_FIXTURE_MARKERS = {
    "docker_client": "docker",
    "test_image": "docker",
    "run_container": "docker",
    "netns": "netns",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in fixtures and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


# ---------------------------------------------------------------- polling, HTTP


def wait_for(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float = 15.0,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """The first truthy value `probe()` returns; fails the test after `timeout` seconds.

    Bounded twice: at most `timeout / interval + 1` calls, and no call starts after the
    deadline. Exceptions of the types in `ignore` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    for _ in range(int(timeout / interval) + 1):
        try:
            value = probe()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() + interval > deadline:
            break
        time.sleep(interval)
    pytest.fail(f"gave up after {timeout:g}s waiting for {what}; last result: {last!r}")


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: http.client.HTTPMessage  # case-insensitive .get()
    body: bytes


def is_loopback(host: str) -> bool:
    """Whether `host` is localhost or an address in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_request(url: str, *, method: str = "GET", timeout: float = 5.0) -> HttpReply:
    """The reply to one request to a loopback URL; refuses any other host. Never uses a proxy."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or not is_loopback(host):
        raise ValueError(f"tests only send traffic to loopback over http, not to {url!r}")
    conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        conn.request(method, f"{path}?{parts.query}" if parts.query else path)
        resp = conn.getresponse()
        body = resp.read()
        return HttpReply(status=resp.status, headers=resp.headers, body=body)
    finally:
        conn.close()


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """`wait_for`: poll a probe until it returns something truthy, bounded in count and time."""
    return wait_for


@pytest.fixture
def http_get() -> Callable[..., HttpReply]:
    """`http_request`: one request to a loopback URL (other hosts are refused)."""
    return http_request


# ---------------------------------------------------------------- loopback addresses


class Loopback:
    """Hands out loopback addresses and ports that are free now and unused this session."""

    # 127.0.0.2-254 first (the addresses people read best), then 127.0.1-15.x: a whole run
    # of the suite takes more than 253 (all of 127.0.0.0/8 is on lo).
    SUBNETS = 16

    def __init__(self) -> None:
        self._given: set[str] = set()
        self._rng = random.Random()

    def address(self, ports: Sequence[int] = ()) -> str:
        """A fresh 127.0.N.x (x in 2..254) on which nothing listens (TCP) and every port in
        `ports` is free (TCP, UDP). Nothing listening: a process another run left behind
        there (an HAProxy left serving) would share a port with this test's (HAProxy binds
        with SO_REUSEPORT) and answer some of its requests."""
        listening = listening_addresses()
        for subnet in range(self.SUBNETS):
            candidates = [f"127.0.{subnet}.{x}" for x in range(2, 255)]
            self._rng.shuffle(candidates)
            for addr in candidates:
                if addr in self._given or addr in listening:
                    continue
                if all(port_is_free(addr, port) for port in ports):
                    self._given.add(addr)
                    return addr
        raise RuntimeError(f"no free 127.0.N.x address with ports {list(ports)} free")

    def port(self, host: str = "127.0.0.1") -> int:
        """A TCP port that is free on `host` right now (the kernel's pick)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


def listening_addresses() -> frozenset[str]:
    """Return the IPv4 addresses with a TCP socket listening on them now (/proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the column titles
        for line in table:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                packed = bytes.fromhex(local.split(":")[0])[::-1]  # little-endian
                found.add(socket.inet_ntoa(packed))
    return frozenset(found)


def port_is_free(host: str, port: int) -> bool:
    """Whether both TCP and UDP `port` can be bound on `host` now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


@pytest.fixture(scope="session")
def loopback() -> Loopback:
    return Loopback()


# ---------------------------------------------------------------- processes


class Processes:
    """Background processes that are always stopped: SIGTERM, then SIGKILL after a while."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: Sequence[str], *, name: str = "proc", **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Starts `args` with stdout and stderr in `<log_dir>/<name>.log` (see `log`)."""
        log = self.log_path(name)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kwargs
            )
        self._running.append(proc)
        return proc

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    def log(self, name: str) -> str:
        """What the process started as `name` has written so far."""
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
        """Its exit code, after SIGTERM (and SIGKILL if it outlives `timeout`)."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        with contextlib.suppress(ValueError):
            self._running.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self._running)):
            self.stop(proc)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Processes]:
    """Start background processes (`spawn.start([...], name=...)`); all stopped at teardown."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# ---------------------------------------------------------------- network namespaces


def _ip(*args: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def netns_names() -> set[str]:
    """The names `ip netns list` shows now."""
    return {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()}


class Netns:
    """A network namespace made for one test: run commands in it, delete it."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.processes = Processes(log_dir)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip -n NAME ARGS...`"""
        return _ip("-n", self.name, *args, check=check)

    def run(
        self, *args: str, check: bool = True, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        """`ip netns exec NAME ARGS...`, waited for (bounded by `timeout`)."""
        return _ip("netns", "exec", self.name, *args, check=check, timeout=timeout)

    def start(self, *args: str, name: str = "proc", **kwargs: Any) -> subprocess.Popen[bytes]:
        """`ip netns exec NAME ARGS...` in the background; stopped when the namespace goes."""
        return self.processes.start(
            ["ip", "netns", "exec", self.name, *args], name=f"{self.name}-{name}", **kwargs
        )

    def exists(self) -> bool:
        return self.name in netns_names()

    def delete(self) -> None:
        """Stops its processes and deletes it; does nothing if it is already gone."""
        self.processes.stop_all()
        if not self.exists():
            return
        for pid in _ip("netns", "pids", self.name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "delete", self.name)


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Callable[[], Netns]]:
    """Factory: each call makes a namespace `sc-test-<random>` with `lo` up."""
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns(f"{NETNS_PREFIX}{uuid.uuid4().hex[:10]}", tmp_path)
        _ip("netns", "add", ns.name)
        made.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.delete()


# ---------------------------------------------------------------- docker


@pytest.fixture(scope="session")
def docker_client() -> Iterator[DockerClient]:
    """The Docker SDK client; at the end, removes any container this run left."""
    client = DockerClient.from_env(timeout=60)
    try:
        client.ping()
        yield client
    finally:
        leftovers = client.containers.list(
            all=True, filters={"label": f"sidecar-test-run={RUN_ID}"}
        )
        for container in leftovers:
            with contextlib.suppress(NotFound):
                container.remove(force=True)
        client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: DockerClient) -> str:
    """The local test image, (re)built by scripts/build-test-image.sh when needed."""
    try:
        subprocess.run(
            ["bash", str(BUILD_IMAGE), IMAGE],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{BUILD_IMAGE} failed:\n{exc.stdout}\n{exc.stderr}", pytrace=False)
    image = docker_client.images.get(IMAGE)
    assert image.labels.get("sidecar-test") == "1", image.labels
    return IMAGE


@pytest.fixture
def run_container(
    docker_client: DockerClient, test_image: str
) -> Iterator[Callable[..., Container]]:
    """Factory: create and start a container (default image: the test image), reloaded.

    Its labels always include `sidecar-test=1` and this run's id; it is removed (forced) at
    teardown, also when starting it failed.
    """
    made: list[Container] = []

    def run(image: str | None = None, command: Any = None, **kwargs: Any) -> Container:
        labels = {**kwargs.pop("labels", {}), **TEST_LABELS}
        kwargs.setdefault("name", f"sc-test-{RUN_ID}-{len(made)}")
        container = docker_client.containers.create(
            image or test_image, command, labels=labels, **kwargs
        )
        made.append(container)
        container.start()
        container.reload()
        return container

    try:
        yield run
    finally:
        for container in reversed(made):
            with contextlib.suppress(NotFound):
                container.remove(force=True)


# ---------------------------------------------------------------- sidecar run


def daemon_environment(tmp_path: Path, loopback: Loopback, **settings: str) -> dict[str, str]:
    """Return the environment of a test `sidecar run`: ours without any variable the daemon
    reads, its API and HAProxy's frontends and stats on fresh 127.0.0.x addresses and ports,
    HAProxy's files in `tmp_path / "haproxy"`, checks every second; `settings` on top."""
    home = tmp_path / "haproxy"
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIDECAR_", "HAPROXY_", "STATIC_"))
        },
        "SIDECAR_HTTP_ADDRESS": f"{loopback.address()}:7777",
        "SIDECAR_HOSTNAME": f"node-{uuid.uuid4().hex[:6]}",
        "SIDECAR_ADVERTISE_IP": "127.0.0.1",
        "SIDECAR_CHECK_INTERVAL": "1s",
        "HAPROXY_BIND_IP": loopback.address(),
        "HAPROXY_CONFIG_FILE": str(home / "haproxy.cfg"),
        "HAPROXY_PID_FILE": str(home / "haproxy.pid"),
        "HAPROXY_MASTER_SOCKET": str(home / "master.sock"),
        "HAPROXY_ADMIN_SOCKET": str(home / "admin.sock"),
        "HAPROXY_STATS_PORT": str(loopback.port()),
        "HAPROXY_STATS_BACKEND_PORT": str(loopback.port()),
        **settings,
    }


# ---------------------------------------------------------------- HAProxy


@pytest.fixture
def backend(spawn, loopback, tmp_path):
    """Factory: a busybox httpd on a fresh 127.0.0.x answering `/` with its own name."""
    count = 0

    def make(host: str, sid: str, service_port: int = 8080) -> Any:
        from .haproxy_kit import Backend

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
def haproxy_site(tmp_path, loopback):
    """Where this test's HAProxy lives: options, and settings with free stats ports."""
    from sidecar.adapters.haproxy import HaproxyOptions
    from sidecar.reconcile.desired import HaproxySettings

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
