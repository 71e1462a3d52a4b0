"""`sidecar simulate`: a whole cluster of sidecars in one process, in virtual time.

Every node runs the pure core exactly as the daemon's loop will: stamp what runs on its host,
expire, broadcast what the scheduler says is due, merge and relay what arrives, push-pull
with a random peer. Messages go through the Go JSON codec over a simulated network that
delays and loses packets. A scripted scenario starts, stops and fails containers and crashes
a node; the report says how long each change took to reach every live node and prints the
routing table they all agree on.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sidecar.state import broadcast, codec, merge, times, views
from sidecar.state.model import ClusterState, Port, Service, Status

S = times.NANOS_PER_SECOND
MS = S // 1000
START = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
TICK = S
PUSH_PULL = 20 * S
DEATH_DETECTION = 5 * S


@dataclass
class SimNode:
    name: str
    state: ClusterState
    running: dict[str, Service] = field(default_factory=dict)
    schedule: broadcast.Schedule = field(default_factory=broadcast.Schedule)
    alive: bool = True
    dead_peers: set[str] = field(default_factory=set)


@dataclass(order=True)
class _Delivery:
    at: int
    seq: int
    dst: str = field(compare=False)
    src: str = field(compare=False)
    kind: str = field(compare=False)
    payload: bytes = field(compare=False)


class Simulation:
    """A cluster of `SimNode`s over a lossy network, driven by a virtual clock."""

    def __init__(self, nodes: int, *, loss: float, seed: int) -> None:
        self.random = random.Random(seed)
        self.loss = loss
        self.now = START
        self.nodes = {
            f"node{i}": SimNode(f"node{i}", ClusterState(hostname=f"node{i}")) for i in range(nodes)
        }
        self.queue: list[_Delivery] = []
        self.seq = 0
        self.sent = 0
        self.lost = 0

    # ---------------------------------------------------------------- a node's loop

    def _send(self, src: str, dst: str, kind: str, payload: bytes, *, reliable: bool) -> None:
        self.sent += 1
        if not reliable and self.random.random() < self.loss:
            self.lost += 1
            return
        self.seq += 1
        delay = self.random.randint(1, 50) * MS // 10
        heapq.heappush(self.queue, _Delivery(self.now + delay, self.seq, dst, src, kind, payload))

    def _gossip(self, node: SimNode, records: tuple[Service, ...]) -> None:
        for record in records:
            payload = codec.encode_service(record)
            for peer in self.nodes:
                if peer != node.name:
                    self._send(node.name, peer, "record", payload, reliable=False)

    def tick(self, node: SimNode) -> None:
        """Run one pass of the node's periodic loop."""
        node.state = merge.stamp(node.state, node.running.values(), now=self.now).state
        expired = merge.expire(node.state, now=self.now)
        node.state = expired.state
        node.schedule = broadcast.enqueue(node.schedule, expired.relay, now=self.now)
        node.schedule, due = broadcast.due(node.schedule, node.state, now=self.now)
        self._gossip(node, due)

    def _receive(self, delivery: _Delivery) -> None:
        node = self.nodes[delivery.dst]
        if not node.alive:
            return
        if delivery.kind == "record":
            result = merge.merge_record(
                node.state, codec.decode_service(delivery.payload), now=self.now
            )
        else:
            remote = codec.decode_state(delivery.payload)
            result = merge.merge_state(node.state, remote, now=self.now)
            if delivery.kind == "push":
                self._send(
                    node.name, delivery.src, "pull", codec.encode_state(node.state), reliable=True
                )
        node.state = result.state
        self._gossip(node, result.relay)
        for dead in node.dead_peers:
            node.state = merge.tombstone_node(node.state, dead, now=self.now).state

    # ---------------------------------------------------------------- the world

    def live(self) -> list[SimNode]:
        """Return the nodes that run."""
        return [n for n in self.nodes.values() if n.alive]

    def views_agree(self) -> bool:
        """Return whether every live node shows the same records, whatever their versions.

        Versions may differ for a while: an owner re-stamps its records every 30 s.
        """
        shown = {tuple(r.with_updated(0) for r in n.state.records()) for n in self.live()}
        return len(shown) == 1

    def run_until(self, end: int, *, done: Callable[[], bool] | None = None) -> int | None:
        """Advance virtual time to `end`; return when `done()` first held, if it did."""
        next_tick = {name: self.now + self.random.randint(0, 999) * MS for name in self.nodes}
        next_push = self.now + PUSH_PULL
        while self.now < end:
            if done is not None and done():
                return self.now
            upcoming = min(
                [end, next_push, *next_tick.values()] + ([self.queue[0].at] if self.queue else [])
            )
            self.now = upcoming
            while self.queue and self.queue[0].at <= self.now:
                self._receive(heapq.heappop(self.queue))
            for name, at in next_tick.items():
                if at <= self.now:
                    if self.nodes[name].alive:
                        self.tick(self.nodes[name])
                    next_tick[name] = at + TICK
            if next_push <= self.now:
                for node in self.live():
                    peer = self.random.choice([p for p in self.nodes if p != node.name])
                    self._send(
                        node.name, peer, "push", codec.encode_state(node.state), reliable=True
                    )
                next_push += PUSH_PULL
        return self.now if done is not None and done() else None

    def start(self, node: SimNode, name: str, service_port: int, host_port: int) -> Service:
        """Start a healthy container on `node`; return its observation."""
        sid = f"{self.random.getrandbits(48):012x}"
        service = Service(
            id=sid,
            name=name,
            image=f"{name}:1.0",
            created=self.now,
            hostname=node.name,
            ports=(
                Port(
                    type="tcp",
                    port=host_port,
                    service_port=service_port,
                    ip=f"10.0.0.{list(self.nodes).index(node.name) + 1}",
                ),
            ),
            updated=self.now,
            proxy_mode="http",
            status=Status.ALIVE,
        )
        node.running[sid] = service
        return service

    def crash(self, node: SimNode) -> None:
        """Stop a node and everything on it, without a word to its peers."""
        node.alive = False
        node.running.clear()

    def declare_dead(self, dead: SimNode) -> None:
        """Have every live node learn that `dead` died (as memberlist would tell it)."""
        for node in self.live():
            node.dead_peers.add(dead.name)
            result = merge.tombstone_node(node.state, dead.name, now=self.now)
            node.state = result.state
            node.schedule = broadcast.enqueue(node.schedule, result.relay, now=self.now)


