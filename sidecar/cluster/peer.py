"""One cluster host, pure and sans-IO: the node protocol over SWIM membership, in bytes.

A `Peer` joins the core's node (`sidecar.state.node`: own records, merge, relay, tombstones)
to the `Membership` machine and the wire codec. It is fed what the transport received —
a datagram, a parsed TCP stream, a push/pull reply, a TCP ping's result — and the host's
own news (an observation, a drain, a leave), each with `now` (monotonic ns, for membership
timers) and `wall` (ns since the epoch, for record versions). Every input returns an
`Output`: datagrams and TCP messages to send, as bytes; the push/pulls to start (the
periodic one, and reconnects to members held dead); membership and record events; and why
input was dropped. The transport moves bytes and keeps timers
(`next_wakeup`); it decides nothing. The daemon, `sidecar simulate` and the property
simulation drive this same object.

The node's records travel as user messages (one service JSON each, as Go's Sidecar sends
them), gossiped by membership's schedule; the push/pull user state is the state JSON. A
member that membership declares dead or left has its services tombstoned; a record that
does not decode is dropped and reported, never merged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sidecar.cluster import codec
from sidecar.cluster.crypto import Keyring
from sidecar.cluster.errors import DecodeError
from sidecar.cluster.membership import (
    SECOND,
    Address,
    Config,
    Event,
    EventKind,
    Member,
    Membership,
    Rng,
    TcpPing,
)
from sidecar.cluster.membership import Output as MembershipOutput
from sidecar.cluster.messages import (
    Ack,
    Alive,
    Dead,
    NodeState,
    Packet,
    Ping,
    PushPull,
    Stream,
    Suspect,
    User,
)
from sidecar.state import codec as records
from sidecar.state import node as protocol
from sidecar.state.model import ChangeEvent, ClusterState, Service

NODE_TICK = SECOND
PUSH_PULL_INTERVAL = 20 * SECOND
NEWS_FANOUT = 4
"""Members a record that is news (new, or with a new status) goes to at once (a refresh:
the gossip fanout, 3)."""
NEWS_EXTRA_ROUNDS = 1
"""Gossip rounds news gets beyond a refresh's. Each host that learns it sends it to 10
others instead of 6, so a host missed by the first wave has it within 0.4 s rather than at
the owner's repeat a second later (20 simulated hosts, 300 new services: worst 0.40 s instead
of 1.01 s, 13 % more datagrams; p50 and p99 unchanged). A refresh, re-stamped every 30 s,
has time for the next wave and the push/pulls."""
RECONNECT_INTERVAL = 10 * SECOND
RECONNECT_FOR = 6 * 3600 * SECOND
"""A member declared dead (not one that left) is tried again by push/pull, one every
`RECONNECT_INTERVAL`, for this long: after a partition longer than the suspicion timeout
each side holds the other dead, and nothing in SWIM brings them back (Serf's reconnect)."""
RECORD_CACHE = 4096
"""Service JSON payloads remembered with their decoded records (then forgotten at once)."""
COMPRESS_MIN = 128
"""With packet compression on, packets shorter than this are sent as they are: LZW never
makes a ping or an ack smaller."""


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP packet to send."""

    to: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One TCP stream to open to `to`, write `data` to, and close (a user message)."""

    to: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class Output:
    """What one input produced, for the transport and the daemon."""

    datagrams: tuple[Datagram, ...] = ()
    streams: tuple[StreamMessage, ...] = ()
    tcp_pings: tuple[TcpPing, ...] = ()
    push_pulls: tuple[Address, ...] = ()
    """Start a push/pull with each of these now (`Peer.push_pull_request`)."""
    members: tuple[Event, ...] = ()
    changes: tuple[ChangeEvent, ...] = ()
    changed: bool = False
    """Whether the cluster state changed (the reconciler has work)."""
    rejected: tuple[str, ...] = ()
    """Why input was dropped: one line each, for a rate-limited log and a counter."""
    foreign: tuple[tuple[Address, str], ...] = ()
    """Input refused for its cluster name: (source, the cluster name it carried)."""


@dataclass(slots=True)
class _Out:
    datagrams: list[Datagram] = field(default_factory=list)
    streams: list[StreamMessage] = field(default_factory=list)
    tcp_pings: list[TcpPing] = field(default_factory=list)
    push_pulls: list[Address] = field(default_factory=list)
    members: list[Event] = field(default_factory=list)
    changes: list[ChangeEvent] = field(default_factory=list)
    changed: bool = False
    rejected: list[str] = field(default_factory=list)
    foreign: list[tuple[Address, str]] = field(default_factory=list)

    def freeze(self) -> Output:
        return Output(
            tuple(self.datagrams),
            tuple(self.streams),
            tuple(self.tcp_pings),
            tuple(self.push_pulls),
            tuple(self.members),
            tuple(self.changes),
            self.changed,
            tuple(self.rejected),
            tuple(self.foreign),
        )


def push_pull_scale(interval: int, n: int) -> int:
    """Return the push/pull interval for a cluster of `n` members (§4.4: ×1 up to 32, then
    ×(⌈log2 n − log2 32⌉ + 1))."""
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


def record_key(record: Service) -> str:
    """Return the key under which a newer version of `record` replaces a queued one."""
    return f"{record.hostname}\x00{record.id}"


class Peer:
    """One host of the cluster: mutable, fed inputs with `now` and `wall`, returning
    `Output`s."""

    def __init__(
        self,
        config: Config,
        rng: Rng,
        *,
        now: int,
        members: Iterable[Member] = (),
        push_pull_interval: int = PUSH_PULL_INTERVAL,
        keyring: Keyring | None = None,
        nonce: Callable[[], bytes] | None = None,
        compress_packets: bool = False,
        compress_streams: bool = True,
    ) -> None:
        """Start alone (or knowing `members`, see `Membership`); `nonce` gives the 12 random
        bytes each encrypted message needs when there is a `keyring`.

        Streams are LZW-compressed as Go's are (a push/pull shrinks ~3×, once per interval).
        Packets are not by default: Go compresses each one, but decodes both forms, and LZW
        in Python costs more than the rest of decoding a gossip packet (BENCHMARKS.md)."""
        if keyring is not None and nonce is None:
            raise ValueError("a keyring needs a nonce source")
        self.membership = Membership(config, rng, now, members=members)
        self.node = protocol.Node.start(config.name, config.cluster_name)
        self._rng = rng
        self._keyring = keyring
        self._nonce = nonce
        self._compress_packets = compress_packets
        self._compress_streams = compress_streams
        self._push_pull_interval = push_pull_interval
        self.counters: Counter[str] = Counter()
        """Messages by direction and type (`sent.alive`, `received.user`, ...), for metrics;
        membership's own are in `membership.counters`."""
        self.left: set[str] = set()
        """Members that left gracefully (membership holds them as dead)."""
        self._departed: dict[str, tuple[Address, int]] = {}
        self._next_reconnect = now + RECONNECT_INTERVAL
        self._decoded: dict[bytes, Service] = {}
        self._payloads: dict[Service, bytes] = {}
        self._next_node_tick = now + NODE_TICK
        self._next_push_pull: int | None = None
        self._left = False
        if push_pull_interval > 0:
            # A random first round, so hosts started together do not push/pull together;
            # spread over the interval this host will keep (a host alone: Go's stagger).
            scaled = push_pull_scale(push_pull_interval, len(self.membership.members))
            self._next_push_pull = now + rng.randrange(scaled)

    # ------------------------------------------------------------------ views

    @property
    def name(self) -> str:
        """Return this member's name (the hostname in its records)."""
        return self.membership.config.name

    @property
    def state(self) -> ClusterState:
        """Return the cluster state as this host knows it."""
        return self.node.state

    def next_wakeup(self) -> int:
        """Return the latest `now` by which `tick` must be called next."""
        times = [self.membership.next_wakeup(), self._next_node_tick]
        if self._departed:
            times.append(self._next_reconnect)
        if self._next_push_pull is not None:
            times.append(self._next_push_pull)
        return min(times)

    # ------------------------------------------------------------------ inputs

    def tick(self, *, now: int, wall: int) -> Output:
        """Run what is due: membership's timers, the node's second (re-stamp, expire,
        scheduled broadcasts) and the periodic push/pull."""
        out = _Out()
        self._take_membership(self.membership.tick(now), now=now, wall=wall, out=out)
        if now >= self._next_node_tick:
            self._take_step(protocol.tick(self.node, now=wall), now=now, out=out)
            while self._next_node_tick <= now:
                self._next_node_tick += NODE_TICK
        if self._next_push_pull is not None and now >= self._next_push_pull:
            target = self._push_pull_target()
            if target is not None:
                out.push_pulls.append(target)
            interval = push_pull_scale(self._push_pull_interval, len(self.membership.members))
            self._next_push_pull = now + interval
        if now >= self._next_reconnect:
            self._next_reconnect = now + RECONNECT_INTERVAL
            target = self._reconnect_target(now)
            if target is not None:
                out.push_pulls.append(target)
        return out.freeze()

    def observe(self, running: Iterable[Service], *, now: int, wall: int) -> Output:
        """Take what this host runs now; a new or changed record is gossiped at once. Once
        this host left, nothing: its peers have buried its services."""
        out = _Out()
        if self._left:
            return out.freeze()
        self._take_step(protocol.observe(self.node, running, now=wall), now=now, out=out)
        return out.freeze()

    def drain(self, service_id: str, *, now: int, wall: int) -> Output | None:
        """Drain an own service (announced at once); None when there is no such service (or
        this host left)."""
        if self._left:
            return None
        step = protocol.drain(self.node, service_id, now=wall)
        if step is None:
            return None
        out = _Out()
        self._take_step(step, now=now, out=out)
        return out.freeze()

    def leave(self, *, now: int, wall: int) -> Output:
        """Leave the cluster: `dead` about this host from nobody, sent at once; from now on
        this host stamps nothing."""
        self._left = True
        self.node = protocol.leave(self.node)
        out = _Out()
        self._take_membership(self.membership.leave(now), now=now, wall=wall, out=out)
        return out.freeze()

    def datagram(self, data: bytes, source: Address, *, now: int, wall: int) -> Output:
        """Take one UDP packet from `source`."""
        return self.datagrams([(data, source)], now=now, wall=wall)

    def datagrams(self, packets: Iterable[tuple[bytes, Address]], *, now: int, wall: int) -> Output:
        """Take the UDP packets that arrived together (what a transport read in one turn):
        membership messages in order, then every record merged in one step, which costs a
        quarter of merging packet by packet in a large cluster (BENCHMARKS.md)."""
        out = _Out()
        received: list[Service] = []
        for data, source in packets:
            try:
                messages = codec.decode_packet(data, keyring=self._keyring)
            except DecodeError as exc:
                out.rejected.append(f"packet from {_show(source)}: {exc}")
                continue
            self._take_messages(messages, source, now=now, wall=wall, out=out, into=received)
        self._take_records(received, now=now, wall=wall, out=out)
        return out.freeze()

    def messages(
        self, messages: Sequence[Packet], source: Address, *, now: int, wall: int
    ) -> Output:
        """Take the messages of one UDP packet from `source`, decoded (`datagram` decodes;
        a simulation that sends one packet to several hosts decodes it once)."""
        out = _Out()
        received: list[Service] = []
        self._take_messages(messages, source, now=now, wall=wall, out=out, into=received)
        self._take_records(received, now=now, wall=wall, out=out)
        return out.freeze()

    def _take_messages(
        self,
        messages: Sequence[Packet],
        source: Address,
        *,
        now: int,
        wall: int,
        out: _Out,
        into: list[Service],
    ) -> None:
        for message in messages:
            self.counters[f"received.{_kind(message)}"] += 1
            if isinstance(message, User):
                record = self._decode_record(message.payload, source, out)
                if record is not None:
                    into.append(record)
            elif (
                isinstance(message, Alive | Suspect | Dead)
                and message.cluster_name != self.membership.config.cluster_name
            ):
                out.foreign.append((source, message.cluster_name))
            else:
                result = self.membership.receive(message, source, now)
                self._take_membership(result, now=now, wall=wall, out=out)

    def _take_records(self, received: list[Service], *, now: int, wall: int, out: _Out) -> None:
        if received:
            self._take_step(protocol.receive(self.node, received, now=wall), now=now, out=out)

    def stream(
        self, message: Stream, source: Address, *, now: int, wall: int
    ) -> tuple[bytes | None, Output]:
        """Take a TCP stream a peer opened (parsed by `codec.StreamParser`); return the reply
        to write before closing (None: close without one) and the output.

        A push/pull is answered first with this host's state, then merged (as Go does)."""
        out = _Out()
        reply: bytes | None = None
        if isinstance(message, PushPull):
            if message.cluster_name != self.membership.config.cluster_name:
                out.foreign.append((source, message.cluster_name))
            else:
                reply = self.push_pull_request(join=message.join)
                self._merge_push_pull(message, source, now=now, wall=wall, out=out)
        elif isinstance(message, Ping):
            if message.node in ("", self.name):
                reply = self._encode_stream(Ack(message.seq_no))
        elif isinstance(message, User):
            record = self._decode_record(message.payload, source, out)
            if record is not None:
                self._take_step(protocol.receive(self.node, [record], now=wall), now=now, out=out)
        else:
            out.rejected.append(f"stream from {_show(source)}: unexpected {type(message).__name__}")
        return reply, out.freeze()

    def push_pull_request(self, *, join: bool) -> bytes:
        """Return this host's push/pull (every member, and the state JSON) as stream bytes."""
        push_pull = PushPull(
            self.membership.local_state(),
            self.membership.config.cluster_name,
            join,
            records.encode_state(self.node.state),
        )
        return self._encode_stream(push_pull)

    def push_pull_reply(self, message: Stream, source: Address, *, now: int, wall: int) -> Output:
        """Merge the reply to a push/pull this host started."""
        out = _Out()
        if not isinstance(message, PushPull):
            out.rejected.append(
                f"push/pull reply from {_show(source)}: a {type(message).__name__}, not a push/pull"
            )
        else:
            self._merge_push_pull(message, source, now=now, wall=wall, out=out)
        return out.freeze()

    def tcp_ping_result(self, seq_no: int, *, now: int, wall: int, acked: bool) -> Output:
        """Take the transport's answer to a `TcpPing`."""
        out = _Out()
        result = self.membership.tcp_ping_result(seq_no, now, acked=acked)
        self._take_membership(result, now=now, wall=wall, out=out)
        return out.freeze()

    # ------------------------------------------------------------------ plumbing

    def _merge_push_pull(
        self, message: PushPull, source: Address, *, now: int, wall: int, out: _Out
    ) -> None:
        if message.cluster_name != self.membership.config.cluster_name:
            out.foreign.append((source, message.cluster_name))
            return
        result = self.membership.merge_remote(message.nodes, now, message.cluster_name)
        if result.rejected is not None:
            out.rejected.append(f"push/pull from {_show(source)}: {result.rejected}")
            return
        self._take_membership(result, now=now, wall=wall, out=out)
        if not message.user_state:
            return
        try:
            remote = records.decode_state(message.user_state)
        except records.RecordRejected as exc:
            out.rejected.append(f"push/pull state from {_show(source)}: {exc}")
            return
        self._take_step(protocol.receive_state(self.node, remote, now=wall), now=now, out=out)

    def _decode_record(self, payload: bytes, source: Address, out: _Out) -> Service | None:
        if not payload:
            return None  # Go ignores an empty user message
        record = self._decoded.get(payload)
        if record is not None:  # gossip brings each record several times
            return record
        try:
            record = records.decode_service(payload)
        except records.RecordRejected as exc:
            out.rejected.append(f"record from {_show(source)}: {exc}")
            return None
        if len(self._decoded) >= RECORD_CACHE:
            self._decoded.clear()
            self._payloads.clear()
        self._decoded[payload] = record
        self._payloads[record] = payload
        return record

    def _encode_record(self, record: Service) -> bytes:
        """Return the record's service JSON (a relayed record's as it arrived)."""
        payload = self._payloads.get(record)
        return payload if payload is not None else records.encode_service(record)

    def _take_step(self, step: protocol.Step, *, now: int, out: _Out) -> None:
        self.node = step.node
        out.changed = out.changed or step.changed
        out.changes.extend(step.events)
        if step.send:
            latest = {record_key(r): r for r in step.send}
            news = {record_key(e.service) for e in step.events}
            for urgent in (True, False):
                messages = [
                    (key, self._encode_record(r))
                    for key, r in latest.items()
                    if (key in news) is urgent
                ]
                if messages:
                    sent = self.membership.send_user(
                        messages,
                        now,
                        fanout=NEWS_FANOUT if urgent else None,
                        extra_rounds=NEWS_EXTRA_ROUNDS if urgent else 0,
                    )
                    self._emit(sent, out)

    def _take_membership(self, result: MembershipOutput, *, now: int, wall: int, out: _Out) -> None:
        self._emit(result, out)
        for event in result.events:
            out.members.append(event)
            name = event.member.name
            if event.kind in (EventKind.DEAD, EventKind.LEFT):
                self._take_step(protocol.peer_died(self.node, name, now=wall), now=now, out=out)
                if event.kind is EventKind.DEAD and name != self.name:
                    self._departed[name] = (event.member.address, now)
                    self.left.discard(name)
                else:
                    self._departed.pop(name, None)
                    self.left.add(name)
            elif event.kind is EventKind.JOINED:
                self.node = protocol.peer_back(self.node, name)
                self._departed.pop(name, None)
                self.left.discard(name)
            elif event.kind is EventKind.REAPED:
                self.left.discard(name)

    def _emit(self, result: MembershipOutput, out: _Out) -> None:
        encoded: dict[tuple[Packet, ...], bytes] = {}
        for send in result.sends:
            for message in send.messages:
                self.counters[f"sent.{_kind(message)}"] += 1
            data = encoded.get(send.messages)
            if data is None or self._keyring is not None:  # a nonce is never reused
                data = self._encode_packet(send.messages)
                encoded[send.messages] = data
            out.datagrams.append(Datagram(send.to, data))
        for stream in result.streams:
            out.streams.append(StreamMessage(stream.to, self._encode_stream(stream.message)))
        out.tcp_pings.extend(result.tcp_pings)

    def _encode_packet(self, messages: Sequence[Packet]) -> bytes:
        parts = [codec.encode_message(m) for m in messages]
        size = sum(len(p) for p in parts)
        return codec.encode_packet(
            parts,
            crc=True,
            compress=self._compress_packets and size >= COMPRESS_MIN,
            keyring=self._keyring,
            nonce=self._nonce() if self._nonce is not None else None,
        )

    def _encode_stream(self, message: Stream) -> bytes:
        return codec.encode_stream(
            message,
            compress=self._compress_streams,
            keyring=self._keyring,
            nonce=self._nonce() if self._nonce is not None else None,
        )

    def _push_pull_target(self) -> Address | None:
        candidates = [
            m
            for m in self.membership.members.values()
            if m.name != self.name and m.state is NodeState.ALIVE
        ]
        if not candidates:
            return None
        return candidates[self._rng.randrange(len(candidates))].address

    def _reconnect_target(self, now: int) -> Address | None:
        for name, (_, since) in list(self._departed.items()):
            if now - since > RECONNECT_FOR:
                del self._departed[name]
        if not self._departed:
            return None
        names = sorted(self._departed)
        return self._departed[names[self._rng.randrange(len(names))]][0]


def _kind(message: Packet) -> str:
    return type(message).__name__.lower()


def _show(address: Address) -> str:
    ip = address.ip
    if len(ip) == 4:
        return f"{'.'.join(str(b) for b in ip)}:{address.port}"
    return f"[{ip.hex()}]:{address.port}"
