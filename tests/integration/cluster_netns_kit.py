"""The harness of test_cluster_netns.py: `sidecar run` daemons, each in its own network and
UTS namespace, on a bridge in a "switch" namespace; a busybox httpd per announced service.

The network is the test's own: the switch namespace holds `br0`; each node namespace has a
veth on it (10.99.0.N/24), its own host name `nodeN` (`unshare --uts`), HAProxy's bind IP
192.168.168.168 on its `lo`, and a daemon joining through node 1. No address outside the
namespaces a test makes is ever sent anything.

The test process talks to a namespace through a worker thread that entered it (`setns(2)`
applies to the calling thread only): requests to a node's API or HAProxy cost a thread hop,
not a process, so a poll of five nodes takes milliseconds even on a busy machine, and the
figures the tests print are not inflated by their own probes.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .conftest import REPO, Loopback, Netns, daemon_environment, wait_for

T = TypeVar("T")

SUBNET = "10.99.0"
BIND_IP = "192.168.168.168"
GOSSIP_PORT = 7946
CLONE_NEWNET = 0x40000000
REQUEST_TIMEOUT = 2.0

_libc = ctypes.CDLL(None, use_errno=True)


def _enter(name: str) -> None:
    """Move the calling thread into the network namespace `name` (and check it did)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(f"/run/netns/{name}").st_ino:
        raise OSError(f"the worker thread is not in {name} after setns")