def _everyone_sees(sim: Simulation, host: str, sid: str, status: Status) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            (r := n.state.get(host, sid)) is not None and r.status is status for n in sim.live()
        )

    return check


def run(nodes: int = 5, *, loss: float = 0.2, seed: int = 1) -> Iterator[str]:
    """Run the scripted scenario; yield the report line by line."""
    sim = Simulation(nodes, loss=loss, seed=seed)
    yield (
        f"sidecar simulate: {nodes} nodes, {loss:.0%} packet loss, seed {seed} "
        "(the pure core in virtual time; `sidecar run` is not built yet)"
    )

    def step(label: str, check: Callable[[], bool], limit: int = 120 * S) -> str:
        began = sim.now
        reached = sim.run_until(sim.now + limit, done=check)
        took = "never (within 120 s)" if reached is None else f"{(reached - began) / S:7.3f} s"
        return f"  {label:<58} reached every live node in {took}"

    services = [("web", 8080), ("api", 9000), ("db", 5432)]
    started = [
        sim.start(node, name, port, 32000 + i)
        for i, (node, (name, port)) in enumerate(
            (n, s) for n in sim.nodes.values() for s in services
        )
    ]
    yield step(
        f"{len(started)} containers start on {nodes} hosts",
        lambda: all(_everyone_sees(sim, s.hostname, s.id, Status.ALIVE)() for s in started),
    )

    first = started[0]
    owner = sim.nodes[first.hostname]
    owner.running[first.id] = first.with_status(Status.UNHEALTHY, updated=0)
    yield step(
        f"{first.name} on {owner.name} fails its health check",
        _everyone_sees(sim, owner.name, first.id, Status.UNHEALTHY),
    )

    del owner.running[first.id]
    yield step(
        f"{first.name} on {owner.name} stops",
        _everyone_sees(sim, owner.name, first.id, Status.TOMBSTONE),
    )

    victim = list(sim.nodes.values())[-1]
    sim.crash(victim)
    sim.run_until(sim.now + DEATH_DETECTION)
    sim.declare_dead(victim)
    victims = [s for s in started if s.hostname == victim.name]
    yield step(
        f"{victim.name} crashes; its death is declared after {DEATH_DETECTION // S} s",
        lambda: all(_everyone_sees(sim, s.hostname, s.id, Status.TOMBSTONE)() for s in victims),
    )

    sim.run_until(sim.now + 90 * S)
    agree = sim.views_agree()
    yield (
        f"  after 90 s more: every live node shows the same services and statuses: {agree}; "
        f"messages sent {sim.sent}, lost {sim.lost}"
    )
    table = views.routing_table(sim.live()[0].state)
    yield "Routing table (the HAProxy frontends every live node would serve):"
    for service in table.services:
        for port in service.ports:
            backends = ", ".join(
                f"{e.hostname}-{e.service_id}@{e.ip}:{e.port}" for e in port.endpoints
            )
            yield f"  {service.name:<5} :{port.service_port:<5} {service.mode:<4} -> {backends}"
