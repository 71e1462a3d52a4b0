"""One host's gossip protocol, written once: a pure node value and the steps that move it.

The h11 shape: each step is fed an input and `now`, and returns a `Step` — the new node,
the records to gossip now, the change events, and the records this node wrote about other
hosts. Nothing here sends, sleeps or reads a clock; the daemon, `sidecar simulate` and the
property simulation all drive these same steps.

* `observe` — what this host runs now (discovery and checks): stamped into the own records
  (`merge.stamp`), and a new or changed one is gossiped at once (the eager push);
* `tick` — about once a second: re-stamp, expire unheard records, and send what the
  broadcast schedule says is due;
* `receive` / `receive_state` — records gossiped by a peer, or a peer's whole state
  (push-pull): merged, what was news relayed once, a known-dead peer's late records
  tombstoned again, and this host's own records re-asserted over what peers said of them;
* `peer_died` / `peer_back` — membership's word that a host died (its services tombstoned,
  announced 10 times) or came back;
* `drain` — an operator's drain of an own service. The node keeps the IDs it drained: a
  drained service stays DRAINING while its checks pass, until it turns UNHEALTHY or UNKNOWN
  or goes, whatever peers say of its record meanwhile (after a partition they may hold it
  as a tombstone). A service this node sees for the first time since it started takes
  a drain from the cluster's record of it (a drain outlives a restart of the daemon, as in
  Go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from sidecar.state import broadcast, merge
from sidecar.state.model import ChangeEvent, ClusterState, Service, Status


@dataclass(frozen=True, slots=True)
class Node:
    """A host's protocol state: the cluster state, what the host runs (its last
    observation), the broadcast schedule, the peers membership declared dead, and the own
    services an operator drained."""

    state: ClusterState
    running: tuple[Service, ...] = ()
    schedule: broadcast.Schedule = field(default_factory=broadcast.Schedule)
    dead_peers: Mapping[str, int] = field(default_factory=dict)
    """The peers membership declared dead, and when (wall ns): records of theirs stamped
    before then are tombstones here; one stamped after speaks for itself (its owner is
    back, and membership will say so once it refutes). Replaced, never changed in place."""
    drained: frozenset[str] = frozenset()
    observed: bool = False
    """Whether the host has reported what it runs yet: until then nothing is stamped (its
    own records that peers hold are not tombstoned before discovery has spoken). False
    again once it left the cluster (`leave`)."""

    @classmethod
    def start(cls, hostname: str, cluster_name: str = "default") -> Node:
        """Return a node that knows nothing yet."""
        return cls(ClusterState(hostname=hostname, cluster_name=cluster_name))


@dataclass(frozen=True, slots=True)
class Step:
    """What one step made: the node after it, whether its cluster state changed, the
    records to gossip now (in order), the change events, and the records it wrote about
    other hosts (expiry and dead-node tombstones, announced by the schedule)."""

    node: Node
    changed: bool = False
    send: tuple[Service, ...] = ()
    events: tuple[ChangeEvent, ...] = ()
    wrote: tuple[Service, ...] = ()


class _Steps:
    """Accumulates one step's sub-steps (a private builder; the result is a `Step`)."""

    def __init__(self, node: Node) -> None:
        self.before = node.state
        self.node = node
        self.send: list[Service] = []
        self.events: list[ChangeEvent] = []
        self.wrote: list[Service] = []

    def take(self, result: merge.MergeResult, *, relay: bool = False) -> None:
        if result.state is not self.node.state:
            self.node = replace(self.node, state=result.state)
        self.events.extend(result.events)
        if relay:
            self.send.extend(result.relay)

    def announce_later(self, written: Iterable[Service], *, now: int) -> None:
        written = tuple(written)
        if not written:
            return
        self.wrote.extend(written)
        schedule = broadcast.enqueue(self.node.schedule, written, now=now)
        self.node = replace(self.node, schedule=schedule)

    def stamp(self, *, now: int) -> None:
        node = self.node
        if node.observed:
            self.take(merge.stamp(node.state, node.running, now=now, drained=node.drained))

    def send_due(self, *, now: int) -> None:
        schedule, due = broadcast.due(self.node.schedule, self.node.state, now=now)
        self.node = replace(self.node, schedule=schedule)
        self.send.extend(due)

    def bury_dead(self, *, now: int, among: Iterable[str] | None = None) -> None:
        """Tombstone what dead peers' records are still live: of every dead peer, or of
        those `among` the given host names (the only ones a step's records can have
        revived, as every other step leaves all of them buried)."""
        # A record of a host known dead that arrived late (a relay) is dead all the same.
        dead = self.node.dead_peers
        if not dead:
            return
        names = sorted(dead) if among is None else sorted(set(among).intersection(dead))
        for hostname in names:
            result = merge.tombstone_node(self.node.state, hostname, stamped_by=dead[hostname])
            self.take(result)
            self.announce_later(result.relay, now=now)

    def step(self) -> Step:
        changed = self.node.state is not self.before
        return Step(self.node, changed, tuple(self.send), tuple(self.events), tuple(self.wrote))


