"""Five `sidecar run` daemons, each in its own network and UTS namespace, one cluster, real
traffic through every node's HAProxy. The harness is cluster_netns_kit.py.

Each node is 10.99.0.N on a bridge the test makes, named `nodeN`, with HAProxy on
192.168.168.168 in its namespace; every daemon joins through node 1. Node 1 runs a busybox
httpd announced by static discovery as `web` (port 18080); other services are named per test.
Each test prints what it measured (run with `-s` to see the figures).

- five members, `web` and `shop` of node 1 ALIVE everywhere and served by every node's
  HAProxy; `shop` stopped (gone from node 1's static.json): tombstoned on every node and
  served by none; SIGTERM of node 1: every other node tombstones `web` within 2 s of the
  signal and stops serving it;
- kill -9 of node 2: dead and its service tombstoned on every other node within the
  suspicion bound, no longer served;
- a partition of node 3 (its cable pulled) until each side holds the other dead, a change on
  each side that does not cross, then the heal: one view everywhere within one push/pull
  interval;
- kill -9 of node 2, then the same node started again: it rejoins and its service returns;
- bad peers from a sixth namespace (random bytes, truncated packets and streams, oversized
  push/pulls, another cluster's name, another key): counted and refused, views unchanged,
  traffic still served.
"""

from __future__ import annotations

import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from sidecar.cluster import codec
from sidecar.cluster.crypto import Keyring
from sidecar.cluster.errors import DecodeError
from sidecar.cluster.membership import SECOND, SUSPICION_MULT_FAST, Config, suspicion_bounds
from sidecar.cluster.messages import GO_VSN, Alive, Ping, PushPull
from sidecar.cluster.peer import PUSH_PULL_INTERVAL, RECONNECT_INTERVAL, Peer

from .cluster_netns_kit import (
    GOSSIP_PORT,
    SUBNET,
    Cluster,
    Node,
    by_name,
    elapsed_since,
    member_states,
    statuses,
    view,
)
from .conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.haproxy]

NODES = 5
WEB = ("web", 18080)
SWIM = Config(name="bounds", addr=bytes(4), port=0, suspicion_mult=SUSPICION_MULT_FAST)
MIN_SUSPICION, MAX_SUSPICION = suspicion_bounds(SWIM, NODES)
# The suspicion bound for 5 nodes (cluster-wire.md §5.4, membership.suspicion_bounds):
#   min = SuspicionMult 4 (the daemon's) × max(1, log10 5) × ProbeInterval 1 s = 4 s
#   max = SuspicionMaxTimeoutMult 6 × min = 24 s
#   k = SuspicionMult − 2 = 2 confirmations expected (n − 2 = 3 ≥ k), so the accuser's
#   timer starts at max (24 s) and falls to min (4 s) once 2 other live nodes have
#   suspected the node too.
# Before the first suspicion, the probe schedule: each node probes one member per probe
# interval, round robin over its 4 others, so each live node probes the dead one within
# 4 intervals, and a failed probe ends one interval after its ping. Then `dead` is gossiped
# (200 ms rounds) and each node tombstones the dead node's services at once.
PROBE_SCHEDULE = NODES * SWIM.probe_interval  # 4 intervals to reach it + 1 for the probe
DEAD_BOUND = (PROBE_SCHEDULE + MAX_SUSPICION) / SECOND  # 5 s + 24 s = 29 s
assert (MIN_SUSPICION, MAX_SUSPICION) == (4 * SECOND, 24 * SECOND)
SERVE_BOUND = 10.0  # s for a reconcile of HAProxy after the state changed (a busy machine)


@pytest.fixture
def cluster(netns, loopback, tmp_path):
    """An empty bridge to plug nodes into; every worker thread stopped at the end (before
    the namespaces are deleted)."""
    made = Cluster(netns, loopback, tmp_path)
    try:
        yield made
    finally:
        made.close()


