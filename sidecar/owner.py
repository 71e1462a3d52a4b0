"""The state owner: the only writer of this host's cluster state, and where its changes go.

This host's node is one of two kinds, both taking the same inputs:

- `SoloNode` (no seeds): the core's `node`, stamped with the clock it is given. Nothing is
  gossiped; this host is its only member.
- `ClusterNode` (a cluster member): the gossip transport's `Peer` owns the node, stamps with
  its own clocks, and also merges what peers send, so changes come from the network too.

`StateOwner` takes one of them and the sinks that follow the state (the HAProxy loop, ...).
Its sources call `observe` (host discovery), `drain` (the API) and `tick` (every second);
every change is counted, logged once, handed to each sink, and wakes `changes()` readers.
All of it runs on the event loop: nothing here locks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.adapters.gossip import GossipTransport
from sidecar.adapters.gossip import show as gossip_address
from sidecar.cluster.messages import NodeState
from sidecar.cluster.peer import Output as PeerOutput
from sidecar.state import node
from sidecar.state.model import ChangeEvent, ClusterState, Service

log = logging.getLogger("sidecar.daemon")

OnChange = Callable[[Sequence[ChangeEvent]], None]
Sink = Callable[[ClusterState, Sequence[ChangeEvent]], None]
"""Follows the state: called with the new state and the change's events (none for a change
of versions only)."""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member as this host knows it (itself included)."""

    name: str
    state: str
    """alive, suspect, dead or left"""
    address: str
    incarnation: int
    last_change: int | None
    """Wall-clock ns of its last state change; None when there is no membership."""


class HostNode(Protocol):
    """This host's node: what `StateOwner` writes through."""

    @property
    def state(self) -> ClusterState: ...

    def listen(self, on_change: OnChange) -> None:
        """Call `on_change` with the events of every change from now on."""

    def observe(self, services: Sequence[Service]) -> None:
        """Take what this host runs now (every one of its services, each stamped)."""

    def drain(self, service_id: str) -> bool:
        """Set an own live service DRAINING; return False when there is no such one."""

    def tick(self) -> None:
        """Re-stamp and expire (every second)."""

    def members(self) -> list[MemberInfo]:
        """Return every member known, this node included, sorted by name."""


def _ignore(events: Sequence[ChangeEvent]) -> None:
    pass


class SoloNode:
    """This host alone: the core's node, stamped with `clock` (wall ns)."""

    def __init__(
        self,
        hostname: str,
        cluster_name: str,
        advertise_ip: str,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._node = node.Node.start(hostname, cluster_name)
        self._address = advertise_ip
        self._clock = clock
        self._on_change: OnChange = _ignore

    @property
    def state(self) -> ClusterState:
        return self._node.state

    def listen(self, on_change: OnChange) -> None:
        self._on_change = on_change

    def observe(self, services: Sequence[Service]) -> None:
        self._take(node.observe(self._node, services, now=self._clock()))

    def drain(self, service_id: str) -> bool:
        step = node.drain(self._node, service_id, now=self._clock())
        if step is None:
            return False
        self._take(step)
        return True

    def tick(self) -> None:
        self._take(node.tick(self._node, now=self._clock()))

    def members(self) -> list[MemberInfo]:
        return [MemberInfo(self._node.state.hostname, "alive", self._address, 0, None)]

    def _take(self, step: node.Step) -> None:
        self._node = step.node
        if step.changed:
            self._on_change(step.events)


class ClusterNode:
    """A cluster member: the transport's peer owns the node; it ticks itself and merges what
    peers send. `make_transport` builds the transport with the output callback given."""

    def __init__(
        self,
        make_transport: Callable[[Callable[[PeerOutput], None]], GossipTransport],
        *,
        wall: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.transport = make_transport(self._output)
        self._wall, self._monotonic = wall, monotonic
        self._on_change: OnChange = _ignore

    @property
    def state(self) -> ClusterState:
        return self.transport.peer.state

    def listen(self, on_change: OnChange) -> None:
        self._on_change = on_change

    def observe(self, services: Sequence[Service]) -> None:
        self.transport.observe(services)  # what changes comes back through _output

    def drain(self, service_id: str) -> bool:
        return self.transport.drain(service_id)

    def tick(self) -> None:
        pass  # the transport's timer ticks the peer

    def members(self) -> list[MemberInfo]:
        peer = self.transport.peer
        # Membership times are monotonic; shown on the wall clock.
        offset = self._wall() - self._monotonic()
        found = []
        for m in sorted(peer.membership.members.values(), key=lambda m: m.name):
            state = m.state.name.lower()
            if m.state is NodeState.DEAD and m.name in peer.left:
                state = "left"
            address = gossip_address(m.address)
            found.append(MemberInfo(m.name, state, address, m.incarnation, m.state_change + offset))
        return found

    def _output(self, out: PeerOutput) -> None:
        for event in out.members:
            m = event.member
            log.info("member %s: %s (incarnation %d)", m.name, event.kind.value, m.incarnation)
        if out.changed or out.changes:
            self._on_change(out.changes)


class StateOwner:
    """The only writer of the cluster state: `node` holds it, `sinks` follow every change."""

    def __init__(self, node: HostNode, sinks: Sequence[Sink] = ()) -> None:
        self.node = node
        self.sinks = list(sinks)
        self.version = 0
        self.merges = 0
        """State changes made (stamps, merges, drains, expiries that changed something)."""
        self.events: Counter[str] = Counter()
        """Change events by new status."""
        self._change = asyncio.Event()  # set (and replaced) on every change
        node.listen(self._changed)

    def state(self) -> ClusterState:
        """Return the current cluster state."""
        return self.node.state

    def observe(self, services: Sequence[Service]) -> None:
        """Take this host's services as discovery and checks see them now."""
        self.node.observe(services)

    def drain(self, service_id: str) -> Service | None:
        """Return an own service set to DRAINING, or None when there is no such live one."""
        if not self.node.drain(service_id):
            return None
        log.info("drained %s on request", service_id)
        return self.state().get(self.state().hostname, service_id)

    def tick(self) -> None:
        """Re-stamp and expire (called every second)."""
        self.node.tick()

    async def changes(self) -> AsyncIterator[ClusterState]:
        """Yield the state now, then after every change (a slow reader skips to the newest)."""
        seen = self.version
        yield self.state()
        while True:
            if self.version == seen:
                await self._change.wait()
            seen = self.version
            yield self.state()

    def _changed(self, events: Sequence[ChangeEvent]) -> None:
        self.version += 1
        self.merges += 1
        for event in events:
            self.events[event.service.status.label()] += 1
            log.info(
                "service %s (%s) on %s: %s -> %s",
                event.service.name,
                event.service.id,
                event.service.hostname,
                event.previous_status.label(),
                event.service.status.label(),
            )
        state = self.state()
        for sink in self.sinks:
            sink(state, events)
        # Waiters hold the event they wait on; the next change gets a fresh one.
        self._change.set()
        self._change = asyncio.Event()
