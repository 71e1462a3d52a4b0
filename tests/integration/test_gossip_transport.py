"""The gossip transport on real sockets: transports on fresh 127.0.0.x addresses (loopback
only), each driving a real `Peer`, joining, gossiping services, detecting a crash, leaving,
and standing up to hostile input.

Every wait is a bounded poll of a condition (`eventually`); the bounds are the protocol's own
(the suspicion bound for n=3, the 1 s leave) plus slack for a busy machine, or generous
multiples of the short TCP deadline the hostile tests give the victim. Every scenario ends
with its transports stopped and checks that no task is left behind.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from sidecar.adapters.gossip import GossipTransport, ipv4_address
from sidecar.cluster import codec
from sidecar.cluster.errors import DecodeError
from sidecar.cluster.membership import (
    MS,
    SECOND,
    Address,
    Config,
    EventKind,
    suspicion_bounds,
)
from sidecar.cluster.messages import GO_VSN, Ack, Alive, NodeState, Ping
from sidecar.cluster.peer import Output, Peer
from sidecar.state.model import Service, Status
from tests import builders
from tests.integration.conftest import Loopback, port_is_free

pytestmark = pytest.mark.cluster

SCENARIO_TIMEOUT = 120.0
META = b'{"ClusterName":"default","State":"Running"}'
PROBE_SLACK = 3.0  # s beyond the suspicion bound: a probe round, its timeouts, a busy loop
SPREAD = 10.0  # s for gossip between three hosts on loopback (~ms when idle)
HOSTILE_TCP_TIMEOUT = 1.0  # the victim's TCP deadline (10 s in production)
CLOSED_WITHIN = 10 * HOSTILE_TCP_TIMEOUT


@dataclass
class Node:
    """One transport under test, with every member event its peer reported."""

    name: str
    ip: str
    transport: GossipTransport
    events: list[tuple[str, EventKind, float]] = field(default_factory=list)

    @property
    def peer(self) -> Peer:
        return self.transport.peer

    @property
    def seed(self) -> tuple[str, int]:
        return (self.ip, self.transport.port)

    def states(self) -> dict[str, NodeState]:
        """Return member name -> state as this node sees it."""
        return {n: m.state for n, m in self.peer.membership.members.items()}

    def status(self, host: str, sid: str) -> Status | None:
        record = self.peer.state.get(host, sid)
        return None if record is None else record.status

    def first(self, member: str, kind: EventKind) -> float | None:
        """Return when (time.monotonic) this node first reported `member` `kind`."""
        return next((t for n, k, t in self.events if n == member and k is kind), None)

    def view(self) -> tuple[frozenset[tuple[str, NodeState]], frozenset[Service]]:
        """Return what a hostile input must not change: members and their states, and records
        (versions aside: an owner re-stamps its records)."""
        members = frozenset((m.name, m.state) for m in self.peer.membership.members.values())
        records = frozenset(r.with_updated(0) for r in self.peer.state.records())
        return members, records


class Nodes:
    """Makes nodes on fresh loopback addresses, all on one port; stops them all at the end."""

    def __init__(self, loopback: Loopback) -> None:
        self._loopback = loopback
        self.port = loopback.port()
        self.made: list[Node] = []

    def address(self) -> str:
        """Return a fresh loopback address with the nodes' port free."""
        return self._loopback.address(ports=[self.port])

    def other_port(self) -> int:
        """Return a free port other than the nodes'."""
        return self._loopback.port()

    async def start(
        self,
        name: str,
        *,
        ip: str | None = None,
        advertise: str | None = None,
        cluster: str = "default",
        **options: Any,
    ) -> Node:
        """Start a node bound to `ip` (a fresh loopback address by default), advertising
        `advertise` (default: `ip`)."""
        ip = ip or self.address()
        config = Config(
            name=name,
            addr=socket.inet_aton(advertise or ip),
            port=self.port,
            cluster_name=cluster,
            meta=META,
        )
        peer = Peer(config, random.Random(), now=time.monotonic_ns())
        events: list[tuple[str, EventKind, float]] = []

        def record(out: Output) -> None:
            events.extend((e.member.name, e.kind, time.monotonic()) for e in out.members)

        transport = GossipTransport(peer, bind_host=ip, on_output=record, **options)
        node = Node(name, ip, transport, events)
        self.made.append(node)
        await transport.start()
        return node

    async def stop_all(self) -> None:
        for node in self.made:
            await node.transport.stop()


