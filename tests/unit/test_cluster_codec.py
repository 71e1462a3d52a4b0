"""The cluster codec speaks the Go fork's bytes: every vector of cluster-wire.md Appendix A
(and §2.4), both ways, plus the layering, stream and encryption rules of §1.3, §1.4 and §3."""

from __future__ import annotations

import zlib

import msgpack
import pytest

from sidecar.cluster import codec, crypto, lzw
from sidecar.cluster.codec import DecodeError, Limits, StreamParser
from sidecar.cluster.messages import (
    GO_VSN,
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    NodeState,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    User,
)

IP = bytes([127, 0, 0, 1])
META = b'{"ClusterName":"default","State":"Running"}'
LONG_NAME = "a-very-long-node-name-0123456789abcdef"

ALIVE_HEX = (
    "0487a441646472a47f000001ab436c75737465724e616d65a764656661756c74ab496e6361726e6174696f6e01"
    "a44d657461da002b7b22436c75737465724e616d65223a2264656661756c74222c225374617465223a2252756e"
    "6e696e67227da44e6f6465a770792d6e6f6465a4506f7274cd1f0ba356736ea6010502000000"
)
SUSPECT_BODY = (
    "84ab436c75737465724e616d65a764656661756c74a446726f6da7676f2d6e6f6465ab496e6361726e6174696f6e"
    "02a44e6f6465a770792d6e6f6465"
)

VECTORS = [
    ("ping", Ping(seq_no=1, node="go-node"), "0082a44e6f6465a7676f2d6e6f6465a55365714e6f01"),
    (
        "ping captured",
        Ping(seq_no=34, node="py-node"),
        "0082a44e6f6465a770792d6e6f6465a55365714e6f22",
    ),
    ("ack nil", Ack(seq_no=1), "0282a75061796c6f6164c0a55365714e6f01"),
    (
        "ack payload",
        Ack(seq_no=300, payload=b"\x01\x02"),
        "0282a75061796c6f6164a20102a55365714e6fcd012c",
    ),
    ("nack", Nack(seq_no=70000), "0b81a55365714e6fce00011170"),
    (
        "indirect",
        IndirectPing(seq_no=5, target=IP, port=7946, node="go-node", nack=True),
        "0185a44e61636bc3a44e6f6465a7676f2d6e6f6465a4506f7274cd1f0aa55365714e6f05a6546172676574"
        "a47f000001",
    ),
    (
        "alive §2.4",
        Alive(1, "py-node", "default", IP, 7947, META, GO_VSN),
        ALIVE_HEX,
    ),
    (
        "alive meta nil",
        Alive(1, "py-node", "default", IP, 7947, None, GO_VSN),
        "0487a441646472a47f000001ab436c75737465724e616d65a764656661756c74ab496e6361726e6174696f6e"
        "01a44d657461c0a44e6f6465a770792d6e6f6465a4506f7274cd1f0ba356736ea6010502000000",
    ),
    (
        "alive long",
        Alive(70000, LONG_NAME, "default", IP, 7947, None, GO_VSN),
        "0487a441646472a47f000001ab436c75737465724e616d65a764656661756c74ab496e6361726e6174696f6e"
        "ce00011170a44d657461c0a44e6f6465da0026612d766572792d6c6f6e672d6e6f64652d6e616d652d303132"
        "33343536373839616263646566a4506f7274cd1f0ba356736ea6010502000000",
    ),
    ("suspect", Suspect(2, "py-node", "default", "go-node"), "03" + SUSPECT_BODY),
    ("dead", Dead(2, "py-node", "default", "go-node"), "05" + SUSPECT_BODY),
    ("user", User(b'{"x":1}'), "08" + b'{"x":1}'.hex()),
]

