"""Hand check (issue 12; never run in CI): a Python `sidecar run` daemon and two Go Sidecars
in one cluster, each in its own network and UTS namespace on a bridge this script makes.

    usage: daemon_with_go.py py-joins-go|go-joins-py   (root; GO_SIDECAR_DIR as run-go-node.sh)

py (10.77.1.1) runs the Python daemon with managed HAProxy on 192.168.168.168 in its
namespace and static service py-web (a busybox httpd on :18081); go1 (10.77.1.2) and go2
(10.77.1.3) run the Go Sidecar with static service go-web (a busybox httpd on :18080 in each)
and no HAProxy. It checks, printing each step with its time:

1. every node lists the three members, and go-web (on go1 and go2) and py-web ALIVE;
2. py's HAProxy serves go-web (a request inside py to 192.168.168.168:18080 is answered by a
   Go host's httpd);
3. kill -9 of go2 (py-joins-go; SIGTERM in go-joins-py): py tombstones go2's go-web and
   shows go2 dead;
4. SIGTERM of py: go1 shows py-web Tombstone (Go hears our leave).
5. py-joins-go only, before 3: py is killed with -9, go1 tombstones py-web, py is
   restarted: it rejoins, and its py-web is ALIVE on go1 again.

Everything it makes (namespaces, processes) is removed on the way out. Traffic goes only to
the namespaces it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GO_DIR = Path(os.environ.get("GO_SIDECAR_DIR", "/work/gosidecar"))
REPO = Path(__file__).resolve().parents[2]
PREFIX = "gpy"
SUBNET = "10.77.1"
NODES = {"py": 1, "go1": 2, "go2": 3}
BIND_IP = "192.168.168.168"
STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.2f}s] {text}", flush=True)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def ns(name: str) -> str:
    return f"{PREFIX}-{name}"


def in_ns(name: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns(name), *args]


def fetch(name: str, url: str) -> str:
    code = (
        "import sys, urllib.request\n"
        "o = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        "try:\n"
        "    r = o.open(sys.argv[1], timeout=2)\n"
        "    sys.stdout.write(f'{r.status} ' + r.read().decode())\n"
        "except Exception as e:\n"
        "    sys.stdout.write(f'error {e}')\n"
    )
    return subprocess.run(
        in_ns(name, sys.executable, "-c", code, url), capture_output=True, text=True, timeout=10
    ).stdout


def api(name: str, path: str) -> Any:
    text = fetch(name, f"http://{SUBNET}.{NODES[name]}:7777{path}")
    return json.loads(text[4:]) if text.startswith("200 ") else None


def wait(what: str, condition: Callable[[], bool], within: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < within:
        if condition():
            took = time.monotonic() - began
            say(f"ok: {what} ({took:.2f} s)")
            return took
        time.sleep(0.1)
    if "py" in NODES:
        say(f"py /api/rejections: {api('py', '/api/rejections')}")
        say(f"py /api/services.json: {json.dumps(api('py', '/api/services.json'))[:3000]}")
    raise SystemExit(f"FAILED: {what} (not within {within} s)")


def statuses(name: str) -> dict[tuple[str, str], int]:
    document = api(name, "/api/services.json")
    if document is None:
        return {}
    return {
        (r["Hostname"], r["Name"]): r["Status"]
        for records in document["Services"].values()
        for r in records
    }


def members(name: str) -> dict[str, str]:
    """Member states as the node's API tells them (Go: ClusterMembers only, all 'alive')."""
    if name == "py":
        document = api(name, "/api/members")
        return {} if document is None else {m["Name"]: m["State"] for m in document["Members"]}
    document = api(name, "/api/services.json")
    return {} if document is None else dict.fromkeys(document["ClusterMembers"], "alive")