def run(loopback: Loopback, scenario: Callable[[Nodes], Awaitable[None]]) -> None:
    """Run `scenario` with a `Nodes`; then every transport stops and no task may be left."""

    async def main() -> None:
        nodes = Nodes(loopback)
        try:
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                await scenario(nodes)
        finally:
            await nodes.stop_all()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        for node in nodes.made:  # both sockets closed: the port can be bound again
            assert port_is_free(node.ip, nodes.port), node.name

    asyncio.run(main())


async def eventually(probe: Callable[[], object], what: str, *, within: float) -> float:
    """Return the seconds until `probe()` held (polled every 20 ms); fail after `within`."""
    began = time.monotonic()
    for _ in range(int(within / 0.02) + 2):
        if probe():
            return time.monotonic() - began
        if time.monotonic() - began > within:
            break
        await asyncio.sleep(0.02)
    pytest.fail(f"gave up after {within:g} s waiting for {what}")


def service(node: Node, sid: str = "0123456789ab") -> Service:
    now = time.time_ns()
    return builders.service(node.name, sid, image="web:1.0", ip=node.ip, at=now, created=now)


async def three_joined(nodes: Nodes) -> tuple[Node, Node, Node]:
    """Return three nodes that joined through the first and all see each other alive."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    c = await nodes.start("c")
    assert await b.transport.join([a.seed]) == 1
    assert await c.transport.join([a.seed]) == 1
    everyone = {"a": NodeState.ALIVE, "b": NodeState.ALIVE, "c": NodeState.ALIVE}
    await eventually(
        lambda: all(n.states() == everyone for n in (a, b, c)),
        "a, b and c all alive everywhere",
        within=SPREAD,
    )
    return a, b, c


# ---------------------------------------------------------------- join, services, leave


def test_three_transports_join_through_one_seed_and_gossip_a_service_and_its_tombstone(
    loopback: Loopback,
) -> None:
    async def scenario(nodes: Nodes) -> None:
        a, b, c = await three_joined(nodes)
        web = service(a)
        a.transport.observe([web])
        await eventually(
            lambda: all(n.status("a", web.id) is Status.ALIVE for n in (b, c)),
            "a's service alive on b and c",
            within=SPREAD,
        )
        a.transport.observe([])
        await eventually(
            lambda: all(n.status("a", web.id) is Status.TOMBSTONE for n in (a, b, c)),
            "a's service tombstoned on a, b and c",
            within=SPREAD,
        )
        for node in (a, b, c):
            assert node.transport.stats.rejected == {}
            assert node.transport.stats.peer_errors == 0
            assert node.transport.stats.datagrams_in > 0
        assert b.transport.stats.push_pulls_ok >= 1  # the join (and periodic ones)
        assert a.transport.stats.streams_in.get("push_pull", 0) >= 2

    run(loopback, scenario)


def test_a_crashed_transport_is_declared_dead_and_a_leaving_one_left_within_a_second(
    loopback: Loopback,
) -> None:
    async def scenario(nodes: Nodes) -> None:
        a, b, c = await three_joined(nodes)
        web = service(c)
        c.transport.observe([web])
        await eventually(
            lambda: all(n.status("c", web.id) is Status.ALIVE for n in (a, b)),
            "c's service alive on a and b",
            within=SPREAD,
        )

        await c.transport.stop()  # a crash: no leave, sockets closed
        _, longest = suspicion_bounds(a.peer.membership.config, 3)
        bound = longest / SECOND + PROBE_SLACK
        took = await eventually(
            lambda: all(n.states().get("c") is NodeState.DEAD for n in (a, b)),
            "c declared dead by a and b",
            within=bound,
        )
        assert all(n.first("c", EventKind.DEAD) is not None for n in (a, b)), took
        assert all(n.first("c", EventKind.LEFT) is None for n in (a, b))
        await eventually(
            lambda: all(n.status("c", web.id) is Status.TOMBSTONE for n in (a, b)),
            "c's service tombstoned on a and b",
            within=SPREAD,
        )

        began = time.monotonic()
        await b.transport.leave()
        stopped_after = time.monotonic() - began
        assert stopped_after <= 1.5, f"leave() took {stopped_after:.2f} s"
        assert not b.transport.running
        left = a.first("b", EventKind.LEFT)
        assert left is not None, a.events
        assert left - began <= 1.0
        assert a.states()["b"] is NodeState.DEAD  # the fork knows no "left" state

    run(loopback, scenario)


def test_joining_is_retried_until_a_seed_answers_and_a_lone_seed_of_our_own_is_no_seed(
    loopback: Loopback,
) -> None:
    async def scenario(nodes: Nodes) -> None:
        b = await nodes.start("b")
        assert await b.transport.join_until_answered([b.seed]) == 0  # a cluster of one
        later = nodes.address()
        joining = asyncio.ensure_future(
            b.transport.join_until_answered([b.seed, (later, nodes.port)], first_delay=0.05)
        )
        try:
            await eventually(
                lambda: b.transport.stats.push_pulls_failed >= 2,
                "b trying twice to join a seed not started yet",
                within=SPREAD,
            )
            a = await nodes.start("a", ip=later)
            async with asyncio.timeout(SPREAD):
                assert await joining == 1
        finally:
            joining.cancel()
        assert b.states() == {"a": NodeState.ALIVE, "b": NodeState.ALIVE}
        await eventually(lambda: "b" in a.states(), "a merged b's join", within=SPREAD)

    run(loopback, scenario)


def test_a_loopback_seed_at_our_port_is_this_host_when_it_advertises_another_address(
    loopback: Loopback,
) -> None:
    """The seed README's container runs with `--net=host` and `SIDECAR_SEEDS=127.0.0.1`: the
    host itself (Go, bound to every address, joins itself there), a cluster of one at once —
    not a seed that never answers, retried for good."""

    async def scenario(nodes: Nodes) -> None:
        # As the host's own IP would be; only advertised, nothing is ever sent to it.
        b = await nodes.start("b", advertise="10.99.0.7")
        async with asyncio.timeout(SPREAD):
            for seed in ("127.0.0.1", "localhost", "127.0.0.9"):
                assert await b.transport.join_until_answered([(seed, nodes.port)]) == 0, seed
        assert b.transport.stats.push_pulls_failed == 0
        # At another port, a loopback seed may be another daemon of this host: it is tried.
        elsewhere = nodes.other_port()
        assert await b.transport.join([("127.0.0.1", elsewhere)]) == 0
        assert b.transport.stats.push_pulls_failed == 1

    run(loopback, scenario)


# ---------------------------------------------------------------- round trips


def test_push_pull_and_tcp_ping_round_trips_between_two_transports(
    loopback: Loopback,
) -> None:
    async def scenario(nodes: Nodes) -> None:
        a = await nodes.start("a")
        b = await nodes.start("b")
        web = service(b)
        b.transport.observe([web])

        assert await a.transport.push_pull(b.transport.address)
        assert a.states() == {"a": NodeState.ALIVE, "b": NodeState.ALIVE}
        assert a.status("b", web.id) is Status.ALIVE  # b's state JSON, merged
        await eventually(lambda: "a" in b.states(), "b merged a's push/pull", within=SPREAD)
        assert a.transport.stats.push_pulls_ok >= 1

        soon = time.monotonic_ns() + 5 * SECOND
        assert await a.transport.tcp_ping(b.transport.address, Ping(7, "b"), deadline=soon)
        # Addressed to another node: b closes without an answer.
        assert not await a.transport.tcp_ping(
            b.transport.address, Ping(8, "someone-else"), deadline=soon
        )
        assert b.transport.stats.streams_in.get("ping", 0) >= 2

        # b's answer on the wire: an Ack with the ping's sequence number, then the close.
        reader, writer = await asyncio.open_connection(b.ip, b.transport.port)
        writer.write(codec.encode_stream(Ping(9, "b")))
        answer = await asyncio.wait_for(reader.read(), CLOSED_WITHIN)
        writer.close()
        assert codec.decode_stream(answer) == Ack(9, None)

        # Nothing listens: refused at once, reported as failed well before the deadline.
        closed = ipv4_address(b.ip, loopback.port(b.ip))
        began = time.monotonic()
        assert not await a.transport.tcp_ping(closed, Ping(10, "b"), deadline=soon)
        assert not await a.transport.push_pull(closed)
        assert time.monotonic() - began < 5.0
        assert a.transport.stats.push_pulls_failed >= 1

        # A listener that never answers: failed when the deadline passes, not before.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mute:
            mute.bind((b.ip, 0))
            mute.listen(4)
            silent = ipv4_address(b.ip, mute.getsockname()[1])
            began = time.monotonic()
            deadline = time.monotonic_ns() + 500 * MS
            assert not await a.transport.tcp_ping(silent, Ping(11, "b"), deadline=deadline)
            took = time.monotonic() - began
            assert 0.45 <= took < 5.0, took

    run(loopback, scenario)


# ---------------------------------------------------------------- hostile input


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bytes | None:
    """Return what the other side sent before closing the connection within `within` s
    (None: still open)."""
    received = b""
    deadline = time.monotonic() + within
    for _ in range(10_000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            data = await asyncio.wait_for(reader.read(65536), remaining)
        except TimeoutError:
            return None
        except ConnectionError:
            return received
        if not data:
            return received
        received += data
    return None


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` a byte every 50 ms until sent or the other side hangs up."""
    for byte in data:
        if writer.is_closing():
            return
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.05)


