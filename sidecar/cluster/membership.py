"""SWIM membership as the Go Sidecar's memberlist fork runs it (spec/cluster-wire.md §5), sans-IO.

A `Membership` is fed inputs — a received message and its source address, a timer tick, the
result of a TCP fallback ping, a remote push/pull node list — each with `now`, an `int` of
nanoseconds on any monotonic scale. Every input returns an `Output`: the datagrams to send
(`Send`: one destination, one or more messages; several messages make one compound), the TCP
fallback pings for the transport to make (`TcpPing`), and the membership events for the node
above (`Event`). Randomness comes in as a seeded generator (`Rng`) given at construction.

Bytes are not this module's: the codec measures messages (`Config.measure`, by default
`codec.encoded_size`) so gossip can be packed into Go's 1,400-byte budget; addresses are raw
IP bytes and a port, as Go stores them.

User messages (type 8) carry the node's records: `receive` ignores them, `send_user` queues
them. Gossip packs memberlist's broadcasts first, then user messages, in Go's 1,400-byte
budget; pings, acks, indirect pings and nacks carry queued broadcasts too (piggybacking, as
Go's `sendMsg`). Beyond Go, still wire-compatible: a queued user message goes to the gossip
fanout at once (the eager push; the caller may widen it) and then on later gossip rounds up
to its retransmit limit (the caller may add rounds; copies riding on pings and acks come on
top: each reaches one node, a round three); a newer message under the same key replaces a
queued one; and a message too large for any packet goes to the fanout as a TCP user message
(`StreamSend`) instead of blocking the queue.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Callable, Iterable, MutableSequence, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol, TypeVar

from sidecar.cluster.codec import encoded_size
from sidecar.cluster.messages import (
    GO_VSN,
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    NodeState,
    Packet,
    Ping,
    PushNodeState,
    Suspect,
    User,
)

MS: Final = 1_000_000
SECOND: Final = 1_000_000_000
UINT32: Final = 1 << 32
META_MAX_SIZE: Final = 512
COMPOUND_HEADER_OVERHEAD: Final = 2
COMPOUND_PART_OVERHEAD: Final = 2
MAX_COMPOUND_PARTS: Final = 255

_T = TypeVar("_T")


class Rng(Protocol):
    """The part of `random.Random` the membership uses."""

    def randrange(self, stop: int, /) -> int:
        """Return a uniform int in [0, stop)."""
        ...

    def shuffle(self, x: MutableSequence[_T], /) -> None:
        """Shuffle `x` in place."""
        ...


@dataclass(frozen=True, slots=True)
class Config:
    """The fork's DefaultLANConfig with the Sidecar overrides (§5.1); durations in ns."""

    name: str
    addr: bytes
    port: int
    cluster_name: str = "default"
    meta: bytes | None = None
    vsn: bytes = GO_VSN
    probe_interval: int = 1 * SECOND
    probe_timeout: int = 500 * MS
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 5
    suspicion_max_timeout_mult: int = 6
    awareness_max_multiplier: int = 8
    gossip_interval: int = 200 * MS
    gossip_nodes: int = 3
    gossip_messages: int = 15
    gossip_to_the_dead_time: int = 30 * SECOND
    udp_buffer_size: int = 1400
    disable_tcp_pings: bool = False
    user_retransmit_mult: int = 1
    user_min_transmits: int = 2
    measure: Callable[[Packet], int] = encoded_size

    def __post_init__(self) -> None:
        if len(self.vsn) != 6:
            raise ValueError(f"vsn must be exactly 6 bytes, got {self.vsn!r}")
        if self.meta is not None and len(self.meta) > META_MAX_SIZE:
            raise ValueError(f"meta is {len(self.meta)} bytes, more than {META_MAX_SIZE}")


SUSPICION_MULT_FAST: Final = 4
"""The suspicion multiplier `sidecar run` and `sidecar simulate` use instead of the fork's 5:
upstream memberlist's current default. Suspicion timeouts are each node's own (nothing on
the wire changes), so Go nodes keep theirs; in a cluster of 3 to 9 a crashed host is declared
dead after 4 s of suspicion instead of 5, and with 2 confirmations instead of 3 (the simulated
false-death runs at 30 % loss found none either way; BENCHMARKS.md)."""


