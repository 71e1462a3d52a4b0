"""A Docker Engine of a test's own inside a network namespace the test made.

`running_engine(ns, log, bridge=...)` starts a dockerd in namespace `ns` with its own data
root, exec root, socket, containerd and `docker0` bridge (`bridge`), and removes all of it
when the block ends, also on failure. `InnerEngine.load` copies local images into it without a
registry (`docker save | docker load`); `get_in_namespace` sends one GET from inside the
namespace.

dockerd is started with `nsenter --net` rather than `ip netns exec`: the latter mounts a
fresh /sys, which hides the cgroup hierarchies under /sys/fs/cgroup and dockerd refuses to
start ("Devices cgroup isn't mounted").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from docker.client import DockerClient
from docker.errors import DockerException

from tests.conftest import missing

from .conftest import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from docker.models.containers import Container

    from .conftest import Netns

ENGINE_START_TIMEOUT = 30.0
LOAD_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0

# One GET from inside the namespace: prints the status on the first line, then the body.
GET_IN_NAMESPACE = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=3)
conn.request("GET", sys.argv[3])
reply = conn.getresponse()
sys.stdout.buffer.write(b"%d\\n" % reply.status + reply.read())
"""


class InnerEngine:
    """A dockerd of the test's own in namespace `ns`; everything it made goes in `close`."""

    def __init__(
        self, ns: Netns, log: Path, *, bridge: str, extra_args: Sequence[str] = ()
    ) -> None:
        self.ns = ns
        self.bridge = bridge  # docker0's address and prefix, e.g. 10.213.0.1/24
        self.extra_args = list(extra_args)  # more dockerd flags (e.g. a TLS listener)
        self.netns_path = f"/run/netns/{ns.name}"
        # Short: containerd's socket goes under exec/ and a Unix socket path has 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="sc-test-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = DockerClient(base_url=self.url, version="1.41", timeout=60)

    def start(self, dockerd: str) -> float:
        """Return the seconds from starting dockerd to its answering /_ping."""
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net={self.netns_path}",
                    dockerd,
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--pidfile",
                    str(self.root / "dockerd.pid"),
                    "--host",
                    self.url,
                    "--bip",
                    self.bridge,
                    "--shutdown-timeout",
                    "2",
                    "--log-level",
                    "warn",
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.answers, what="the inner dockerd", timeout=ENGINE_START_TIMEOUT)
        return time.monotonic() - t0

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the inner dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
        return ping(self.socket)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def load(self, *images: str) -> float:
        """Return the seconds `docker save IMAGES | docker -H INNER load` took."""
        t0 = time.monotonic()
        save = subprocess.Popen(
            ["docker", "save", *images], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert save.stdout is not None
        try:
            load = subprocess.run(
                ["docker", "-H", self.url, "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                timeout=LOAD_TIMEOUT,
                check=False,
            )
        finally:
            save.stdout.close()
            _, save_err = save.communicate(timeout=LOAD_TIMEOUT)
        assert save.returncode == 0, save_err.decode(errors="replace")
        assert load.returncode == 0, load.stdout + load.stderr
        return time.monotonic() - t0

    def run(self, image: str, command: Any = None, **kwargs: Any) -> Container:
        """A started container of the inner engine, reloaded."""
        container = self.client.containers.run(image, command, detach=True, **kwargs)
        container.reload()
        return container

    def close(self) -> None:
        """Remove its containers, stop dockerd, its containerd and shims, and its files."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(DockerException):
                for container in self.client.containers.list(all=True):
                    with contextlib.suppress(DockerException):
                        container.remove(force=True)
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        # What a dockerd that could not clean up leaves: containerd and shims in the
        # namespace, container processes (their own namespaces) in cgroups named by their ids.
        pids = set(self.ns.ip("netns", "pids", self.ns.name, check=False).stdout.split())
        pids |= container_processes(self.root / "data" / "containers")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for mount_point in mounts_under(self.root):  # the deepest first
            subprocess.run(["umount", "-l", mount_point], capture_output=True, timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            raise RuntimeError(f"could not remove the inner engine's {self.root}")


def ping(socket_path: Path) -> bool:
    """Return whether the Engine on `socket_path` answers GET /_ping with 200."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        return sock.recv(4096).split(b"\r\n", 1)[0].split()[1:2] == [b"200"]


def container_processes(containers_dir: Path) -> set[str]:
    """Return the pids whose cgroup names one of the containers in `containers_dir`."""
    try:
        ids = [entry.name for entry in containers_dir.iterdir()]
    except OSError:
        return set()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(cid in cgroups for cid in ids):
            found.add(entry.name)
    return found


def mounts_under(root: Path) -> list[str]:
    """Return the mount points under `root` in this mount namespace, the deepest first."""
    points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{root}/")
    ]
    return sorted(points, key=len, reverse=True)


@contextlib.contextmanager
def running_engine(
    ns: Netns, log: Path, *, bridge: str, extra_args: Sequence[str] = ()
) -> Iterator[InnerEngine]:
    """An `InnerEngine` in `ns`, up and answering; closed when the block ends."""
    dockerd = shutil.which("dockerd")
    nsenter = shutil.which("nsenter")
    if dockerd is None or nsenter is None:
        missing("docker", f"no dockerd or nsenter on PATH (dockerd: {dockerd}, nsenter: {nsenter})")
    engine = InnerEngine(ns, log, bridge=bridge, extra_args=extra_args)
    try:
        took = engine.start(dockerd)
        print(f"inner dockerd answering after {took:.2f}s")
        yield engine
    finally:
        engine.close()


def get_in_namespace(engine: InnerEngine, host: str, port: int, path: str) -> tuple[int, bytes]:
    """Return the status and body of one GET sent from inside the engine's namespace."""
    done = subprocess.run(
        [
            "nsenter",
            f"--net={engine.netns_path}",
            sys.executable,
            "-c",
            GET_IN_NAMESPACE,
            *(host, str(port), path),
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    if done.returncode != 0:  # refused or timed out: "not yet" to wait_for
        raise ConnectionError(done.stderr.decode(errors="replace").strip().splitlines()[-1:])
    status, _, body = done.stdout.partition(b"\n")
    return int(status), body
