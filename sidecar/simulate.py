"""`sidecar simulate`: a whole cluster of sidecars in one process, in virtual time.

Every host is a `sidecar.cluster.peer.Peer` — the node protocol the daemon runs, over SWIM
membership, speaking the wire bytes Go's memberlist fork speaks. The network between them
is simulated: UDP datagrams are delayed and lost; TCP (push/pull, fallback pings, large
user messages) reaches a host that is up. A scripted scenario starts, fails and stops
containers, crashes a host and has another leave; the report says how long each change took
to reach the live hosts (median, 99 %, 99.9 %, all), how long the cluster took to declare
the crashed host dead, what the hosts sent, and the routing table they all agree on.

`Cluster` is also the engine of `bench/cluster_sim.py`.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sidecar.cluster import codec
from sidecar.cluster.errors import DecodeError
from sidecar.cluster.membership import SUSPICION_MULT_FAST, Address, Config, EventKind, Member
from sidecar.cluster.messages import GO_VSN, NodeState, Packet, Stream
from sidecar.cluster.peer import PUSH_PULL_INTERVAL, Output, Peer
from sidecar.state import times, views
from sidecar.state.model import Port, Service, Status

S = times.NANOS_PER_SECOND
MS = S // 1000
EPOCH = 1_767_225_600 * S  # 2026-01-01T00:00:00Z: virtual time 0 on the wall clock
PORT = 7946
LEAVE_GRACE = 1 * S
META = b'{"ClusterName":"default","State":"Running"}'


def address(index: int) -> Address:
    """Return the address of host `index` (10.x.y.z from 10.0.0.1, the memberlist port)."""
    number = index + 1
    return Address(bytes([10, number >> 16 & 0xFF, number >> 8 & 0xFF, number & 0xFF]), PORT)


@dataclass
class Host:
    """One simulated host: its peer, what runs on it, and whether it is up."""

    name: str
    index: int
    peer: Peer
    running: dict[str, Service] = field(default_factory=dict)
    up: bool = True


@dataclass
class Traffic:
    """What the hosts sent, in datagrams and bytes (UDP and TCP)."""

    datagrams: int = 0
    lost: int = 0
    udp_bytes: int = 0
    tcp_bytes: int = 0


class Cluster:
    """Hosts over a simulated network, driven by a virtual clock (ns from 0)."""

    def __init__(
        self,
        nodes: int,
        *,
        loss: float,
        seed: int,
        delay: tuple[int, int] = (1 * MS, 5 * MS),
        push_pull_interval: int = PUSH_PULL_INTERVAL,
        compress_packets: bool = False,
        tcp_pings: bool = True,
    ) -> None:
        """Start `nodes` hosts that already know each other (a cluster that has converged;
        joining 1,000 hosts one by one is not what this measures)."""
        self.random = random.Random(seed)
        self.loss = loss
        self.delay = delay
        self.now = 0
        self.traffic = Traffic()
        self.rejected: list[str] = []
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake: dict[str, int] = {}
        self._push_pull_interval = push_pull_interval
        self._compress_packets = compress_packets
        self._tcp_pings = tcp_pings
        self._decoded: dict[bytes, tuple[Packet, ...]] = {}
        names = [f"node{i}" for i in range(nodes)]
        members = [
            Member(name, address(i).ip, PORT, META, GO_VSN, 1, NodeState.ALIVE, 0)
            for i, name in enumerate(names)
        ]
        self.hosts = {name: self._host(name, i, members) for i, name in enumerate(names)}
        self._by_address = {address(i): name for i, name in enumerate(names)}
        self.seen: dict[tuple[str, str, Status], dict[str, int]] = {}
        """(hostname, service id, status) -> host -> when it first showed that status."""
        self.member_events: dict[tuple[str, EventKind], dict[str, int]] = {}
        """(member, kind) -> observer -> when it first saw that."""
        for host in self.hosts.values():
            self._schedule(host)

    def _host(self, name: str, index: int, members: list[Member]) -> Host:
        config = Config(
            name=name,
            addr=address(index).ip,
            port=PORT,
            meta=META,
            disable_tcp_pings=not self._tcp_pings,
            suspicion_mult=SUSPICION_MULT_FAST,
        )
        rng = random.Random(self.random.getrandbits(64))
        peer = Peer(
            config,
            rng,
            now=self.now,
            members=members,
            push_pull_interval=self._push_pull_interval,
            compress_packets=self._compress_packets,
        )
        return Host(name, index, peer)

    # ---------------------------------------------------------------- the clock

    @property
    def wall(self) -> int:
        """Return the virtual wall clock (ns since the epoch)."""
        return EPOCH + self.now

    def _at(self, when: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def _schedule(self, host: Host) -> None:
        wake = host.peer.next_wakeup()
        if wake < self._wake.get(host.name, wake + 1):
            self._wake[host.name] = wake
            self._at(wake, lambda: self._tick(host, wake))

    def _tick(self, host: Host, wake: int) -> None:
        if not host.up or self._wake.get(host.name) != wake:
            return
        del self._wake[host.name]
        self._take(host, host.peer.tick(now=self.now, wall=self.wall))

    def run_until(self, end: int, *, done: Callable[[], bool] | None = None) -> int | None:
        """Advance virtual time to `end` (stopping when `done()` first holds after an event);
        return when `done()` held, or None."""
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            action()
            if done is not None and done():
                return self.now
        self.now = max(self.now, end)
        return self.now if done is not None and done() else None

    # ---------------------------------------------------------------- a host's output

    def _take(self, host: Host, out: Output) -> None:
        for datagram in out.datagrams:
            self._udp(host, datagram.to, datagram.data)
        for stream in out.streams:
            self._tcp_user(host, stream.to, stream.data)
        for ping in out.tcp_pings:
            self._tcp_ping(host, ping.to, ping.ping.seq_no, ping.deadline)
        for target in out.push_pulls:
            self._push_pull(host, target, join=False)
        for change in out.changes:
            record = change.service
            key = (record.hostname, record.id, record.status)
            self.seen.setdefault(key, {}).setdefault(host.name, self.now)
        for event in out.members:
            self.member_events.setdefault((event.member.name, event.kind), {}).setdefault(
                host.name, self.now
            )
        self.rejected.extend(out.rejected)
        if host.up:
            self._schedule(host)

    def _target(self, to: Address) -> Host | None:
        name = self._by_address.get(to)
        return self.hosts[name] if name is not None else None

    def _latency(self) -> int:
        return self.random.randint(*self.delay)

    def _udp(self, source: Host, to: Address, data: bytes) -> None:
        self.traffic.datagrams += 1
        self.traffic.udp_bytes += len(data)
        if self.random.random() < self.loss:
            self.traffic.lost += 1
            return
        target = self._target(to)
        if target is None:
            return
        origin = address(source.index)

        def deliver() -> None:
            if target.up:
                messages = self._decode(data)
                out = target.peer.messages(messages, origin, now=self.now, wall=self.wall)
                self._take(target, out)

        self._at(self.now + self._latency(), deliver)

    def _tcp_user(self, source: Host, to: Address, data: bytes) -> None:
        self.traffic.tcp_bytes += len(data)
        target = self._target(to)
        origin = address(source.index)
        if target is None:
            return

        def deliver() -> None:
            if target.up:
                _, out = target.peer.stream(
                    self._stream(data), origin, now=self.now, wall=self.wall
                )
                self._take(target, out)

        self._at(self.now + 2 * self._latency(), deliver)

    def _tcp_ping(self, source: Host, to: Address, seq_no: int, deadline: int) -> None:
        target = self._target(to)
        answer_at = self.now + 2 * self._latency()
        acked = target is not None and target.up and answer_at <= deadline

        def result() -> None:
            if source.up:
                out = source.peer.tcp_ping_result(seq_no, now=self.now, wall=self.wall, acked=acked)
                self._take(source, out)

        self._at(answer_at if acked else deadline, result)

    def _push_pull(self, source: Host, to: Address, *, join: bool) -> None:
        target = self._target(to)
        if target is None or not target.up:
            return  # the connection fails: nothing is encoded or sent
        request = source.peer.push_pull_request(join=join)
        self.traffic.tcp_bytes += len(request)
        origin = address(source.index)

        def respond() -> None:
            if not target.up:
                return
            reply, out = target.peer.stream(
                self._stream(request), origin, now=self.now, wall=self.wall
            )
            self._take(target, out)
            if reply is None:
                return
            self.traffic.tcp_bytes += len(reply)

            def merge() -> None:
                if source.up:
                    out = source.peer.push_pull_reply(
                        self._stream(reply), to, now=self.now, wall=self.wall
                    )
                    self._take(source, out)

            self._at(self.now + self._latency(), merge)

        self._at(self.now + 2 * self._latency(), respond)

    def _decode(self, data: bytes) -> tuple[Packet, ...]:
        """Return the messages of a packet; one packet gossiped to three hosts is decoded
        once (the bytes are the same, and decoding is pure)."""
        messages = self._decoded.get(data)
        if messages is None:
            try:
                messages = codec.decode_packet(data)
            except DecodeError as exc:  # the peers write well-formed packets
                raise AssertionError(f"a peer wrote a malformed packet: {exc}") from exc
            if len(self._decoded) >= 4096:
                self._decoded.clear()
            self._decoded[data] = messages
        return messages

    @staticmethod
    def _stream(data: bytes) -> Stream:
        try:
            return codec.decode_stream(data)
        except DecodeError as exc:  # the peers write well-formed streams
            raise AssertionError(f"a peer wrote a malformed stream: {exc}") from exc

    # ---------------------------------------------------------------- the world

    def live(self) -> list[Host]:
        """Return the hosts that are up."""
        return [h for h in self.hosts.values() if h.up]

    def observe(self, host: Host) -> None:
        """Have `host` report what runs on it (as its discovery does on a change)."""
        self._take(host, host.peer.observe(host.running.values(), now=self.now, wall=self.wall))

    def start(self, host: Host, name: str, service_port: int, host_port: int) -> Service:
        """Start a healthy container on `host` and report it; return its record."""
        sid = f"{self.random.getrandbits(48):012x}"
        service = Service(
            id=sid,
            name=name,
            image=f"{name}:1.0",
            created=self.wall,
            hostname=host.name,
            ports=(Port(type="tcp", port=host_port, service_port=service_port, ip=_ip(host)),),
            updated=self.wall,
            proxy_mode="http",
            status=Status.ALIVE,
        )
        host.running[sid] = service
        self.observe(host)
        return service

    def crash(self, host: Host) -> None:
        """Stop `host` and everything on it, without a word to its peers."""
        host.up = False
        host.running.clear()
        self._wake.pop(host.name, None)

    def leave(self, host: Host, *, grace: int = LEAVE_GRACE) -> None:
        """Have `host` leave the cluster gracefully and stop `grace` later (as the daemon
        keeps gossiping its leave while it stops)."""
        self._take(host, host.peer.leave(now=self.now, wall=self.wall))
        self._at(self.now + grace, lambda: self.crash(host))

    def views_agree(self) -> bool:
        """Return whether every live host shows the same records, whatever their versions
        (an owner re-stamps its records every 30 s)."""
        shown = {frozenset(r.with_updated(0) for r in h.peer.state.records()) for h in self.live()}
        return len(shown) == 1

    def reached(self, key: tuple[str, str, Status], since: int) -> list[int]:
        """Return, sorted, how long after `since` each live host showed `key`."""
        seen = self.seen.get(key, {})
        return sorted(
            seen[h.name] - since for h in self.live() if h.name in seen and seen[h.name] >= since
        )

    def declared(self, member: str, kinds: tuple[EventKind, ...], since: int) -> list[int]:
        """Return, sorted, how long after `since` each live host declared `member` so."""
        firsts: dict[str, int] = {}
        for kind in kinds:
            for observer, when in self.member_events.get((member, kind), {}).items():
                if when >= since and observer != member:
                    firsts[observer] = min(when, firsts.get(observer, when))
        return sorted(firsts[h.name] - since for h in self.live() if h.name in firsts)


def _ip(host: Host) -> str:
    return ".".join(str(b) for b in address(host.index).ip)


def quantile(values: list[int], q: float, population: int) -> int | None:
    """Return the time by which a fraction `q` of `population` was reached (None: never)."""
    needed = max(1, -(-int(q * population * 1000) // 1000))
    return values[needed - 1] if len(values) >= needed else None


def _seconds(value: int | None) -> str:
    return "  never" if value is None else f"{value / S:7.3f}"


def spread(values: list[int], population: int) -> str:
    """Return 'median / 99 % / 99.9 % / all' of `values` as seconds."""
    marks = [quantile(values, q, population) for q in (0.5, 0.99, 0.999, 1.0)]
    return " / ".join(_seconds(m) for m in marks) + " s"


def run(nodes: int = 5, *, loss: float = 0.2, seed: int = 1, duration: int = 60) -> Iterator[str]:
    """Run the scripted scenario for `duration` virtual seconds; yield the report."""
    began = time.perf_counter()
    sim = Cluster(nodes, loss=loss, seed=seed)
    end = duration * S
    yield (
        f"sidecar simulate: {nodes} nodes, {loss:.0%} UDP loss, seed {seed}, {duration} virtual s "
        "(the daemon's node and membership code, real wire bytes, virtual time)"
    )
    yield f"  {'change':<46} reached live hosts: median / 99 % / 99.9 % / all"

    def wait(key: tuple[str, str, Status], since: int, limit: int) -> None:
        population = len(sim.live())
        sim.run_until(
            min(end, since + limit), done=lambda: len(sim.seen.get(key, {})) >= population
        )

    def line(label: str, values: list[int]) -> str:
        return f"  {label:<46} {spread(values, len(sim.live()))}"

    hosts = list(sim.hosts.values())
    # Two hosts and the one that will crash run three services each.
    owners = hosts[:2] + hosts[-1:] if nodes > 3 else hosts[:3]
    services = [("web", 8080), ("api", 9000), ("db", 5432)]
    sim.run_until(1 * S)
    started: list[Service] = []
    since = sim.now
    for i, host in enumerate(owners):
        for j, (name, service_port) in enumerate(services):
            started.append(sim.start(host, name, service_port, 32000 + 10 * i + j))
    for record in started:
        wait((record.hostname, record.id, Status.ALIVE), since, 10 * S)
    slowest = max(
        (sim.reached((r.hostname, r.id, Status.ALIVE), since) for r in started),
        key=lambda v: (len(v) < len(sim.live()), v[-1] if v else 0),
    )
    yield line(f"{len(started)} containers start on {len(owners)} hosts (slowest)", slowest)

    first = started[0]
    owner = sim.hosts[first.hostname]
    since = sim.now
    owner.running[first.id] = first.with_status(Status.UNHEALTHY, updated=0)
    sim.observe(owner)
    key = (owner.name, first.id, Status.UNHEALTHY)
    wait(key, since, 10 * S)
    yield line(f"{first.name} on {owner.name} fails its health check", sim.reached(key, since))

    since = sim.now
    del owner.running[first.id]
    sim.observe(owner)
    key = (owner.name, first.id, Status.TOMBSTONE)
    wait(key, since, 10 * S)
    yield line(f"{first.name} on {owner.name} stops", sim.reached(key, since))

    leaver = hosts[-2] if nodes > 4 else None
    victim = hosts[-1] if nodes > 3 else None
    left_at = sim.now
    if leaver is not None:
        sim.leave(leaver)
    sim.run_until(min(end, sim.now + 5 * S))
    crashed_at = sim.now
    if victim is not None:
        sim.crash(victim)
    sim.run_until(end)
    if leaver is not None:
        kinds = (EventKind.LEFT, EventKind.DEAD)
        yield line(f"{leaver.name} leaves: known left", sim.declared(leaver.name, kinds, left_at))
    if victim is not None:
        suspected = sim.declared(victim.name, (EventKind.SUSPECT,), crashed_at)
        dead = sim.declared(victim.name, (EventKind.DEAD,), crashed_at)
        yield line(f"{victim.name} crashes: suspected", suspected)
        yield line(f"{victim.name} crashes: declared dead", dead)
        ran = [r for r in started if r.hostname == victim.name]
        if ran:
            key = (victim.name, ran[0].id, Status.TOMBSTONE)
            yield line(f"{victim.name}'s services tombstoned", sim.reached(key, crashed_at))

    traffic = sim.traffic
    live = len(sim.live())
    per_node = (traffic.udp_bytes + traffic.tcp_bytes) / max(1, nodes) / (sim.now / S)
    yield (
        f"  after {sim.now / S:.0f} virtual s: every live host shows the same services: "
        f"{sim.views_agree()}; {live} hosts up; datagrams sent {traffic.datagrams} "
        f"(lost {traffic.lost}); {per_node:,.0f} bytes/s per host; "
        f"rejected input {len(sim.rejected)}"
    )
    table = views.routing_table(sim.live()[0].peer.state)
    yield "Routing table (the HAProxy frontends every live host would serve):"
    for service in table.services:
        for port in service.ports:
            backends = ", ".join(
                f"{e.hostname}-{e.service_id}@{e.ip}:{e.port}" for e in port.endpoints
            )
            yield f"  {service.name:<5} :{port.service_port:<5} {service.mode:<4} -> {backends}"
    yield f"wall time {time.perf_counter() - began:.1f} s"
