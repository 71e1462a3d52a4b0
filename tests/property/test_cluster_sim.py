"""The cluster simulation (DESIGN.md §5): N nodes running the pure core over a bad network.

Each node is the core's one node protocol (`sidecar.state.node`, the daemon's): it stamps
what runs on its host, expires, broadcasts what the scheduler says is due, merges and relays
what it receives, and answers push-pull with its whole state. Messages go through the real Go JSON
codec. The network loses, duplicates, reorders and partitions; the clock advances; containers
start, stop and flip health; nodes crash, are declared dead, and restart empty.

`reality` is the test's own model of what runs where, kept without the core. `produced` logs
every version any node ever wrote (owner stamps, broadcast repeats, expiry and death
tombstones), so the invariants can say "no node holds a record nobody produced".
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from dataclasses import dataclass

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from sidecar.state import codec, times
from sidecar.state import node as protocol
from sidecar.state.model import ClusterState, Service, Status
from tests.builders import service
from tests.property import strategies

S = times.NANOS_PER_SECOND
CONTAINER_IDS = ("c0ffee000001", "c0ffee000002", "c0ffee000003")
NAMES = ("web", "api")
DEATH_DETECTION = S  # memberlist needs at least this long to declare a crashed node dead
MAX_DELIVERIES = 2_000  # gossip must quiesce: relays stop once every node has each version


@dataclass
class Container:
    name: str
    port: int
    healthy: bool = True


@dataclass
class Node:
    name: str
    core: protocol.Node
    alive: bool = True

    @property
    def state(self) -> ClusterState:
        return self.core.state


@dataclass(frozen=True)
class Message:
    src: str
    dst: str
    kind: str  # "records", "push" (a push-pull request) or "pull" (its reply)
    payload: tuple[bytes, ...]


class ClusterSim(RuleBasedStateMachine):
    nodes = Bundle("nodes")

    def __init__(self) -> None:
        super().__init__()
        self.now = strategies.BASE
        self.cluster: dict[str, Node] = {}
        self.reality: dict[str, dict[str, Container]] = {}
        self.inflight: list[Message] = []
        self.cut: set[frozenset[str]] = set()
        self.produced: dict[tuple[str, str], dict[int, list[Service]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.owner_latest: dict[tuple[str, str], Service] = {}
        self.crashed_at: dict[str, int] = {}
        self.declared_dead_at: dict[str, int] = {}
        self.told_dead: set[tuple[str, str]] = set()
        self.last_own_version: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ the nodes' loop

    def _observed(self, name: str) -> list[Service]:
        return [
            service(
                name,
                cid,
                name=c.name,
                ports=((c.port, 8080),),
                ip="10.0.0.9",
                at=0,
                created=strategies.BASE,
                status=Status.ALIVE if c.healthy else Status.UNHEALTHY,
            )
            for cid, c in sorted(self.reality[name].items())
        ]

    def _log(self, record: Service, *, by_owner: bool) -> None:
        """Note a version some node wrote. An owner never writes two records at one version;
        a non-owner's tombstone may share a version with the owner's record (the merge
        order settles it, and the owner then writes a newer one)."""
        key = (record.hostname, record.id)
        if by_owner:
            latest = self.owner_latest.get(key)
            if latest is None or latest.updated < record.updated:
                self.owner_latest[key] = record
        versions = self.produced[key][record.updated]
        if record not in versions:
            if record.status is not Status.TOMBSTONE:
                assert all(v.status is Status.TOMBSTONE for v in versions), (versions, record)
            versions.append(record)

    def _take(self, node: Node, step: protocol.Step) -> None:
        """Make `step` the node's, log the versions it wrote, and gossip what it sends."""
        node.core = step.node
        for record in step.wrote:
            self._log(record, by_owner=False)
        for record in step.send:  # broadcast repeats carry versions of their own (+50 ns)
            self._log(record, by_owner=record.hostname == node.name)
        for record in node.state.own_records():
            self._log(record, by_owner=True)
        self._gossip(node.name, step.send)

    def _stamp(self, node: Node) -> None:
        """What runs on the node's host changed: it observes it (as discovery tells it)."""
        self._take(node, protocol.observe(node.core, self._observed(node.name), now=self.now))

    def _send(self, src: str, dst: str, kind: str, payload: tuple[bytes, ...]) -> None:
        if src != dst and frozenset((src, dst)) not in self.cut:
            self.inflight.append(Message(src, dst, kind, payload))

    def _gossip(self, src: str, records: tuple[Service, ...]) -> None:
        if not records:
            return
        payload = tuple(codec.encode_service(r) for r in records)
        for dst in self.cluster:
            self._send(src, dst, "records", payload)

    def _tick(self, node: Node) -> None:
        """One pass of the periodic loop: stamp, expire, broadcast what is due."""
        step = protocol.tick(node.core, now=self.now)
        if step.wrote:
            event("a peer's record expired")
        self._take(node, step)

    def _receive(self, message: Message) -> None:
        node = self.cluster[message.dst]
        if not node.alive:
            return
        if message.kind == "records":
            records = [codec.decode_service(raw) for raw in message.payload]
            step = protocol.receive(node.core, records, now=self.now)
        else:
            remote = codec.decode_state(message.payload[0])
            step = protocol.receive_state(node.core, remote, now=self.now)
        if any(e.service.status is Status.TOMBSTONE for e in step.events):
            event("a tombstone was merged")
        self._take(node, step)
        if message.kind == "push":
            self._send(node.name, message.src, "pull", (codec.encode_state(node.state),))

    def _alive(self) -> list[Node]:
        return [n for n in self.cluster.values() if n.alive]

    # ------------------------------------------------------------------ rules

    @initialize(target=nodes, count=st.integers(min_value=2, max_value=6))
    def boot(self, count):
        names = [f"n{i}" for i in range(count)]
        for name in names:
            self.cluster[name] = Node(name, protocol.Node.start(name))
            self.reality[name] = {}
            self._stamp(self.cluster[name])  # discovery's first report, empty
        return multiple(*names)

    @initialize(data=st.data())
    def populate(self, data):
        # Start from a settled cluster that already runs something, so that loss, expiry
        # and death have records to act on from the first step.
        for name in self.cluster:
            for cid in data.draw(st.sets(st.sampled_from(CONTAINER_IDS), max_size=2)):
                self.reality[name][cid] = Container(
                    data.draw(st.sampled_from(NAMES)), data.draw(st.sampled_from([32768, 32769]))
                )
        for node in self.cluster.values():
            self._stamp(node)
            self._tick(node)
        self.deliver_all()

    @rule(
        name=nodes,
        cid=st.sampled_from(CONTAINER_IDS),
        service=st.sampled_from(NAMES),
        port=st.integers(min_value=32768, max_value=32770),
    )
    def container_started(self, name, cid, service, port):
        node = self.cluster[name]
        if node.alive and cid not in self.reality[name]:
            self.reality[name][cid] = Container(service, port)
            self._stamp(node)

    def _running(self) -> list[tuple[str, str]]:
        return sorted(
            (name, cid)
            for name, running in self.reality.items()
            if self.cluster[name].alive
            for cid in running
        )

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def container_stopped(self, data):
        name, cid = data.draw(st.sampled_from(self._running()))
        del self.reality[name][cid]
        self._stamp(self.cluster[name])

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def health_flipped(self, data):
        name, cid = data.draw(st.sampled_from(self._running()))
        container = self.reality[name][cid]
        container.healthy = not container.healthy
        self._stamp(self.cluster[name])

    @rule(name=nodes)
    def tick(self, name):
        node = self.cluster[name]
        if node.alive:
            self._tick(node)

    @rule(step=st.sampled_from([1_000_000, S, 10 * S, 30 * S, 60 * S]))
    def clock_advances(self, step):
        # Every live node runs its periodic loop when time passes, as the 1 s timer does.
        self.now += step
        for node in self._alive():
            self._tick(node)

    @rule(a=nodes, b=nodes)
    def push_pull(self, a, b):
        if self.cluster[a].alive:
            self._send(a, b, "push", (codec.encode_state(self.cluster[a].state),))

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def deliver(self, data):
        index = data.draw(st.integers(min_value=0, max_value=len(self.inflight) - 1))
        self._receive(self.inflight.pop(index))

    @precondition(lambda self: self.inflight)
    @rule()
    def deliver_all(self) -> None:
        # A quiet moment: everything in flight arrives (in order), relays included.
        for _ in range(MAX_DELIVERIES):
            if not self.inflight:
                break
            self._receive(self.inflight.pop(0))

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def lose(self, data):
        index = data.draw(st.integers(min_value=0, max_value=len(self.inflight) - 1))
        self.inflight.pop(index)

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def duplicate(self, data):
        index = data.draw(st.integers(min_value=0, max_value=len(self.inflight) - 1))
        self.inflight.append(self.inflight[index])

    @rule(a=nodes, b=nodes)
    def partition(self, a, b):
        if a != b:
            self.cut.add(frozenset((a, b)))
            self.inflight = [m for m in self.inflight if frozenset((m.src, m.dst)) != {a, b}]

    @precondition(lambda self: self.cut)
    @rule()
    def heal(self):
        self.cut.clear()

    @rule(name=nodes)
    def crash(self, name):
        node = self.cluster[name]
        if node.alive and len(self._alive()) > 1:
            node.alive = False
            self.reality[name] = {}
            self.crashed_at[name] = self.now

    @rule(observer=nodes, dead=nodes)
    def declared_dead(self, observer, dead):
        node = self.cluster[observer]
        if (
            node.alive
            and not self.cluster[dead].alive
            and self.now >= self.crashed_at[dead] + DEATH_DETECTION
        ):
            self._take(node, protocol.peer_died(node.core, dead, now=self.now))
            self.told_dead.add((observer, dead))
            self.declared_dead_at[dead] = self.now
            event("a node was declared dead")

    @rule(name=nodes)
    def restart(self, name):
        node = self.cluster[name]
        # A host takes a while to come back: its clock has moved on since the crash and
        # since its death was declared.
        if (
            not node.alive
            and self.now >= self.crashed_at[name] + DEATH_DETECTION
            and self.now > self.declared_dead_at.get(name, self.now - 1)
        ):
            self.cluster[name] = Node(name, protocol.Node.start(name))
            self._stamp(self.cluster[name])  # discovery's first report: nothing runs yet
            for key in [k for k in self.owner_latest if k[0] == name]:
                del self.owner_latest[key]  # a new incarnation; it knows nothing of the old
            self.told_dead = {(o, d) for o, d in self.told_dead if d != name}
            for other in self.cluster.values():
                other.core = protocol.peer_back(other.core, name)
            for key in [k for k in self.last_own_version if k[0] == name]:
                del self.last_own_version[key]

    # ------------------------------------------------------------------ invariants

    @invariant()
    def owners_publish_what_runs(self):
        for node in self._alive():
            for cid, container in self.reality[node.name].items():
                record = node.state.get(node.name, cid)
                expected = Status.ALIVE if container.healthy else Status.UNHEALTHY
                assert record is not None, (node.name, cid)
                assert record.status is expected, (node.name, record)
            for record in node.state.own_records():
                if record.id not in self.reality[node.name]:
                    assert record.status is Status.TOMBSTONE, record

    @invariant()
    def no_node_holds_a_version_nobody_produced(self):
        # Implies: no node holds a version of a record newer than its owner produced (only
        # the owner produces non-tombstones), and equal versions are equal records.
        for node in self._alive():
            for record in node.state.records():
                produced = self.produced[(record.hostname, record.id)][record.updated]
                assert record in produced, (node.name, record, produced)

    @invariant()
    def no_node_is_ahead_of_a_live_owner(self):
        # Nobody holds a version newer than the owner's latest, unless both are tombstones
        # (a peer expired the record after the owner stopped the container unheard).
        for node in self._alive():
            for record in node.state.records():
                if not self.cluster[record.hostname].alive:
                    continue
                latest = self.owner_latest.get((record.hostname, record.id))
                if latest is not None and record.updated > latest.updated:
                    assert record.status is latest.status is Status.TOMBSTONE, (
                        node.name,
                        record,
                        latest,
                    )

    @invariant()
    def owners_never_regress(self):
        for node in self._alive():
            for record in node.state.own_records():
                key = (node.name, record.id)
                assert record.updated >= self.last_own_version.get(key, record.updated), key
                self.last_own_version[key] = record.updated

    @invariant()
    def a_dead_node_is_tombstoned_where_its_death_is_known(self):
        for observer, dead in self.told_dead:
            if self.cluster[observer].alive and not self.cluster[dead].alive:
                server = self.cluster[observer].state.servers.get(dead)
                for entry in server.entries.values() if server else ():
                    assert entry.status is Status.TOMBSTONE, (observer, entry)

    # ------------------------------------------------------------------ convergence

    def teardown(self):
        if not self.cluster:
            return
        self.cut.clear()
        self.now += DEATH_DETECTION
        for node in self._alive():
            for dead in (n for n in self.cluster.values() if not n.alive):
                self.declared_dead(node.name, dead.name)
        self._deliver_everything()
        self._anti_entropy_to_fixpoint()

        views = {node.name: self._view(node) for node in self._alive()}
        first = next(iter(views.values()))
        for name, view in views.items():
            assert view == first, f"{name} disagrees: {set(view) ^ set(first)}"
        for record in first:
            owner = self.cluster[record.hostname]
            container = self.reality[record.hostname].get(record.id) if owner.alive else None
            if container is None:
                assert record.status is Status.TOMBSTONE, record
            else:
                expected = Status.ALIVE if container.healthy else Status.UNHEALTHY
                assert record.status is expected, record
        for name, running in self.reality.items():
            for cid in running:
                assert any((r.hostname, r.id) == (name, cid) for r in first), (name, cid)

    def _deliver_everything(self) -> None:
        limit = self._quiescence_bound()
        for _ in range(limit):
            if not self.inflight:
                return
            self._receive(self.inflight.pop(0))
        raise AssertionError(f"gossip did not quiesce after {limit} deliveries")

    def _quiescence_bound(self) -> int:
        """How many deliveries gossip may take to go quiet from here, at most.

        While nothing runs or stops, a node relays a record only when what it shows for the
        key grows (a join), so each node relays each version at most once to each peer; a
        push gets one pull. What is in flight now, plus that, bounds it: a relay loop (merge
        on `>=`, say) goes past any bound. (A fixed bound failed legitimately: 515 messages
        in flight at teardown among 6 nodes needed more than 2,000.)
        """
        versions = {
            (r.hostname, r.id, r.updated, r.status)
            for n in self._alive()
            for r in n.state.records()
        }
        for message in self.inflight:
            if message.kind == "records":
                for raw in message.payload:
                    r = codec.decode_service(raw)
                    versions.add((r.hostname, r.id, r.updated, r.status))
        peers = len(self.cluster)
        # x2: a drain mark can change what a node shows without a new record version.
        return len(self.inflight) + 2 * len(versions) * peers * (peers - 1) + MAX_DELIVERIES

    def _anti_entropy_to_fixpoint(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            before = {n.name: self._view(n) for n in self._alive()}
            for a, b in itertools.permutations([n.name for n in self._alive()], 2):
                self._receive(Message(a, b, "push", (codec.encode_state(self.cluster[a].state),)))
                self._deliver_everything()
            if before == {n.name: self._view(n) for n in self._alive()}:
                return
        raise AssertionError(f"anti-entropy did not reach a fixpoint in {rounds} rounds")

    @staticmethod
    def _view(node: Node) -> tuple[Service, ...]:
        return tuple(node.state.records())


# dev: 50 programs of up to 30 steps; ci: 300 of up to 60 (the profile sets the count).
_STEPS = {"ci": 60, "nightly": 200}
ClusterSim.TestCase.settings = settings(
    settings(), stateful_step_count=_STEPS.get(os.environ.get("SIDECAR_HYPOTHESIS_PROFILE", ""), 30)
)
TestClusterSim = ClusterSim.TestCase