@dataclass(frozen=True, slots=True)
class Address:
    """A node's UDP/TCP address: raw IP bytes and a port."""

    ip: bytes
    port: int


@dataclass(frozen=True, slots=True)
class Member:
    """What this node knows of one member (itself included)."""

    name: str
    addr: bytes
    port: int
    meta: bytes | None
    vsn: bytes
    incarnation: int
    state: NodeState
    state_change: int

    @property
    def address(self) -> Address:
        """Return the member's address."""
        return Address(self.addr, self.port)

    @property
    def protocol_max(self) -> int:
        """Return the member's PMax (0 when its Vsn is unknown)."""
        return self.vsn[1] if len(self.vsn) == 6 else 0


class EventKind(enum.Enum):
    """What happened to a member, for the node above (memberlist's Notify* and more)."""

    JOINED = "joined"
    UPDATED = "updated"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    REAPED = "reaped"


@dataclass(frozen=True, slots=True)
class Event:
    """`member` (as it is after the change) `kind`."""

    kind: EventKind
    member: Member


@dataclass(frozen=True, slots=True)
class Send:
    """One UDP datagram to `to`: `messages` (several make a compound)."""

    to: Address
    messages: tuple[Packet, ...]


@dataclass(frozen=True, slots=True)
class TcpPing:
    """A TCP fallback ping for the transport to make; it reports by `deadline` through
    `Membership.tcp_ping_result`."""

    to: Address
    ping: Ping
    deadline: int


@dataclass(frozen=True, slots=True)
class StreamSend:
    """A user message too large for a packet, for the transport to send over TCP to `to`."""

    to: Address
    message: User


@dataclass(frozen=True, slots=True)
class Output:
    """What one input produced."""

    sends: tuple[Send, ...] = ()
    tcp_pings: tuple[TcpPing, ...] = ()
    events: tuple[Event, ...] = ()
    rejected: str | None = None
    """Why a push/pull was refused as a whole (then its user state must not be merged)."""
    streams: tuple[StreamSend, ...] = ()


@dataclass(slots=True)
class _Out:
    sends: list[Send] = field(default_factory=list)
    tcp_pings: list[TcpPing] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    streams: list[StreamSend] = field(default_factory=list)

    def freeze(self, rejected: str | None = None) -> Output:
        return Output(
            tuple(self.sends),
            tuple(self.tcp_pings),
            tuple(self.events),
            rejected,
            tuple(self.streams),
        )


@dataclass(slots=True, eq=False)
class _Broadcast:
    node: str
    message: Alive | Suspect | Dead | User
    order: int
    size: int
    """What the message costs in a compound: its encoding and its 2-byte length."""
    transmits: int = 0
    extra_rounds: int = 0
    """Rounds a user message gets beyond the limit (news, not a refresh)."""


@dataclass(slots=True)
class _Suspicion:
    start: int
    state_change: int
    incarnation: int
    k: int
    min: int
    max: int
    timeout: int
    confirmations: set[str]


@dataclass(slots=True)
class _Probe:
    target: str
    seq_no: int
    sent: int
    end: int
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    tcp_pending: bool = False
    tcp_ok: bool = False


@dataclass(slots=True)
class _Relay:
    requester: Address
    seq_no: int
    nack: bool
    deadline: int


