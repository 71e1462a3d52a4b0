"""The seed's networking path, for real: a container on the Docker bridge calls
`http://192.168.168.168:8080/` and is answered by the service through the sidecar container's
HAProxy (the seed's docker/README.md, "How It Works").

Every address is one the test made: a Docker Engine of the test's own runs in a network
namespace the test makes (`sc-test-*`), with its own data root, exec root, socket and
`docker0` bridge (BRIDGE), its own containerd and its own iptables. The sidecar image and the
busybox test image are copied into it without a registry (`docker save | docker load`). Then,
against that engine only:

1. the sidecar image runs as docker/run runs it: host networking (the namespace's network),
   the inner engine's socket as /var/run/docker.sock, SidecarDiscover=false, NET_ADMIN,
   SIDECAR_SEEDS=127.0.0.1, nothing else. Its entrypoint adds 192.168.168.168 to the
   namespace's `lo`; the daemon advertises the bridge's address (the only private one there);
2. the seed's example service (busybox httpd, HealthCheck=HttpGet, ServicePort_80=8080, -P)
   runs on the inner bridge;
3. a client container on the inner bridge sends one request with busybox `nc` (its `wget`
   segfaults in these images) to 192.168.168.168:8080 and gets the service's page; HAProxy's
   stats count exactly that one session on the 8080 frontend.

dockerd is started with `nsenter --net` rather than `ip netns exec`: the latter mounts a
fresh /sys, which hides the cgroup hierarchies under /sys/fs/cgroup and dockerd refuses to
start ("Devices cgroup isn't mounted"). The test reaches the namespace's addresses (the API,
HAProxy's stats) with this interpreter run under `nsenter --net`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import wait_for
from .inner_engine import InnerEngine, get_in_namespace, running_engine
from .test_image import IMAGE as SIDECAR_IMAGE
from .test_image import sidecar_image  # noqa: F401 -- the session fixture that builds SIDECAR_IMAGE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .conftest import Netns

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.usefixtures("sidecar_image")]

BUSYBOX = "sidecar-test-busybox:latest"
BRIDGE_IP = "10.213.0.1"  # docker0 inside the namespace; nothing outside it has this network
BRIDGE = f"{BRIDGE_IP}/24"
HAPROXY_IP = "192.168.168.168"
SERVICE_PORT = 8080
STATS_PORT = 32012  # HAPROXY_STATS_BACKEND_PORT's default: the stats page, on HAPROXY_IP
API = f"http://{BRIDGE_IP}:7777"  # the image's http_address is 0.0.0.0:7777: the namespace's
SEED_LABELS = {
    "HealthCheck": "HttpGet",
    "ServicePort_80": str(SERVICE_PORT),
    "HealthCheckArgs": "http://{{ host }}:{{ tcp 8080 }}/",
}
ALIVE = 0
# The client's request (busybox nc: HTTP/1.0, the server closes the connection).
NC_GET = (
    f"printf 'GET / HTTP/1.0\\r\\nHost: {HAPROXY_IP}\\r\\n\\r\\n' "
    f"| nc -w 3 {HAPROXY_IP} {SERVICE_PORT}"
)


@pytest.fixture
def inner_engine(netns: Callable[[], Netns], tmp_path: Path) -> Iterator[InnerEngine]:
    """A Docker Engine of the test's own in a fresh namespace, up and answering."""
    with running_engine(netns(), tmp_path / "inner-dockerd.log", bridge=BRIDGE) as engine:
        yield engine


def alive_record(engine: InnerEngine, sid: str) -> dict[str, Any] | None:
    status, body = get_in_namespace(engine, BRIDGE_IP, 7777, "/api/services.json")
    assert status == 200, (status, body)
    for records in json.loads(body)["Services"].values():
        for record in records:
            if record["ID"] == sid and record["Status"] == ALIVE:
                return record
    return None