def start_five(cluster: Cluster, services: dict[int, list[tuple[str, int]]]) -> list[Node]:
    """Return five running nodes that all list each other and every service in `services`
    (node index -> (name, port), each an httpd of its own) ALIVE, once node 5's HAProxy
    serves every one of them."""
    nodes = cluster.add(NODES)
    expected: dict[tuple[str, str], list[int]] = {}
    for index, named in services.items():
        for name, port in named:
            nodes[index - 1].serve(name, port)
            expected[(f"node{index}", name)] = [0]
    began = time.monotonic()
    cluster.start()
    names = cluster.names()

    def converged(node: Node) -> bool:
        shown = statuses(node)
        document = node.api("/api/services.json")
        if shown is None or document is None or set(document["ClusterMembers"]) != names:
            return False
        return {key: by_name(shown, *key) for key in expected} == expected

    wait_for(
        lambda: all(cluster.each(converged)), what="five members and every service", timeout=40
    )
    for index, named in services.items():
        for name, port in named:
            text = f"{name} on node{index}"
            wait_for(
                lambda port=port, text=text: nodes[-1].proxied(port) == f"200 {text}",
                what=f"node5's HAProxy serving {text}",
                timeout=20,
            )
    print(f"five daemons joined and serving in {elapsed_since(began):.2f} s")
    return nodes


def all_see(cluster: Cluster, member: str, state: str, nodes: list[Node]) -> bool:
    """Return whether every one of `nodes` shows `member` in `state`."""
    shown = cluster.each(member_states, nodes)
    return all(s is not None and s.get(member) == state for s in shown)


def tombstoned(cluster: Cluster, host: str, service: str, nodes: list[Node]) -> bool:
    """Return whether every one of `nodes` shows `host`'s `service` TOMBSTONE (and only it)."""
    shown = cluster.each(statuses, nodes)
    return all(s is not None and by_name(s, host, service) == [1] for s in shown)


def alive_everywhere(cluster: Cluster, host: str, service: str) -> bool:
    shown = cluster.each(statuses)
    return all(s is not None and by_name(s, host, service) == [0] for s in shown)


def all_alive(cluster: Cluster) -> bool:
    everyone = dict.fromkeys(cluster.names(), "alive")
    return all(states == everyone for states in cluster.each(member_states))


# ---------------------------------------------------------------- join, serve, SIGTERM


def test_five_namespaced_daemons_serve_each_others_services(cluster):
    nodes = start_five(cluster, {1: [WEB, ("shop", 18081)]})
    first, others = nodes[0], nodes[1:]
    for node in others:  # node 5's was checked: every other HAProxy too
        for port, text in ((18080, "web on node1"), (18081, "shop on node1")):
            wait_for(
                lambda node=node, port=port, text=text: node.proxied(port) == f"200 {text}",
                what=f"{node.name}'s HAProxy serving {text}",
                timeout=20,
            )
    assert all_alive(cluster)

    # A service stopped on node 1: TOMBSTONE on every node, then no HAProxy serves it (its
    # httpd still answers on node 1, so a request through HAProxy that got 200 would show
    # a server left behind).
    began = time.monotonic()
    first.withdraw("shop")
    wait_for(
        lambda: tombstoned(cluster, "node1", "shop", nodes),
        what="node1's shop tombstoned on every node",
        timeout=10,
        interval=0.05,
    )
    print(f"shop withdrawn -> tombstoned on all 5: {elapsed_since(began):.3f} s")
    for node in nodes:
        wait_for(
            lambda node=node: not node.proxied(18081).startswith("200"),
            what=f"{node.name}'s HAProxy no longer serving node1's shop",
            timeout=SERVE_BOUND,
        )
    assert all(node.proxied(18080) == "200 web on node1" for node in nodes)

    # SIGTERM: the daemon exits within a second, gossiping its leave on the way out; the
    # issue asks for tombstoned everywhere within 1 s; asserted under 2 s (polling, a busy
    # machine), the figure printed.
    began = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    wait_for(
        lambda: tombstoned(cluster, "node1", "web", others),
        what="node1's web tombstoned on every other node",
        timeout=5,
        interval=0.02,
    )
    took = elapsed_since(began)
    print(f"SIGTERM -> tombstoned on the 4 others: {took:.3f} s")
    assert first.proc.wait(timeout=5) == 0
    assert took < 2.0, f"SIGTERM to tombstoned everywhere took {took:.2f} s"
    assert all_see(cluster, "node1", "left", others)
    wait_for(
        lambda: not nodes[-1].proxied(18080).startswith("200"),
        what="node5's HAProxy no longer serving node1's httpd",
        timeout=SERVE_BOUND,
    )