async def flood(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` until sent or the other side hangs up."""
    try:
        for start in range(0, len(data), 1 << 16):
            writer.write(data[start : start + (1 << 16)])
            await writer.drain()
    except ConnectionError:
        return


def malformed_datagrams(sender: Address) -> list[bytes]:
    """Return random byte strings and truncated packets that the codec refuses."""
    rng = random.Random(12)
    candidates = [rng.randbytes(rng.randint(1, 1500)) for _ in range(40)]
    alive = Alive(9, "intruder", "default", sender.ip, sender.port, META, GO_VSN)
    for crc in (True, False):
        whole = codec.encode_packet([alive, Ping(3, "a")], crc=crc)
        candidates += [whole[:cut] for cut in (1, 5, 9, len(whole) // 2, len(whole) - 1)]
    refused = []
    for data in candidates:
        try:
            codec.decode_packet(data)
        except DecodeError:
            refused.append(data)
    assert len(refused) >= 40
    return refused


def test_hostile_input_is_counted_and_refused_and_the_node_goes_on_unchanged(
    loopback: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(nodes: Nodes) -> None:
        a = await nodes.start("a", tcp_timeout=HOSTILE_TCP_TIMEOUT)
        b = await nodes.start("b")
        assert await b.transport.join([a.seed]) == 1
        a.transport.observe([service(a)])
        b.transport.observe([service(b)])
        await eventually(
            lambda: a.view() == b.view() and len(a.view()[1]) == 2,
            "a and b agree on two members and two services",
            within=SPREAD,
        )
        before = a.view()
        stats = a.transport.stats

        # UDP: random bytes and truncated packets.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.bind(("127.0.0.1", 0))
            bad = malformed_datagrams(ipv4_address(*attacker.getsockname()))
            for data in bad:
                attacker.sendto(data, a.seed)
            await eventually(
                lambda: stats.rejected.get("packet", 0) == len(bad),
                f"{len(bad)} malformed datagrams rejected",
                within=SPREAD,
            )

        # TCP garbage: refused and closed at once.
        reader, writer = await asyncio.open_connection(*a.seed)
        writer.write(b"\xff" + bytes(range(256)))
        assert await closed_by_peer(reader, CLOSED_WITHIN) == b""
        writer.close()

        # An endless slow stream (a push/pull header a byte at a time): closed at the deadline.
        slow_header = b"\x06" + msgpack.packb(
            {"ClusterName": "default", "Join": False, "Nodes": 0, "UserStateLen": 1 << 20}
        )
        reader, writer = await asyncio.open_connection(*a.seed)
        sender = asyncio.ensure_future(trickle(writer, slow_header + bytes(1000)))
        began = time.monotonic()
        assert await closed_by_peer(reader, CLOSED_WITHIN) == b""
        assert time.monotonic() - began >= 0.8 * HOSTILE_TCP_TIMEOUT
        await sender
        writer.close()

        # An oversized stream: a user message longer than the 10 MiB a stream may be.
        size = codec.DEFAULT_LIMITS.stream_bytes + (1 << 20)
        oversized = b"\x08" + msgpack.packb({"UserMsgLen": size}) + bytes(size)
        reader, writer = await asyncio.open_connection(*a.seed)
        sender = asyncio.ensure_future(flood(writer, oversized))
        assert await closed_by_peer(reader, CLOSED_WITHIN) == b""
        await sender
        writer.close()

        # A push/pull from another cluster, twice: closed without a reply, nothing merged,
        # counted each time and logged once.
        stranger = Peer(
            Config(
                name="stranger",
                addr=socket.inet_aton("127.0.0.1"),
                port=1,
                cluster_name="elsewhere",
                meta=META,
            ),
            random.Random(1),
            now=time.monotonic_ns(),
        )
        for _ in range(2):
            reader, writer = await asyncio.open_connection(*a.seed)
            writer.write(stranger.push_pull_request(join=True))
            assert await closed_by_peer(reader, CLOSED_WITHIN) == b""
            writer.close()

        assert stats.stream_failures_in.get("malformed") == 2  # the garbage, the oversized
        assert stats.stream_failures_in.get("timeout") == 1
        assert stats.rejected.get("stream") == 3
        assert stats.rejected.get("cluster_name") == 2
        foreign = [r.getMessage() for r in caplog.records if "'elsewhere'" in r.getMessage()]
        [line] = foreign  # the second connection came from another port: the same address
        assert line.startswith("gossip: refused 127.0.0.1:")
        assert line.endswith(
            ": its cluster name 'elsewhere' is not ours ('default'); not logged again for this "
            "address and name"
        )
        # b's join, the stranger's (and b's periodic ones, whose first round is random)
        assert stats.streams_in.get("push_pull", 0) >= 2
        assert stats.peer_errors == 0

        # Still a member: a keeps answering b's probes, and its view did not change.
        heard = stats.datagrams_in
        await eventually(lambda: stats.datagrams_in > heard + 2, "a hearing b", within=SPREAD)
        assert a.transport.running
        assert b.states()["a"] is NodeState.ALIVE
        assert a.view() == before
        assert "stranger" not in a.states()
        assert "intruder" not in a.states()

    run(loopback, scenario)


def test_connections_beyond_the_cap_are_closed_at_once(loopback: Loopback) -> None:
    cap = 4

    async def scenario(nodes: Nodes) -> None:
        a = await nodes.start("a", max_connections=cap)
        held = [await asyncio.open_connection(*a.seed) for _ in range(cap)]
        try:
            await eventually(
                lambda: a.transport.open_connections == cap,
                f"{cap} connections open",
                within=SPREAD,
            )
            reader, writer = await asyncio.open_connection(*a.seed)
            assert await closed_by_peer(reader, CLOSED_WITHIN) == b""
            writer.close()
            assert a.transport.stats.stream_failures_in == {"refused": 1}

            held.pop()[1].close()  # one ends: a ping is answered again
            await eventually(
                lambda: a.transport.open_connections == cap - 1, "one closed", within=SPREAD
            )
            soon = time.monotonic_ns() + 5 * SECOND
            b = await nodes.start("b")
            assert await b.transport.tcp_ping(a.transport.address, Ping(1, "a"), deadline=soon)

            # The port is taken: start() says which address it cannot bind.
            twin = GossipTransport(a.peer, bind_host=a.ip)
            with pytest.raises(OSError, match=rf"cannot bind {a.ip}:{nodes.port}"):
                await twin.start()
            assert not twin.running
        finally:
            for _, held_writer in held:
                held_writer.close()

    run(loopback, scenario)


def test_datagrams_that_arrived_together_reach_the_peer_together_in_bounded_batches(
    loopback: Loopback,
) -> None:
    async def scenario(nodes: Nodes) -> None:
        a = await nodes.start("a", udp_batch=64)
        batches: list[int] = []
        take = a.peer.datagrams

        def counted(packets: Any, **clocks: int) -> Output:
            packets = list(packets)
            batches.append(len(packets))
            return take(packets, **clocks)

        a.peer.datagrams = counted  # type: ignore[method-assign]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(100):  # all queued in the kernel before the loop reads any
                sender.sendto(b"\xff%d" % i, a.seed)
            await eventually(lambda: sum(batches) == 100, "100 datagrams handed", within=SPREAD)
        assert batches == [64, 36]
        assert a.transport.stats.datagrams_in == 100
        assert a.transport.stats.rejected == {"packet": 100}

    run(loopback, scenario)