PING_LZW = "00010822e5e40d9932a7cebc69e1c660995253cac429182020"
COMPRESSED_PING = "0982a4416c676f00a3427566b9" + PING_LZW
GO_TCP_ACK = "0982a4416c676f00a3427566b70005083a05254c1e366fc29001566a4a99384ede340908"
CAPTURED_PING_SUSPECT = (
    "0702001600340082a44e6f6465a770792d6e6f6465a55365714e6f490384ab436c75737465724e616d65a76465"
    "6661756c74a446726f6da2766dab496e6361726e6174696f6e01a44e6f6465a3676f32"
)
NODE_STATE_HEX = (
    "87a441646472a47f000001ab496e6361726e6174696f6e01a44d657461da002b7b22436c75737465724e616d65"
    "223a2264656661756c74222c225374617465223a2252756e6e696e67227da44e616d65a770792d6e6f6465a450"
    "6f7274cd1f0ba5537461746500a356736ea6010502000000"
)
PUSH_PULL_HEADER = (
    "0684ab436c75737465724e616d65a764656661756c74a44a6f696ec3a54e6f64657301ac5573657253746174654c"
    "656ecd012c"
)
NODE = PushNodeState("py-node", IP, 7947, META, 1, NodeState.ALIVE, GO_VSN)


