"""One cluster host in bytes (`sidecar.cluster.peer`), input by input."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from sidecar.cluster import codec
from sidecar.cluster.crypto import Keyring
from sidecar.cluster.membership import MS, SECOND, Address, Config, EventKind, Member
from sidecar.cluster.messages import (
    GO_VSN,
    Ack,
    Alive,
    Dead,
    NodeState,
    Ping,
    PushPull,
    User,
)
from sidecar.cluster.peer import NEWS_FANOUT, Peer, push_pull_scale
from sidecar.state import codec as records
from sidecar.state.model import Service, Status
from tests import builders

EPOCH = 1_767_225_600 * SECOND
T0 = 1_000 * SECOND


def address(i: int) -> Address:
    return Address(bytes([10, 0, 0, i]), 7946)


def member(i: int) -> Member:
    return Member(f"h{i}", address(i).ip, 7946, None, GO_VSN, 1, NodeState.ALIVE, T0)


def make(i: int = 1, peers: int = 3, **kwargs: object) -> Peer:
    config = Config(name=f"h{i}", addr=address(i).ip, port=7946)
    known = [member(j) for j in range(1, peers + 2)]
    return Peer(config, random.Random(i), now=T0, members=known, **kwargs)  # type: ignore[arg-type]


def service(host: str, sid: str = "abc123", status: Status = Status.ALIVE, **kw: Any) -> Service:
    return builders.service(
        host, sid, ip="10.0.0.9", at=EPOCH + SECOND, created=EPOCH, status=status, **kw
    )


def users(data: bytes) -> list[bytes]:
    return [m.payload for m in codec.decode_packet(data) if isinstance(m, User)]


def test_an_observed_service_is_sent_at_once_to_three_peers_as_go_service_json() -> None:
    peer = make()
    out = peer.observe([service("h1")], now=T0, wall=EPOCH + 2 * SECOND)
    assert out.changed
    carrying = [d for d in out.datagrams if users(d.data)]
    assert len({d.to for d in carrying}) == 3
    [payload] = users(carrying[0].data)
    record = records.decode_service(payload)
    assert (record.hostname, record.id, record.status) == ("h1", "abc123", Status.ALIVE)


def test_a_gossiped_record_is_merged_and_relayed_once_as_it_arrived() -> None:
    peer = make()
    payload = records.encode_service(service("h2"))
    packet = codec.encode_packet([User(payload)], crc=True)
    out = peer.datagram(packet, address(2), now=T0, wall=EPOCH + 2 * SECOND)
    assert out.changed
    assert [c.service.id for c in out.changes] == ["abc123"]
    assert peer.state.get("h2", "abc123") is not None
    relayed = [p for d in out.datagrams for p in users(d.data)]
    assert relayed
    assert set(relayed) == {payload}
    again = peer.datagram(packet, address(3), now=T0 + MS, wall=EPOCH + 2 * SECOND)
    assert not again.changed
    assert not [p for d in again.datagrams for p in users(d.data)]


def test_news_goes_to_four_members_at_once_a_relay_of_it_too() -> None:
    peer = make(peers=6)
    out = peer.observe([service("h1")], now=T0, wall=EPOCH)
    assert len({d.to for d in out.datagrams if users(d.data)}) == NEWS_FANOUT == 4
    relay = make(peers=6)
    packet = codec.encode_packet([User(records.encode_service(service("h2")))], crc=True)
    out = relay.datagram(packet, address(2), now=T0, wall=EPOCH + 2 * SECOND)
    assert len({d.to for d in out.datagrams if users(d.data)}) == 4


def test_bad_bytes_and_bad_records_are_rejected_and_change_nothing() -> None:
    peer = make()
    before = peer.state
    for data in (b"", b"\xff\x00", codec.encode_packet([User(b'{"Status": "up"}')])):
        out = peer.datagram(data, address(9), now=T0, wall=EPOCH)
        assert len(out.rejected) == 1
        assert "10.0.0.9:7946" in out.rejected[0]
        assert not out.changed
        assert not out.datagrams
    assert peer.state is before


def test_a_push_pull_is_answered_with_our_state_and_then_merged() -> None:
    a, b = make(1), make(2)
    a.observe([service("h1")], now=T0, wall=EPOCH + 2 * SECOND)
    request = codec.decode_stream(a.push_pull_request(join=True))
    assert isinstance(request, PushPull)
    assert request.join
    reply, out = b.stream(request, address(1), now=T0, wall=EPOCH + 3 * SECOND)
    assert out.changed
    assert b.state.get("h1", "abc123") is not None
    assert reply is not None
    answer = codec.decode_stream(reply)
    assert isinstance(answer, PushPull)
    assert answer.join  # the request's flag echoed, as Go does
    assert "abc123" not in answer.user_state.decode()  # the state before the merge
    merged = a.push_pull_reply(answer, address(2), now=T0, wall=EPOCH + 3 * SECOND)
    assert not merged.rejected


def test_a_push_pull_from_another_cluster_gets_no_reply_and_is_not_merged() -> None:
    theirs = Peer(Config(name="x9", addr=address(9).ip, port=7946), random.Random(9), now=T0)
    theirs.observe([service("x9")], now=T0, wall=EPOCH)
    foreign = PushPull((), "other", False, records.encode_state(theirs.state))
    a = make(1)
    reply, out = a.stream(foreign, address(9), now=T0, wall=EPOCH)
    assert reply is None
    assert (out.foreign, out.rejected, out.changed) == (((address(9), "other"),), (), False)
    # The reply to a push/pull this host started is refused the same way.
    out = a.push_pull_reply(foreign, address(9), now=T0, wall=EPOCH)
    assert (out.foreign, out.changed) == (((address(9), "other"),), False)
    assert a.state.servers.get("x9") is None
    a2 = make(1)
    assert not a2.push_pull_reply(Ping(1, "x"), address(2), now=T0, wall=EPOCH).changed


def test_membership_news_from_another_cluster_is_refused_and_reported() -> None:
    a = make(1)
    stranger = Alive(1, "x9", "other", address(9).ip, 7946, None, GO_VSN)
    out = a.messages([stranger], address(9), now=T0, wall=EPOCH)
    assert out.foreign == ((address(9), "other"),)
    assert out.members == ()
    assert a.membership.member("x9") is None


def test_a_tcp_ping_is_acked_only_for_our_name() -> None:
    peer = make()
    reply, _ = peer.stream(Ping(7, "h1"), address(2), now=T0, wall=EPOCH)
    assert reply is not None
    assert codec.decode_stream(reply) == Ack(7)
    assert peer.stream(Ping(8, "someone"), address(2), now=T0, wall=EPOCH)[0] is None


def test_a_record_too_large_for_a_packet_goes_over_tcp() -> None:
    peer = make()
    huge = service("h1", image="x" * 1500)
    out = peer.observe([huge], now=T0, wall=EPOCH + 2 * SECOND)
    assert len(out.streams) == 3
    message = codec.decode_stream(out.streams[0].data)
    assert isinstance(message, User)
    assert records.decode_service(message.payload).image == "x" * 1500
    other = make(2)
    _, merged = other.stream(message, address(1), now=T0, wall=EPOCH + 3 * SECOND)
    assert merged.changed


def test_a_member_declared_dead_has_its_services_tombstoned() -> None:
    peer = make()
    gossip = codec.encode_packet([User(records.encode_service(service("h2")))])
    peer.datagram(gossip, address(2), now=T0, wall=EPOCH + 2 * SECOND)
    dead = codec.encode_packet([Dead(1, "h2", "default", "h3")])
    out = peer.datagram(dead, address(3), now=T0 + MS, wall=EPOCH + 3 * SECOND)
    assert [e.kind for e in out.members] == [EventKind.DEAD]
    record = peer.state.get("h2", "abc123")
    assert record is not None
    assert record.status is Status.TOMBSTONE
    assert any(c.service.status is Status.TOMBSTONE for c in out.changes)


def test_leave_announces_our_death_from_nobody() -> None:
    peer = make()
    out = peer.leave(now=T0, wall=EPOCH)
    sent = [m for d in out.datagrams for m in codec.decode_packet(d.data)]
    assert Dead(1, "h1", "default", "") in sent


def test_a_host_that_left_stamps_nothing_more() -> None:
    # Its peers bury its services as of its leave: a record stamped later would stand.
    peer = make()
    peer.observe([service("h1")], now=T0, wall=EPOCH)
    peer.leave(now=T0 + SECOND, wall=EPOCH + SECOND)
    changed = service("h1", status=Status.UNHEALTHY)
    out = peer.observe([changed], now=T0 + 2 * SECOND, wall=EPOCH + 2 * SECOND)
    assert (out.datagrams, out.changes) == ((), ())
    assert peer.drain("abc123", now=T0 + 2 * SECOND, wall=EPOCH + 2 * SECOND) is None
    later = peer.tick(now=T0 + 40 * SECOND, wall=EPOCH + 40 * SECOND)  # past the refresh
    assert [r.updated for r in peer.state.own_records()] == [EPOCH]
    assert later.changes == ()


def test_push_pull_is_due_on_the_scaled_interval_with_a_random_first_round() -> None:
    assert push_pull_scale(20 * SECOND, 32) == 20 * SECOND
    assert push_pull_scale(20 * SECOND, 33) == 40 * SECOND
    assert push_pull_scale(20 * SECOND, 1000) == 120 * SECOND
    # Peers that are never probed stay alive (push/pull goes to alive members only).
    config = Config(name="h1", addr=address(1).ip, port=7946, probe_interval=1000 * SECOND)
    known = [member(j) for j in range(1, 5)]
    peer = Peer(config, random.Random(1), now=T0, members=known)
    now, due = T0, []
    for _ in range(2000):
        now = peer.next_wakeup()
        if now > T0 + 45 * SECOND:
            break
        out = peer.tick(now=now, wall=EPOCH + now - T0)
        if out.push_pulls:
            due.append(now)
            assert set(out.push_pulls) <= {address(2), address(3), address(4)}
    assert len(due) == 2
    assert due[0] < T0 + 20 * SECOND
    assert due[1] - due[0] == 20 * SECOND


def test_encrypted_peers_understand_each_other_and_nothing_else() -> None:
    keyring = Keyring([bytes(range(16))])
    counter = itertools.count()

    def nonce() -> bytes:
        return next(counter).to_bytes(12, "big")

    a = make(1, keyring=keyring, nonce=nonce)
    b = make(2, keyring=keyring, nonce=nonce)
    out = a.observe([service("h1")], now=T0, wall=EPOCH + 2 * SECOND)
    to_b = [d.data for d in out.datagrams if d.to == address(2)] or [out.datagrams[0].data]
    merged = b.datagram(to_b[0], address(1), now=T0, wall=EPOCH + 3 * SECOND)
    assert merged.changed
    assert not merged.rejected
    plain = make(3)
    assert plain.datagram(to_b[0], address(1), now=T0, wall=EPOCH).rejected
    with pytest.raises(ValueError, match="nonce"):
        make(4, keyring=keyring)


def test_an_alive_about_a_new_member_is_a_join() -> None:
    peer = make(peers=1)
    alive = Alive(1, "h7", "default", address(7).ip, 7946, None, GO_VSN)
    out = peer.datagram(codec.encode_packet([alive]), address(7), now=T0, wall=EPOCH)
    assert [(e.kind, e.member.name) for e in out.members] == [(EventKind.JOINED, "h7")]


def test_packets_that_arrived_together_are_taken_in_one_step_bad_ones_rejected() -> None:
    peer = make()
    packets = [
        (codec.encode_packet([User(records.encode_service(service("h2", f"s{i}")))]), address(2))
        for i in range(3)
    ]
    packets.insert(1, (b"\x07\x09garbage", address(3)))
    out = peer.datagrams(packets, now=T0, wall=EPOCH + 2 * SECOND)
    assert len(out.rejected) == 1
    assert "10.0.0.3:7946" in out.rejected[0]
    assert sorted(c.service.id for c in out.changes) == ["s0", "s1", "s2"]
    assert out.changed


def test_messages_and_probes_are_counted_for_metrics() -> None:
    peer = make()
    payload = records.encode_service(service("h2"))
    out = peer.datagram(codec.encode_packet([User(payload)]), address(2), now=T0, wall=EPOCH)
    assert peer.counters["received.user"] == 1
    relayed = sum(
        1 for d in out.datagrams for m in codec.decode_packet(d.data) if isinstance(m, User)
    )
    assert peer.counters["sent.user"] == relayed > 0
    now = T0
    for _ in range(100):  # nobody answers: probes fail
        now = peer.next_wakeup()
        peer.tick(now=now, wall=EPOCH + now - T0)
        if peer.membership.counters["probes_failed"]:
            break
    assert peer.membership.counters["probes"] >= peer.membership.counters["probes_failed"] == 1
    peer.datagram(
        codec.encode_packet([Dead(1, "h1", "default", "h2")]), address(2), now=now, wall=EPOCH
    )
    assert peer.membership.counters["refutations"] == 1