# ---------------------------------------------------------------- kill -9


def test_a_killed_node_is_dead_and_its_service_tombstoned_everywhere_within_the_bound(cluster):
    nodes = start_five(cluster, {1: [WEB], 2: [("api", 18082)]})
    second = nodes[1]
    others = [n for n in nodes if n is not second]

    began = time.monotonic()
    second.kill()
    wait_for(
        lambda: (
            tombstoned(cluster, "node2", "api", others)
            and all_see(cluster, "node2", "dead", others)
        ),
        what="node2 dead and its api tombstoned on every other node",
        timeout=DEAD_BOUND,
        interval=0.1,
    )
    took = elapsed_since(began)
    print(f"kill -9 -> dead and tombstoned on the 4 others: {took:.2f} s (bound {DEAD_BOUND:g} s)")
    wait_for(
        lambda: all(not n.proxied(18082).startswith("200") for n in others),
        what="no HAProxy serving node2's api any more",
        timeout=SERVE_BOUND,
    )
    # The others go on: node1's web is still served everywhere.
    assert all(n.proxied(18080) == "200 web on node1" for n in others)


# ---------------------------------------------------------------- partition and heal


def test_a_partition_heals_into_one_view_within_a_push_pull_interval(cluster):
    nodes = start_five(cluster, {1: [WEB]})
    first, third, last = nodes[0], nodes[2], nodes[-1]
    majority = [n for n in nodes if n is not third]

    # The cut: node3's veth end on the bridge goes down (in the switch namespace), as a
    # cable pulled out of a switch. It drops both directions at once, and leaves node3's
    # own interface, addresses and routes as they were, so the test still reaches node3's
    # API from inside its namespace (an `ip link set eth0 down` inside node3 would take
    # its connected route with it; packet filters on a bridge need br_netfilter).
    began = time.monotonic()
    cluster.cut(3)
    wait_for(
        lambda: all_see(cluster, "node3", "dead", majority),
        what="node3 dead to the others",
        timeout=DEAD_BOUND,
        interval=0.2,
    )
    print(f"partition -> node3 dead to the 4 others: {elapsed_since(began):.1f} s")
    # node3 alone takes longer: its probes get no ack and no nack (its relays are cut off
    # too), so its awareness climbs to the cap at once and each probe stretches to 8
    # intervals; a member probed just before the cut waits for the next round, so the last
    # suspicion starts within 2 rounds of 4 probes × 8 s, and runs to the max (24 s): no one
    # confirms it. Meanwhile the others reap node3, 30 s (GossipToTheDeadTime) after they
    # declared it dead: gone from their list then, which counts as dead.
    split_bound = (
        2 * (NODES - 1) * SWIM.awareness_max_multiplier * SWIM.probe_interval + MAX_SUSPICION
    ) / SECOND  # 2 × 4 × 8 × 1 s + 24 s = 88 s
    others = cluster.names(majority)

    def held_dead(states: dict[str, str] | None, names: set[str]) -> bool:
        return states is not None and all(states.get(n, "dead") == "dead" for n in names)

    wait_for(
        lambda: (
            held_dead(member_states(third), others)
            and all(held_dead(s, {"node3"}) for s in cluster.each(member_states, majority))
        ),
        what="the others dead to node3 (and node3 still dead or reaped to them)",
        timeout=split_bound,
        interval=0.5,
    )
    print(f"partition -> each side holds the other dead: {elapsed_since(began):.1f} s")

    # A change on each side: node1 serves a second service, node3 a service of its own.
    first.serve("extra", 18081)
    third.serve("solo", 18083)
    wait_for(
        lambda: all(
            s is not None and by_name(s, "node1", "extra") == [0]
            for s in cluster.each(statuses, majority)
        ),
        what="node1's extra ALIVE on its side",
        timeout=15,
    )
    wait_for(
        lambda: by_name(statuses(third) or {}, "node3", "solo") == [0],
        what="node3's solo ALIVE on node3",
        timeout=15,
    )
    assert by_name(statuses(third), "node1", "extra") == []  # did not cross
    for shown in cluster.each(statuses, majority):
        assert by_name(shown, "node3", "solo") == [], shown

    # The heal: each side tries a member it holds dead every RECONNECT_INTERVAL (10 s) with
    # a push/pull, so one push/pull interval (20 s) is enough for a full exchange.
    assert RECONNECT_INTERVAL <= PUSH_PULL_INTERVAL
    healed = time.monotonic()
    cluster.heal(3)

    def one_view() -> bool:
        if not all_alive(cluster):
            return False
        shown = cluster.each(statuses)
        if any(s is None or s != shown[0] for s in shown):
            return False
        return all(
            by_name(shown[0], host, name) == [0]
            for host, name in (("node1", "web"), ("node1", "extra"), ("node3", "solo"))
        )

    wait_for(
        one_view,
        what="five members alive and the same services everywhere after the heal",
        timeout=PUSH_PULL_INTERVAL / SECOND,
        interval=0.1,
    )
    took = elapsed_since(healed)
    print(f"heal -> one view on all five: {took:.2f} s")
    wait_for(
        lambda: last.proxied(18083) == "200 solo on node3",
        what="node5's HAProxy serving node3's solo",
        timeout=SERVE_BOUND,
    )
    wait_for(
        lambda: third.proxied(18081) == "200 extra on node1",
        what="node3's HAProxy serving node1's extra",
        timeout=SERVE_BOUND,
    )


