"""Conversations recorded from the reference Go Sidecar, replayed against a Python `Peer`.

Recorded by hand on 2026-12-03: the Go Sidecar built from NinesStack/sidecar at
9e99a84 (`../shared/ENVIRONMENT.md`), node "go1"/"go2" at 10.77.0.2 in a network namespace
with static discovery of one service `go-web`; a Python `GossipTransport` named "py-node"
at 10.77.0.1 with one service `py-web`. Every UDP datagram and TCP stream Go sent was saved
(`tests/fixtures/go/*.jsonl`, base64):

* `py-joins-go.jsonl` — py-node joins go1 (push/pull, join): Go's compressed push/pull
  reply, then what Go sent for a few seconds (probes, acks, gossip with CRC, compounds);
* `go-joins-py.jsonl` — go2 joins py-node as its seed: Go's join push/pull, its periodic
  push/pull, and its datagrams.

Live, Go accepted what py-node answered (each side listed the other's member and service;
py-node's leave tombstoned py-web on Go, Go's kill -9 tombstoned go-web on py-node). Here
the same Go bytes go to a fresh Peer, and its answers are checked for what Go needs.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from sidecar.cluster import codec
from sidecar.cluster.membership import SECOND, Address, Config
from sidecar.cluster.messages import GO_VSN, Ack, NodeState, Ping, PushPull
from sidecar.cluster.peer import Peer
from sidecar.state import views
from sidecar.state.codec import decode_state as codec_state
from sidecar.state.model import Status

FIXTURES = Path(__file__).parent.parent / "fixtures" / "go"
GO = Address(bytes([10, 77, 0, 2]), 7946)
T0 = 1_000 * SECOND
WALL = 1_764_770_000 * SECOND  # 2025-12-03: Go's records are from 2026-12-03, not stale


def recorded(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


def py_node() -> Peer:
    meta = b'{"ClusterName":"default","State":"Running"}'
    config = Config(name="py-node", addr=bytes([10, 77, 0, 1]), port=7946, meta=meta)
    return Peer(config, random.Random(0), now=T0)


def streams(name: str) -> list[PushPull]:
    found = []
    for row in recorded(name):
        if row["kind"] == "stream":
            message = codec.decode_stream(base64.b64decode(row["b64"]))
            assert isinstance(message, PushPull)
            found.append(message)
    return found


def test_gos_join_push_pull_is_answered_as_go_expects_and_merged():
    peer = py_node()
    join = streams("go-joins-py")[0]
    assert join.join
    assert [n.name for n in join.nodes] == ["go2"]
    reply, out = peer.stream(join, GO, now=T0, wall=WALL)
    assert not out.rejected
    assert reply is not None
    # Go reads a compressed or plain stream; after decompression it must be a push/pull
    # (type 6) of its cluster, its Join flag echoed, every node with a 6-byte Vsn.
    assert reply[0] == 9
    answer = codec.decode_stream(reply)
    assert isinstance(answer, PushPull)
    assert answer.cluster_name == "default"
    assert answer.join
    assert all(len(n.vsn) == 6 for n in answer.nodes)
    me = next(n for n in answer.nodes if n.name == "py-node")
    assert (me.addr, me.port, me.state, me.vsn) == (
        bytes([10, 77, 0, 1]),
        7946,
        NodeState.ALIVE,
        GO_VSN,
    )
    go = peer.membership.member("go2")
    assert go is not None
    assert go.state is NodeState.ALIVE
    # Go joins before its discovery has run: its state JSON holds no service yet.
    assert codec_state(join.user_state).servers.keys() <= {"go2"}


def test_gos_push_pull_reply_and_periodic_push_pull_merge_cleanly():
    peer = py_node()
    [reply] = streams("py-joins-go")
    out = peer.push_pull_reply(reply, GO, now=T0, wall=WALL)
    assert not out.rejected
    assert {m.name for m in peer.membership.members.values()} == {"py-node", "go1"}
    assert [r.name for r in peer.state.records() if r.hostname == "go1"] == ["go-web"]
    periodic = streams("go-joins-py")[1]
    assert not periodic.join
    assert {n.name for n in periodic.nodes} == {"py-node", "go2"}
    other = py_node()
    _, merged = other.stream(periodic, GO, now=T0, wall=WALL)
    assert not merged.rejected
    record = next(r for r in other.state.records() if r.hostname == "go2")
    assert (record.name, record.status) == ("go-web", Status.ALIVE)
    # Go's static discovery sends no ProxyMode; the record is served as http all the same.
    assert record.proxy_mode == ""
    table = views.routing_table(other.state)
    assert ("go-web", "http") in [(s.name, s.mode) for s in table.services]
    assert table.excluded == ()


@pytest.mark.parametrize("name", ["py-joins-go", "go-joins-py"])
def test_every_go_datagram_is_understood_and_every_probe_acked(name):
    peer = py_node()
    for message in streams(name)[:1]:  # as live: the join's push/pull came first
        if message.join:
            peer.stream(message, GO, now=T0, wall=WALL)
        else:
            peer.push_pull_reply(message, GO, now=T0, wall=WALL)
    now = T0
    probes = 0
    for row in recorded(name):
        if row["kind"] != "udp":
            continue
        now += 10 * 1_000_000
        data = base64.b64decode(row["b64"])
        messages = codec.decode_packet(data)
        out = peer.datagram(data, GO, now=now, wall=WALL)
        assert not out.rejected, out.rejected
        for ping in (m for m in messages if isinstance(m, Ping)):
            probes += 1
            answers = [codec.decode_packet(d.data) for d in out.datagrams if d.to == GO]
            assert any(Ack(ping.seq_no) in packet for packet in answers), ping
    assert probes > 0  # the recordings hold Go's probes of py-node
    assert any(r.hostname.startswith("go") and r.name == "go-web" for r in peer.state.records())