@pytest.mark.parametrize(("message", "wire"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vector_encodes_byte_for_byte(message, wire):
    assert codec.encode_message(message).hex() == wire


@pytest.mark.parametrize(("message", "wire"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vector_decodes_to_its_value(message, wire):
    assert codec.decode_message(bytes.fromhex(wire)) == message
    assert codec.decode_packet(bytes.fromhex(wire)) == (message,)


def test_alive_vector_is_128_bytes_and_83_without_meta():
    assert codec.encoded_size(VECTORS[6][1]) == 128
    assert codec.encoded_size(VECTORS[7][1]) == 83


def test_compressed_ping_both_ways():
    ping = Ping(seq_no=1, node="go-node")
    assert codec.wrap_compress(codec.encode_message(ping)).hex() == COMPRESSED_PING
    assert len(bytes.fromhex(COMPRESSED_PING)) == 38
    assert codec.decode_packet(bytes.fromhex(COMPRESSED_PING)) == (ping,)


def test_compress_of_the_go_1_13_form_decodes():
    old = lzw.compress(codec.encode_message(Ping(1, "go-node")), leading_clear=False)
    body = msgpack.packb({"Algo": 0, "Buf": old}, use_bin_type=True)  # bin: Go accepts it
    assert codec.decode_packet(b"\x09" + body) == (Ping(1, "go-node"),)


def test_go_tcp_ack_reply_both_ways():
    assert codec.decode_stream(bytes.fromhex(GO_TCP_ACK)) == Ack(seq_no=77)
    assert codec.encode_stream(Ack(seq_no=77)).hex() == GO_TCP_ACK


def test_captured_ping_suspect_compound_both_ways():
    wire = bytes.fromhex(CAPTURED_PING_SUSPECT)
    messages = (Ping(73, "py-node"), Suspect(1, "go2", "default", "vm"))
    assert codec.decode_packet(wire) == messages
    assert codec.encode_packet(messages, compress=False) == wire


def test_captured_ack_alive_user_compound_shape():
    user = User(b"x" * 275)
    messages = (Ack(1), VECTORS[6][1], user)
    wire = codec.encode_packet(messages, compress=False)
    assert wire[:8].hex() == "0703" + "0012" + "0080" + "0114"
    assert codec.decode_packet(wire) == messages
    crc_compressed = codec.encode_packet(messages, crc=True, compress=True)
    assert crc_compressed[0] == 0x0C
    assert crc_compressed[5:13] == bytes.fromhex("0982a4416c676f00")
    assert codec.decode_packet(crc_compressed) == messages


def test_push_node_state_vector_both_ways():
    push_pull = PushPull(nodes=(NODE,), cluster_name="default", join=True, user_state=b"u" * 300)
    wire = codec.encode_stream(push_pull, compress=False)
    assert wire.hex().startswith(PUSH_PULL_HEADER + NODE_STATE_HEX)
    assert wire.endswith(b"u" * 300)
    assert codec.decode_stream(wire) == push_pull
    assert codec.decode_stream(codec.encode_stream(push_pull)) == push_pull


def test_user_message_stream_header_vector():
    wire = codec.encode_stream(User(b"hello"), compress=False)
    assert wire.hex() == "0881aa557365724d73674c656e05" + b"hello".hex()
    assert codec.decode_stream(wire) == User(b"hello")


def test_go_join_header_with_a_968_byte_state():
    header = "0684ab436c75737465724e616d65a764656661756c74a44a6f696ec3a54e6f64657301ac"
    wire = codec.encode_stream(PushPull((NODE,), "default", True, b"s" * 968), compress=False)
    assert wire.hex().startswith(header + "5573657253746174654c656ecd03c8")


# ---------------------------------------------------------------- decoder tolerance


def body(fields: dict[str, object], *, bin_type: bool = False) -> bytes:
    return msgpack.packb(fields, use_bin_type=bin_type)


def test_any_key_order_unknown_keys_bin_and_trailing_bytes():
    fields = {"Vsn": GO_VSN, "SourceAddr": IP, "Node": "py-node", "Addr": IP, "Port": 7947,
              "Incarnation": 1, "ClusterName": "default", "Meta": None}  # fmt: skip
    wire = b"\x04" + body(fields, bin_type=True) + b"\xc1trailing"
    assert codec.decode_message(wire) == VECTORS[7][1]


def test_missing_keys_are_go_zero_values_and_nil_is_zero():
    assert codec.decode_message(b"\x00\x80") == Ping(seq_no=0, node="")
    assert codec.decode_message(b"\x02" + body({"SeqNo": None})) == Ack(0, None)


def test_byte_slice_as_an_int_array_and_bool_as_0_or_1():
    wire = b"\x01" + body({"Target": [127, 0, 0, 1], "Nack": 1, "SeqNo": 2})
    assert codec.decode_message(wire) == IndirectPing(2, IP, 0, "", nack=True)


@pytest.mark.parametrize(
    ("kind", "fields", "match"),
    [
        (0, {"SeqNo": 1 << 32}, "outside 0..4294967295"),
        (0, {"SeqNo": -1}, "outside"),
        (4, {"Port": 65536}, "outside 0..65535"),
        (0, {"SeqNo": "1"}, "expected an integer"),
        (0, {"SeqNo": True}, "expected an integer"),
        (0, {"Node": 5}, "expected a string"),
        (1, {"Nack": 2}, "expected a bool"),
        (2, {"Payload": [256]}, "expected bytes"),
    ],
)
def test_out_of_range_or_mistyped_fields_are_decode_errors(kind, fields, match):
    with pytest.raises(DecodeError, match=match):
        codec.decode_message(bytes([kind]) + body(fields))


@pytest.mark.parametrize(
    "wire",
    ["", "06", "0a", "0c", "0d", "f4", "00", "00c1", "0091", "00dd7fffffff", "00a5"],
)
def test_malformed_packets_raise_decode_error(wire):
    with pytest.raises(DecodeError):
        codec.decode_packet(bytes.fromhex(wire))


def test_crc_is_checked_and_only_at_the_top():
    inner = codec.encode_message(Nack(7))
    assert codec.decode_packet(codec.wrap_crc(inner)) == (Nack(7),)
    bad = b"\x0c" + (zlib.crc32(inner) ^ 1).to_bytes(4, "big") + inner
    with pytest.raises(DecodeError, match="CRC mismatch"):
        codec.decode_packet(bad)
    with pytest.raises(DecodeError, match="type 12"):
        codec.decode_packet(codec.wrap_compress(codec.wrap_crc(inner)))


def test_compound_drops_truncated_and_bad_parts_and_keeps_the_rest():
    good = codec.encode_message(Nack(1))
    truncated = codec.encode_compound([good, good])[:-1]
    assert codec.decode_packet(truncated) == (Nack(1),)
    with_bad = codec.encode_compound([good, b"\x0d", b"", codec.encode_message(Nack(2))])
    assert codec.decode_packet(with_bad) == (Nack(1), Nack(2))
    with pytest.raises(DecodeError, match="length table"):
        codec.decode_packet(bytes([7, 3, 0, 1]))


def test_compounds_nest_and_compress_recurses():
    inner = codec.encode_compound([codec.encode_message(Nack(1)), codec.encode_message(Nack(2))])
    outer = codec.encode_compound([codec.wrap_compress(inner), codec.encode_message(Nack(3))])
    assert codec.decode_packet(codec.wrap_crc(codec.wrap_compress(outer))) == (
        Nack(1),
        Nack(2),
        Nack(3),
    )


def test_compress_bomb_and_nesting_bomb_are_refused():
    bomb = b"\x09" + body({"Algo": 0, "Buf": lzw.compress(bytes(2 << 20))})
    with pytest.raises(DecodeError, match="exceeds the limit"):
        codec.decode_packet(bomb)
    # 255 small bombs in one compound share one budget: the packet is refused as a whole.
    half = b"\x09" + body({"Algo": 0, "Buf": lzw.compress(b"\x08" + bytes(600_000))})
    with pytest.raises(DecodeError, match="exceeds the limit"):
        codec.decode_packet(codec.encode_compound([half] * 4))
    deep = codec.encode_message(Nack(1))
    for _ in range(20):
        deep = codec.wrap_compress(deep)
    with pytest.raises(DecodeError, match="deeper than 8"):
        codec.decode_packet(deep)
    many = codec.encode_compound([codec.encode_compound([b"\x08"] * 255)] * 255)
    with pytest.raises(DecodeError, match="more than 4096 messages"):
        codec.decode_packet(many)
    assert len(codec.decode_packet(many, limits=Limits(messages=255 * 255))) == 255 * 255


def test_unknown_compression_algorithm_is_refused():
    with pytest.raises(DecodeError, match="unknown algorithm 1"):
        codec.decode_packet(b"\x09" + body({"Algo": 1, "Buf": b""}))


def test_encode_packet_compresses_only_when_smaller():
    small = codec.encode_packet([Nack(1)])
    assert small == codec.encode_message(Nack(1))
    big = [User(b"same text " * 40)] * 3
    assert codec.encode_packet(big)[0] == 0x09


def test_encode_refuses_values_go_cannot_hold():
    with pytest.raises(TypeError, match="not a packet message"):
        codec.encode_message(PushPull((), "default", join=False, user_state=b""))
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        codec.encode_message(Alive(1, "n", "default", IP, 70000, None, GO_VSN))
    with pytest.raises(ValueError, match=r"1\.\.255 parts"):
        codec.encode_compound([b"\x08"] * 256)


# ---------------------------------------------------------------- the gossip budget


def test_fill_packet_uses_go_overheads_and_skips_what_does_not_fit():
    # 1398 bytes to share; each message costs its size + 2.
    exact = User(b"x" * (1398 - 2 - 1))  # 1 type byte + payload + 2 = 1398
    fit, left = codec.fill_packet([exact, Nack(1)])
    assert fit == (exact,)
    assert left == (Nack(1),)
    too_big = User(b"x" * 1396)
    fit, left = codec.fill_packet([too_big, Nack(1)])
    assert fit == (Nack(1),)
    assert left == (too_big,)
    fit, left = codec.fill_packet([Nack(1)], reserved=1396)
    assert fit == ()
    assert left == (Nack(1),)
    fit, _ = codec.fill_packet([User(b"")] * 300)
    assert len(fit) == 255
    packet = codec.encode_packet(fit, compress=False)
    assert len(packet) <= 1400


def test_fill_packet_leaves_room_for_encryption():
    message = User(b"x" * (1398 - 3 - 29))
    assert codec.fill_packet([message])[0] == (message,)
    assert codec.fill_packet([message], encrypted=True)[0] == (message,)
    bigger = User(b"x" * (1398 - 3 - 28))
    assert codec.fill_packet([bigger], encrypted=True)[0] == ()


# ---------------------------------------------------------------- streams


def test_stream_parser_never_waits_for_eof():
    push_pull = PushPull((NODE, NODE), "default", join=False, user_state=b"state")
    wire = codec.encode_stream(push_pull, compress=False)
    parser = StreamParser()
    results = [parser.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == push_pull
    assert parser.feed(b"more bytes after it are ignored") == push_pull


def test_stream_ping_and_empty_user_state():
    assert codec.decode_stream(codec.encode_stream(Ping(9, "me"))) == Ping(9, "me")
    empty = PushPull((), "default", join=True, user_state=b"")
    assert codec.decode_stream(codec.encode_stream(empty, compress=False)) == empty


def test_incomplete_stream_is_an_error_at_eof():
    wire = codec.encode_stream(User(b"hello"), compress=False)
    parser = StreamParser()
    assert parser.feed(wire[:-1]) is None
    with pytest.raises(DecodeError, match="ends inside its user message"):
        parser.finish()


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"\x04\x80", "not a stream message"),
        (b"\x0a\x00\x00\x00\x10", "encryption is not configured"),
        (b"\x06\x81\xa5Nodes\xce\x00\x10\x00\x00", "outside 0..65536"),
        (b"\x06\x81\xacUserStateLen\xce\x7f\x00\x00\x00", "outside 0..10485760"),
        (b"\x06\x81\xa5Nodes\x01\x81\xa5State\x03", "unknown node state 3"),
    ],
)
def test_hostile_streams_are_refused_early(wire, match):
    with pytest.raises(DecodeError, match=match):
        StreamParser().feed(wire)


def test_compress_inside_compress_is_not_a_stream():
    twice = codec.wrap_compress(codec.encode_stream(Ack(1)))
    with pytest.raises(DecodeError, match="message type 9"):
        codec.decode_stream(twice)


def test_a_refused_stream_stays_refused():
    parser = StreamParser()
    with pytest.raises(DecodeError, match="type 4"):
        parser.feed(b"\x04")
    with pytest.raises(DecodeError, match="already refused: stream of message type 4"):
        parser.feed(codec.encode_stream(Ack(1)))


def test_stream_size_limit():
    parser = StreamParser(limits=Limits(stream_bytes=100))
    parser.feed(b"\x08\x81\xaaUserMsgLen\x50")
    with pytest.raises(DecodeError, match="exceeds 100 bytes"):
        parser.feed(bytes(100))


# ---------------------------------------------------------------- encryption

KEYS = crypto.Keyring((bytes(range(16)), bytes(range(32))))
NONCE = bytes(range(12))


@pytest.mark.parametrize("version", [0, 1])
def test_encrypted_packet_round_trips_under_any_key(version):
    packet = codec.encode_packet([Nack(5)], crc=True)
    sealed = crypto.encrypt_packet(KEYS, packet, nonce=NONCE, version=version)
    assert len(sealed) <= len(packet) + crypto.overhead(version)
    assert sealed[0] == version
    assert sealed[1:13] == NONCE
    rotated = crypto.Keyring((bytes(24), *reversed(KEYS.keys)))
    assert codec.decode_packet(sealed, keyring=rotated) == (Nack(5),)
    with pytest.raises(DecodeError, match="no key of 1"):
        codec.decode_packet(sealed, keyring=crypto.Keyring((bytes(16),)))


def test_encrypted_stream_format_and_aad():
    wire = codec.encode_stream(Ack(3), keyring=KEYS, nonce=NONCE)
    inner = codec.encode_stream(Ack(3))
    assert wire[0] == 0x0A
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 5 == len(inner) + 29
    assert codec.decode_stream(wire, keyring=KEYS) == Ack(3)
    tampered = wire[:4] + bytes([wire[4]]) + wire[5:-1] + bytes([wire[-1] ^ 1])
    with pytest.raises(DecodeError, match="no key"):
        codec.decode_stream(tampered, keyring=KEYS)
    # With a key, a plain stream (compressed or not) is refused, as Go refuses it.
    for plain in (codec.encode_stream(Ack(3)), codec.encode_stream(Ack(3), compress=False)):
        with pytest.raises(DecodeError, match="not encrypted"):
            codec.decode_stream(plain, keyring=KEYS)


def test_keyring_refuses_bad_keys_and_encryption_needs_a_nonce():
    with pytest.raises(ValueError, match="key of 15 bytes"):
        crypto.Keyring((bytes(15),))
    with pytest.raises(ValueError, match="needs a nonce"):
        codec.encode_packet([Nack(1)], keyring=KEYS)