# ---------------------------------------------------------------- restart


def test_a_killed_node_started_again_rejoins_and_its_service_returns(cluster):
    nodes = start_five(cluster, {1: [WEB], 2: [("api", 18082)]})
    second, last = nodes[1], nodes[-1]
    others = [n for n in nodes if n is not second]
    second.kill()
    wait_for(
        lambda: (
            all_see(cluster, "node2", "dead", others)
            and tombstoned(cluster, "node2", "api", others)
        ),
        what="node2 dead and its api tombstoned on every other node",
        timeout=DEAD_BOUND,
        interval=0.2,
    )
    wait_for(
        lambda: not last.proxied(18082).startswith("200"),
        what="node5's HAProxy no longer serving node2's api",
        timeout=SERVE_BOUND,
    )

    began = time.monotonic()
    second.start()  # the same host name, address and static file
    wait_for(second.is_daemon, what="node2's daemon process", timeout=10)
    wait_for(
        lambda: all_alive(cluster) and alive_everywhere(cluster, "node2", "api"),
        what="node2 alive again everywhere with its api ALIVE",
        timeout=20,
        interval=0.1,
    )
    took = elapsed_since(began)
    wait_for(
        lambda: last.proxied(18082) == "200 api on node2",
        what="node5's HAProxy serving node2's api again",
        timeout=SERVE_BOUND,
    )
    print(f"restart -> alive with its service everywhere: {took:.2f} s")
    assert "Traceback" not in second.log()


# ---------------------------------------------------------------- bad peers

OUTSIDER = 66
OUTSIDER_IP = f"{SUBNET}.{OUTSIDER}"
META = b'{"ClusterName":"default","State":"Running"}'
ATTACKER_NAMES = {"intruder", "stranger", "keyholder"}
CLOSED_WITHIN = 5.0  # s: a refused stream is closed at once, well before the 10 s deadline


def refused(data: bytes) -> bool:
    """Return whether the codec refuses `data` as a packet (what the daemon would too)."""
    try:
        codec.decode_packet(data)
    except DecodeError:
        return True
    return False


