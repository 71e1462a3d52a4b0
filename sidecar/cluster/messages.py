"""The cluster's messages, as values: one frozen dataclass per memberlist-fork message
(spec/cluster-wire.md §1.2 and §2.3), named and typed as the Go fork names them.

Pure data. Encoding and decoding are `sidecar.cluster.codec`'s; what a node does with
them is `sidecar.cluster.membership`'s. Byte fields (`addr`, `meta`, `vsn`, `payload`,
`target`) are `bytes`; names are `str`. Addresses are raw IP bytes (4 for IPv4, 16 for
IPv6), as Go stores them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class MessageType(enum.IntEnum):
    """The type byte that opens every packet, stream and compound part (§1.2)."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12


class NodeState(enum.IntEnum):
    """A member's state as push/pull carries it (§2.3). The fork knows no "left": a node
    that leaves is dead with `From` empty."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


# [PMin, PMax, PCur, DMin, DMax, DCur], as the Go Sidecar sends it (§2.3 alive.Vsn).
GO_VSN: Final = bytes([1, 5, 2, 0, 0, 0])


@dataclass(frozen=True, slots=True)
class Ping:
    """A probe; the ack must echo `seq_no`. `node` is the intended target's name."""

    seq_no: int
    node: str


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """A request to probe `node` at `target`:`port` on the requester's behalf."""

    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a ping (`payload` is None in Sidecar)."""

    seq_no: int
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class Nack:
    """A relay's word that the target did not answer its ping in time."""

    seq_no: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """`from_` suspects `node` at `incarnation`."""

    incarnation: int
    node: str
    cluster_name: str
    from_: str


@dataclass(frozen=True, slots=True)
class Alive:
    """`node` is alive at `incarnation`, reachable at `addr`:`port`."""

    incarnation: int
    node: str
    cluster_name: str
    addr: bytes
    port: int
    meta: bytes | None
    vsn: bytes


@dataclass(frozen=True, slots=True)
class Dead:
    """`from_` declares `node` dead at `incarnation` (`from_` empty: it left, as Go's
    `Leave()` sends it)."""

    incarnation: int
    node: str
    cluster_name: str
    from_: str


@dataclass(frozen=True, slots=True)
class User:
    """A delegate message: Sidecar's service JSON (sidecar-behaviour.md §2)."""

    payload: bytes


Packet = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | User
"""A message that travels alone or in a compound, over UDP."""


@dataclass(frozen=True, slots=True)
class PushNodeState:
    """One member as push/pull carries it."""

    name: str
    addr: bytes
    port: int
    meta: bytes | None
    incarnation: int
    state: NodeState
    vsn: bytes


@dataclass(frozen=True, slots=True)
class PushPull:
    """A push/pull exchange's content (§4): the members, the cluster's name, whether it is a
    join, and the delegate's user state (Sidecar: the state JSON)."""

    nodes: tuple[PushNodeState, ...]
    cluster_name: str
    join: bool
    user_state: bytes


Stream = PushPull | Ping | Ack | User
"""What a TCP stream carries: push/pull, the fallback ping and its ack, a reliable user
message."""
