"""The memberlist-fork wire codec (cluster-wire.md §1–§4): messages ⇄ bytes, pure.

Bodies are msgpack maps keyed by the Go field names, written as go-msgpack writes them (keys
sorted, strings and byte slices both as raw str, nil slices as nil) and read with go-msgpack's
tolerance (any key order, unknown keys skipped, str or bin or an int array for byte slices,
nil for a zero value, integers range-checked to the Go field's width, bytes after the object
ignored). Packets unwrap as Go's `ingestPacket`/`handleCommand` do: CRC at the top only, then
compress and compound recursively; a compound part that is truncated or malformed is dropped
and the others kept, as Go drops it. Streams parse incrementally (`StreamParser`).

Every malformed input raises `DecodeError` and nothing else; `Limits` bound what hostile
input may make the decoder allocate (decompressed bytes, depth, message and node counts).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import msgpack  # type: ignore[import-untyped]

from sidecar.cluster import crypto, lzw
from sidecar.cluster.crypto import Keyring
from sidecar.cluster.errors import DecodeError, LimitExceeded
from sidecar.cluster.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MessageType,
    Nack,
    NodeState,
    Packet,
    Ping,
    PushNodeState,
    PushPull,
    Stream,
    Suspect,
    User,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DecodeError",
    "LimitExceeded",
    "Limits",
    "StreamParser",
    "decode_message",
    "decode_packet",
    "decode_stream",
    "encode_compound",
    "encode_message",
    "encode_packet",
    "encode_stream",
    "encoded_size",
    "fill_packet",
    "wrap_compress",
    "wrap_crc",
]

UDP_BUDGET: Final = 1400  # Go's UDPBufferSize: what it builds a packet within
COMPOUND_HEADER_OVERHEAD: Final = 2  # type and count bytes
COMPOUND_PART_OVERHEAD: Final = 2  # each part's u16 length
MAX_COMPOUND_PARTS: Final = 255
MAX_PART_SIZE: Final = 0xFFFF
LZW_ALGO: Final = 0

_U8: Final = 0xFF
_U16: Final = 0xFFFF
_U32: Final = 0xFFFF_FFFF
_GO_INT: Final = (1 << 63) - 1
# msgpack preallocates containers by their declared size: keep those small.
_MAX_MAP_LEN: Final = 1024
_MAX_ARRAY_LEN: Final = 65536


@dataclass(frozen=True, slots=True)
class Limits:
    """What one packet or stream may make the decoder hold."""

    packet_output: int = 1 << 20  # decompressed bytes per packet, all layers together
    stream_bytes: int = 10 << 20  # bytes per stream, as received and as decompressed
    nodes: int = 65_536  # node states in one push/pull
    depth: int = 8  # nested compound/compress layers
    messages: int = 4096  # messages in one packet


DEFAULT_LIMITS: Final = Limits()


# ---------------------------------------------------------------- msgpack fields


def _unpack_one(body: bytes, what: str) -> object:
    """Return the first msgpack object of `body`; later bytes are ignored, as Go does."""
    try:
        return msgpack.unpackb(
            body, raw=True, max_map_len=_MAX_MAP_LEN, max_array_len=_MAX_ARRAY_LEN
        )
    except msgpack.ExtraData as extra:
        return extra.unpacked
    except Exception as exc:  # msgpack raises ValueError, TypeError and its own kinds
        raise DecodeError(f"{what}: bad msgpack body: {exc}") from exc


def _fields(obj: object, what: str) -> Mapping[object, object]:
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: expected a msgpack map, got {type(obj).__name__}")
    return obj


def _uint(fields: Mapping[object, object], key: bytes, top: int, what: str) -> int:
    value = fields.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{what}.{key.decode()}: expected an integer, got {value!r:.40}")
    if not 0 <= value <= top:
        raise DecodeError(f"{what}.{key.decode()}: {value} is outside 0..{top}")
    return value


def _text(fields: Mapping[object, object], key: bytes, what: str) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if not isinstance(value, bytes):
        raise DecodeError(f"{what}.{key.decode()}: expected a string, got {value!r:.40}")
    return value.decode("utf-8", "surrogateescape")


def _blob(fields: Mapping[object, object], key: bytes, what: str) -> bytes | None:
    value = fields.get(key)
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= _U8 for item in value
    ):
        return bytes(value)
    raise DecodeError(f"{what}.{key.decode()}: expected bytes, got {value!r:.40}")


def _flag(fields: Mapping[object, object], key: bytes, what: str) -> bool:
    value = fields.get(key)
    if value is None or value is False or value == 0:
        return False
    if value is True or value == 1:
        return True
    raise DecodeError(f"{what}.{key.decode()}: expected a bool, got {value!r:.40}")


def _raw(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what}: {text!r} cannot be encoded: {exc}") from exc


def _checked(value: int, top: int, what: str) -> int:
    if isinstance(value, bool) or not 0 <= value <= top:
        raise ValueError(f"{what} = {value!r} is outside 0..{top}")
    return value


def _pack(fields: dict[str, object]) -> bytes:
    """Return `fields` as a msgpack map with its keys in Go's (sorted) order."""
    packed: bytes = msgpack.packb(dict(sorted(fields.items())), use_bin_type=False)
    return packed


