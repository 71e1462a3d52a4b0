"""`sidecar run` daemons forming a cluster on loopback.

Three real daemons, each on its own 127.0.0.x (API and gossip), static discovery of one
service each, HAProxy off; the second and third join through the first as their seed:
- every daemon lists every member in `ClusterMembers` and every service ALIVE;
- SIGTERM of one: it leaves, and the others tombstone its service at once (under 1 s);
- kill -9 of one: the others declare it dead and tombstone its service within the
  suspicion bound (3 members: 5 s, plus probing);
- with a gossip key, a daemon with another key, one with none, and one of another cluster
  name are all refused (counted), and the cluster's view stays its own.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import time
import uuid

import pytest

from sidecar.cluster.membership import Config, suspicion_bounds

from .conftest import REPO, daemon_environment, http_request, wait_for

pytestmark = [pytest.mark.cluster]


def services(address: str) -> dict[str, object]:
    reply = http_request(f"http://{address}/api/services.json")
    assert reply.status == 200
    return json.loads(reply.body)


def member_states(address: str) -> dict[str, str]:
    reply = http_request(f"http://{address}/api/members")
    assert reply.status == 200
    return {m["Name"]: m["State"] for m in json.loads(reply.body)["Members"]}


def metric(address: str, name: str) -> float:
    """Return the sum of a metric's samples at `address` (0 when absent)."""
    reply = http_request(f"http://{address}/metrics")
    lines = reply.body.decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def statuses(address: str) -> dict[str, int]:
    """Return hostname/service name -> status as the daemon at `address` shows them."""
    document = services(address)
    return {
        f"{r['Hostname']}/{name}": r["Status"]
        for name, records in document["Services"].items()
        for r in records
    }


@pytest.fixture
def cluster(spawn, loopback, tmp_path):
    """Factory: start a daemon named `name` on a fresh loopback address, seeded by `seed`."""

    def start(name: str, seed: str | None = None, **settings: str) -> tuple[str, object]:
        ip = loopback.address([7777, 7946])
        home = tmp_path / name
        home.mkdir()
        target = {
            "Service": {
                "Name": f"{name}-web",
                "Image": "img:1",
                "Ports": [{"Type": "tcp", "Port": 18080, "ServicePort": 18080}],
            },
            "Check": {"Type": "AlwaysSuccessful"},
        }
        (home / "static.json").write_text(json.dumps([target]))
        env = daemon_environment(
            home,
            loopback,
            SIDECAR_HOSTNAME=f"{name}-{uuid.uuid4().hex[:4]}",
            SIDECAR_ADVERTISE_IP=ip,
            SIDECAR_HTTP_ADDRESS=f"{ip}:7777",
            SIDECAR_SEEDS=seed or ip,
            SIDECAR_DISCOVERY="static",
            STATIC_CONFIG_FILE=str(home / "static.json"),
            HAPROXY_DISABLE="true",
            **settings,
        )
        proc = spawn.start([sys.executable, "-m", "sidecar", "run"], name=name, env=env, cwd=REPO)
        return f"{ip}:7777", (proc, env["SIDECAR_HOSTNAME"])

    return start


def test_daemons_join_share_services_and_see_a_leave_and_a_crash(cluster):
    first, (_, first_name) = cluster("a")
    seed = first.rsplit(":", 1)[0]
    second, (second_proc, second_name) = cluster("b", seed)
    third, (third_proc, third_name) = cluster("c", seed)
    addresses = [first, second, third]
    names = {first_name, second_name, third_name}

    def everyone_sees_everything() -> bool:
        for address in addresses:
            document = services(address)
            if set(document["ClusterMembers"]) != names:
                return False
            shown = statuses(address)
            if [shown.get(f"{n}/{n.split('-')[0]}-web") for n in sorted(names)] != [0, 0, 0]:
                return False
        return True

    wait_for(everyone_sees_everything, what="three members sharing three services", timeout=20)
    assert member_states(first) == dict.fromkeys(names, "alive")
    assert metric(first, "sidecar_gossip_messages_total") > 0
    assert metric(first, 'sidecar_gossip_members{state="alive"}') == 3
    # The second and third joined through the first: a push/pull each started, and answered.
    assert metric(second, 'sidecar_gossip_push_pulls_total{result="ok"}') >= 1

    # SIGTERM: a graceful leave, seen at once.
    stopped = time.monotonic()
    second_proc.send_signal(signal.SIGTERM)
    assert second_proc.wait(timeout=5) == 0
    key = f"{second_name}/b-web"
    wait_for(
        lambda: all(statuses(a).get(key) == 1 for a in (first, third)),
        what="b's service tombstoned after its SIGTERM",
        timeout=5,
        interval=0.05,
    )
    assert time.monotonic() - stopped < 2.0  # the exit (< 1 s) and the leave, not a timeout
    assert set(services(first)["ClusterMembers"]) == {first_name, third_name}
    assert member_states(first)[second_name] == "left"

    # kill -9: no word; the suspicion bound of a 2-node list after it (and probing).
    minimum, _ = suspicion_bounds(Config(name="x", addr=b"\0\0\0\0", port=0), 2)
    third_proc.kill()
    third_proc.wait(timeout=5)
    wait_for(
        lambda: statuses(first).get(f"{third_name}/c-web") == 1,
        what="c's service tombstoned after kill -9",
        timeout=minimum / 1e9 + 10,
    )
    assert set(services(first)["ClusterMembers"]) == {first_name}
    assert member_states(first)[third_name] == "dead"


def test_a_gossip_key_or_a_cluster_name_keeps_out_who_does_not_share_it(cluster):
    key = base64.b64encode(bytes(range(32))).decode()
    first, (_, first_name) = cluster("k1", SIDECAR_GOSSIP_KEY=key)
    seed = first.rsplit(":", 1)[0]
    second, (_, second_name) = cluster("k2", seed, SIDECAR_GOSSIP_KEY=key)
    wait_for(
        lambda: all(
            set(services(a)["ClusterMembers"]) == {first_name, second_name} for a in (first, second)
        ),
        what="two members sharing a key",
        timeout=20,
    )
    other_key = base64.b64encode(bytes(32)).decode()
    wrong, _ = cluster("k3", seed, SIDECAR_GOSSIP_KEY=other_key)
    plain, _ = cluster("k4", seed)
    stranger, _ = cluster("k5", seed, SIDECAR_GOSSIP_KEY=key, SIDECAR_CLUSTER_NAME="other")
    # Each outsider tries to join (and keeps trying); the first refuses every attempt.
    wait_for(
        lambda: metric(first, "sidecar_gossip_rejected_total") >= 3,
        what="three outsiders refused",
        timeout=20,
    )
    assert set(services(first)["ClusterMembers"]) == {first_name, second_name}
    assert set(member_states(first)) == {first_name, second_name}
    for outsider in (wrong, plain, stranger):
        assert len(services(outsider)["ClusterMembers"]) == 1