class Cluster:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.helpers: list[subprocess.Popen[bytes]] = []

    def network(self) -> None:
        sh("ip", "netns", "add", ns("sw"))
        sh("ip", "-n", ns("sw"), "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns("sw"), "link", "set", "br0", "up")
        for name, index in NODES.items():
            sh("ip", "netns", "add", ns(name))
            sh("ip", "-n", ns(name), "link", "set", "lo", "up")
            outside = f"{PREFIX}{index}"
            sh("ip", "-n", ns("sw"), "link", "add", outside, "type", "veth", "peer", "name", "eth0")
            sh("ip", "-n", ns("sw"), "link", "set", "eth0", "netns", ns(name))
            sh("ip", "-n", ns("sw"), "link", "set", outside, "master", "br0")
            sh("ip", "-n", ns("sw"), "link", "set", outside, "up")
            sh("ip", "-n", ns(name), "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
            sh("ip", "-n", ns(name), "link", "set", "eth0", "up")
            www = self.home / name / "www"
            www.mkdir(parents=True)
            (www / "index.html").write_text(f"served by {name}")
            port = "18081" if name == "py" else "18080"
            self.helpers.append(
                subprocess.Popen(
                    [
                        *in_ns(name, "busybox", "httpd", "-f", "-p", f"{SUBNET}.{index}:{port}"),
                        "-h",
                        str(www),
                    ]
                )
            )
        sh("ip", "-n", ns("py"), "addr", "add", f"{BIND_IP}/32", "dev", "lo")

    def start_go(self, name: str, seed: str) -> None:
        ip = f"{SUBNET}.{NODES[name]}"
        static = self.home / name / "static.json"
        static.write_text(
            json.dumps(
                [
                    {
                        "Service": {
                            "Name": "go-web",
                            "Image": "go-web:1",
                            "Ports": [{"Type": "tcp", "Port": 18080, "ServicePort": 18080}],
                        },
                        "Check": {"Type": "AlwaysSuccessful"},
                    }
                ]
            )
        )
        command = (
            f"hostname {name}; SIDECAR_DISCOVERY=static STATIC_CONFIG_FILE={static} "
            f"HAPROXY_DISABLE=true SIDECAR_ADVERTISE_IP={ip} SIDECAR_SEEDS={seed} "
            f"exec {GO_DIR}/sidecar-go"
        )
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            in_ns(name, "unshare", "--uts", "sh", "-c", command),
            cwd=GO_DIR / "src",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        say(f"started Go {name} at {ip}, seed {seed}")

    def start_py(self, seed: str) -> None:
        ip = f"{SUBNET}.1"
        home = self.home / "py"
        static = home / "static.json"
        static.write_text(
            json.dumps(
                [
                    {
                        "Service": {
                            "Name": "py-web",
                            "Image": "py-web:1",
                            "Ports": [{"Type": "tcp", "Port": 18081, "ServicePort": 18081}],
                        },
                        "Check": {"Type": "AlwaysSuccessful"},
                    }
                ]
            )
        )
        env = {
            "PATH": os.environ["PATH"],
            "SIDECAR_CONFIG_FILE": "",
            "SIDECAR_ADVERTISE_IP": ip,
            "SIDECAR_SEEDS": seed,
            "SIDECAR_HTTP_ADDRESS": f"{ip}:7777",
            "SIDECAR_DISCOVERY": "static",
            "STATIC_CONFIG_FILE": str(static),
            "HAPROXY_BIND_IP": BIND_IP,
            "HAPROXY_CONFIG_FILE": str(home / "haproxy.cfg"),
            "HAPROXY_PID_FILE": str(home / "haproxy.pid"),
            "HAPROXY_MASTER_SOCKET": str(home / "master.sock"),
            "HAPROXY_ADMIN_SOCKET": str(home / "admin.sock"),
            "HAPROXY_STOP_ON_EXIT": "true",
        }
        log = open(self.home / "py.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs["py"] = subprocess.Popen(
            in_ns(
                "py",
                "unshare",
                "--uts",
                "sh",
                "-c",
                f"hostname py; exec {sys.executable} -m sidecar run",
            ),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        say(f"started Python py at {ip}, seed {seed}")

    def signal(self, name: str, signum: int) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signum)
        proc.wait(timeout=10)
        say(f"{name}: {signal.Signals(signum).name}, exit {proc.returncode}")

    def close(self) -> None:
        for proc in [*self.procs.values(), *self.helpers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for name in [*NODES, "sw"]:
            # Anything still running in the namespace (HAProxy, a Go child) goes with it.
            pids = sh("ip", "netns", "pids", ns(name), check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns(name), check=False)


def everyone_sees(expected: dict[tuple[str, str], int], names: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            {k: v for k, v in statuses(n).items() if k in expected} == expected for n in names
        )

    return check


def main(mode: str) -> None:
    home = Path(tempfile.mkdtemp(prefix="sidecar-gopy-"))
    cluster = Cluster(home)
    try:
        cluster.network()
        if mode == "py-joins-go":
            cluster.start_go("go1", f"{SUBNET}.2")
            cluster.start_go("go2", f"{SUBNET}.2")
            wait("go1 and go2 formed a cluster", lambda: len(members("go1")) == 2, 30)
            cluster.start_py(f"{SUBNET}.2")
        else:
            cluster.start_py(f"{SUBNET}.1")
            wait("py up alone", lambda: members("py") == {"py": "alive"}, 30)
            cluster.start_go("go1", f"{SUBNET}.1")
            cluster.start_go("go2", f"{SUBNET}.1")
        everything = {("go1", "go-web"): 0, ("go2", "go-web"): 0, ("py", "py-web"): 0}
        wait(
            "three members on every node",
            lambda: all(set(members(n)) == set(NODES) for n in NODES),
            30,
        )
        wait("go-web x2 and py-web ALIVE on every node", everyone_sees(everything, list(NODES)), 30)
        wait(
            "py's HAProxy serves go-web from a Go host",
            lambda: fetch("py", f"http://{BIND_IP}:18080/").startswith("200 served by go"),
            30,
        )
        say(f"py /api/members: {members('py')}")
        if mode == "py-joins-go":
            cluster.signal("py", signal.SIGKILL)
            wait(
                "go1 tombstones py-web after py's kill -9",
                everyone_sees({("py", "py-web"): 1}, ["go1"]),
                60,
            )
            cluster.start_py(f"{SUBNET}.2")
            wait(
                "a restarted py rejoins: py-web ALIVE on go1",
                everyone_sees(everything, ["go1"]),
                40,
            )
            wait("... and py sees both Go services", everyone_sees(everything, ["py"]), 40)
        # Go never leaves: its SIGTERM is a crash to the others, as kill -9 is.
        ending = signal.SIGKILL if mode == "py-joins-go" else signal.SIGTERM
        cluster.signal("go2", ending)
        gone = {("go2", "go-web"): 1}
        wait(f"py tombstones go2's go-web after {ending.name}", everyone_sees(gone, ["py"]), 40)
        wait("py shows go2 dead", lambda: members("py").get("go2") == "dead", 10)
        wait("go1 tombstones go2's go-web", everyone_sees(gone, ["go1"]), 60)
        cluster.signal("py", signal.SIGTERM)
        wait(
            "go1 shows py-web Tombstone after py's SIGTERM",
            everyone_sees({("py", "py-web"): 1}, ["go1"]),
            10,
        )
        say(f"PASSED ({mode}); logs in {home}")
    finally:
        cluster.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("py-joins-go", "go-joins-py"):
        raise SystemExit(__doc__)
    main(sys.argv[1])
