"""`sidecar simulate`: a whole cluster of sidecars in one process, in virtual time.

Every node is the core's one node protocol (`sidecar.state.node`, as the daemon runs it):
stamp what runs on its host, expire, broadcast what the scheduler says is due, merge and
relay what arrives, push-pull with a random peer. Messages go through the Go JSON codec over
a simulated network that delays and loses packets. A scripted scenario starts, stops and
fails containers and crashes a node; the report says how long each change took to reach
every live node and prints the routing table they all agree on.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sidecar.state import codec, node, times, views
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
    node: node.Node
    running: dict[str, Service] = field(default_factory=dict)
    alive: bool = True

    @property
    def state(self) -> ClusterState:
        """Return the node's view of the cluster."""
        return self.node.state


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
            f"node{i}": SimNode(f"node{i}", node.Node.start(f"node{i}")) for i in range(nodes)
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

    def _gossip(self, sim: SimNode, records: tuple[Service, ...]) -> None:
        for record in records:
            payload = codec.encode_service(record)
            for peer in self.nodes:
                if peer != sim.name:
                    self._send(sim.name, peer, "record", payload, reliable=False)

    def _take(self, sim: SimNode, step: node.Step) -> None:
        sim.node = step.node
        self._gossip(sim, step.send)

    def tick(self, sim: SimNode) -> None:
        """Run one pass of the node's periodic loop: what runs observed, then its tick."""
        self._take(sim, node.observe(sim.node, sim.running.values(), now=self.now))
        self._take(sim, node.tick(sim.node, now=self.now))

    def _receive(self, delivery: _Delivery) -> None:
        sim = self.nodes[delivery.dst]
        if not sim.alive:
            return
        if delivery.kind == "record":
            record = codec.decode_service(delivery.payload)
            self._take(sim, node.receive(sim.node, [record], now=self.now))
            return
        remote = codec.decode_state(delivery.payload)
        if delivery.kind == "push":  # the reply carries the state before the merge, as Go's
            self._send(sim.name, delivery.src, "pull", codec.encode_state(sim.state), reliable=True)
        self._take(sim, node.receive_state(sim.node, remote, now=self.now))

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
                for sim in self.live():
                    peer = self.random.choice([p for p in self.nodes if p != sim.name])
                    self._send(sim.name, peer, "push", codec.encode_state(sim.state), reliable=True)
                next_push += PUSH_PULL
        return self.now if done is not None and done() else None

    def start(self, host: SimNode, name: str, service_port: int, host_port: int) -> Service:
        """Start a healthy container on `host`; return its observation."""
        sid = f"{self.random.getrandbits(48):012x}"
        service = Service(
            id=sid,
            name=name,
            image=f"{name}:1.0",
            created=self.now,
            hostname=host.name,
            ports=(
                Port(
                    type="tcp",
                    port=host_port,
                    service_port=service_port,
                    ip=f"10.0.0.{list(self.nodes).index(host.name) + 1}",
                ),
            ),
            updated=self.now,
            proxy_mode="http",
            status=Status.ALIVE,
        )
        host.running[sid] = service
        return service

    def crash(self, host: SimNode) -> None:
        """Stop a node and everything on it, without a word to its peers."""
        host.alive = False
        host.running.clear()

    def declare_dead(self, dead: SimNode) -> None:
        """Have every live node learn that `dead` died (as memberlist would tell it)."""
        for sim in self.live():
            sim.node = node.peer_died(sim.node, dead.name, now=self.now).node


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
        "(the core's node protocol in virtual time; deaths are declared by the script)"
    )

    def step(label: str, check: Callable[[], bool], limit: int = 120 * S) -> str:
        began = sim.now
        reached = sim.run_until(sim.now + limit, done=check)
        took = "never (within 120 s)" if reached is None else f"{(reached - began) / S:7.3f} s"
        return f"  {label:<58} reached every live node in {took}"

    services = [("web", 8080), ("api", 9000), ("db", 5432)]
    started = [
        sim.start(host, name, port, 32000 + i)
        for i, (host, (name, port)) in enumerate(
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
