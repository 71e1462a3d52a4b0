"""Benchmark: a cluster of real `sidecar run` daemons, each in its own network and UTS
namespace — propagation, crash and leave detection, idle gossip traffic, memory (issue 12).

    .venv/bin/python bench/cluster.py [--nodes 5] [--services 50] [--repeat 3] [--idle 30]
        [--part propagation,crash,idle,memory] [--go]

Needs root, iproute2, `unshare`, busybox and HAProxy. The network is the bench's own: a
"switch" namespace holding a bridge, and per node a namespace with a veth on it
(10.98.0.N/24), HAProxy's bind IP 192.168.168.168 on its `lo`, and a daemon started as
`ip netns exec NS unshare --uts sh -c 'hostname nodeN && exec python -m sidecar run'`
(its environment built from scratch as bench/daemon.py builds it, its files in a temp dir,
static discovery, managed HAProxy, `HAPROXY_STOP_ON_EXIT=true`), joining through node 1.
The bench talks to each node from a thread that entered the node's namespace (setns), so
every request goes to an address inside a namespace it made: a node's API on its own
10.98.0.N:7777 and its HAProxy on 192.168.168.168:PORT. Each part starts a fresh cluster.

1. propagation: one at a time, SERVICES targets are appended to node 1's static.json (an
   `HttpGet` check on a busybox httpd in node 1's namespace, 10.98.0.1:8080); the time from
   the file's rename to ALIVE in every node's `/api/services.json` and to an HTTP 200 through
   every node's HAProxy (each node polled every 10 ms). Static discovery reads the file every
   second, so the time from ALIVE on node 1 is given too: the gossip's part.
2. crash: the last node holds one service; `kill -9` of its daemon (then SIGTERM), the time
   until every other node shows that service TOMBSTONE; the node is restarted and the
   cluster converged again between tries.
3. idle: 100 `AlwaysSuccessful` services per node at made-up ports nothing contacts; once
   every node shows them all ALIVE and 5 s later, the gossip bytes in + out per second per
   node over IDLE seconds, from `/metrics` (`sidecar_gossip_bytes_total`) and from the
   node's veth counters (`ip -s link`, which also count IP/UDP/TCP headers and ARP).
4. memory: 200 such services per node; once every node shows all of them ALIVE and 5 s
   later, each daemon's VmRSS (the daemon process only, not HAProxy).

`--go`: the crash and idle parts once more with the reference Go Sidecar
(/work/gosidecar/sidecar-go, run as scripts/interop/run-go-node.sh runs it: static discovery,
HAProxy disabled), side by side. Go never leaves, so its SIGTERM figure is a crash's too; it
has no gossip metrics, so its idle traffic is the veth counters' alone.

Everything is bounded in count and time; the daemons, their HAProxy and httpd, and the
namespaces are removed on the way out, also on error or Ctrl-C. No iptables rule is needed:
the bridge lives in the switch namespace, whose filter tables are empty.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import daemon as d
from procs import alive, kill_pids, pids_mentioning, sigterm_as_interrupt
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import ENV_VARS

T = TypeVar("T")

SUBNET = "10.98.0"
BIND_IP = "192.168.168.168"
NS_PREFIX = f"scb-{d.RUN_ID}-"
HTTPD_PORT = 8080
PROP_PORT_BASE = 18000
CRASH_PORT = 17000
STATIC_PORT_BASE = 20000
MADE_UP_PORT_BASE = 40000
POLL = 0.01  # s between two polls of one node
CONVERGE_LIMIT = 120.0  # s for a cluster to show everything ALIVE everywhere
MEASURE_LIMIT = 30.0  # s for one change to reach every node
SETTLE = 5.0
STATUS = {0: "ALIVE", 1: "TOMBSTONE", 2: "UNHEALTHY", 3: "UNKNOWN", 4: "DRAINING"}
PARTS = ("propagation", "crash", "idle", "memory")
GO_BINARY = Path("/work/gosidecar/sidecar-go")

# ---------------------------------------------------------------------------- namespaces

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def in_netns(name: str, call: Callable[[], T], *, limit: float = 60.0) -> T:
    """Return `call()` run in a fresh thread inside namespace `name`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            enter_netns(name)
            box["value"] = call()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise RuntimeError(f"a call in namespace {name} took more than {limit:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=15)


def get(host: str, port: int, path: str = "/", *, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET to an address the bench made (refuses any other); (status, body)."""
    if not (host.startswith(f"{SUBNET}.") or host == BIND_IP):
        raise ValueError(f"this benchmark only sends traffic to its namespaces, not to {host}")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------- the cluster


def target(name: str, port: int, server_port: int, check: dict[str, str]) -> dict[str, Any]:
    """Return one static.json target (its server on the node's advertise IP)."""
    return {
        "Service": {
            "Name": name,
            "Image": "bench/cluster:1",
            "Ports": [{"Type": "tcp", "Port": server_port, "ServicePort": port}],
        },
        "Check": check,
    }


def made_up(node: int, count: int) -> list[dict[str, Any]]:
    """Return `count` AlwaysSuccessful targets for node `node` at ports nothing listens on."""
    return [
        target(f"n{node}-s{j:03d}", STATIC_PORT_BASE + j, MADE_UP_PORT_BASE + j, ALWAYS)
        for j in range(count)
    ]


ALWAYS = {"Type": "AlwaysSuccessful"}


@dataclass
class Node:
    index: int
    ns: str
    ip: str
    veth: str  # its end in the switch namespace
    home: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    go: bool = False  # the reference Go Sidecar instead (--go)

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def write_static(self, targets: Sequence[dict[str, Any]]) -> float:
        """Replace static.json at once (rename); return the monotonic time it was done."""
        assert self.home is not None
        temporary = self.home / "static.json.new"
        temporary.write_text(json.dumps(list(targets)))
        temporary.rename(self.home / "static.json")
        return time.monotonic()

    def start(self) -> None:
        assert self.home is not None
        read = set(ENV_VARS)
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in read and not k.startswith(("SIDECAR_", "HAPROXY_", "STATIC_"))
            },
            "SIDECAR_CONFIG_FILE": str(self.home / "sidecar.toml"),
            "SIDECAR_HTTP_ADDRESS": f"{self.ip}:7777",
            "SIDECAR_ADVERTISE_IP": self.ip,
            "SIDECAR_SEEDS": f"{SUBNET}.1",
            "SIDECAR_DISCOVERY": "static",
            "STATIC_CONFIG_FILE": str(self.home / "static.json"),
            "HAPROXY_BIND_IP": BIND_IP,
            "HAPROXY_CONFIG_FILE": str(self.home / "haproxy.cfg"),
            "HAPROXY_PID_FILE": str(self.home / "haproxy.pid"),
            "HAPROXY_MASTER_SOCKET": str(self.home / "master.sock"),
            "HAPROXY_ADMIN_SOCKET": str(self.home / "admin.sock"),
            "HAPROXY_STATS_PORT": "29000",
            "HAPROXY_STATS_BACKEND_PORT": "29001",
            "HAPROXY_STOP_ON_EXIT": "true",
        }
        (self.home / "sidecar.toml").write_text("")
        command = f"hostname {self.name} && exec {sys.executable} -m sidecar run"
        cwd = d.REPO
        if self.go:  # as scripts/interop/run-go-node.sh runs it: no HAProxy
            env["HAPROXY_DISABLE"] = "true"
            command = f"hostname {self.name} && exec {GO_BINARY}"
            cwd = GO_BINARY.parent / "src"  # it reads views/ from there
        with (self.home / "sidecar.log").open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c", command],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def daemon_pid(self) -> int:
        """Return the daemon's pid (`ip netns exec`, `unshare` and `sh` exec it in place)."""
        assert self.proc is not None
        cmdline = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes()
        if b"sidecar" not in cmdline:
            raise RuntimeError(f"pid {self.proc.pid} is not the daemon: {cmdline!r}")
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon, then whatever of its HAProxy is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.home is not None:
            kill_pids(pids_mentioning(str(self.home)))

    def api(self, path: str, *, timeout: float = 5.0) -> Any:
        """Return the JSON of a GET to this node's API (call it inside the namespace)."""
        status, body = get(self.ip, 7777, path, timeout=timeout)
        if status != 200:
            raise OSError(f"{self.name} {path}: HTTP {status}")
        return json.loads(body)

    def metrics(self) -> dict[tuple[str, ...], float]:
        """Return /metrics samples by (name, label values...) (call it inside the namespace)."""
        _, body = get(self.ip, 7777, "/metrics", timeout=10.0)
        found: dict[tuple[str, ...], float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                found[(sample.name, *sample.labels.values())] = sample.value
        return found

    def log_tail(self, count: int = 15) -> str:
        if self.home is None:
            return ""
        lines = (self.home / "sidecar.log").read_text(errors="replace").splitlines()
        return "\n".join(f"    | {line}" for line in lines[-count:])


class Cluster:
    """The switch namespace with its bridge, and COUNT node namespaces plugged into it."""

    def __init__(self, root: Path, count: int, *, go: bool = False) -> None:
        self.root = root
        self.switch = f"{NS_PREFIX}sw"
        self.nodes: list[Node] = []
        self.httpd: subprocess.Popen[bytes] | None = None
        self._made: list[str] = []
        self._add(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for index in range(1, count + 1):
            node = Node(index, f"{NS_PREFIX}n{index}", f"{SUBNET}.{index}", f"v{index}", go=go)
            self._add(node.ns)
            ip("-n", self.switch, "link", "add", node.veth, "type", "veth", "peer", "name", "eth0")
            ip("-n", self.switch, "link", "set", "eth0", "netns", node.ns)
            ip("-n", self.switch, "link", "set", node.veth, "master", "br0")
            ip("-n", self.switch, "link", "set", node.veth, "up")
            ip("-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            ip("-n", node.ns, "link", "set", "eth0", "up")
            ip("-n", node.ns, "addr", "add", f"{BIND_IP}/32", "dev", "lo")
            self.nodes.append(node)

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def start(self, part: str, targets: Callable[[Node], list[dict[str, Any]]]) -> None:
        """Start every node's daemon with fresh files under ROOT/PART, node 1 first: the
        others once its API answers (a Go node that finds no seed stays alone)."""
        for node in self.nodes:
            node.home = self.root / part / node.name
            node.home.mkdir(parents=True)
            node.write_static(targets(node))
            node.start()
            if node.index == 1:
                d.wait_for(
                    functools.partial(
                        in_netns, node.ns, functools.partial(node.api, "/api/services.json")
                    ),
                    what="node 1's API",
                    limit=30.0,
                    interval=0.1,
                )
        print(f"[{part}] {len(self.nodes)} daemons started; files in {self.root / part}")

    def start_httpd(self) -> None:
        """A busybox httpd in node 1's namespace on 10.98.0.1:8080 (its check's /version)."""
        www = self.root / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_text("served by node1\n")
        (www / "version").write_text("1\n")
        httpd = ["busybox", "httpd", "-f", "-p", f"{self.nodes[0].ip}:{HTTPD_PORT}", "-h", str(www)]
        self.httpd = subprocess.Popen(
            ["ip", "netns", "exec", self.nodes[0].ns, *httpd],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop every daemon (SIGTERM) and its HAProxy, concurrently."""
        threads = [threading.Thread(target=n.stop) for n in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    def wait_converged(self, expect: Callable[[dict[str, Any]], bool], *, what: str) -> float:
        """Wait until every node's /api/services.json passes `expect` and lists every member;
        return the seconds it took."""
        began = time.monotonic()
        names = {n.name for n in self.nodes}
        pending = list(self.nodes)
        deadline = began + CONVERGE_LIMIT
        last: object = None
        while pending and time.monotonic() < deadline:
            node = pending[0]
            if not node.running():
                raise RuntimeError(f"{node.name} exited:\n{node.log_tail()}")
            try:
                doc = in_netns(node.ns, functools.partial(node.api, "/api/services.json"))
            except (OSError, ValueError) as exc:
                doc, last = None, exc
            if doc is not None and set(doc.get("ClusterMembers") or {}) == names and expect(doc):
                pending.pop(0)
                continue
            last = last if doc is None else f"{node.name} not there yet"
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"not converged ({what}) in {CONVERGE_LIMIT:g} s; last: {last}")
        return time.monotonic() - began

    def veth_bytes(self) -> dict[str, int]:
        """Return rx + tx bytes of each node's veth, as the switch sees them."""
        found = {}
        links = json.loads(ip("-n", self.switch, "-s", "-j", "link", "show").stdout)
        by_name = {link["ifname"]: link for link in links}
        for node in self.nodes:
            stats = by_name[node.veth]["stats64"]
            found[node.name] = int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])
        return found

    def teardown(self) -> None:
        """Stop everything started in the namespaces and delete them (idempotent)."""
        with contextlib.suppress(Exception):
            self.stop()
        if self.httpd is not None and self.httpd.poll() is None:
            self.httpd.kill()
            self.httpd.wait(5)
        for name in reversed(self._made):
            pids = ip("netns", "pids", name, check=False).stdout.split()
            kill_pids([int(p) for p in pids if p.isdigit()], grace=2.0)
            ip("netns", "delete", name, check=False)
        self._made.clear()


def count_alive(doc: dict[str, Any], *, prefix: str = "") -> int:
    return sum(
        1
        for name, records in (doc.get("Services") or {}).items()
        if name.startswith(prefix)
        for record in records
        if record.get("Status") == 0
    )


def status_of(doc: dict[str, Any], name: str) -> str:
    """Return ALIVE if a record of service `name` is ALIVE, else the status all its records
    share ("missing" with none, "mixed"); a restarted Go node's record has a new ID."""
    records = (doc.get("Services") or {}).get(name) or []
    found = {STATUS.get(r.get("Status"), "?") for r in records}
    if "ALIVE" in found:
        return "ALIVE"
    if len(found) > 1:
        return "mixed"
    return found.pop() if found else "missing"


# ---------------------------------------------------------------------------- watching


@dataclass
class Seen:
    alive: float | None = None  # monotonic
    served: float | None = None
    error: str | None = None


def watch(node: Node, name: str, port: int | None, want: str, ready: threading.Barrier) -> Seen:
    """From inside `node`'s namespace, follow its API until service `name` has status `want`,
    then (if `port`) poll its HAProxy every POLL s until HTTP 200; return when each happened.

    A sidecar node is followed through its `/api/watch` stream (a document per change, read
    as it comes): polling five daemons' `/api/services.json` every 10 ms was ~500 requests a
    second of whole-state JSON on the same two cores as the daemons, a load of the
    measurement's own. A Go node (it has no ndjson stream) is polled every POLL s."""
    seen = Seen()
    enter_netns(node.ns)
    deadline = time.monotonic() + MEASURE_LIMIT
    stream = None if node.go else open_watch(node)
    try:
        ready.wait(10)
        while time.monotonic() < deadline and seen.alive is None:
            try:
                if stream is not None:
                    line = stream.readline()
                    if not line:
                        raise OSError(f"{node.name}: /api/watch ended")
                    doc = {"Services": json.loads(line)}
                else:
                    doc = node.api("/api/services.json", timeout=2.0)
                if status_of(doc, name) == want:
                    seen.alive = time.monotonic()
                    break
            except (OSError, ValueError, http.client.HTTPException):
                if stream is not None:
                    raise
            time.sleep(0 if stream is not None else POLL)
    finally:
        if stream is not None:
            stream.close()
    while port is not None and seen.alive is not None and time.monotonic() < deadline:
        try:
            status, _ = get(BIND_IP, port, "/", timeout=1.0)
            if status == 200:
                seen.served = time.monotonic()
                return seen
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(POLL)
    if seen.alive is not None and port is None:
        return seen
    seen.error = f"{node.name}: not {want}{'/served' if port else ''} in {MEASURE_LIMIT:g} s"
    return seen


def open_watch(node: Node) -> Any:
    """Return `node`'s `/api/watch?format=ndjson` stream (one by_service document per line),
    its first document (sent at once) read (call it inside the namespace)."""
    conn = http.client.HTTPConnection(node.ip, 7777, timeout=MEASURE_LIMIT)
    conn.request("GET", "/api/watch?format=ndjson")
    reply = conn.getresponse()
    if reply.status != 200:
        conn.close()
        raise OSError(f"{node.name} /api/watch: HTTP {reply.status}")
    reply.readline()
    return reply


def watch_all(
    nodes: Sequence[Node], name: str, port: int | None, want: str, act: Callable[[], float]
) -> tuple[float, dict[str, Seen]]:
    """Start a watcher per node, then `act()` (returning its monotonic time); return that
    time and what each node saw."""
    ready = threading.Barrier(len(nodes) + 1)
    results: dict[str, Seen] = {}

    def run(node: Node) -> None:
        try:
            results[node.name] = watch(node, name, port, want, ready)
        except Exception as exc:
            results[node.name] = Seen(error=f"{node.name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in nodes]
    for thread in threads:
        thread.start()
    ready.wait(10)
    began = act()
    for thread in threads:
        thread.join(MEASURE_LIMIT + 10)
    return began, results


# ---------------------------------------------------------------------------- parts


@dataclass
class Propagation:
    nodes: int
    node1_alive: list[float] = field(default_factory=list)  # start -> ALIVE on node 1
    alive: list[float] = field(default_factory=list)  # start -> ALIVE on the last node
    served: list[float] = field(default_factory=list)  # start -> 200 on the last node
    gossip_alive: list[float] = field(default_factory=list)  # node 1 ALIVE -> last ALIVE
    gossip_served: list[float] = field(default_factory=list)  # node 1 ALIVE -> last 200
    failures: list[str] = field(default_factory=list)


def run_propagation(cluster: Cluster, services: int) -> Propagation:
    figures = Propagation(len(cluster.nodes))
    cluster.start_httpd()
    cluster.start("propagation", lambda node: [])
    took = cluster.wait_converged(lambda doc: True, what="every member everywhere")
    print(f"[propagation] {len(cluster.nodes)} members everywhere after {took:.1f} s")
    first = cluster.nodes[0]
    targets: list[dict[str, Any]] = []
    check = {"Type": "HttpGet", "Args": f"http://:{HTTPD_PORT}/version"}
    for i in range(services):
        name, port = f"prop-{i:03d}", PROP_PORT_BASE + i
        targets.append(target(name, port, HTTPD_PORT, check))
        began, seen = watch_all(
            cluster.nodes, name, port, "ALIVE", functools.partial(first.write_static, list(targets))
        )
        errors = [s.error for s in seen.values() if s.error]
        if errors or len(seen) != len(cluster.nodes):
            figures.failures.append(f"{name}: {'; '.join(errors) or 'a watcher failed'}")
            print(f"[propagation] {name}: FAILED: {figures.failures[-1]}")
            continue
        alive = [s.alive for s in seen.values() if s.alive is not None]
        served = [s.served for s in seen.values() if s.served is not None]
        node1 = seen[first.name].alive
        assert node1 is not None
        figures.node1_alive.append(node1 - began)
        figures.alive.append(max(alive) - began)
        figures.served.append(max(served) - began)
        figures.gossip_alive.append(max(alive) - node1)
        figures.gossip_served.append(max(served) - node1)
        print(
            f"[propagation] {name}: ALIVE on node1 {ms(node1 - began)}, on all "
            f"{ms(max(alive) - began)}, served by all {ms(max(served) - began)}; from ALIVE "
            f"on node1: all ALIVE {ms(max(alive) - node1)}, all served {ms(max(served) - node1)}"
        )
    return figures


@dataclass
class Crash:
    who: str
    kill9: list[float] = field(default_factory=list)
    sigterm: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def run_crash(cluster: Cluster, repeat: int) -> Crash:
    go = cluster.nodes[0].go
    figures = Crash("Go Sidecar" if go else "sidecar")
    victim = cluster.nodes[-1]
    name = "crash-svc"
    mine = [target(name, CRASH_PORT, HTTPD_PORT, ALWAYS)]
    cluster.start("crash-go" if go else "crash", lambda node: mine if node is victim else [])
    others = [n for n in cluster.nodes if n is not victim]

    def converged(doc: dict[str, Any]) -> bool:
        return status_of(doc, name) == "ALIVE"

    for attempt in range(repeat):
        for label, sig, into in (
            ("kill -9", signal.SIGKILL, figures.kill9),
            ("SIGTERM", signal.SIGTERM, figures.sigterm),
        ):
            took = cluster.wait_converged(converged, what=f"{victim.name}'s {name} ALIVE")
            time.sleep(SETTLE if attempt or label == "SIGTERM" else 1.0)

            def hit(sig: int = sig) -> float:
                assert victim.proc is not None
                os.kill(victim.daemon_pid(), sig)
                return time.monotonic()

            began, seen = watch_all(others, name, None, "TOMBSTONE", hit)
            victim.stop()  # reaps the daemon; its HAProxy too (after kill -9 it is left)
            errors = [s.error for s in seen.values() if s.error]
            if errors:
                figures.failures.append(f"{label} #{attempt + 1}: {'; '.join(errors)}")
                print(f"[crash] {label} #{attempt + 1}: FAILED: {figures.failures[-1]}")
            else:
                last = max(s.alive for s in seen.values() if s.alive is not None)
                into.append(last - began)
                spread = ", ".join(
                    f"{n}: {ms(s.alive - began)}" for n, s in seen.items() if s.alive is not None
                )
                print(
                    f"[crash] {label} #{attempt + 1}: TOMBSTONE on every other node after "
                    f"{ms(last - began)} ({spread}); converged {took:.1f} s before"
                )
            victim.start()
    cluster.wait_converged(converged, what="the victim back")
    return figures


@dataclass
class Idle:
    per_service: int
    who: str = "sidecar"
    converged: float = 0.0
    seconds: float = 0.0
    metric: dict[str, float] = field(default_factory=dict)  # node -> bytes/s
    metric_udp: dict[str, float] = field(default_factory=dict)
    veth: dict[str, float] = field(default_factory=dict)


def gossip_bytes(node: Node) -> tuple[float, float]:
    """Return (all, UDP only) of sidecar_gossip_bytes_total, sent + received."""
    samples = in_netns(node.ns, node.metrics)
    moved = {k: v for k, v in samples.items() if k[0] == "sidecar_gossip_bytes_total"}
    if not moved:
        raise RuntimeError(f"{node.name}: no sidecar_gossip_bytes_total in /metrics")
    return sum(moved.values()), sum(v for k, v in moved.items() if "udp" in k)


def run_idle(cluster: Cluster, per_node: int, seconds: float) -> Idle:
    """Measure gossip bytes at idle: by /metrics and on the veth for ours, on the veth
    alone for Go's (it has no such metric)."""
    go = cluster.nodes[0].go
    figures = Idle(per_node, "Go Sidecar" if go else "sidecar")
    cluster.start("idle-go" if go else "idle", lambda node: made_up(node.index, per_node))
    total = per_node * len(cluster.nodes)
    figures.converged = cluster.wait_converged(
        lambda doc: count_alive(doc) == total, what=f"{total} services ALIVE everywhere"
    )
    print(f"[idle] {total} services ALIVE everywhere after {figures.converged:.1f} s; settling")
    time.sleep(SETTLE)
    unmeasured = (0.0, 0.0)
    before = {n.name: unmeasured if go else gossip_bytes(n) for n in cluster.nodes}
    veth0, t0 = cluster.veth_bytes(), time.monotonic()
    time.sleep(seconds)
    after = {n.name: unmeasured if go else gossip_bytes(n) for n in cluster.nodes}
    veth1, t1 = cluster.veth_bytes(), time.monotonic()
    figures.seconds = t1 - t0
    for node in cluster.nodes:
        key = node.name
        figures.veth[key] = (veth1[key] - veth0[key]) / figures.seconds
        if not go:
            figures.metric[key] = (after[key][0] - before[key][0]) / figures.seconds
            figures.metric_udp[key] = (after[key][1] - before[key][1]) / figures.seconds
        print(
            f"[idle] {figures.who} {key}: {figures.metric.get(key, 0):,.0f} B/s by /metrics "
            f"(UDP {figures.metric_udp.get(key, 0):,.0f}), {figures.veth[key]:,.0f} B/s on "
            "its veth"
        )
    return figures


@dataclass
class Memory:
    per_service: int
    converged: float = 0.0
    rss: dict[str, int] = field(default_factory=dict)
    hwm: dict[str, int] = field(default_factory=dict)


def run_memory(cluster: Cluster, per_node: int) -> Memory:
    figures = Memory(per_node)
    cluster.start("memory", lambda node: made_up(node.index, per_node))
    total = per_node * len(cluster.nodes)
    figures.converged = cluster.wait_converged(
        lambda doc: count_alive(doc) == total, what=f"{total} services ALIVE everywhere"
    )
    print(f"[memory] {total} services ALIVE everywhere after {figures.converged:.1f} s; settling")
    time.sleep(SETTLE)
    for node in cluster.nodes:
        pid = node.daemon_pid()
        figures.rss[node.name] = d.rss_bytes(pid)
        figures.hwm[node.name] = d.rss_bytes(pid, "VmHWM")
        print(
            f"[memory] {node.name}: VmRSS {figures.rss[node.name] / d.MIB:.1f} MiB "
            f"(peak {figures.hwm[node.name] / d.MIB:.1f} MiB)"
        )
    return figures


# ---------------------------------------------------------------------------- report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "- | - | -"
    return " | ".join(ms(v) for v in (percentile(values, 50), percentile(values, 99), max(values)))


def report(
    nodes: int,
    prop: Propagation | None,
    crashes: list[Crash],
    idles: list[Idle],
    memory: Memory | None,
    took: float,
) -> bool:
    """Print the figures as Markdown tables; return whether every measurement succeeded."""
    good = True
    print()
    print(f"run {d.RUN_ID}: {nodes} nodes, {took:.0f} s in all")
    if prop is not None:
        good &= not prop.failures
        print()
        print(f"Propagation, {nodes} nodes, {len(prop.alive)} services (the last node)")
        print()
        print("| measured | p50 | p99 | max |")
        print("|---|---|---|---|")
        for what, values in (
            ("static.json renamed -> ALIVE on node 1", prop.node1_alive),
            ("static.json renamed -> ALIVE on every node", prop.alive),
            ("static.json renamed -> served by every node's HAProxy", prop.served),
            ("ALIVE on node 1 -> ALIVE on every node", prop.gossip_alive),
            ("ALIVE on node 1 -> served by every node's HAProxy", prop.gossip_served),
        ):
            print(f"| {what} | {spread(values)} |")
        for failure in prop.failures:
            print(f"- FAILED: {failure}")
    if crashes:
        print()
        print("Detection: the last node's service TOMBSTONE on every other node")
        print()
        print("| nodes | signal | each | median |")
        print("|---|---|---|---|")
    for crash in crashes:
        good &= not crash.failures
        for what, values in (("kill -9", crash.kill9), ("SIGTERM", crash.sigterm)):
            each = ", ".join(ms(v) for v in values) or "-"
            median = ms(statistics.median(values)) if values else "-"
            print(f"| {crash.who} | {what} | {each} | {median} |")
        for failure in crash.failures:
            print(f"- FAILED ({crash.who}): {failure}")
    for idle in idles:
        print()
        print(
            f"Idle, {idle.who}, {idle.per_service} services per node "
            f"({idle.per_service * nodes} in all), over {idle.seconds:.1f} s, bytes in + out "
            "per second"
        )
        print()
        print("| node | /metrics (all) | of which UDP | veth (ip -s link) |")
        print("|---|---|---|---|")
        for key, veth in idle.veth.items():
            metric = f"{idle.metric[key]:,.0f}" if key in idle.metric else "-"
            udp = f"{idle.metric_udp[key]:,.0f}" if key in idle.metric_udp else "-"
            print(f"| {key} | {metric} | {udp} | {veth:,.0f} |")
        metric_median = f"{statistics.median(idle.metric.values()):,.0f}" if idle.metric else "-"
        veth_median = f"{statistics.median(idle.veth.values()):,.0f}" if idle.veth else "-"
        print(f"| median | {metric_median} | | {veth_median} |")
    if memory is not None:
        print()
        print(
            f"Memory, {nodes} x {memory.per_service} services "
            f"(converged after {memory.converged:.1f} s)"
        )
        print()
        print("| node | VmRSS | VmHWM |")
        print("|---|---|---|")
        for key, rss in memory.rss.items():
            print(f"| {key} | {rss / d.MIB:.1f} MiB | {memory.hwm[key] / d.MIB:.1f} MiB |")
    print()
    print("all measured" if good else "NOT ALL MEASURED")
    return good


# ---------------------------------------------------------------------------- main


def leftover_namespaces() -> list[str]:
    names = ip("netns", "list", check=False).stdout.split("\n")
    return [n.split()[0] for n in names if n.startswith(NS_PREFIX)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5, help="daemons (5; 2..30)")
    parser.add_argument("--services", type=int, default=50, help="propagation samples (50)")
    parser.add_argument("--repeat", type=int, default=3, help="kill -9 and SIGTERM each (3)")
    parser.add_argument("--idle", type=float, default=30.0, help="idle window, s (30)")
    parser.add_argument("--idle-services", type=int, default=100, help="per node (100)")
    parser.add_argument("--memory-services", type=int, default=200, help="per node (200)")
    parser.add_argument("--part", default=",".join(PARTS), help=f"of {','.join(PARTS)}")
    parser.add_argument(
        "--go", action="store_true", help=f"crash, idle: also {GO_BINARY} nodes, side by side"
    )
    args = parser.parse_args()
    parts = [p for p in args.part.split(",") if p]
    if any(p not in PARTS for p in parts):
        parser.error(f"--part takes {', '.join(PARTS)}, not {args.part}")
    if not 2 <= args.nodes <= 30 or not 1 <= args.services <= 500 or not 1 <= args.repeat <= 10:
        parser.error("--nodes must be 2..30, --services 1..500, --repeat 1..10")
    if not 1 <= args.idle <= 600 or not 1 <= args.memory_services <= 2000:
        parser.error("--idle must be 1..600 s, --memory-services 1..2000")
    if args.go and not GO_BINARY.exists():
        parser.error(f"--go needs the Go Sidecar at {GO_BINARY}")
    if os.geteuid() != 0:
        raise SystemExit("this benchmark makes network namespaces: run it as root")
    for tool in ("haproxy", "busybox", "unshare", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-cluster-"))
    began = time.monotonic()
    cluster: Cluster | None = None
    prop = memory = None
    crashes: list[Crash] = []
    idles: list[Idle] = []
    good = False
    try:
        with sigterm_as_interrupt():
            runs = [(p, False) for p in parts]
            runs += [(p, True) for p in ("crash", "idle") if args.go and p in parts]
            for part, go in runs:
                cluster = Cluster(root, args.nodes, go=go)
                try:
                    if part == "propagation":
                        prop = run_propagation(cluster, args.services)
                    elif part == "crash":
                        crashes.append(run_crash(cluster, args.repeat))
                    elif part == "idle":
                        idles.append(run_idle(cluster, args.idle_services, args.idle))
                    else:
                        memory = run_memory(cluster, args.memory_services)
                except RuntimeError as exc:
                    print(f"[{part}] FAILED: {exc}")
                    for node in cluster.nodes:
                        print(f"  {node.name} log (last lines):\n{node.log_tail(8)}")
                finally:
                    cluster.teardown()
                    cluster = None
            good = report(args.nodes, prop, crashes, idles, memory, time.monotonic() - began)
    except KeyboardInterrupt:
        print("interrupted; stopping everything it started", flush=True)
        raise SystemExit(130) from None
    finally:
        if cluster is not None:
            cluster.teardown()
        kill_pids(pids_mentioning(str(root)))
        for name in leftover_namespaces():
            ip("netns", "delete", name, check=False)
        shutil.rmtree(root, ignore_errors=True)
        left = [p for p in pids_mentioning(str(root)) if alive(p)]
        if left:
            print(f"processes left: {left}")
    if not good:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