def _get(url: str, timeout: float) -> str:
    """Return `STATUS BODY` of a GET to `url`, or `error ...` (no proxies, no retries)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        reply = conn.getresponse()
        return f"{reply.status} {reply.read().decode(errors='replace')}"
    except (OSError, http.client.HTTPException) as exc:
        return f"error {type(exc).__name__}: {exc}"
    finally:
        conn.close()


class Inside:
    """A worker thread inside one namespace: `call(fn, ...)` runs `fn` there."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=ns.name, initializer=_enter, initargs=(ns.name,)
        )

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._worker.submit(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
        """Return `fn(*args)` run inside the namespace (bounded by `timeout`)."""
        return self.submit(fn, *args).result(timeout=timeout)

    def fetch(self, url: str) -> str:
        """Return `STATUS BODY` of a GET to `url` from inside the namespace, or `error ...`."""
        return self.call(_get, url, REQUEST_TIMEOUT, timeout=REQUEST_TIMEOUT + 10)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


def target(name: str, port: int) -> dict[str, Any]:
    """Return a static.json target: service `name` on the node's `port` (its advertise IP),
    served by HAProxy on `port`."""
    return {
        "Service": {
            "Name": name,
            "Image": f"{name}:1",
            "Ports": [{"Type": "tcp", "Port": port, "ServicePort": port}],
        },
        "Check": {"Type": "AlwaysSuccessful"},
    }


class Node:
    """One host: its namespace, address, files, httpds and (when running) its daemon."""

    def __init__(self, index: int, ns: Netns, ip: str, home: Path, loopback: Loopback) -> None:
        self.index = index
        self.name = f"node{index}"
        self.ns = ns
        self.ip = ip
        self.home = home
        self.inside = Inside(ns)
        self.proc: subprocess.Popen[bytes] | None = None
        self.targets: list[dict[str, Any]] = []
        self._loopback = loopback
        self.static_file = home / "static.json"
        self.write_static()

    # ------------------------------------------------------------------ services

    def httpd(self, service: str, port: int) -> str:
        """Start a busybox httpd on this node's `ip:port` answering `<service> on <node>`;
        return that text."""
        www = self.home / f"www-{port}"
        www.mkdir()
        text = f"{service} on {self.name}"
        (www / "index.html").write_text(text)
        address = f"{self.ip}:{port}"
        self.ns.start("busybox", "httpd", "-f", "-p", address, "-h", str(www), name=f"httpd-{port}")
        return text

    def serve(self, service: str, port: int, *, announce: bool = True) -> str:
        """Start an httpd for `service` on `port`, announced in static.json unless not
        `announce` (then `announce_more` does it later); return what it answers."""
        text = self.httpd(service, port)
        if announce:
            self.announce_more(service, port)
        return text

    def announce_more(self, service: str, port: int) -> None:
        """Add `service` on `port` to this node's static.json (re-read within ~1 s)."""
        self.targets.append(target(service, port))
        self.write_static()

    def withdraw(self, service: str) -> None:
        """Remove `service` from this node's static.json: it stopped (its httpd may run on)."""
        self.targets = [t for t in self.targets if t["Service"]["Name"] != service]
        self.write_static()

    def write_static(self) -> None:
        # Written whole and renamed: the daemon never reads half a file.
        fresh = self.static_file.with_suffix(".new")
        fresh.write_text(json.dumps(self.targets))
        fresh.replace(self.static_file)

    # ------------------------------------------------------------------ the daemon

    def start(self) -> None:
        """Start `sidecar run` in this namespace with the host name `nodeN`."""
        env = daemon_environment(
            self.home,
            self._loopback,
            SIDECAR_ADVERTISE_IP=self.ip,
            SIDECAR_HTTP_ADDRESS=f"{self.ip}:7777",
            SIDECAR_SEEDS=f"{SUBNET}.1",
            SIDECAR_DISCOVERY="static",
            STATIC_CONFIG_FILE=str(self.static_file),
            HAPROXY_BIND_IP=BIND_IP,
            HAPROXY_STATS_PORT="29000",
            HAPROXY_STATS_BACKEND_PORT="29001",
            HAPROXY_STOP_ON_EXIT="true",
        )
        env.pop("SIDECAR_HOSTNAME")  # the UTS namespace's host name, as in production
        # `ip netns exec` and `unshare` exec, and `sh` execs the daemon last: the process
        # started is the daemon itself, so a signal to it reaches the daemon.
        command = f"hostname {self.name} && exec {sys.executable} -m sidecar run"
        self.proc = self.ns.start(
            "unshare", "--uts", "sh", "-c", command, name="sidecar", env=env, cwd=REPO
        )

    def kill(self) -> None:
        """kill -9 the daemon (HAProxy, a process of its own, is left running)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM the daemon; return its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)

    def is_daemon(self) -> bool:
        """Return whether the process started is the daemon by now (see `start`)."""
        assert self.proc is not None
        cmdline = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().split(b"\0")
        return cmdline[1:4] == [b"-m", b"sidecar", b"run"]

    def log(self) -> str:
        """Return what the daemon wrote (both runs, when restarted)."""
        return self.ns.processes.log(f"{self.ns.name}-sidecar")

    # ------------------------------------------------------------------ what it shows

    def fetch(self, url: str) -> str:
        return self.inside.fetch(url)

    def api(self, path: str) -> Any | None:
        """Return the JSON document at `path` of this node's API, or None (no answer yet)."""
        text = self.fetch(f"http://{self.ip}:7777{path}")
        return json.loads(text[4:]) if text.startswith("200 ") else None

    def proxied(self, port: int) -> str:
        """Return what this node's HAProxy answers on `port` (`STATUS BODY` or `error ...`)."""
        return self.fetch(f"http://{BIND_IP}:{port}/")

    def metric(self, name: str) -> float | None:
        """Return the sum of the samples of metric `name` (None: no answer)."""
        text = self.fetch(f"http://{self.ip}:7777/metrics")
        if not text.startswith("200 "):
            return None
        lines = text[4:].splitlines()
        return sum(float(line.split()[-1]) for line in lines if line.startswith(name))

    def close(self) -> None:
        self.inside.close()


def member_states(node: Node) -> dict[str, str] | None:
    """Return member name -> state (alive, suspect, dead, left) as `node` shows them."""
    document = node.api("/api/members")
    return None if document is None else {m["Name"]: m["State"] for m in document["Members"]}


def statuses(node: Node) -> dict[str, int] | None:
    """Return `host/service/id` -> status as `node` shows them (0 ALIVE, 1 TOMBSTONE...)."""
    document = node.api("/api/services.json")
    if document is None:
        return None
    return {
        f"{r['Hostname']}/{name}/{r['ID']}": r["Status"]
        for name, records in document["Services"].items()
        for r in records
    }


def by_name(shown: Mapping[str, int], host: str, service: str) -> list[int]:
    """Return the statuses of `host`'s records of `service` in a `statuses` map."""
    return [s for key, s in shown.items() if key.split("/")[:2] == [host, service]]


def view(node: Node) -> tuple[Any, Any] | None:
    """Return what a node shows of the cluster, without what changes with time alone: the
    members (without `LastChange`, recomputed on each request), and the services document
    (without `Updated` and `LastUpdated`, which owners re-stamp)."""
    members = node.api("/api/members")
    services = node.api("/api/services.json")
    if members is None or services is None:
        return None
    for m in members["Members"]:
        m.pop("LastChange")
    for records in services["Services"].values():
        for r in records:
            r.pop("Updated")
    for m in services.get("ClusterMembers", {}).values():
        m.pop("LastUpdated")
    return members, services


class Cluster:
    """A bridge in a switch namespace and the nodes plugged into it."""

    def __init__(self, netns: Callable[[], Netns], loopback: Loopback, tmp_path: Path) -> None:
        self._netns = netns
        self._loopback = loopback
        self._tmp_path = tmp_path
        self.switch = netns()
        self.switch.ip("link", "add", "br0", "type", "bridge")
        self.switch.ip("link", "set", "br0", "up")
        self.nodes: list[Node] = []
        self.outsiders: list[Inside] = []
        self.cables: dict[int, str] = {}
        """Node index -> the name of its veth's end on the bridge (in the switch)."""

    def plug(self, index: int) -> tuple[Netns, str]:
        """Return a fresh namespace plugged into the bridge as 10.99.0.`index`."""
        ns = self._netns()
        outside, inside = f"n{index}-{uuid.uuid4().hex[:4]}", "eth0"
        self.switch.ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self.switch.ip("link", "set", inside, "netns", ns.name)
        self.switch.ip("link", "set", outside, "master", "br0")
        self.switch.ip("link", "set", outside, "up")
        ip = f"{SUBNET}.{index}"
        ns.ip("addr", "add", f"{ip}/24", "dev", inside)
        ns.ip("link", "set", inside, "up")
        self.cables[index] = outside
        return ns, ip

    def add(self, count: int) -> list[Node]:
        """Plug in nodes 1..`count` (no daemon started yet)."""
        for index in range(len(self.nodes) + 1, count + 1):
            ns, ip = self.plug(index)
            ns.ip("addr", "add", f"{BIND_IP}/32", "dev", "lo")
            home = self._tmp_path / f"node{index}"
            home.mkdir()
            self.nodes.append(Node(index, ns, ip, home, self._loopback))
        return self.nodes

    def outsider(self, index: int) -> Inside:
        """Return a worker inside a namespace on the bridge as 10.99.0.`index`, no daemon."""
        ns, _ = self.plug(index)
        inside = Inside(ns)
        self.outsiders.append(inside)
        return inside

    def start(self) -> None:
        """Start every node's daemon (all at once: they join through node 1, retrying)."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_for(node.is_daemon, what=f"{node.name}'s daemon process", timeout=10)

    def cut(self, index: int) -> None:
        """Pull node `index`'s cable: its veth end on the bridge goes down."""
        self.switch.ip("link", "set", self.cables[index], "down")

    def heal(self, index: int) -> None:
        self.switch.ip("link", "set", self.cables[index], "up")

    def names(self, nodes: Iterable[Node] | None = None) -> set[str]:
        return {n.name for n in (self.nodes if nodes is None else nodes)}

    def each(self, probe: Callable[[Node], T], nodes: Iterable[Node] | None = None) -> list[T]:
        """Return `probe(node)` for every node (or `nodes`), all asked at once."""
        chosen = list(self.nodes if nodes is None else nodes)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen) or 1) as pool:
            return list(pool.map(probe, chosen))

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for inside in self.outsiders:
            inside.close()


def elapsed_since(start: float) -> float:
    """Return the seconds since `start` (time.monotonic())."""
    return time.monotonic() - start