def stranger(name: str, cluster_name: str = "default", **options: Any) -> Peer:
    """Return a peer named `name` that claims the outsider's address."""
    config = Config(
        name=name,
        addr=socket.inet_aton(OUTSIDER_IP),
        port=GOSSIP_PORT,
        cluster_name=cluster_name,
        meta=META,
    )
    return Peer(config, random.Random(7), now=time.monotonic_ns(), **options)


def hostile_datagrams() -> tuple[list[bytes], int]:
    """Return the datagrams to send (random bytes, every cut of real packets, a packet under
    a key the cluster does not use), every one refused by the codec, and how many random
    ones the codec would have taken (left out: they are valid messages, not attacks)."""
    rng = random.Random(12)
    noise = [rng.randbytes(rng.randint(1, 1400)) for _ in range(300)]
    bad = [d for d in noise if refused(d)]
    alive = Alive(
        1, "intruder", "default", socket.inet_aton(OUTSIDER_IP), GOSSIP_PORT, META, GO_VSN
    )
    whole = [
        codec.encode_packet([Ping(5, "node1")], compress=False),
        codec.encode_packet([alive], compress=False),
        codec.encode_packet([alive, Ping(6, "node1")], crc=True, compress=False),
        codec.encode_packet([alive, alive, Ping(7, "node1")], crc=False, compress=True),
    ]
    cuts = [packet[:cut] for packet in whole for cut in range(1, len(packet))]
    assert all(refused(cut) for cut in cuts), "a truncated packet decodes"
    keyholder = Alive(
        1, "keyholder", "default", socket.inet_aton(OUTSIDER_IP), GOSSIP_PORT, META, GO_VSN
    )
    sealed = codec.encode_packet(
        [keyholder], crc=True, keyring=Keyring((bytes(range(32)),)), nonce=bytes(range(12))
    )
    assert refused(sealed)
    return [*bad, *cuts, sealed], len(noise) - len(bad)


