"""Benchmark of the cluster in virtual time: propagation, failure detection, false deaths,
idle traffic, and gossip decode+merge throughput.

    .venv/bin/python bench/cluster_sim.py [--only NAME] [--seed N] [--quick]

Every host is the real `sidecar.cluster.peer.Peer` (node protocol + SWIM + wire codec) in
`sidecar.simulate.Cluster`: a simulated network with 1–5 ms latency and the given UDP loss.
Times are virtual; each figure also prints the wall time it took. Figures:

* propagation — a service started on one host: virtual time until 50 %, 99 %, 99.9 % and
  all of 1,000 hosts show it (five services from five hosts; loss 0 % and 5 %). Target for
  99.9 %: ≤ 1.0 s (the Serf convergence model: 1.84 s at 200 ms rounds and fanout 3);
* detection — a host of 1,000 crashes: virtual time to its first suspicion and until every
  live host declared it dead (the fork's minimum suspicion timeout at 1,000 hosts: 15 s);
* false deaths — 100 hosts, 5 % loss, 10 virtual minutes: deaths declared of hosts that
  were up (target 0), and suspicions raised;
* idle traffic — 10 hosts running 100 services each, after they converged: bytes sent per
  host per second (UDP and TCP) and datagrams, over 2 virtual minutes;
* throughput — gossip packets as a Peer sends them (CRC, compound of four service JSON user
  messages; and LZW-compressed as Go sends them) decoded and merged by a Peer that knows
  1,000 hosts × 10 services, packet by packet or 25 packets a turn (`Peer.datagrams`), with
  every record new, or each arriving six times as gossip brings it: messages per second.
  Target ≥ 30,000.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Iterator

from sidecar.cluster import codec
from sidecar.cluster.membership import Address, Config, EventKind
from sidecar.cluster.messages import User
from sidecar.cluster.peer import Peer
from sidecar.simulate import EPOCH, MS, Cluster, S, quantile, spread
from sidecar.state import codec as records
from sidecar.state import node as protocol
from sidecar.state.model import ClusterState, Port, Service, Status


def wall_clock(run: Callable[[], Iterator[str]]) -> Iterator[str]:
    began = time.perf_counter()
    yield from run()
    yield f"    (wall time {time.perf_counter() - began:.1f} s)"


def propagation(nodes: int, loss: float, seed: int, count: int) -> Iterator[str]:
    sim = Cluster(nodes, loss=loss, seed=seed)
    sim.run_until(2 * S)
    hosts = list(sim.hosts.values())
    worst: list[int] = []
    for i in range(count):
        origin = hosts[(i * 197) % nodes]
        since = sim.now
        service = sim.start(origin, f"svc{i}", 8000 + i, 30000 + i)
        key = (origin.name, service.id, Status.ALIVE)
        sim.run_until(since + 5 * S, done=lambda key=key: len(sim.seen.get(key, {})) >= nodes)
        reached = sim.reached(key, since)
        yield f"    service {i} from {origin.name}: {spread(reached, nodes)}"
        mark = quantile(reached, 0.999, nodes)
        worst.append(mark if mark is not None else 10**18)
        sim.run_until(sim.now + 1 * S)
    yield f"  99.9 % of {nodes} hosts, {loss:.0%} loss: worst of {count}: {max(worst) / S:.3f} s"


def detection(nodes: int, seed: int) -> Iterator[str]:
    sim = Cluster(nodes, loss=0.0, seed=seed)
    sim.run_until(2 * S)
    victim = list(sim.hosts.values())[nodes // 2]
    since = sim.now
    sim.crash(victim)
    live = nodes - 1
    sim.run_until(
        since + 120 * S,
        done=lambda: len(sim.member_events.get((victim.name, EventKind.DEAD), {})) >= live,
    )
    suspected = sim.declared(victim.name, (EventKind.SUSPECT,), since)
    dead = sim.declared(victim.name, (EventKind.DEAD,), since)
    yield f"    suspected by:      {spread(suspected, live)}"
    yield f"    declared dead by:  {spread(dead, live)}"
    yield f"  a crashed host of {nodes} is declared dead by all live hosts after " + (
        f"{dead[-1] / S:.3f} s" if len(dead) == live else "never (within 120 s)"
    )


def false_deaths(
    nodes: int, loss: float, minutes: int, seed: int, *, tcp_pings: bool = True
) -> Iterator[str]:
    sim = Cluster(nodes, loss=loss, seed=seed, tcp_pings=tcp_pings)
    sim.run_until(minutes * 60 * S)
    deaths = sum(len(v) for (_, kind), v in sim.member_events.items() if kind is EventKind.DEAD)
    suspicions = sum(
        len(v) for (_, kind), v in sim.member_events.items() if kind is EventKind.SUSPECT
    )
    fallback = "with" if tcp_pings else "WITHOUT"
    yield (
        f"  {nodes} hosts, {loss:.0%} UDP loss, {fallback} the TCP fallback ping, "
        f"{minutes} virtual min: false deaths {deaths}; suspicions raised {suspicions}; "
        f"datagrams {sim.traffic.datagrams}"
    )


def idle_traffic(nodes: int, services: int, seed: int) -> Iterator[str]:
    sim = Cluster(nodes, loss=0.0, seed=seed)
    for host in sim.hosts.values():
        for i in range(services):
            sim.start(host, f"svc{i}", 8000 + i, 30000 + i)
    sim.run_until(90 * S)  # past the eager sends and the first refresh
    before = (sim.traffic.udp_bytes, sim.traffic.tcp_bytes, sim.traffic.datagrams)
    window = 120
    sim.run_until(sim.now + window * S)
    udp = (sim.traffic.udp_bytes - before[0]) / nodes / window
    tcp = (sim.traffic.tcp_bytes - before[1]) / nodes / window
    datagrams = (sim.traffic.datagrams - before[2]) / nodes / window
    yield (
        f"  {nodes} hosts × {services} services, idle, per host: {udp + tcp:,.0f} bytes/s "
        f"(UDP {udp:,.0f}, TCP {tcp:,.0f}); {datagrams:.1f} datagrams/s; "
        f"views agree: {sim.views_agree()}"
    )


def _record(host: int, index: int, updated: int) -> Service:
    return Service(
        id=f"{host * 10 + index:012x}",
        name=f"service-{index}",
        image=f"registry.example/service-{index}:1.{host % 7}",
        created=EPOCH - 3600 * S,
        hostname=f"host-{host:04d}",
        ports=(Port(type="tcp", port=20000 + index, service_port=8000 + index, ip="10.1.1.1"),),
        updated=updated,
        proxy_mode="http",
        status=Status.ALIVE,
    )


def throughput(seed: int, repeat: int) -> Iterator[str]:
    hosts, per_host = 1000, 10
    state = ClusterState(hostname="bench", cluster_name="default")
    base = protocol.receive(
        protocol.Node(state),
        [_record(h, i, EPOCH) for h in range(hosts) for i in range(per_host)],
        now=EPOCH,
    ).node
    rng = random.Random(seed)
    updates = [
        _record(rng.randrange(hosts), rng.randrange(per_host), EPOCH + 1 + k) for k in range(5000)
    ]
    distinct = [records.encode_service(r) for r in updates]
    # As gossip brings them: every record several times (each copy its own bytes object).
    copies = 6
    repeated = [bytes(bytearray(p)) for p in distinct[:1000] for _ in range(copies)]
    rng.shuffle(repeated)
    cases = (
        ("distinct records, as a Peer sends them, packet by packet", distinct, False, 1),
        ("distinct records, as a Peer sends them, 25 packets a turn", distinct, False, 25),
        ("distinct records, LZW-compressed as Go sends, packet by packet", distinct, True, 1),
        (f"each record {copies} times (gossip at 10 hosts), packet by packet", repeated, False, 1),
    )
    for label, payloads, compress, batch in cases:
        packets: list[bytes] = []
        pending = [User(p) for p in payloads]
        while pending:
            fit = pending[:4]
            fit, _ = codec.fill_packet(fit)
            pending = pending[len(fit) :]
            packets.append(codec.encode_packet(fit, crc=True, compress=compress))
        best = 0.0
        for _ in range(repeat):
            config = Config(name="bench", addr=bytes([10, 9, 9, 9]), port=7946)
            peer = Peer(config, random.Random(seed), now=0)
            peer.node = base
            source = Address(bytes([10, 0, 0, 1]), 7946)
            began = time.perf_counter()
            for first in range(0, len(packets), batch):
                arrived = [(data, source) for data in packets[first : first + batch]]
                out = peer.datagrams(arrived, now=1 * MS, wall=EPOCH + 10 * S)
                assert not out.rejected, out.rejected
            elapsed = time.perf_counter() - began
            best = max(best, len(payloads) / elapsed)
        size = sum(len(p) for p in packets) / len(packets)
        yield (
            f"  decode+merge, {label}: {best:,.0f} messages/s "
            f"({len(packets)} packets of {size:,.0f} bytes)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=["propagation", "detection", "false-deaths", "idle", "throughput"],
        help="run one figure",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smaller clusters (a smoke run)")
    args = parser.parse_args()
    big = 100 if args.quick else 1000
    figures: dict[str, Callable[[], Iterator[str]]] = {
        "propagation": lambda: (
            line
            for loss in (0.0, 0.05)
            for line in propagation(big, loss, args.seed, 2 if args.quick else 5)
        ),
        "detection": lambda: detection(big, args.seed),
        "false-deaths": lambda: (
            line
            for tcp in (True, False)
            for line in false_deaths(
                20 if args.quick else 100, 0.05, 1 if args.quick else 10, args.seed, tcp_pings=tcp
            )
        ),
        "idle": lambda: idle_traffic(10, 10 if args.quick else 100, args.seed),
        "throughput": lambda: throughput(args.seed, 1 if args.quick else 3),
    }
    for name, figure in figures.items():
        if args.only in (None, name):
            print(f"{name}:", flush=True)
            for line in wall_clock(figure):
                print(line, flush=True)


if __name__ == "__main__":
    main()
