"""Five `sidecar run` daemons, each in its own network and UTS namespace, one cluster, real
traffic through every node's HAProxy (issue 12).

The network is the test's own: a "switch" namespace holds a bridge; each node namespace
has a veth on it (10.99.0.N/24), its own host name (`unshare --uts`), HAProxy's bind IP
192.168.168.168 on its `lo`, and a daemon joining through node 1. Node 1 also runs a
busybox httpd on 10.99.0.1:18080, announced by static discovery. No address outside the
namespaces this test makes is ever sent anything.

- every node lists the five members and the service ALIVE, and a request to node 5's
  HAProxy (192.168.168.168:18080, inside node 5) is answered by the httpd on node 1;
- SIGTERM of node 1: every other node tombstones its service at once and stops serving it.
"""

from __future__ import annotations

import json
import signal
import sys
import uuid
from typing import Any

import pytest

from .conftest import REPO, daemon_environment, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.haproxy]

NODES = 5
SUBNET = "10.99.0"
BIND_IP = "192.168.168.168"

FETCH = """\
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=2) as reply:
        sys.stdout.write(f"{reply.status} {reply.read().decode()}")
except Exception as exc:
    sys.stdout.write(f"error {exc}")
"""


def fetch(ns: Any, url: str) -> str:
    return ns.run(sys.executable, "-c", FETCH, url, check=False).stdout


def api(ns: Any, ip: str, path: str) -> dict[str, Any] | None:
    text = fetch(ns, f"http://{ip}:7777{path}")
    if not text.startswith("200 "):
        return None
    return json.loads(text[4:])


@pytest.fixture
def lan(netns):
    """The switch namespace with its bridge, and a function that plugs a node into it."""
    switch = netns()
    switch.ip("link", "add", "br0", "type", "bridge")
    switch.ip("link", "set", "br0", "up")

    def plug(ns: Any, index: int) -> str:
        outside, inside = f"n{index}-{uuid.uuid4().hex[:4]}", "eth0"
        switch.ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        switch.ip("link", "set", inside, "netns", ns.name)
        switch.ip("link", "set", outside, "master", "br0")
        switch.ip("link", "set", outside, "up")
        ip = f"{SUBNET}.{index}"
        ns.ip("addr", "add", f"{ip}/24", "dev", inside)
        ns.ip("link", "set", inside, "up")
        ns.ip("addr", "add", f"{BIND_IP}/32", "dev", "lo")
        return ip

    return plug


def test_five_namespaced_daemons_serve_each_others_services(netns, lan, loopback, tmp_path):
    nodes: list[tuple[Any, str, Any]] = []
    for index in range(1, NODES + 1):
        ns = netns()
        ip = lan(ns, index)
        home = tmp_path / f"node{index}"
        home.mkdir()
        static = []
        if index == 1:
            www = home / "www"
            www.mkdir()
            (www / "index.html").write_text("served by node1")
            ns.start("busybox", "httpd", "-f", "-p", f"{ip}:18080", "-h", str(www), name="httpd")
            static = [
                {
                    "Service": {
                        "Name": "web",
                        "Image": "web:1",
                        "Ports": [{"Type": "tcp", "Port": 18080, "ServicePort": 18080}],
                    },
                    "Check": {"Type": "AlwaysSuccessful"},
                }
            ]
        (home / "static.json").write_text(json.dumps(static))
        env = daemon_environment(
            home,
            loopback,
            SIDECAR_ADVERTISE_IP=ip,
            SIDECAR_HTTP_ADDRESS=f"{ip}:7777",
            SIDECAR_SEEDS=f"{SUBNET}.1",
            SIDECAR_DISCOVERY="static",
            STATIC_CONFIG_FILE=str(home / "static.json"),
            HAPROXY_BIND_IP=BIND_IP,
            HAPROXY_STATS_PORT="29000",
            HAPROXY_STATS_BACKEND_PORT="29001",
            HAPROXY_STOP_ON_EXIT="true",
        )
        env.pop("SIDECAR_HOSTNAME")  # the UTS namespace's host name, as in production
        name = f"node{index}"
        command = f"hostname {name} && exec {sys.executable} -m sidecar run"
        proc = ns.start("unshare", "--uts", "sh", "-c", command, name="sidecar", env=env, cwd=REPO)
        nodes.append((ns, ip, proc))
    names = {f"node{i}" for i in range(1, NODES + 1)}

    def converged() -> bool:
        for ns, ip, _ in nodes:
            document = api(ns, ip, "/api/services.json")
            if document is None or set(document["ClusterMembers"]) != names:
                return False
            records = document["Services"].get("web", [])
            if [(r["Hostname"], r["Status"]) for r in records] != [("node1", 0)]:
                return False
        return True

    wait_for(converged, what="five members, each showing node1's web ALIVE", timeout=40)
    for ns, _, _ in nodes:
        wait_for(
            lambda ns=ns: fetch(ns, f"http://{BIND_IP}:18080/") == "200 served by node1",
            what=f"{ns.name}'s HAProxy serving node1's httpd",
            timeout=20,
        )

    _, _, first = nodes[0]
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=5) == 0

    def tombstoned_everywhere() -> bool:
        for ns, ip, _ in nodes[1:]:
            document = api(ns, ip, "/api/services.json")
            records = [] if document is None else document["Services"].get("web", [])
            if [r["Status"] for r in records] != [1]:
                return False
        return True

    wait_for(tombstoned_everywhere, what="node1's web tombstoned on the others", timeout=5)
    last_ns = nodes[-1][0]
    wait_for(
        lambda: not fetch(last_ns, f"http://{BIND_IP}:18080/").startswith("200"),
        what="node5's HAProxy no longer serving node1's httpd",
        timeout=10,
    )