def hostile_streams() -> dict[str, tuple[bytes, bool]]:
    """Return the TCP streams to send, each with whether to half-close after it: all must be
    closed by the node without a reply."""
    limit = codec.DEFAULT_LIMITS.stream_bytes
    join = stranger("intruder", compress_streams=False).push_pull_request(join=True)
    cuts = sorted({*range(1, 40), *range(40, len(join), max(1, len(join) // 16))})

    def header(user_state_len: int, nodes: int = 0) -> bytes:
        fields = {
            "ClusterName": "default",
            "Join": True,
            "Nodes": nodes,
            "UserStateLen": user_state_len,
        }
        return b"\x06" + msgpack.packb(fields)

    streams = {
        "random bytes": (random.Random(3).randbytes(4096), True),
        "a push/pull header claiming more than the limit": (header(limit + 1), False),
        "a push/pull header claiming too many nodes": (header(0, nodes=1 << 24), False),
        # Claims exactly the limit, then keeps sending past it.
        "a push/pull sent past the limit": (header(limit) + bytes(limit + (1 << 20)), False),
        "a push/pull of another cluster": (
            stranger("stranger", "elsewhere").push_pull_request(join=True),
            False,
        ),
        "a push/pull under a key the cluster does not use": (
            codec.encode_stream(
                PushPull((), "default", True, b"{}"),
                keyring=Keyring((bytes(range(32)),)),
                nonce=bytes(range(12)),
            ),
            False,
        ),
    }
    for cut in cuts:
        streams[f"a push/pull cut at {cut} of {len(join)} B"] = (join[:cut], True)
    return streams


def send_datagrams(to: tuple[str, int], datagrams: list[bytes]) -> None:
    """Send `datagrams` from the outsider, paced (16 at a time) so the kernel keeps them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((OUTSIDER_IP, 0))
        for i, data in enumerate(datagrams):
            sock.sendto(data, to)
            if i % 16 == 15:
                time.sleep(0.005)


def exchange(to: tuple[str, int], data: bytes, half_close: bool) -> tuple[bytes | None, float]:
    """Return what the node sent back on a connection carrying `data` before it closed it
    (None: still open after CLOSED_WITHIN), and the seconds that took."""
    began = time.monotonic()
    with socket.create_connection(
        to, timeout=CLOSED_WITHIN, source_address=(OUTSIDER_IP, 0)
    ) as sock:
        try:
            for start in range(0, len(data), 1 << 16):
                sock.sendall(data[start : start + (1 << 16)])
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we sent: what a refusal looks like
        except TimeoutError:
            return None, time.monotonic() - began
        received = b""
        for _ in range(10_000):
            remaining = began + CLOSED_WITHIN - time.monotonic()
            if remaining <= 0:
                return None, time.monotonic() - began
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                return None, time.monotonic() - began
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received, time.monotonic() - began


def udp_receive_errors() -> int:
    """Return the UDP datagrams the kernel dropped in the calling thread's namespace
    (receive buffer full), from /proc/thread-self/net/snmp."""
    snmp = Path("/proc/thread-self/net/snmp").read_text().splitlines()
    lines = [line.split() for line in snmp if line.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def test_bad_peers_are_refused_and_the_cluster_goes_on_unchanged(cluster):
    nodes = start_five(cluster, {1: [WEB], 2: [("api", 18082)]})
    first, last = nodes[0], nodes[-1]
    attacker = cluster.outsider(OUTSIDER)
    target = (first.ip, GOSSIP_PORT)
    datagrams, accepted_noise = hostile_datagrams()
    streams = hostile_streams()

    def rejected(kind: str) -> float:
        value = first.metric(f'sidecar_gossip_rejected_total{{kind="{kind}"}}')
        assert value is not None
        return value

    wait_for(lambda: all(v is not None for v in cluster.each(view)), what="every view")
    before = cluster.each(view)
    packets_before, streams_before, foreign_before = (
        rejected("packet"),
        rejected("stream"),
        rejected("cluster_name"),
    )
    total_before = first.metric("sidecar_gossip_rejected_total")
    dropped_before = first.inside.call(udp_receive_errors)

    began = time.monotonic()
    attacker.call(send_datagrams, target, datagrams)
    outcomes = {
        what: attacker.call(exchange, target, data, half) for what, (data, half) in streams.items()
    }
    attack = elapsed_since(began)

    for what, (reply, took) in outcomes.items():
        assert reply == b"", (
            f"{what}: {'still open' if reply is None else reply!r} after {took:.1f} s"
        )
    # Every datagram the kernel handed over was rejected as a packet (a burst may overflow
    # the socket's buffer: those the kernel dropped never reached the daemon).
    dropped = first.inside.call(udp_receive_errors) - dropped_before
    wait_for(
        lambda: rejected("packet") - packets_before >= len(datagrams) - dropped,
        what=f"{len(datagrams) - dropped} datagrams rejected",
        timeout=10,
    )
    assert rejected("packet") - packets_before <= len(datagrams)
    # The cuts (an EOF inside the stream), the garbage, the oversized ones and the encrypted
    # one; the other cluster's push/pull is counted by its cluster name.
    assert rejected("stream") - streams_before == len(streams) - 1
    assert rejected("cluster_name") - foreign_before == 1
    total = first.metric("sidecar_gossip_rejected_total")
    assert total is not None
    assert total_before is not None
    assert total > total_before
    print(
        f"bad peers: {len(datagrams)} datagrams ({dropped} dropped by the kernel, "
        f"{accepted_noise} random ones left out as valid), {len(streams)} streams, in "
        f"{attack:.2f} s; the slowest close {max(t for _, t in outcomes.values()):.2f} s"
    )

    # Every node still serves, and shows exactly what it showed before.
    assert last.proxied(18080) == "200 web on node1"
    assert last.proxied(18082) == "200 api on node2"
    after = cluster.each(view)
    for node, old, new in zip(nodes, before, after, strict=True):
        assert new == old, node.name
        members, services = new
        names = {m["Name"] for m in members["Members"]} | set(services["ClusterMembers"])
        assert not names & ATTACKER_NAMES, (node.name, names)
    assert "Traceback" not in first.log()