def frontend_stats(engine: InnerEngine, port: int) -> dict[str, str] | None:
    """Return the stats row of HAProxy's frontend on `port` and its server's status, if any."""
    status, body = get_in_namespace(engine, HAPROXY_IP, STATS_PORT, "/;csv;norefresh")
    assert status == 200, (status, body)
    rows = list(csv.DictReader(io.StringIO(body.decode().lstrip("# "))))
    fronts = [r for r in rows if r["svname"] == "FRONTEND" and r["pxname"].endswith(f"-{port}")]
    if len(fronts) != 1:
        return None
    name = fronts[0]["pxname"]
    servers = [
        r for r in rows if r["pxname"] == name and r["svname"] not in ("FRONTEND", "BACKEND")
    ]
    return {**fronts[0], "servers": " ".join(f"{r['svname']}={r['status']}" for r in servers)}


def served_through_haproxy(engine: InnerEngine) -> dict[str, str] | None:
    """Return the 8080 frontend's stats once HAProxy has it with a server."""
    stats = frontend_stats(engine, SERVICE_PORT)
    return stats if stats and stats["servers"] else None


def test_a_container_on_the_bridge_reaches_the_service_through_the_sidecar_containers_haproxy(
    inner_engine: InnerEngine,
) -> None:
    engine = inner_engine
    t0 = time.monotonic()
    loaded = engine.load(SIDECAR_IMAGE, BUSYBOX)
    print(f"images loaded into the inner engine in {loaded:.1f}s")

    # 1. As docker/run runs it, against the inner engine.
    sidecar = engine.run(
        SIDECAR_IMAGE,
        labels={"SidecarDiscover": "false"},
        environment={"SIDECAR_SEEDS": "127.0.0.1"},
        network_mode="host",
        cap_add=["NET_ADMIN"],
        volumes={str(engine.socket): {"bind": "/var/run/docker.sock", "mode": "rw"}},
    )

    def logs() -> str:
        return sidecar.logs().decode(errors="replace") + "\n--- dockerd:\n" + engine.log_tail()

    wait_for(
        lambda: get_in_namespace(engine, BRIDGE_IP, 7777, "/api/services.json")[0] == 200,
        what="the sidecar container's API",
        timeout=30,
    )
    # The entrypoint (NET_ADMIN) bound the HAProxy IP on the namespace's lo.
    assert f"inet {HAPROXY_IP}/32" in engine.ns.ip("addr", "show", "dev", "lo").stdout, logs()
    assert f"added {HAPROXY_IP}/32 to lo" in logs(), logs()

    # 2. The seed's example service, on the inner bridge, ports published (-P).
    service = engine.run(BUSYBOX, labels=SEED_LABELS, publish_all_ports=True)
    sid = service.id[:12]
    record = wait_for(lambda: alive_record(engine, sid), what=f"{sid} ALIVE", timeout=30)
    port_8080 = [p for p in record["Ports"] if p["ServicePort"] == SERVICE_PORT]
    # Advertised on the bridge's address: the namespace's only private one.
    assert [p["IP"] for p in port_8080] == [BRIDGE_IP], record

    # 3. A client on the bridge (not host networking), asking 192.168.168.168 as the seed says.
    client = engine.run(BUSYBOX, ["sleep", "300"])
    client_ip = client.attrs["NetworkSettings"]["IPAddress"]
    assert client_ip.startswith(BRIDGE_IP.rsplit(".", 1)[0] + "."), client.attrs["NetworkSettings"]
    before = wait_for(
        lambda: served_through_haproxy(engine), what="HAProxy's 8080 frontend up", timeout=30
    )

    code, out = client.exec_run(["sh", "-c", NC_GET])
    reply = out.decode(errors="replace")
    assert code == 0, (code, reply, logs())
    assert reply.startswith("HTTP/1.1 200"), (reply, logs())
    assert "sidecar-test-busybox" in reply, reply  # the service's page

    # HAProxy counted it: exactly one more session on the 8080 frontend (only the client
    # connects there; the daemon's health checks go to the published port directly).
    sessions = int(before["stot"]) + 1
    after = wait_for(
        lambda: (s := frontend_stats(engine, SERVICE_PORT)) and int(s["stot"]) >= sessions and s,
        what=f"{sessions} sessions on HAProxy's 8080 frontend",
        timeout=10,
    )
    assert int(after["stot"]) == sessions, (before, after)
    assert int(after["hrsp_2xx"]) == int(before["hrsp_2xx"]) + 1, (before, after)
    print(f"from the images loaded to the answer: {time.monotonic() - t0 - loaded:.1f}s")