# ---------------------------------------------------------------- single messages


def _body(message: Packet) -> dict[str, object]:
    match message:
        case Ping(seq_no=seq_no, node=node):
            return {"SeqNo": _checked(seq_no, _U32, "Ping.seq_no"), "Node": _raw(node, "Node")}
        case IndirectPing():
            return {
                "SeqNo": _checked(message.seq_no, _U32, "IndirectPing.seq_no"),
                "Target": message.target,
                "Port": _checked(message.port, _U16, "IndirectPing.port"),
                "Node": _raw(message.node, "Node"),
                "Nack": bool(message.nack),
            }
        case Ack(seq_no=seq_no, payload=payload):
            return {"SeqNo": _checked(seq_no, _U32, "Ack.seq_no"), "Payload": payload}
        case Nack(seq_no=seq_no):
            return {"SeqNo": _checked(seq_no, _U32, "Nack.seq_no")}
        case Suspect() | Dead():
            return {
                "Incarnation": _checked(message.incarnation, _U32, "incarnation"),
                "Node": _raw(message.node, "Node"),
                "ClusterName": _raw(message.cluster_name, "ClusterName"),
                "From": _raw(message.from_, "From"),
            }
        case Alive():
            return {
                "Incarnation": _checked(message.incarnation, _U32, "Alive.incarnation"),
                "Node": _raw(message.node, "Node"),
                "ClusterName": _raw(message.cluster_name, "ClusterName"),
                "Addr": message.addr,
                "Port": _checked(message.port, _U16, "Alive.port"),
                "Meta": message.meta,
                "Vsn": message.vsn,
            }
        case _:
            raise TypeError(f"not a packet message: {message!r}")


_TYPE_OF: Final[dict[type, MessageType]] = {
    Ping: MessageType.PING,
    IndirectPing: MessageType.INDIRECT_PING,
    Ack: MessageType.ACK,
    Nack: MessageType.NACK,
    Suspect: MessageType.SUSPECT,
    Alive: MessageType.ALIVE,
    Dead: MessageType.DEAD,
    User: MessageType.USER,
}


def encode_message(message: Packet) -> bytes:
    """Return `message` as Go writes it: its type byte, then its msgpack body (a user
    message: its raw payload). Raises ValueError for a field out of its Go range."""
    if isinstance(message, User):
        return bytes([MessageType.USER]) + message.payload
    kind = _TYPE_OF.get(type(message))
    if kind is None:
        raise TypeError(f"not a packet message: {message!r:.80}")
    return bytes([kind]) + _pack(_body(message))


def encoded_size(message: Packet) -> int:
    """Return the bytes `message` takes on the wire, bare."""
    return len(encode_message(message))


