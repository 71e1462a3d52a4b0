"""SWIM membership in simulation: 3 to 8 `Membership` objects over a bad network, virtual time.

The network carries message VALUES (no bytes): it loses, duplicates and reorders datagrams;
TCP (push/pull, fallback pings) reaches a node that is up. One node may crash and restart
empty (incarnation 1, same address), rejoining by a push/pull with a live node. Each node
runs push/pull every 20 s with a random member it believes alive.

Invariants checked on every run:
- no node that never crashed is declared dead by anyone (loss stays under 10 %);
- a crashed node is declared dead by every live node within the detection bound;
- after the network heals, every live node sees every live node alive.

Planted bugs this catches (each tried, seen failing, then removed): a refutation that does not
raise the incarnation (live nodes declared dead), and a suspicion that never expires (a crashed
node still suspect past the detection bound).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from hypothesis import event, given
from hypothesis import strategies as st

from sidecar.cluster.membership import (
    MS,
    SECOND,
    Address,
    Config,
    EventKind,
    Membership,
    Output,
    suspicion_bounds,
)
from sidecar.cluster.messages import NodeState, Packet

T0 = 1_000 * SECOND
PUSH_PULL_INTERVAL = 20 * SECOND
LOSSY_FOR = 90 * SECOND
HEAL_FOR = 40 * SECOND


def address(i: int) -> Address:
    return Address(bytes([10, 0, 0, i + 1]), 7946)


def name(i: int) -> str:
    return f"n{i}"


@dataclass(frozen=True)
class Scenario:
    n: int
    seed: int
    loss: float
    duplicate: float
    victim: int | None
    crash_after: int
    restart_after: int | None


@dataclass
class Sim:
    scenario: Scenario
    rng: random.Random = field(init=False)
    now: int = T0
    nodes: dict[int, Membership] = field(default_factory=dict)
    wakeups: dict[int, int] = field(default_factory=dict)
    pending: list[tuple[int, int, str, object]] = field(default_factory=list)
    deaths: list[tuple[int, str, str]] = field(default_factory=list)
    """(time, observer, subject) of every DEAD event."""
    loss: float = 0.0
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.scenario.seed)
        self.loss = self.scenario.loss

    # ---------------------------------------------------------------- plumbing

    def at(self, when: int, kind: str, payload: object) -> None:
        heapq.heappush(self.pending, (when, next(self.counter), kind, payload))

    def start(self, i: int) -> None:
        config = Config(name=name(i), addr=address(i).ip, port=7946, meta=b"{}")
        self.nodes[i] = Membership(config, random.Random(self.rng.random()), self.now)
        self.wakeups[i] = self.nodes[i].next_wakeup()
        self.at(self.now + self.rng.randrange(PUSH_PULL_INTERVAL), "push_pull", i)

    def crash(self, i: int) -> None:
        del self.nodes[i]
        del self.wakeups[i]

    def index(self, to: Address) -> int:
        return to.ip[3] - 1

    def apply(self, i: int, out: Output) -> None:
        node = self.nodes[i]
        for happened in out.events:
            if happened.kind is EventKind.DEAD:
                self.deaths.append((self.now, name(i), happened.member.name))
        for send in out.sends:
            copies = 2 if self.rng.random() < self.scenario.duplicate else 1
            for _ in range(copies):
                if self.rng.random() >= self.loss:
                    delay = self.rng.randrange(1 * MS, 40 * MS)  # reorders
                    self.at(self.now + delay, "udp", (self.index(send.to), i, send.messages))
        for ping in out.tcp_pings:
            ok = self.index(ping.to) in self.nodes and self.rng.random() >= self.loss
            self.at(self.now + 5 * MS, "tcp_result", (i, ping.ping.seq_no, ok))
        self.wakeups[i] = node.next_wakeup()

    def push_pull(self, i: int, peer: int, *, join: bool) -> bool:
        """Exchange states between `i` and `peer` over TCP; return whether it happened."""
        if i not in self.nodes or peer not in self.nodes or i == peer:
            return False
        a, b = self.nodes[i], self.nodes[peer]
        mine, theirs = a.local_state(), b.local_state()
        self.apply(peer, b.merge_remote(mine, self.now, a.config.cluster_name))
        self.apply(i, a.merge_remote(theirs, self.now, b.config.cluster_name))
        return True

    def handle(self, kind: str, payload: object) -> None:
        if kind == "udp":
            to, source, messages = payload
            if to in self.nodes:
                for message in messages:
                    msg: Packet = message
                    self.apply(to, self.nodes[to].receive(msg, address(source), self.now))
        elif kind == "tcp_result":
            i, seq_no, ok = payload
            if i in self.nodes:
                self.apply(i, self.nodes[i].tcp_ping_result(seq_no, self.now, acked=ok))
        elif kind == "push_pull":
            i = payload
            assert isinstance(i, int)
            if i in self.nodes:
                alive = [
                    self.index(m.address)
                    for m in self.nodes[i].members.values()
                    if m.state is NodeState.ALIVE and m.name != name(i)
                ]
                if alive:
                    self.push_pull(i, alive[self.rng.randrange(len(alive))], join=False)
                self.at(self.now + PUSH_PULL_INTERVAL, "push_pull", i)
        elif kind == "join":
            i, seeds = payload
            live = [j for j in seeds if j in self.nodes and j != i]
            if not live or not self.push_pull(i, live[self.rng.randrange(len(live))], join=True):
                self.at(self.now + SECOND, "join", (i, seeds))
        elif kind == "crash":
            assert isinstance(payload, int)
            self.crash(payload)
        elif kind == "restart":
            assert isinstance(payload, int)
            self.start(payload)
            self.at(self.now, "join", (payload, range(self.scenario.n)))
        elif kind == "heal":
            self.loss = 0.0

    def run_until(self, end: int) -> None:
        for _ in range(2_000_000):
            next_node = min(self.wakeups.items(), key=lambda kv: kv[1], default=None)
            next_event = self.pending[0][0] if self.pending else None
            candidates = [t for t in (next_event, next_node and next_node[1]) if t is not None]
            if not candidates or min(candidates) > end:
                self.now = end
                return
            if next_node is not None and (next_event is None or next_node[1] < next_event):
                self.now = max(self.now, next_node[1])
                i = next_node[0]
                self.apply(i, self.nodes[i].tick(self.now))
            else:
                when, _, kind, payload = heapq.heappop(self.pending)
                self.now = max(self.now, when)
                self.handle(kind, payload)
        raise AssertionError("simulation did not reach its end")


def detection_bound(n: int) -> int:
    """Return how long after a crash every live node must have declared it dead (ns).

    One round-robin probe cycle (n - 1 probes, each up to 2 intervals under awareness), the
    longest suspicion, and gossip slack."""
    config = Config(name="x", addr=b"\0\0\0\0", port=0)
    _, longest = suspicion_bounds(config, n)
    return 2 * n * config.probe_interval + longest + 5 * SECOND


scenarios = st.builds(
    Scenario,
    n=st.integers(3, 8),
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.01, 0.05, 0.09]),
    duplicate=st.sampled_from([0.0, 0.05]),
    victim=st.none() | st.integers(1, 7),
    crash_after=st.integers(5, 20).map(lambda s: s * SECOND),
    restart_after=st.none() | st.integers(2, 70).map(lambda s: s * SECOND),
)


def simulate(scenario: Scenario) -> Sim:
    """Run `scenario`: start every node, join them to n0, crash/restart, heal; return the sim."""
    sim = Sim(scenario)
    sim.start(0)
    for i in range(1, scenario.n):
        sim.start(i)
        sim.at(T0 + i * 10 * MS, "join", (i, [0]))
    victim = (
        scenario.victim if scenario.victim is not None and scenario.victim < scenario.n else None
    )
    crashed_at = T0 + scenario.crash_after
    if victim is not None:
        sim.at(crashed_at, "crash", victim)
        if scenario.restart_after is not None:
            sim.at(crashed_at + scenario.restart_after, "restart", victim)
    sim.at(T0 + LOSSY_FOR, "heal", None)

    bound = detection_bound(scenario.n)
    restarted_before_bound = scenario.restart_after is not None and scenario.restart_after <= bound
    if victim is not None and not restarted_before_bound:
        sim.run_until(crashed_at + bound)
        for i, node in sim.nodes.items():
            member = node.member(name(victim))
            assert member is None or member.state is NodeState.DEAD, (
                f"{name(i)} still holds crashed {name(victim)} as {member} "
                f"{(sim.now - crashed_at) / SECOND:.1f} s after the crash"
            )
    sim.run_until(T0 + LOSSY_FOR + HEAL_FOR)
    return sim


@given(scenarios)
def test_membership_converges_and_detects_crashes(scenario: Scenario) -> None:
    sim = simulate(scenario)
    victim = (
        scenario.victim if scenario.victim is not None and scenario.victim < scenario.n else None
    )

    if victim is not None:
        event("crash declared dead" if any(d[2] == name(victim) for d in sim.deaths) else "crash")
        if scenario.restart_after is not None:
            event("restart")
    false_deaths = [d for d in sim.deaths if d[2] != (name(victim) if victim is not None else "")]
    assert false_deaths == [], f"live nodes declared dead: {false_deaths[:5]}"

    live = {name(i) for i in sim.nodes}
    for i, node in sim.nodes.items():
        alive = {m.name for m in node.members.values() if m.state is NodeState.ALIVE}
        assert alive == live, f"{name(i)} sees {sorted(alive)} alive, live are {sorted(live)}"
