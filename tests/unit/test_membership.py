"""The SWIM membership machine (spec/cluster-wire.md §4.3, §5), input by input."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from sidecar.cluster.membership import (
    MS,
    SECOND,
    Address,
    Config,
    EventKind,
    Member,
    Membership,
    Output,
    StreamSend,
    retransmit_limit,
    suspicion_bounds,
    suspicion_timeout,
    user_transmit_limit,
)
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

CLUSTER = "default"
T0 = 1_000 * SECOND


def ip(i: int) -> bytes:
    return bytes([10, 0, i // 256, i % 256])


def addr(i: int) -> Address:
    return Address(ip(i), 7946)


def make(name: str = "me", i: int = 1, seed: int = 0, incarnation: int = 1) -> Membership:
    config = Config(name=name, addr=ip(i), port=7946, meta=b"m")
    return Membership(config, random.Random(seed), T0, incarnation=incarnation)


def alive(
    node: str, inc: int, i: int, *, meta: bytes | None = b"m", cluster: str = CLUSTER
) -> Alive:
    return Alive(inc, node, cluster, ip(i), 7946, meta, GO_VSN)


def push_node(name: str, i: int, inc: int = 1, state: NodeState = NodeState.ALIVE) -> PushNodeState:
    return PushNodeState(name, ip(i), 7946, b"m", inc, state, GO_VSN)


def with_peers(m: Membership, count: int, now: int = T0) -> list[str]:
    """Add `count` alive peers p2, p3, ... by push/pull; return their names."""
    names = [f"p{i}" for i in range(2, count + 2)]
    out = m.merge_remote([push_node(n, i) for i, n in enumerate(names, start=2)], now, CLUSTER)
    assert out.rejected is None
    return names


@dataclass
class Run:
    outputs: list[tuple[int, Output]] = field(default_factory=list)

    def messages(self) -> list[tuple[int, Address, Packet]]:
        return [(t, s.to, msg) for t, o in self.outputs for s in o.sends for msg in s.messages]


def run(m: Membership, until: int, start: int = T0) -> Run:
    """Tick `m` at each of its wake-ups in [start, until]."""
    result = Run()
    now = start
    for _ in range(100_000):
        now = max(now, m.next_wakeup())
        if now > until:
            return result
        result.outputs.append((now, m.tick(now)))
    raise AssertionError("too many ticks")


def kinds(out: Output) -> list[EventKind]:
    return [e.kind for e in out.events]


# ---------------------------------------------------------------- §5.8 receive rules, as a table

X_ALIVE_5 = alive("x", 5, 7)
A, S, D = NodeState.ALIVE, NodeState.SUSPECT, NodeState.DEAD


def about_me(inc: int, meta: bytes = b"m") -> Alive:
    return Alive(inc, "me", CLUSTER, ip(1), 7946, meta, GO_VSN)


# case, message, then: expected (member, state, incarnation) or None, own incarnation, events
RULES = [
    ("alive: other cluster dropped", alive("y", 9, 8, cluster="no"), ("x", A, 5), 1, []),
    ("alive: unknown node joins", alive("y", 1, 8), ("y", A, 1), 1, ["joined"]),
    ("alive: address conflict dropped", alive("x", 9, 8), ("x", A, 5), 1, []),
    ("alive: older incarnation dropped", alive("x", 4, 7), ("x", A, 5), 1, []),
    ("alive: same incarnation dropped", alive("x", 5, 7), ("x", A, 5), 1, []),
    ("alive: newer taken", alive("x", 6, 7), ("x", A, 6), 1, []),
    ("alive: newer meta updates", alive("x", 6, 7, meta=b"n"), ("x", A, 6), 1, ["updated"]),
    ("alive: about me, older, dropped", about_me(0), ("me", A, 1), 1, []),
    ("alive: about me, same, dropped", about_me(1), ("me", A, 1), 1, []),
    ("alive: about me, other meta, refuted", about_me(1, b"z"), ("me", A, 2), 2, []),
    ("alive: about me, newer, refuted", about_me(4), ("me", A, 5), 5, []),
    ("suspect: other cluster dropped", Suspect(5, "x", "no", "p"), ("x", A, 5), 1, []),
    ("suspect: unknown node dropped", Suspect(5, "y", CLUSTER, "p"), None, 1, []),
    ("suspect: older dropped", Suspect(4, "x", CLUSTER, "p"), ("x", A, 5), 1, []),
    ("suspect: taken", Suspect(5, "x", CLUSTER, "p"), ("x", S, 5), 1, ["suspect"]),
    ("suspect: newer taken", Suspect(8, "x", CLUSTER, "p"), ("x", S, 8), 1, ["suspect"]),
    ("suspect: about me refuted", Suspect(1, "me", CLUSTER, "p"), ("me", A, 2), 2, []),
    ("suspect: about me, higher", Suspect(7, "me", CLUSTER, "p"), ("me", A, 8), 8, []),
    ("suspect: about me, older", Suspect(0, "me", CLUSTER, "p"), ("me", A, 1), 1, []),
    ("dead: other cluster dropped", Dead(5, "x", "no", "p"), ("x", A, 5), 1, []),
    ("dead: unknown node dropped", Dead(5, "y", CLUSTER, "p"), None, 1, []),
    ("dead: older dropped", Dead(4, "x", CLUSTER, "p"), ("x", A, 5), 1, []),
    ("dead: taken", Dead(5, "x", CLUSTER, "p"), ("x", D, 5), 1, ["dead"]),
    ("dead: from nobody is a leave", Dead(5, "x", CLUSTER, ""), ("x", D, 5), 1, ["left"]),
    ("dead: about me refuted", Dead(3, "me", CLUSTER, "p"), ("me", A, 4), 4, []),
]


@pytest.mark.parametrize(
    ("message", "expected", "own_inc", "events"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_receive_rules(
    message: Packet, expected: tuple[str, NodeState, int] | None, own_inc: int, events: list[str]
) -> None:
    m = make()
    assert kinds(m.receive(X_ALIVE_5, addr(7), T0)) == [EventKind.JOINED]
    out = m.receive(message, addr(9), T0 + 1)
    assert [k.value for k in kinds(out)] == events
    assert m.incarnation == own_inc
    if expected is None:
        assert m.member("y") is None
    else:
        name, state, inc = expected
        member = m.member(name)
        assert member is not None
        assert (member.state, member.incarnation) == (state, inc)
    if own_inc > 1:
        refutation = about_me(own_inc, b"m")
        assert refutation in m.queued()


def test_suspect_of_a_dead_node_and_dead_of_a_dead_node_are_dropped() -> None:
    m = make()
    m.receive(X_ALIVE_5, addr(7), T0)
    m.receive(Dead(5, "x", CLUSTER, "p"), addr(9), T0)
    assert m.receive(Suspect(6, "x", CLUSTER, "p"), addr(9), T0).events == ()
    assert m.receive(Dead(6, "x", CLUSTER, "p"), addr(9), T0).events == ()
    member = m.member("x")
    assert member is not None
    assert (member.state, member.incarnation) == (NodeState.DEAD, 5)


def test_alive_after_dead_rejoins_with_a_higher_incarnation_only() -> None:
    m = make()
    m.receive(X_ALIVE_5, addr(7), T0)
    m.receive(Dead(5, "x", CLUSTER, "p"), addr(9), T0)
    assert m.receive(alive("x", 5, 7), addr(7), T0).events == ()
    assert kinds(m.receive(alive("x", 6, 7), addr(7), T0)) == [EventKind.JOINED]


def test_accepted_news_is_rebroadcast_and_newer_news_replaces_it_in_the_queue() -> None:
    m = make()
    m.receive(X_ALIVE_5, addr(7), T0)
    assert X_ALIVE_5 in m.queued()
    suspect = Suspect(5, "x", CLUSTER, "p")
    m.receive(suspect, addr(9), T0)
    about_x = [q for q in m.queued() if q.node == "x"]
    assert about_x == [suspect]


# ---------------------------------------------------------------- refutation


def test_refute_bumps_incarnation_once_per_accusation_and_raises_awareness() -> None:
    m = make()
    m.receive(Suspect(1, "me", CLUSTER, "p"), addr(9), T0)
    assert (m.incarnation, m.awareness) == (2, 1)
    # A stale duplicate of the same accusation burns nothing.
    m.receive(Suspect(1, "me", CLUSTER, "q"), addr(9), T0)
    m.receive(Dead(1, "me", CLUSTER, "q"), addr(9), T0)
    assert (m.incarnation, m.awareness) == (2, 1)
    assert [q for q in m.queued() if q.node == "me"] == [
        Alive(2, "me", CLUSTER, ip(1), 7946, b"m", GO_VSN)
    ]


def test_restarted_node_refutes_its_death_in_a_push_pull() -> None:
    m = make()
    out = m.merge_remote([push_node("go", 2), push_node("me", 1, 9, NodeState.DEAD)], T0, CLUSTER)
    assert out.rejected is None
    assert m.incarnation == 10


# ---------------------------------------------------------------- suspicion (§5.4)


@pytest.mark.parametrize(
    ("n", "minimum", "maximum"),
    [(1, 5, 30), (3, 5, 30), (10, 5, 30), (20, 6.505, 39.03), (100, 10, 60), (1000, 15, 90)],
)
def test_suspicion_bounds(n: int, minimum: float, maximum: float) -> None:
    config = Config(name="me", addr=ip(1), port=7946)
    assert suspicion_bounds(config, n) == (round(minimum * SECOND), round(maximum * SECOND))


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    lo, hi = 10 * SECOND, 60 * SECOND
    assert suspicion_timeout(0, 3, lo, hi) == hi
    assert suspicion_timeout(1, 3, lo, hi) == 35 * SECOND  # 60 - ln2/ln4 × 50
    assert suspicion_timeout(3, 3, lo, hi) == lo
    assert suspicion_timeout(5, 0, lo, hi) == lo


def suspected(peers: int) -> tuple[Membership, list[str]]:
    m = make()
    names = with_peers(m, peers)
    m.receive(Suspect(1, names[0], CLUSTER, names[1]), addr(9), T0)
    return m, names


def state_at(m: Membership, name: str, now: int) -> NodeState:
    m.tick(now)
    member = m.member(name)
    assert member is not None
    return member.state


def test_suspicion_at_3_nodes_is_a_flat_minimum() -> None:
    m, names = suspected(2)  # n = 3: k = 0, timeout = min = 5 s
    assert state_at(m, names[0], T0 + 5 * SECOND - 1) is NodeState.SUSPECT
    assert state_at(m, names[0], T0 + 5 * SECOND) is NodeState.DEAD
    assert Dead(1, names[0], CLUSTER, "me") in m.queued()


@pytest.mark.parametrize(("n", "minimum", "maximum"), [(100, 10, 60), (1000, 15, 90)])
def test_suspicion_runs_to_max_alone_and_to_min_with_k_confirmations(
    n: int, minimum: int, maximum: int
) -> None:
    lone, names = suspected(n - 1)
    assert state_at(lone, names[0], T0 + maximum * SECOND - 1) is NodeState.SUSPECT
    assert state_at(lone, names[0], T0 + maximum * SECOND) is NodeState.DEAD

    confirmed, names = suspected(n - 1)
    for accuser in names[1:5]:  # the first accuser again, then 3 new ones
        confirmed.receive(Suspect(1, names[0], CLUSTER, accuser), addr(9), T0)
    assert state_at(confirmed, names[0], T0 + minimum * SECOND - 1) is NodeState.SUSPECT
    assert state_at(confirmed, names[0], T0 + minimum * SECOND) is NodeState.DEAD


def test_only_a_new_accuser_confirms_and_is_rebroadcast() -> None:
    m, names = suspected(99)
    first = Suspect(1, names[0], CLUSTER, names[1])
    again = Suspect(1, names[0], CLUSTER, names[1])
    m.receive(again, addr(9), T0)
    assert [q for q in m.queued() if q.node == names[0]] == [first]
    other = Suspect(1, names[0], CLUSTER, names[2])
    m.receive(other, addr(9), T0)
    assert [q for q in m.queued() if q.node == names[0]] == [other]
    assert state_at(m, names[0], T0 + 35 * SECOND - 1) is NodeState.SUSPECT
    assert state_at(m, names[0], T0 + 35 * SECOND) is NodeState.DEAD


def test_refuting_alive_cancels_the_suspicion() -> None:
    m, names = suspected(2)
    m.receive(Alive(2, names[0], CLUSTER, ip(2), 7946, b"m", GO_VSN), addr(2), T0 + SECOND)
    assert state_at(m, names[0], T0 + 10 * SECOND) is NodeState.ALIVE


# ---------------------------------------------------------------- probing (§5.2, §5.3)


def first_probe(m: Membership) -> tuple[int, Address, Ping]:
    """Tick `m` until it sends its first probe; return when, to whom and the ping."""
    for _ in range(100):
        now = m.next_wakeup()
        for send in m.tick(now).sends:
            if isinstance(send.messages[0], Ping):
                return now, send.to, send.messages[0]
    raise AssertionError("no probe")


def test_ping_is_answered_to_its_source_and_a_ping_for_another_name_is_not() -> None:
    m = make()
    out = m.receive(Ping(34, "me"), addr(5), T0)
    assert [(s.to, s.messages[0]) for s in out.sends] == [(addr(5), Ack(34))]
    assert m.receive(Ping(35, ""), addr(5), T0).sends[0].messages[0] == Ack(35)
    assert m.receive(Ping(36, "other"), addr(5), T0).sends == ()


def test_acked_probe_raises_no_suspicion() -> None:
    m = make()
    with_peers(m, 4)
    sent, to, ping = first_probe(m)
    assert sent == T0 + SECOND
    m.receive(Ack(ping.seq_no), to, sent + 100 * MS)
    later = run(m, sent + SECOND - 1, start=sent + 100 * MS)
    assert later.messages() == [] or all(isinstance(msg, Alive) for _, _, msg in later.messages())
    assert all(member.state is NodeState.ALIVE for member in m.members.values())
    assert m.awareness == 0


def test_unanswered_probe_goes_indirect_with_nacks_and_tcp_then_suspects() -> None:
    m = make()
    with_peers(m, 4)
    sent, to, ping = first_probe(m)
    out = m.tick(sent + 500 * MS)
    requests = [(s.to, s.messages[0]) for s in out.sends]
    assert len(requests) == 3
    assert all(
        isinstance(r, IndirectPing) and r.nack and r.seq_no == ping.seq_no and r.node == ping.node
        for _, r in requests
    )
    assert to not in [peer for peer, _ in requests]
    assert [(p.to, p.ping) for p in out.tcp_pings] == [(to, ping)]
    # Two relays nack, one stays silent; the TCP ping fails.
    m.receive(Nack(ping.seq_no), requests[0][0], sent + 600 * MS)
    m.receive(Nack(ping.seq_no), requests[1][0], sent + 600 * MS)
    m.tcp_ping_result(ping.seq_no, sent + 900 * MS, acked=False)
    m.tick(sent + SECOND)
    target = m.member(ping.node)
    assert target is not None
    assert target.state is NodeState.SUSPECT
    assert m.awareness == 1  # 3 expected nacks, 2 received
    assert Suspect(1, ping.node, CLUSTER, "me") in m.queued()


def test_tcp_fallback_success_keeps_the_target_alive() -> None:
    m = make()
    with_peers(m, 4)
    sent, _, ping = first_probe(m)
    m.tick(sent + 500 * MS)
    m.tcp_ping_result(ping.seq_no, sent + 700 * MS, acked=True)
    m.tick(sent + SECOND)
    target = m.member(ping.node)
    assert target is not None
    assert target.state is NodeState.ALIVE
    assert m.awareness == 0


def test_a_relayed_ack_completes_the_probe() -> None:
    m = make()
    with_peers(m, 4)
    sent, _, ping = first_probe(m)
    out = m.tick(sent + 500 * MS)
    m.receive(Ack(ping.seq_no), out.sends[0].to, sent + 700 * MS)
    m.tcp_ping_result(ping.seq_no, sent + 800 * MS, acked=False)
    m.tick(sent + SECOND)
    target = m.member(ping.node)
    assert target is not None
    assert target.state is NodeState.ALIVE


def test_probe_of_a_suspect_carries_the_suspicion() -> None:
    m = make()
    names = with_peers(m, 1)
    m.receive(Suspect(1, names[0], CLUSTER, "q"), addr(9), T0)
    _, to, ping = first_probe(m)
    assert to == addr(2)
    # The probe is sent again to see the compound: replay the first tick on a twin.
    twin = make()
    with_peers(twin, 1)
    twin.receive(Suspect(1, names[0], CLUSTER, "q"), addr(9), T0)
    sends = twin.tick(T0 + SECOND).sends
    assert [s.messages for s in sends if isinstance(s.messages[0], Ping)] == [
        (ping, Suspect(1, names[0], CLUSTER, "me"))
    ]


def test_relay_pings_the_target_and_forwards_the_ack_or_nacks() -> None:
    m = make()
    request = IndirectPing(77, ip(8), 7946, "t", nack=True)
    out = m.receive(request, addr(5), T0)
    [send] = out.sends
    assert send.to == addr(8)
    relayed = send.messages[0]
    assert isinstance(relayed, Ping)
    assert relayed.node == "t"
    forwarded = m.receive(Ack(relayed.seq_no), addr(8), T0 + 100 * MS)
    assert [(s.to, s.messages[0]) for s in forwarded.sends] == [(addr(5), Ack(77))]

    second = m.receive(request, addr(5), T0 + SECOND).sends[0].messages[0]
    assert isinstance(second, Ping)
    assert m.tick(T0 + SECOND + 499 * MS).sends == ()
    nacked = m.tick(T0 + SECOND + 500 * MS)
    assert [(s.to, s.messages[0]) for s in nacked.sends] == [(addr(5), Nack(77))]


def test_relay_without_nack_stays_silent_and_port_zero_means_ours() -> None:
    m = make()
    out = m.receive(IndirectPing(5, ip(8), 0, "t", nack=False), addr(5), T0)
    assert out.sends[0].to == Address(ip(8), 7946)
    assert m.tick(T0 + SECOND).sends == ()


# ---------------------------------------------------------------- gossip (§5.5)


def test_gossip_sends_each_broadcast_retransmit_limit_times_to_three_nodes() -> None:
    m = make()
    with_peers(m, 5)  # n = 6: limit 4
    assert retransmit_limit(m.config, 6) == 4
    counts: dict[Packet, int] = {}
    for _, out in run(m, T0 + SECOND - 1).outputs:  # before the first probe can fail
        targets = {s.to for s in out.sends if isinstance(s.messages[0], Alive)}
        assert len(targets) in (0, 3)
        for send in out.sends:
            for message in send.messages:
                counts[message] = counts.get(message, 0) + 1
    alives = {k: v for k, v in counts.items() if isinstance(k, Alive)}
    assert len(alives) == 6
    assert set(alives.values()) == {4 * 3}
    assert m.queued() == ()


def test_retransmit_limit_grows_with_log_n() -> None:
    config = Config(name="me", addr=ip(1), port=7946)
    assert [retransmit_limit(config, n) for n in (1, 9, 10, 99, 100, 999)] == [4, 4, 8, 8, 12, 12]


def test_acks_pings_and_relays_carry_queued_broadcasts_within_the_budget() -> None:
    m = make()
    with_peers(m, 3)  # 4 alives queued: ours and the three learnt
    queued = m.queued()
    out = m.receive(Ping(34, "me"), addr(5), T0)
    [send] = out.sends
    assert send.messages[0] == Ack(34)
    assert set(send.messages[1:]) == set(queued)
    # A broadcast is counted as sent when it rides on an ack: n = 4, limit 4.
    for seq in range(35, 38):
        m.receive(Ping(seq, "me"), addr(5), T0)
    assert m.receive(Ping(38, "me"), addr(5), T0).sends[0].messages == (Ack(38),)
    assert m.queued() == ()

    big = make()
    with_peers(big, 3)
    payloads = [(f"k{i}", bytes(600)) for i in range(3)]
    big.send_user(payloads, T0)
    ack = big.receive(Ping(1, "me"), addr(5), T0).sends[0].messages
    assert sum(len(m_.payload) + 5 for m_ in ack if isinstance(m_, User)) < 1400


def test_user_messages_go_to_the_fanout_at_once_then_on_gossip_rounds_up_to_the_limit() -> None:
    peers = [
        Member(f"p{i}", ip(i), 7946, b"m", GO_VSN, 1, NodeState.ALIVE, T0) for i in range(2, 12)
    ]
    m = Membership(Config(name="me", addr=ip(1), port=7946), random.Random(0), T0, members=peers)
    limit = user_transmit_limit(m.config, 11)
    assert limit == 2
    out = m.send_user([("web", b"v1")], T0)
    assert len({s.to for s in out.sends}) == 3
    assert all(s.messages == (User(b"v1"),) for s in out.sends)
    later = run(m, T0 + 900 * MS, start=T0 + 1)
    sends = [(t, msg) for t, _, msg in later.messages() if isinstance(msg, User)]
    assert len(sends) == 3 * (limit - 1)  # one more round to three nodes, then dropped
    assert [q for q in m.queued() if isinstance(q, User)] == []


def test_news_goes_to_a_wider_fanout_at_once_and_on_more_rounds() -> None:
    peers = [
        Member(f"p{i}", ip(i), 7946, b"m", GO_VSN, 1, NodeState.ALIVE, T0) for i in range(2, 12)
    ]
    m = Membership(Config(name="me", addr=ip(1), port=7946), random.Random(0), T0, members=peers)
    out = m.send_user([("web", b"v1")], T0, fanout=4, extra_rounds=1)
    assert len({s.to for s in out.sends}) == 4
    later = run(m, T0 + 900 * MS, start=T0 + 1)
    rounds = {t for t, _, msg in later.messages() if isinstance(msg, User)}
    assert len(rounds) == user_transmit_limit(m.config, 11) - 1 + 1  # one round more
    assert [q for q in m.queued() if isinstance(q, User)] == []


def test_a_user_message_riding_on_acks_keeps_its_gossip_round() -> None:
    # Found by the peer simulation: in a cluster of five, two acks used up a record's two
    # rounds, so after the eager push it reached nobody else and one host missed it.
    m = make()
    with_peers(m, 4)
    m.send_user([("web", b"v1")], T0)
    for seq in range(1, 4):
        ack = m.receive(Ping(seq, "me"), addr(5), T0 + seq).sends[0].messages
        assert User(b"v1") in ack
    gossip = m.tick(T0 + 200 * MS).sends
    assert len({s.to for s in gossip}) == 3
    assert all(User(b"v1") in s.messages for s in gossip)
    assert [q for q in m.queued() if isinstance(q, User)] == []  # the limit (2) reached


def test_a_newer_user_message_replaces_the_queued_one_under_its_key() -> None:
    m = make()
    m.send_user([("web", b"v1"), ("api", b"a1")], T0)  # alone: nobody to send to yet
    m.send_user([("web", b"v2")], T0)
    assert [q for q in m.queued() if isinstance(q, User)] == [User(b"v2"), User(b"a1")]


def test_user_messages_follow_memberlist_broadcasts_in_a_gossip_packet() -> None:
    m = make()
    with_peers(m, 3)
    m.send_user([("web", b"v1")], T0)
    gossip = m.tick(T0 + 200 * MS).sends[0].messages
    assert isinstance(gossip[0], Alive)
    assert gossip[-1] == User(b"v1")


def test_a_user_message_too_large_for_a_packet_goes_over_tcp_and_blocks_nothing() -> None:
    m = make()
    with_peers(m, 5)
    out = m.send_user([("huge", bytes(1500)), ("small", b"s")], T0)
    assert len(out.streams) == 3
    assert all(isinstance(s, StreamSend) and s.message == User(bytes(1500)) for s in out.streams)
    assert all(s.messages == (User(b"s"),) for s in out.sends)
    assert User(bytes(1500)) not in m.queued()


def test_a_membership_may_start_from_a_converged_member_list() -> None:
    peers = [
        Member(f"p{i}", ip(i), 7946, b"m", GO_VSN, 1, NodeState.ALIVE, T0) for i in range(2, 6)
    ]
    m = Membership(Config(name="me", addr=ip(1), port=7946), random.Random(0), T0, members=peers)
    assert set(m.members) == {"me", "p2", "p3", "p4", "p5"}
    assert [q.node for q in m.queued() if isinstance(q, Alive)] == ["me"]


# ---------------------------------------------------------------- push/pull (§4.3)


def test_push_pull_of_another_cluster_or_bad_versions_is_refused() -> None:
    m = make()
    assert m.merge_remote([push_node("a", 2)], T0, "other").rejected is not None
    bad = PushNodeState("a", ip(2), 7946, None, 1, NodeState.ALIVE, b"")
    assert m.merge_remote([bad], T0, CLUSTER).rejected is not None
    too_new = PushNodeState("a", ip(2), 7946, None, 1, NodeState.ALIVE, bytes([6, 7, 6, 0, 0, 0]))
    assert m.merge_remote([too_new], T0, CLUSTER).rejected is not None
    assert m.member("a") is None


def test_remote_dead_is_only_suspect_here_and_local_state_lists_everyone() -> None:
    m = make()
    m.merge_remote([push_node("a", 2), push_node("b", 3)], T0, CLUSTER)
    m.merge_remote([push_node("a", 2, 1, NodeState.DEAD)], T0, CLUSTER)
    a = m.member("a")
    assert a is not None
    assert a.state is NodeState.SUSPECT
    assert {(s.name, s.state) for s in m.local_state()} == {
        ("me", NodeState.ALIVE),
        ("a", NodeState.SUSPECT),
        ("b", NodeState.ALIVE),
    }


# ---------------------------------------------------------------- leave, reap


def test_leave_sends_dead_from_nobody_and_stops_refuting() -> None:
    m = make()
    with_peers(m, 4)
    out = m.leave(T0)
    dead = Dead(1, "me", CLUSTER, "")
    assert len(out.sends) == 3
    assert all(s.messages == (dead,) for s in out.sends)
    assert dead in m.queued()
    m.receive(Suspect(1, "me", CLUSTER, "p2"), addr(2), T0)
    m.receive(Alive(5, "me", CLUSTER, ip(1), 7946, b"m", GO_VSN), addr(2), T0)
    assert m.incarnation == 1

    peer = make("p2", 2)
    peer.receive(alive("me", 1, 1), addr(1), T0)
    assert kinds(peer.receive(dead, addr(1), T0)) == [EventKind.LEFT]


def test_dead_member_is_reaped_after_gossip_to_the_dead_time() -> None:
    m = make()
    names = with_peers(m, 2)
    m.receive(Dead(1, names[0], CLUSTER, "q"), addr(9), T0)
    reaped = [
        (t, e.member.name)
        for t, o in run(m, T0 + 40 * SECOND).outputs
        for e in o.events
        if e.kind is EventKind.REAPED
    ]
    # p3 never answers either, so it dies later and is reaped later still.
    assert reaped[0][1] == names[0]
    assert T0 + 30 * SECOND < reaped[0][0] <= T0 + 33 * SECOND
    assert m.member(names[0]) is None


def test_meta_update_bumps_incarnation_and_peers_report_it() -> None:
    m = make()
    peer = make("p2", 2)
    peer.receive(alive("me", 1, 1), addr(1), T0)
    m.update_meta(b"new", T0)
    assert m.incarnation == 2
    [news] = [q for q in m.queued() if q.node == "me"]
    assert news == Alive(2, "me", CLUSTER, ip(1), 7946, b"new", GO_VSN)
    assert kinds(peer.receive(news, addr(1), T0)) == [EventKind.UPDATED]
    with pytest.raises(ValueError, match="513 bytes"):
        m.update_meta(b"x" * 513, T0)


def test_alive_with_port_zero_means_our_port() -> None:
    m = make()
    m.receive(Alive(1, "x", CLUSTER, ip(7), 0, None, GO_VSN), addr(7), T0)
    x = m.member("x")
    assert x is not None
    assert x.port == 7946


def test_a_node_first_heard_at_incarnation_0_is_kept_dead_with_six_zero_version_bytes() -> None:
    m = make()
    assert m.receive(alive("y", 0, 8), addr(8), T0).events == ()
    [y] = [s for s in m.local_state() if s.name == "y"]
    assert (y.state, y.incarnation, y.vsn) == (NodeState.DEAD, 0, bytes(6))