def suspicion_bounds(config: Config, n: int) -> tuple[int, int]:
    """Return (min, max) suspicion timeouts in ns for a list of `n` nodes (§5.4)."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    minimum = config.suspicion_mult * int(node_scale * 1000) * config.probe_interval // 1000
    return minimum, config.suspicion_max_timeout_mult * minimum


def suspicion_timeout(confirmations: int, k: int, minimum: int, maximum: int) -> int:
    """Return the suspicion timeout in ns after `confirmations` of `k` expected (Lifeguard)."""
    if k < 1:
        return minimum
    fraction = math.log(confirmations + 1.0) / math.log(k + 1.0)
    raw = maximum - fraction * (maximum - minimum)
    timeout = math.floor(raw / MS) * MS
    return max(timeout, minimum)


def retransmit_limit(config: Config, n: int) -> int:
    """Return how many times a broadcast is sent in a cluster of `n` nodes (§5.5)."""
    return config.retransmit_mult * math.ceil(math.log10(n + 1))


def user_transmit_limit(config: Config, n: int) -> int:
    """Return how many gossip rounds (the eager push included) a user message gets in a
    cluster of `n` nodes: each round reaches `gossip_nodes` peers, and every peer that finds
    the message new relays it the same way (Go's Sidecar relays once, reaching ~94 %)."""
    scaled = config.user_retransmit_mult * math.ceil(math.log10(n + 1))
    return max(config.user_min_transmits, scaled)


def protocol_compatible(vsns: Iterable[tuple[bytes, bool]]) -> bool:
    """Return whether every (vsn, counts_for_range) is within the cluster's ranges (§4.3).

    The ranges come from the entries marked as counting (alive ones with a 6-byte Vsn);
    every entry must then have PCur and DCur inside them. A Vsn not 6 bytes long fails."""
    entries = list(vsns)
    max_pmin = max_dmin = 0
    min_pmax = min_dmax = 255
    for vsn, counts in entries:
        if counts and len(vsn) == 6:
            max_pmin, min_pmax = max(max_pmin, vsn[0]), min(min_pmax, vsn[1])
            max_dmin, min_dmax = max(max_dmin, vsn[3]), min(min_dmax, vsn[4])
    for vsn, _ in entries:
        if len(vsn) != 6:
            return False
        if not (max_pmin <= vsn[2] <= min_pmax and max_dmin <= vsn[5] <= min_dmax):
            return False
    return True


class Membership:
    """One node's SWIM membership: mutable, fed inputs with `now` (ns), returning `Output`s."""

    def __init__(
        self,
        config: Config,
        rng: Rng,
        now: int,
        incarnation: int = 1,
        *,
        members: Iterable[Member] = (),
    ) -> None:
        """Start as a member alone, or knowing `members` already (not gossiped: for a
        simulation that starts from a cluster that has converged)."""
        self.config = config
        self._rng = rng
        self.incarnation = incarnation
        self.awareness = 0
        self.leaving = False
        self.meta = config.meta
        self._members: dict[str, Member] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._seq_no = 0
        self._order = 0
        self._queue: list[_Broadcast] = []
        self._user_queue: dict[str, _Broadcast] = {}
        self.counters: Counter[str] = Counter()
        """What this node did, for metrics: `probes`, `probes_failed` (then it raised a
        suspicion), `refutations` (of suspicions or deaths about itself)."""
        self._suspicions: dict[str, _Suspicion] = {}
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._next_probe = now + config.probe_interval
        self._next_gossip = now + config.gossip_interval
        me = Member(
            config.name,
            config.addr,
            config.port,
            config.meta,
            config.vsn,
            incarnation,
            NodeState.ALIVE,
            now,
        )
        self._add_member(me)
        for member in members:
            if member.name != config.name:
                self._add_member(member)
        self._broadcast(self._own_alive())

    # ------------------------------------------------------------------ views

    @property
    def members(self) -> dict[str, Member]:
        """Return a copy of the member list, keyed by name (this node included)."""
        return dict(self._members)

    def member(self, name: str) -> Member | None:
        """Return what is known of `name`, or None."""
        return self._members.get(name)

    def queued(self) -> tuple[Alive | Suspect | Dead | User, ...]:
        """Return the queued broadcasts in the order gossip would take them: memberlist's,
        then the user messages."""
        return tuple(b.message for b in self._ordered_broadcasts())

    def next_wakeup(self) -> int:
        """Return the latest `now` by which `tick` must be called next."""
        times = [self._next_gossip]
        if self._probe is not None:
            times.append(self._probe_deadline(self._probe))
        else:
            times.append(self._next_probe)
        times.extend(r.deadline for r in self._relays.values())
        times.extend(s.start + s.timeout for s in self._suspicions.values())
        return min(times)

    def local_state(self) -> tuple[PushNodeState, ...]:
        """Return every known member as push/pull sends it (§4.1), this node included."""
        return tuple(
            PushNodeState(m.name, m.addr, m.port, m.meta, m.incarnation, m.state, m.vsn)
            for m in self._members.values()
        )

    # ------------------------------------------------------------------ inputs

    def tick(self, now: int) -> Output:
        """Run whatever is due at `now`: probe steps, relay nacks, suspicion timeouts, gossip."""
        out = _Out()
        for seq_no, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq_no]
                if relay.nack:
                    self._send_msg(relay.requester, Nack(relay.seq_no), out)
        for name, suspicion in list(self._suspicions.items()):
            if now >= suspicion.start + suspicion.timeout:
                member = self._members.get(name)
                del self._suspicions[name]
                if (
                    member is not None
                    and member.state is NodeState.SUSPECT
                    and member.state_change == suspicion.state_change
                ):
                    dead = Dead(
                        suspicion.incarnation, name, self.config.cluster_name, self.config.name
                    )
                    self._on_dead(dead, now, out)
        self._step_probe(now, out)
        if now >= self._next_gossip:
            self._gossip(now, out)
            while self._next_gossip <= now:
                self._next_gossip += self.config.gossip_interval
        return out.freeze()

    def receive(self, message: Packet, source: Address, now: int) -> Output:
        """Handle one message received over UDP from `source`."""
        out = _Out()
        if isinstance(message, Ping):
            if message.node in ("", self.config.name):
                self._send_msg(source, Ack(message.seq_no), out)
        elif isinstance(message, IndirectPing):
            seq_no = self._next_seq()
            target = Address(message.target, message.port or self.config.port)
            self._relays[seq_no] = _Relay(
                source, message.seq_no, message.nack, now + self.config.probe_timeout
            )
            self._send_msg(target, Ping(seq_no, message.node), out)
        elif isinstance(message, Ack):
            relay = self._relays.pop(message.seq_no, None)
            if relay is not None:
                self._send_msg(relay.requester, Ack(relay.seq_no), out)
            elif self._probe is not None and message.seq_no == self._probe.seq_no:
                self._finish_probe(now, succeeded=True, out=out)
        elif isinstance(message, Nack):
            if self._probe is not None and message.seq_no == self._probe.seq_no:
                self._probe.nacks += 1
        elif isinstance(message, Alive) and message.cluster_name == self.config.cluster_name:
            if message.port == 0:  # Go: port 0 means the receiver's own bind port
                message = replace(message, port=self.config.port)
            self._on_alive(message, now, out)
        elif isinstance(message, Suspect) and message.cluster_name == self.config.cluster_name:
            self._on_suspect(message, now, out)
        elif isinstance(message, Dead) and message.cluster_name == self.config.cluster_name:
            self._on_dead(message, now, out)
        return out.freeze()

    def tcp_ping_result(self, seq_no: int, now: int, *, acked: bool) -> Output:
        """Take the transport's answer to a `TcpPing` (acked: a matching ack came back)."""
        out = _Out()
        probe = self._probe
        if probe is not None and probe.seq_no == seq_no and probe.tcp_pending:
            probe.tcp_pending = False
            probe.tcp_ok = acked
            self._step_probe(now, out)
        return out.freeze()

    def merge_remote(
        self, nodes: Sequence[PushNodeState], now: int, cluster_name: str | None = None
    ) -> Output:
        """Merge a push/pull node list (§4.3); `cluster_name` is its header's, when known.

        A refused merge says why in `Output.rejected`; the user state must then be dropped."""
        if cluster_name is not None and cluster_name != self.config.cluster_name:
            return Output(rejected=f"cluster name {cluster_name!r} is not ours")
        entries = [(n.vsn, n.state is NodeState.ALIVE and len(n.vsn) > 0) for n in nodes]
        entries += [(m.vsn, m.state is NodeState.ALIVE) for m in self._members.values()]
        if not protocol_compatible(entries):
            return Output(rejected="protocol versions are incompatible")
        out = _Out()
        for node in nodes:
            if node.state is NodeState.ALIVE:
                alive = Alive(
                    node.incarnation,
                    node.name,
                    self.config.cluster_name,
                    node.addr,
                    node.port or self.config.port,
                    node.meta,
                    node.vsn,
                )
                self._on_alive(alive, now, out)
            else:
                suspect = Suspect(
                    node.incarnation, node.name, self.config.cluster_name, self.config.name
                )
                self._on_suspect(suspect, now, out)
        return out.freeze()

    def update_meta(self, meta: bytes | None, now: int) -> Output:
        """Change this node's meta: a higher incarnation, gossiped as `alive` (§5.10)."""
        if meta is not None and len(meta) > META_MAX_SIZE:
            raise ValueError(f"meta is {len(meta)} bytes, more than {META_MAX_SIZE}")
        self.meta = meta
        self.incarnation = (self.incarnation + 1) % UINT32
        me = self._members[self.config.name]
        self._members[self.config.name] = replace(me, incarnation=self.incarnation, meta=meta)
        self._broadcast(self._own_alive())
        return Output()

    def send_user(
        self,
        messages: Iterable[tuple[str, bytes]],
        now: int,
        *,
        fanout: int | None = None,
        extra_rounds: int = 0,
    ) -> Output:
        """Queue user messages `(key, payload)` for gossip and push them at once to `fanout`
        random members (default: the gossip fanout; a newer message under a queued key
        replaces it), each then sent on `extra_rounds` more gossip rounds than the limit.
        One too large for a packet goes to the fanout over TCP instead (`Output.streams`)."""
        out = _Out()
        fresh: list[_Broadcast] = []
        oversized: list[User] = []
        budget = self.config.udp_buffer_size - COMPOUND_HEADER_OVERHEAD
        for key, payload in messages:
            message = User(payload)
            size = self.config.measure(message) + COMPOUND_PART_OVERHEAD
            self._user_queue.pop(key, None)
            if size > budget:
                oversized.append(message)
                continue
            self._order += 1
            broadcast = _Broadcast(key, message, self._order, size, extra_rounds=extra_rounds)
            self._user_queue[key] = broadcast
            fresh.append(broadcast)
        if not fresh and not oversized:
            return Output()
        targets = self._gossip_targets(now, fanout)
        for message in oversized:
            out.streams.extend(StreamSend(t.address, message) for t in targets)
        if targets and fresh:
            limit = user_transmit_limit(self.config, len(self._members))
            fresh.sort(key=_broadcast_key)
            for packet in self._pack(fresh, budget, limit):
                out.sends.extend(Send(t.address, packet) for t in targets)
        return out.freeze()

    def leave(self, now: int) -> Output:
        """Leave gracefully: queue `dead` about this node with `From` empty (§5.8, §7 step 3)
        and send it at once to the gossip fanout."""
        out = _Out()
        self.leaving = True
        dead = Dead(self.incarnation, self.config.name, self.config.cluster_name, "")
        self._on_dead(dead, now, out)
        for target in self._gossip_targets(now):
            out.sends.append(Send(target.address, (dead,)))
        return out.freeze()

    # ------------------------------------------------------------------ receive rules (§5.8)

    def _on_alive(self, a: Alive, now: int, out: _Out) -> None:
        is_me = a.node == self.config.name
        if self.leaving and is_me:
            return
        member = self._members.get(a.node)
        if member is None:
            # Go keeps versions as six numbers: an unknown node's are zeros, never empty.
            member = Member(a.node, a.addr, a.port, a.meta, bytes(6), 0, NodeState.DEAD, now)
            self._add_member(member)
        elif member.addr != a.addr or member.port != a.port:
            return
        if not is_me and a.incarnation <= member.incarnation:
            return
        if is_me and a.incarnation < member.incarnation:
            return
        self._suspicions.pop(a.node, None)
        if is_me:
            if (
                a.incarnation == member.incarnation
                and a.meta == member.meta
                and a.vsn == member.vsn
            ):
                return
            self._refute(a.incarnation, now)
            return
        self._broadcast(a)
        updated = replace(
            member,
            vsn=a.vsn if len(a.vsn) == 6 else member.vsn,
            incarnation=a.incarnation,
            meta=a.meta,
        )
        if member.state is not NodeState.ALIVE:
            updated = replace(updated, state=NodeState.ALIVE, state_change=now)
        self._members[a.node] = updated
        if member.state is NodeState.DEAD:
            out.events.append(Event(EventKind.JOINED, updated))
        elif member.meta != updated.meta:
            out.events.append(Event(EventKind.UPDATED, updated))

    def _on_suspect(self, s: Suspect, now: int, out: _Out) -> None:
        member = self._members.get(s.node)
        if member is None or s.incarnation < member.incarnation:
            return
        suspicion = self._suspicions.get(s.node)
        if suspicion is not None:
            if self._confirm(suspicion, s.from_):
                self._broadcast(s)
            return
        if member.state is not NodeState.ALIVE:
            return
        if s.node == self.config.name:
            self._refute(s.incarnation, now)
            return
        self._broadcast(s)
        updated = replace(
            member, incarnation=s.incarnation, state=NodeState.SUSPECT, state_change=now
        )
        self._members[s.node] = updated
        n = len(self._members)
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        minimum, maximum = suspicion_bounds(self.config, n)
        self._suspicions[s.node] = _Suspicion(
            start=now,
            state_change=now,
            incarnation=s.incarnation,
            k=k,
            min=minimum,
            max=maximum,
            timeout=maximum if k >= 1 else minimum,
            confirmations={s.from_},
        )
        out.events.append(Event(EventKind.SUSPECT, updated))

    def _on_dead(self, d: Dead, now: int, out: _Out) -> None:
        member = self._members.get(d.node)
        if member is None or d.incarnation < member.incarnation:
            return
        self._suspicions.pop(d.node, None)
        if member.state is NodeState.DEAD:
            return
        if d.node == self.config.name and not self.leaving:
            self._refute(d.incarnation, now)
            return
        self._broadcast(d)
        updated = replace(member, incarnation=d.incarnation, state=NodeState.DEAD, state_change=now)
        self._members[d.node] = updated
        left = d.from_ in ("", d.node)
        out.events.append(Event(EventKind.LEFT if left else EventKind.DEAD, updated))

    def _refute(self, accused: int, now: int) -> None:
        self.counters["refutations"] += 1
        incarnation = (self.incarnation + 1) % UINT32
        if accused >= incarnation:
            incarnation = (accused + 1) % UINT32
        self.incarnation = incarnation
        me = self._members[self.config.name]
        self._members[self.config.name] = replace(me, incarnation=incarnation)
        self._apply_awareness(1)
        self._broadcast(self._own_alive())

    def _confirm(self, suspicion: _Suspicion, from_: str) -> bool:
        if len(suspicion.confirmations) - 1 >= suspicion.k or from_ in suspicion.confirmations:
            return False
        suspicion.confirmations.add(from_)
        suspicion.timeout = suspicion_timeout(
            len(suspicion.confirmations) - 1, suspicion.k, suspicion.min, suspicion.max
        )
        return True

    # ------------------------------------------------------------------ probing (§5.2)

    def _step_probe(self, now: int, out: _Out) -> None:
        probe = self._probe
        if probe is None:
            if now >= self._next_probe:
                self._start_probe(now, out)
            return
        if not probe.indirect_sent and now >= probe.sent + self.config.probe_timeout:
            self._send_indirect(probe, now, out)
        if now >= probe.end and not probe.tcp_pending:
            self._finish_probe(now, succeeded=probe.tcp_ok, out=out)
        elif now >= self._probe_deadline(probe):
            self._finish_probe(now, succeeded=False, out=out)

    def _probe_deadline(self, probe: _Probe) -> int:
        if not probe.indirect_sent:
            return probe.sent + self.config.probe_timeout
        # A TCP ping the transport never answered counts as failed one probe timeout late.
        return probe.end + (self.config.probe_timeout if probe.tcp_pending else 0)

    def _start_probe(self, now: int, out: _Out) -> None:
        target = self._next_probe_target(now, out)
        interval = self.config.probe_interval
        if target is None:
            self._next_probe = now + interval
            return
        seq_no = self._next_seq()
        ping = Ping(seq_no, target.name)
        self.counters["probes"] += 1
        if target.state is NodeState.ALIVE:
            self._send_msg(target.address, ping, out)
        else:
            suspect = Suspect(
                target.incarnation, target.name, self.config.cluster_name, self.config.name
            )
            out.sends.append(Send(target.address, (ping, suspect)))
        end = now + interval * (self.awareness + 1)
        self._probe = _Probe(target.name, seq_no, sent=now, end=end)
        self._next_probe = now + interval

    def _next_probe_target(self, now: int, out: _Out) -> Member | None:
        checked = 0
        while checked < len(self._probe_order):
            if self._probe_index >= len(self._probe_order):
                self._reset_probe_order(now, out)
                self._probe_index = 0
                checked += 1
                continue
            member = self._members[self._probe_order[self._probe_index]]
            self._probe_index += 1
            if member.name == self.config.name or member.state is NodeState.DEAD:
                checked += 1
                continue
            return member
        return None

    def _reset_probe_order(self, now: int, out: _Out) -> None:
        for name in list(self._probe_order):
            member = self._members[name]
            if (
                member.state is NodeState.DEAD
                and now - member.state_change > self.config.gossip_to_the_dead_time
            ):
                del self._members[name]
                self._probe_order.remove(name)
                out.events.append(Event(EventKind.REAPED, member))
        self._rng.shuffle(self._probe_order)

    def _send_indirect(self, probe: _Probe, now: int, out: _Out) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target)
        if target is None:
            return
        peers = self._random_members(
            self.config.indirect_checks,
            lambda m: m.name not in (self.config.name, probe.target) and m.state is NodeState.ALIVE,
        )
        for peer in peers:
            nack = peer.protocol_max >= 4
            probe.expected_nacks += nack
            request = IndirectPing(probe.seq_no, target.addr, target.port, target.name, nack)
            self._send_msg(peer.address, request, out)
        if not self.config.disable_tcp_pings and target.protocol_max >= 3:
            probe.tcp_pending = True
            out.tcp_pings.append(
                TcpPing(target.address, Ping(probe.seq_no, target.name), probe.end)
            )

    def _finish_probe(self, now: int, out: _Out, *, succeeded: bool) -> None:
        probe = self._probe
        assert probe is not None
        self._probe = None
        # Go's ticker keeps its beat; ticks that fell inside this probe were dropped.
        interval = self.config.probe_interval
        if now >= self._next_probe:
            self._next_probe = probe.sent + interval * ((now - probe.sent) // interval + 1)
        if succeeded:
            self._apply_awareness(-1)
            return
        self.counters["probes_failed"] += 1
        if probe.expected_nacks > 0:
            self._apply_awareness(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._apply_awareness(1)
        target = self._members.get(probe.target)
        if target is not None:
            suspect = Suspect(
                target.incarnation, target.name, self.config.cluster_name, self.config.name
            )
            self._on_suspect(suspect, now, out)

    def _apply_awareness(self, delta: int) -> None:
        self.awareness = min(
            max(self.awareness + delta, 0), self.config.awareness_max_multiplier - 1
        )

    # ------------------------------------------------------------------ gossip (§5.5)

    def _gossip(self, now: int, out: _Out) -> None:
        if not self._queue and not self._user_queue:
            return
        targets = self._gossip_targets(now)
        if not targets:
            return
        budget = self.config.udp_buffer_size - COMPOUND_HEADER_OVERHEAD
        packets = self._pack(self._ordered_broadcasts(), budget, None)
        for target in targets:
            for packet_messages in packets:
                out.sends.append(Send(target.address, packet_messages))

    def _pack(
        self, candidates: list[_Broadcast], budget: int, user_limit: int | None
    ) -> list[tuple[Packet, ...]]:
        """Pack `candidates` (in order) into at most `gossip_messages` packets of `budget`
        bytes, counting a transmit for each one packed and dropping those at their limit."""
        n = len(self._members)
        limit = retransmit_limit(self.config, n)
        if user_limit is None:
            user_limit = user_transmit_limit(self.config, n)
        packets: list[tuple[Packet, ...]] = []
        remaining = candidates
        while remaining and len(packets) < self.config.gossip_messages:
            packet: list[Packet] = []
            used = 0
            left: list[_Broadcast] = []
            for broadcast in remaining:
                if used + broadcast.size > budget or len(packet) >= MAX_COMPOUND_PARTS:
                    left.append(broadcast)
                    continue
                used += broadcast.size
                packet.append(broadcast.message)
                self._transmitted(broadcast, limit, user_limit)
            if not packet:
                break
            packets.append(tuple(packet))
            remaining = left
        return packets

    def _transmitted(self, broadcast: _Broadcast, limit: int, user_limit: int) -> None:
        broadcast.transmits += 1
        if isinstance(broadcast.message, User):
            done = broadcast.transmits >= user_limit + broadcast.extra_rounds
            if done and self._user_queue.get(broadcast.node) is broadcast:
                del self._user_queue[broadcast.node]
        elif broadcast.transmits >= limit:
            self._queue = [b for b in self._queue if b is not broadcast]

    def _send_msg(self, to: Address, message: Packet, out: _Out) -> None:
        """Send `message` to `to` with what queued broadcasts fit beside it (Go's `sendMsg`:
        `1400 − len(msg) − 2` bytes left for the compound)."""
        if not self._queue and not self._user_queue:
            out.sends.append(Send(to, (message,)))
            return
        size = self.config.measure(message) + COMPOUND_PART_OVERHEAD
        budget = self.config.udp_buffer_size - COMPOUND_HEADER_OVERHEAD - size
        n = len(self._members)
        limit = retransmit_limit(self.config, n)
        user_limit = user_transmit_limit(self.config, n)
        extra: list[Packet] = []
        used = 0
        for broadcast in self._ordered_broadcasts():
            if used + broadcast.size > budget or len(extra) + 1 >= MAX_COMPOUND_PARTS:
                continue
            used += broadcast.size
            extra.append(broadcast.message)
            if not isinstance(broadcast.message, User):
                # A user message's limit counts rounds, each to the whole fanout: a copy
                # riding on one ping or ack is extra, and must not use up a round.
                self._transmitted(broadcast, limit, user_limit)
        out.sends.append(Send(to, (message, *extra)))

    def _ordered_broadcasts(self) -> list[_Broadcast]:
        """Return the queued broadcasts as gossip takes them: memberlist's first, then the
        user messages, each fewest-sent and then newest first."""
        ordered = sorted(self._queue, key=_broadcast_key)
        ordered.extend(sorted(self._user_queue.values(), key=_broadcast_key))
        return ordered

    def _gossip_targets(self, now: int, k: int | None = None) -> list[Member]:
        def qualifies(m: Member) -> bool:
            if m.name == self.config.name:
                return False
            if m.state is NodeState.DEAD:
                return now - m.state_change <= self.config.gossip_to_the_dead_time
            return True

        return self._random_members(k or self.config.gossip_nodes, qualifies)

    def _broadcast(self, message: Alive | Suspect | Dead) -> None:
        self._queue = [b for b in self._queue if b.node != message.node]
        self._order += 1
        size = self.config.measure(message) + COMPOUND_PART_OVERHEAD
        self._queue.append(_Broadcast(message.node, message, self._order, size))

    # ------------------------------------------------------------------ helpers

    def _own_alive(self) -> Alive:
        c = self.config
        return Alive(self.incarnation, c.name, c.cluster_name, c.addr, c.port, self.meta, c.vsn)

    def _add_member(self, member: Member) -> None:
        self._members[member.name] = member
        self._probe_order.append(member.name)
        # Go puts a new node at a random place in its probe list (swap with the last).
        last = len(self._probe_order) - 1
        offset = self._rng.randrange(last + 1)
        order = self._probe_order
        order[offset], order[last] = order[last], order[offset]

    def _next_seq(self) -> int:
        self._seq_no = (self._seq_no + 1) % UINT32
        return self._seq_no

    def _random_members(self, k: int, keep: Callable[[Member], bool]) -> list[Member]:
        """Return up to `k` distinct members that `keep`, drawn as Go's `kRandomNodes`
        draws them: random picks, at most 3n of them (O(k) in a large healthy cluster)."""
        names = self._probe_order
        n = len(names)
        chosen: list[Member] = []
        picked: set[str] = set()
        for _ in range(3 * n):
            if len(chosen) >= k:
                break
            name = names[self._rng.randrange(n)]
            if name in picked:
                continue
            member = self._members[name]
            if keep(member):
                picked.add(name)
                chosen.append(member)
        return chosen


def _broadcast_key(broadcast: _Broadcast) -> tuple[int, int]:
    return (broadcast.transmits, -broadcast.order)
