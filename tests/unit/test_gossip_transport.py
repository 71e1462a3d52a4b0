"""The gossip transport's pure helpers: rejection kinds, the rate-limited reject log,
the join backoff, addresses."""

from __future__ import annotations

import itertools
import random

import pytest

from sidecar.adapters.gossip import (
    REJECT_LOG_INTERVAL,
    RejectLog,
    backoff,
    ipv4_address,
    rejection_kind,
    show,
    stream_kind,
)
from sidecar.cluster.membership import Address, Config
from sidecar.cluster.messages import Ack, Ping, PushPull, User
from sidecar.cluster.peer import Peer


def test_rejection_kinds_are_the_words_before_from() -> None:
    assert rejection_kind("packet from 10.0.0.1:7946: bad msgpack") == "packet"
    assert rejection_kind("push/pull from 10.0.0.1:7946: cluster name 'x'") == "push/pull"
    assert rejection_kind("push/pull state from 10.0.0.1:1: bad JSON") == "push/pull state"
    assert rejection_kind("stream from 10.0.0.1:1: not complete within 10 s") == "stream"
    assert rejection_kind("something else entirely") == "other"
    assert rejection_kind(" from nowhere") == "other"


def test_the_peers_own_rejection_lines_have_kinds() -> None:
    peer = Peer(Config(name="a", addr=bytes([10, 0, 0, 1]), port=7946), random.Random(1), now=0)
    source = Address(bytes([10, 0, 0, 2]), 7946)
    out = peer.datagram(b"\xff\x00", source, now=0, wall=0)
    garbled = PushPull((), "default", False, b"{not json")
    _, refused = peer.stream(garbled, source, now=0, wall=0)
    assert [rejection_kind(line) for line in (*out.rejected, *refused.rejected)] == [
        "packet",
        "push/pull state",
    ]


def test_the_reject_log_writes_one_line_per_kind_per_interval_with_the_count_dropped() -> None:
    rejects = RejectLog(interval=10.0)
    assert rejects.admit("packet", 100.0) == 0
    assert rejects.admit("packet", 101.0) is None
    assert rejects.admit("stream", 101.0) == 0  # another kind has its own budget
    assert rejects.admit("packet", 109.9) is None
    assert rejects.admit("packet", 110.0) == 2
    assert rejects.admit("packet", 125.0) == 0
    assert REJECT_LOG_INTERVAL == 10.0


def test_the_join_backoff_doubles_to_its_ceiling() -> None:
    delays = list(itertools.islice(backoff(1.0, 30.0), 8))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_addresses_are_ipv4_and_shown_as_ip_and_port() -> None:
    address = ipv4_address("127.0.0.3", 7946)
    assert address == Address(bytes([127, 0, 0, 3]), 7946)
    assert show(address) == "127.0.0.3:7946"
    assert show(Address(bytes(16), 1)) == f"[{'00' * 16}]:1"
    with pytest.raises(ValueError, match=r"'example\.com'"):
        ipv4_address("example.com", 1)


def test_stream_kinds_name_the_counters() -> None:
    assert stream_kind(PushPull((), "default", False, b"")) == "push_pull"
    assert stream_kind(Ping(1, "a")) == "ping"
    assert stream_kind(User(b"{}")) == "user"
    assert stream_kind(Ack(1)) == "other"