def observe(node: Node, running: Iterable[Service], *, now: int) -> Step:
    """Return the step of a new observation of what this host runs (`updated` ignored):
    own records stamped, and what is due — a new or changed record at once — to send."""
    running = tuple(running)
    drained = _still_drained(node, running)
    steps = _Steps(replace(node, running=running, drained=drained, observed=True))
    steps.stamp(now=now)
    steps.send_due(now=now)
    return steps.step()


def tick(node: Node, *, now: int) -> Step:
    """Return the step of the periodic loop: re-stamp, expire, send what is due."""
    steps = _Steps(node)
    steps.stamp(now=now)
    expired = merge.expire(steps.node.state, now=now)
    steps.take(expired)
    steps.announce_later(expired.relay, now=now)
    steps.send_due(now=now)
    return steps.step()


def receive(node: Node, records: Iterable[Service], *, now: int) -> Step:
    """Return the step of records gossiped by a peer: merged, news relayed once."""
    records = tuple(records)
    steps = _Steps(node)
    steps.take(merge.merge_records(node.state, records, now=now), relay=True)
    steps.bury_dead(now=now, among=(record.hostname for record in records))
    steps.stamp(now=now)
    return steps.step()


def receive_state(node: Node, remote: ClusterState, *, now: int) -> Step:
    """Return the step of a peer's whole state (push-pull): merged, news relayed once.
    The answer to a push is the node's state after this step."""
    steps = _Steps(node)
    steps.take(merge.merge_state(node.state, remote, now=now), relay=True)
    steps.bury_dead(now=now)
    steps.stamp(now=now)
    return steps.step()


def peer_died(node: Node, hostname: str, *, now: int) -> Step:
    """Return the step of membership declaring `hostname` dead: its live records
    tombstoned and announced (a node never declares itself dead)."""
    if hostname == node.state.hostname:
        return Step(node)
    steps = _Steps(replace(node, dead_peers={**node.dead_peers, hostname: now}))
    steps.bury_dead(now=now)
    return steps.step()


def leave(node: Node) -> Node:
    """Return the node once it left the cluster: it stamps nothing more, as a record it
    stamped after its leave would stand against its peers' burial of its services."""
    return replace(node, observed=False)


def peer_back(node: Node, hostname: str) -> Node:
    """Return the node once `hostname`, declared dead, is a member again."""
    dead = {name: since for name, since in node.dead_peers.items() if name != hostname}
    return replace(node, dead_peers=dead)


def drain(node: Node, service_id: str, *, now: int) -> Step | None:
    """Return the step of draining an own service (announced at once), or None when this
    host has no such live service."""
    result = merge.drain(node.state, service_id, now=now)
    if result is None:
        return None
    steps = _Steps(replace(node, drained=node.drained | {service_id}))
    steps.take(result)
    steps.send_due(now=now)
    return steps.step()


def _still_drained(node: Node, running: tuple[Service, ...]) -> frozenset[str]:
    """Return the drained IDs after a new observation: a drain ends when its service turns
    UNHEALTHY or UNKNOWN or goes; a service new to this node since it started takes the
    cluster's drain of it."""
    known = {service.id for service in node.running} if node.observed else set()
    drained: set[str] = set()
    for service in running:
        if service.status is not Status.ALIVE:
            continue
        if service.id in node.drained:
            drained.add(service.id)
        elif service.id not in known:
            record = node.state.get(node.state.hostname, service.id)
            if record is not None and record.status is Status.DRAINING:
                drained.add(service.id)
    return frozenset(drained)