def _decode_ping(fields: Mapping[object, object]) -> Ping:
    return Ping(seq_no=_uint(fields, b"SeqNo", _U32, "ping"), node=_text(fields, b"Node", "ping"))


def _decode_indirect(fields: Mapping[object, object]) -> IndirectPing:
    what = "indirectPing"
    return IndirectPing(
        seq_no=_uint(fields, b"SeqNo", _U32, what),
        target=_blob(fields, b"Target", what) or b"",
        port=_uint(fields, b"Port", _U16, what),
        node=_text(fields, b"Node", what),
        nack=_flag(fields, b"Nack", what),
    )


def _decode_ack(fields: Mapping[object, object]) -> Ack:
    return Ack(
        seq_no=_uint(fields, b"SeqNo", _U32, "ack"), payload=_blob(fields, b"Payload", "ack")
    )


def _decode_nack(fields: Mapping[object, object]) -> Nack:
    return Nack(seq_no=_uint(fields, b"SeqNo", _U32, "nack"))


def _decode_suspect(fields: Mapping[object, object]) -> Suspect:
    return Suspect(
        incarnation=_uint(fields, b"Incarnation", _U32, "suspect"),
        node=_text(fields, b"Node", "suspect"),
        cluster_name=_text(fields, b"ClusterName", "suspect"),
        from_=_text(fields, b"From", "suspect"),
    )


def _decode_dead(fields: Mapping[object, object]) -> Dead:
    return Dead(
        incarnation=_uint(fields, b"Incarnation", _U32, "dead"),
        node=_text(fields, b"Node", "dead"),
        cluster_name=_text(fields, b"ClusterName", "dead"),
        from_=_text(fields, b"From", "dead"),
    )


def _decode_alive(fields: Mapping[object, object]) -> Alive:
    return Alive(
        incarnation=_uint(fields, b"Incarnation", _U32, "alive"),
        node=_text(fields, b"Node", "alive"),
        cluster_name=_text(fields, b"ClusterName", "alive"),
        addr=_blob(fields, b"Addr", "alive") or b"",
        port=_uint(fields, b"Port", _U16, "alive"),
        meta=_blob(fields, b"Meta", "alive"),
        vsn=_blob(fields, b"Vsn", "alive") or b"",
    )


_DECODERS: Final[dict[int, Callable[[Mapping[object, object]], Packet]]] = {
    MessageType.PING: _decode_ping,
    MessageType.INDIRECT_PING: _decode_indirect,
    MessageType.ACK: _decode_ack,
    MessageType.NACK: _decode_nack,
    MessageType.SUSPECT: _decode_suspect,
    MessageType.ALIVE: _decode_alive,
    MessageType.DEAD: _decode_dead,
}


def decode_message(data: bytes) -> Packet:
    """Return the single message `data` holds (type byte and body; no wrapper)."""
    if not data:
        raise DecodeError("empty message: no type byte")
    kind = data[0]
    if kind == MessageType.USER:
        return User(payload=bytes(data[1:]))
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise DecodeError(f"message type {kind} is not a packet message")
    what = MessageType(kind).name.lower()
    return decoder(_fields(_unpack_one(data[1:], what), what))


# ---------------------------------------------------------------- packet layers


def encode_compound(parts: Sequence[bytes]) -> bytes:
    """Return the compound (type 7) of the encoded messages `parts`."""
    if not 1 <= len(parts) <= MAX_COMPOUND_PARTS:
        raise ValueError(f"a compound holds 1..{MAX_COMPOUND_PARTS} parts, not {len(parts)}")
    header = bytearray([MessageType.COMPOUND, len(parts)])
    for part in parts:
        header += _checked(len(part), MAX_PART_SIZE, "compound part length").to_bytes(2, "big")
    return bytes(header) + b"".join(parts)


def wrap_compress(inner: bytes, *, leading_clear: bool = True) -> bytes:
    """Return the compress wrapper (type 9, `{Algo: 0, Buf: LZW(inner)}`) around `inner`."""
    buf = lzw.compress(inner, leading_clear=leading_clear)
    return bytes([MessageType.COMPRESS]) + _pack({"Algo": LZW_ALGO, "Buf": buf})


def wrap_crc(inner: bytes) -> bytes:
    """Return `inner` behind the CRC header (type 12, CRC-32 IEEE big-endian)."""
    return bytes([MessageType.HAS_CRC]) + zlib.crc32(inner).to_bytes(4, "big") + inner


_Item = TypeVar("_Item", bound="Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | User")


def _encoded(item: Packet | bytes) -> bytes:
    return item if isinstance(item, bytes) else encode_message(item)


def encode_packet(
    messages: Sequence[Packet | bytes],
    *,
    crc: bool = False,
    compress: bool = True,
    keyring: Keyring | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Return one UDP packet of `messages` (each a message or its encoding) as Go builds it:
    one message bare, several in a compound; compressed only when that is strictly smaller;
    then the CRC header; then, with a keyring, encrypted under `nonce`."""
    parts = [_encoded(item) for item in messages]
    if not parts:
        raise ValueError("a packet needs at least one message")
    packet = parts[0] if len(parts) == 1 else encode_compound(parts)
    if compress:
        smaller = wrap_compress(packet)
        if len(smaller) < len(packet):
            packet = smaller
    if crc:
        packet = wrap_crc(packet)
    if keyring is not None:
        if nonce is None:
            raise ValueError("encrypting a packet needs a nonce")
        packet = crypto.encrypt_packet(keyring, packet, nonce=nonce)
    return packet


def fill_packet(
    candidates: Sequence[_Item],
    *,
    budget: int = UDP_BUDGET,
    reserved: int = 0,
    encrypted: bool = False,
) -> tuple[tuple[_Item, ...], tuple[_Item, ...]]:
    """Return (what fits, what does not) of `candidates`, taken in order as Go's gossip
    does: the space is `budget − 2` (less `reserved`, e.g. the length of the message this
    piggybacks on, and the encryption overhead), each message costs its size + 2, and one
    that does not fit is skipped for the later ones. At most 255 fit."""
    available = budget - COMPOUND_HEADER_OVERHEAD - reserved
    if encrypted:
        available -= crypto.overhead()
    fit: list[_Item] = []
    left: list[_Item] = []
    used = 0
    for item in candidates:
        cost = encoded_size(item) + COMPOUND_PART_OVERHEAD
        if len(fit) < MAX_COMPOUND_PARTS and used + cost <= available:
            fit.append(item)
            used += cost
        else:
            left.append(item)
    return tuple(fit), tuple(left)


class _Unwrapper:
    """Go's `handleCommand` recursion over one packet, with the packet's limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.inflated = 0
        self.found: list[Packet] = []

    def command(self, buf: bytes, depth: int) -> None:
        if depth > self.limits.depth:
            raise LimitExceeded(f"packet nests deeper than {self.limits.depth} layers")
        if not buf:
            raise DecodeError("empty message: no type byte")
        kind = buf[0]
        if kind == MessageType.COMPOUND:
            for part in _split_compound(buf):
                try:
                    self.command(part, depth + 1)
                except LimitExceeded:
                    raise
                except DecodeError:
                    continue  # Go logs the bad part and handles the others
        elif kind == MessageType.COMPRESS:
            self.command(self._decompress(buf[1:], self.limits.packet_output), depth + 1)
        else:
            if len(self.found) >= self.limits.messages:
                raise LimitExceeded(f"packet holds more than {self.limits.messages} messages")
            self.found.append(decode_message(buf))

    def _decompress(self, body: bytes, limit: int) -> bytes:
        remaining = limit - self.inflated
        inner = _decompress_body(body, remaining)
        self.inflated += len(inner)
        return inner


def _decompress_body(body: bytes, limit: int) -> bytes:
    """Return the bytes inside a compress message's msgpack body `{Algo, Buf}`."""
    fields = _fields(_unpack_one(body, "compress"), "compress")
    return _inflate(fields, limit)


def _inflate(fields: Mapping[object, object], limit: int) -> bytes:
    algo = _uint(fields, b"Algo", _U8, "compress")
    if algo != LZW_ALGO:
        raise DecodeError(f"compress: unknown algorithm {algo}")
    buf = _blob(fields, b"Buf", "compress") or b""
    return lzw.decompress(buf, max_output=limit)


def _split_compound(buf: bytes) -> list[bytes]:
    """Return the parts of the compound `buf`; a truncated part and those after it are
    dropped, as Go drops them."""
    if len(buf) < 2:
        raise DecodeError("compound without its part count")
    count = buf[1]
    start = 2 + 2 * count
    if len(buf) < start:
        raise DecodeError(f"compound of {count} parts is cut inside its length table")
    parts = []
    for index in range(count):
        length = int.from_bytes(buf[2 + 2 * index : 4 + 2 * index], "big")
        if start + length > len(buf):
            break
        parts.append(buf[start : start + length])
        start += length
    return parts


def decode_packet(
    data: bytes, *, limits: Limits = DEFAULT_LIMITS, keyring: Keyring | None = None
) -> tuple[Packet, ...]:
    """Return every message of the UDP packet `data`, compounds and compression unwrapped,
    in order. With a keyring the packet must be encrypted. Raises `DecodeError`."""
    data = bytes(data)
    if keyring is not None:
        data = crypto.decrypt_packet(keyring, data)
    if len(data) >= 5 and data[0] == MessageType.HAS_CRC:
        if zlib.crc32(data[5:]) != int.from_bytes(data[1:5], "big"):
            raise DecodeError("packet CRC mismatch")
        data = data[5:]
    walk = _Unwrapper(limits)
    walk.command(data, 0)
    return tuple(walk.found)


# ---------------------------------------------------------------- streams


def _push_pull_body(push_pull: PushPull) -> bytes:
    header = _pack(
        {
            "Nodes": len(push_pull.nodes),
            "ClusterName": _raw(push_pull.cluster_name, "ClusterName"),
            "UserStateLen": len(push_pull.user_state),
            "Join": bool(push_pull.join),
        }
    )
    nodes = [
        _pack(
            {
                "Name": _raw(node.name, "Name"),
                "Addr": node.addr,
                "Port": _checked(node.port, _U16, "PushNodeState.port"),
                "Meta": node.meta,
                "Incarnation": _checked(node.incarnation, _U32, "PushNodeState.incarnation"),
                "State": int(node.state),
                "Vsn": node.vsn,
            }
        )
        for node in push_pull.nodes
    ]
    return b"".join([bytes([MessageType.PUSH_PULL]), header, *nodes, push_pull.user_state])


def _stream_body(stream: Stream) -> bytes:
    match stream:
        case PushPull():
            return _push_pull_body(stream)
        case User(payload=payload):
            return bytes([MessageType.USER]) + _pack({"UserMsgLen": len(payload)}) + payload
        case Ping() | Ack():
            return encode_message(stream)
        case _:
            raise TypeError(f"not a stream message: {stream!r}")


def encode_stream(
    stream: Stream,
    *,
    compress: bool = True,
    leading_clear: bool = True,
    keyring: Keyring | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Return the TCP stream of `stream` as Go writes it: compressed (always, by default),
    then, with a keyring, encrypted under `nonce`."""
    body = _stream_body(stream)
    if compress:
        body = wrap_compress(body, leading_clear=leading_clear)
    if keyring is not None:
        if nonce is None:
            raise ValueError("encrypting a stream needs a nonce")
        body = crypto.encrypt_stream(keyring, body, nonce=nonce)
    return body


class _Need:
    """More bytes are needed before the parser can go on."""


_NEED: Final = _Need()

_TYPE = "type"
_ENCRYPTED = "encrypted"
_COMPRESSED = "compressed"
_HEADER = "push/pull header"
_NODES = "node states"
_USER_STATE = "user state"
_PING = "ping"
_ACK = "ack"
_USER_HEADER = "user message header"
_USER_BODY = "user message"
_FIRST_STATE: Final[dict[int, str]] = {
    MessageType.PUSH_PULL: _HEADER,
    MessageType.PING: _PING,
    MessageType.ACK: _ACK,
    MessageType.USER: _USER_HEADER,
}


class StreamParser:
    """An incremental parser of one TCP stream (§1.4, §4): `feed` it bytes as they arrive;
    it returns the stream's message once complete (and ignores any bytes after it, as Go
    does) and None while it needs more. `finish` at EOF raises `DecodeError` if incomplete.
    Raises `DecodeError` on malformed input or beyond `limits` (and again on every later
    feed); what it buffers never exceeds `limits.stream_bytes`."""

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        keyring: Keyring | None = None,
        _allow_encrypt: bool = True,
        _allow_compress: bool = True,
    ) -> None:
        self._limits = limits
        self._keyring = keyring
        self._allow_encrypt = _allow_encrypt
        self._allow_compress = _allow_compress
        self._unpacker = msgpack.Unpacker(
            raw=True,
            max_buffer_size=limits.stream_bytes,
            max_map_len=_MAX_MAP_LEN,
            max_array_len=_MAX_ARRAY_LEN,
        )
        self._received = 0
        self._state = _TYPE
        self._pending = bytearray()
        self._wanted = 0
        self._result: Stream | None = None
        self._failure: str | None = None
        self._header: Mapping[object, object] = {}
        self._nodes: list[PushNodeState] = []
        self._node_count = 0

    @property
    def result(self) -> Stream | None:
        """The stream's message, once complete."""
        return self._result

    def feed(self, data: bytes) -> Stream | None:
        """Return the stream's message once `data` completes it, else None."""
        if self._result is not None:
            return self._result
        if self._failure is not None:
            raise DecodeError(f"stream already refused: {self._failure}")
        self._received += len(data)
        if self._received > self._limits.stream_bytes:
            raise DecodeError(f"stream exceeds {self._limits.stream_bytes} bytes")
        if data:
            self._unpacker.feed(data)
        try:
            while not self._complete() and self._step():
                pass
        except DecodeError as exc:
            self._failure = str(exc)
            raise
        return self._result

    def _complete(self) -> bool:
        return self._result is not None

    def finish(self) -> Stream:
        """Return the stream's message at EOF; raises `DecodeError` if it is incomplete."""
        if self._result is None:
            raise DecodeError(f"stream ends inside its {self._state} after {self._received} B")
        return self._result

    def _object(self) -> object:
        try:
            return self._unpacker.unpack()
        except msgpack.OutOfData:
            return _NEED
        except Exception as exc:  # msgpack raises ValueError, TypeError and its own kinds
            raise DecodeError(f"stream {self._state}: bad msgpack: {exc}") from exc

    def _take(self) -> bytes | None:
        """Return the `_wanted` raw bytes once all have arrived."""
        missing = self._wanted - len(self._pending)
        if missing:
            self._pending += self._unpacker.read_bytes(missing)
        if len(self._pending) < self._wanted:
            return None
        taken = bytes(self._pending)
        self._pending.clear()
        return taken

    def _step(self) -> bool:
        """Advance one state; return whether it made progress."""
        if self._state == _TYPE:
            self._wanted = 1
            kind = self._take()
            if kind is None:
                return False
            return self._begin(kind[0])
        if self._state == _ENCRYPTED:
            return self._step_encrypted()
        if self._state in (_USER_STATE, _USER_BODY):
            return self._step_raw()
        obj = self._object()
        if obj is _NEED:
            return False
        fields = _fields(obj, self._state)
        if self._state == _COMPRESSED:
            inner = _inflate(fields, self._limits.stream_bytes)
            self._result = _parse_inner(inner, self._limits, allow_compress=False)
        elif self._state == _PING:
            self._result = _decode_ping(fields)
        elif self._state == _ACK:
            self._result = _decode_ack(fields)
        elif self._state == _USER_HEADER:
            self._wanted = self._length(fields, b"UserMsgLen", "userMsgHeader")
            self._state = _USER_BODY
        elif self._state == _HEADER:
            self._header = fields
            self._node_count = _uint(fields, b"Nodes", self._limits.nodes, "pushPullHeader")
            self._wanted = self._length(fields, b"UserStateLen", "pushPullHeader")
            _text(fields, b"ClusterName", "pushPullHeader")
            _flag(fields, b"Join", "pushPullHeader")
            self._state = _NODES if self._node_count else _USER_STATE
        else:  # _NODES
            self._nodes.append(_decode_node(fields))
            if len(self._nodes) == self._node_count:
                self._state = _USER_STATE
        return True

    def _length(self, fields: Mapping[object, object], key: bytes, what: str) -> int:
        return _uint(fields, key, min(_GO_INT, self._limits.stream_bytes), what)

    def _begin(self, kind: int) -> bool:
        if kind == MessageType.ENCRYPT and self._allow_encrypt:
            if self._keyring is None:
                raise DecodeError("stream is encrypted and encryption is not configured")
            self._state = _ENCRYPTED
            self._wanted = 4
            return True
        if self._keyring is not None and self._allow_encrypt:
            # As Go: with a key, whatever is not encrypted under it is refused.
            raise DecodeError("encryption is configured but the stream is not encrypted")
        if kind == MessageType.COMPRESS and self._allow_compress:
            self._state = _COMPRESSED
            return True
        state = _FIRST_STATE.get(kind)
        if state is None:
            raise DecodeError(f"stream of message type {kind}: not a stream message")
        self._state = state
        return True

    def _step_encrypted(self) -> bool:
        raw = self._take()
        if raw is None:
            return False
        if self._wanted == 4:
            header = bytes([MessageType.ENCRYPT]) + raw
            self._header = {b"aad": header}
            self._wanted = crypto.stream_header_length(header)
            return True
        assert self._keyring is not None
        aad = self._header[b"aad"]
        assert isinstance(aad, bytes)
        plain = crypto.decrypt(self._keyring, raw, aad=aad)
        self._result = _parse_inner(plain, self._limits, allow_compress=True)
        return True

    def _step_raw(self) -> bool:
        raw = self._take()
        if raw is None:
            return False
        if self._state == _USER_BODY:
            self._result = User(payload=raw)
            return True
        header = self._header
        self._result = PushPull(
            nodes=tuple(self._nodes),
            cluster_name=_text(header, b"ClusterName", "pushPullHeader"),
            join=_flag(header, b"Join", "pushPullHeader"),
            user_state=raw,
        )
        return True


_MAX_NODE_STATE: Final = max(NodeState)


def _decode_node(fields: Mapping[object, object]) -> PushNodeState:
    what = "pushNodeState"
    state = _uint(fields, b"State", _GO_INT, what)
    if state > _MAX_NODE_STATE:
        raise DecodeError(f"{what}.State: unknown node state {state}")
    return PushNodeState(
        name=_text(fields, b"Name", what),
        addr=_blob(fields, b"Addr", what) or b"",
        port=_uint(fields, b"Port", _U16, what),
        meta=_blob(fields, b"Meta", what),
        incarnation=_uint(fields, b"Incarnation", _U32, what),
        state=NodeState(state),
        vsn=_blob(fields, b"Vsn", what) or b"",
    )


def _parse_inner(data: bytes, limits: Limits, *, allow_compress: bool) -> Stream:
    """Return the stream inside a decrypted or decompressed wrapper (Go allows compress
    inside encrypt, nothing inside compress)."""
    parser = StreamParser(limits=limits, _allow_encrypt=False, _allow_compress=allow_compress)
    parser.feed(data)
    return parser.finish()


def decode_stream(
    data: bytes, *, limits: Limits = DEFAULT_LIMITS, keyring: Keyring | None = None
) -> Stream:
    """Return the message of the complete TCP stream `data`."""
    parser = StreamParser(limits=limits, keyring=keyring)
    parser.feed(data)
    return parser.finish()
