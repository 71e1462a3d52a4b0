"""The cluster codec round-trips every message it can generate, and no byte string makes it
raise anything but `DecodeError` (cluster-wire.md §1–§4).

The fuzz tests run at least 100,000 inputs in total under the `ci` profile: each example
feeds `INPUTS_PER_EXAMPLE` inputs, and `fuzz_settings` raises max_examples to match there.
"""

from __future__ import annotations

import contextlib

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.cluster import codec, crypto, lzw
from sidecar.cluster.codec import DecodeError, Limits, StreamParser
from sidecar.cluster.messages import (
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

U32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)
U16 = st.integers(min_value=0, max_value=0xFFFF)
names = st.text(max_size=40)
blobs = st.binary(max_size=64)
maybe_blobs = st.none() | blobs

packets = st.one_of(
    st.builds(Ping, seq_no=U32, node=names),
    st.builds(IndirectPing, seq_no=U32, target=blobs, port=U16, node=names, nack=st.booleans()),
    st.builds(Ack, seq_no=U32, payload=maybe_blobs),
    st.builds(Nack, seq_no=U32),
    st.builds(Suspect, incarnation=U32, node=names, cluster_name=names, from_=names),
    st.builds(Dead, incarnation=U32, node=names, cluster_name=names, from_=names),
    st.builds(
        Alive,
        incarnation=U32,
        node=names,
        cluster_name=names,
        addr=blobs,
        port=U16,
        meta=maybe_blobs,
        vsn=blobs,
    ),
    st.builds(User, payload=st.binary(max_size=300)),
)
node_states = st.builds(
    PushNodeState,
    name=names,
    addr=blobs,
    port=U16,
    meta=maybe_blobs,
    incarnation=U32,
    state=st.sampled_from(list(NodeState)),
    vsn=blobs,
)
streams = st.one_of(
    st.builds(
        PushPull,
        nodes=st.lists(node_states, max_size=6).map(tuple),
        cluster_name=names,
        join=st.booleans(),
        user_state=st.binary(max_size=2000),
    ),
    st.builds(Ping, seq_no=U32, node=names),
    st.builds(Ack, seq_no=U32, payload=maybe_blobs),
    st.builds(User, payload=st.binary(max_size=500)),
)
keys = st.binary(min_size=16, max_size=16) | st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=12, max_size=12)


# ---------------------------------------------------------------- round trips


@given(packets)
def test_every_message_round_trips(message):
    assert codec.decode_message(codec.encode_message(message)) == message


@given(
    st.lists(packets, min_size=1, max_size=12),
    st.booleans(),
    st.booleans(),
    st.none() | st.tuples(keys, nonces, st.sampled_from([0, 1])),
)
def test_packets_round_trip_through_every_layer(messages, crc, compress, encryption):
    keyring = None
    if encryption is None:
        wire = codec.encode_packet(messages, crc=crc, compress=compress)
    else:
        key, nonce, version = encryption
        keyring = crypto.Keyring((bytes(16), key))
        sealed_by = crypto.Keyring((key,))
        plain = codec.encode_packet(messages, crc=crc, compress=compress)
        wire = crypto.encrypt_packet(sealed_by, plain, nonce=nonce, version=version)
    assert codec.decode_packet(wire, keyring=keyring) == tuple(messages)


@given(
    streams,
    st.booleans(),
    st.booleans(),
    st.none() | st.tuples(keys, nonces),
    st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=40),
)
def test_streams_round_trip_fed_in_any_chunks(stream, compress, leading_clear, sealed, sizes):
    keyring = crypto.Keyring((sealed[0],)) if sealed else None
    wire = codec.encode_stream(
        stream,
        compress=compress,
        leading_clear=leading_clear,
        keyring=keyring,
        nonce=sealed[1] if sealed else None,
    )
    parser = StreamParser(keyring=keyring)
    position, index, result = 0, 0, None
    while position < len(wire):
        size = sizes[index % len(sizes)]
        result = parser.feed(wire[position : position + size])
        position, index = position + size, index + 1
        assert (result is not None) == (position >= len(wire))
    assert result == stream == parser.finish()


@given(st.binary(max_size=5000), st.booleans())
def test_lzw_round_trips(data, leading_clear):
    packed = lzw.compress(data, leading_clear=leading_clear)
    assert lzw.decompress(packed, max_output=len(data)) == data


@given(st.lists(packets, max_size=40), st.integers(min_value=0, max_value=1400))
def test_fill_packet_stays_within_the_budget(messages, reserved):
    fit, left = codec.fill_packet(messages, reserved=reserved)
    assert sorted(map(repr, fit + left)) == sorted(map(repr, messages))
    if len(fit) > 1:
        assert len(codec.encode_packet(fit, compress=False)) <= 1400 - reserved


# ---------------------------------------------------------------- fuzz

INPUTS_PER_EXAMPLE = 8
CI_FUZZ_INPUTS = 25_000  # per fuzz test; four tests → 100,000 inputs in the ci profile
SMALL = Limits(packet_output=64 << 10, stream_bytes=64 << 10, nodes=64, messages=256)


def fuzz_settings() -> settings:
    """The profile's settings, with enough examples under `ci` for CI_FUZZ_INPUTS inputs."""
    current = settings.default
    if settings.get_current_profile_name() == "ci":
        examples = max(current.max_examples, CI_FUZZ_INPUTS // INPUTS_PER_EXAMPLE)
        return settings(
            current, max_examples=examples, suppress_health_check=[HealthCheck.too_slow]
        )
    return settings(current)


def decodes_or_refuses(data: bytes, keyring: crypto.Keyring | None = None) -> None:
    try:
        messages = codec.decode_packet(data, limits=SMALL, keyring=keyring)
    except DecodeError:
        return
    assert isinstance(messages, tuple)


def streams_or_refuses(data: bytes, chunk: int) -> None:
    parser = StreamParser(limits=SMALL)
    try:
        for start in range(0, len(data), chunk):
            parser.feed(data[start : start + chunk])
        parser.finish()
    except DecodeError:
        return


TYPE_BYTES = st.sampled_from([*range(14), 244, 255]).map(lambda b: bytes([b]))
# Arbitrary bytes behind a plausible type byte, and msgpack-shaped bodies.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=20)
    | st.sampled_from([b"SeqNo", b"Node", b"Nodes", b"Buf", b"Algo"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    b"SeqNo",
                    b"Node",
                    b"Port",
                    b"Vsn",
                    b"Algo",
                    b"Buf",
                    b"UserStateLen",
                    b"Nodes",
                    b"State",
                    b"Nack",
                    b"Meta",
                    b"Join",
                    b"UserMsgLen",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=12,
)
bodies = msgpack_values.map(lambda value: msgpack.packb(value, use_bin_type=False))
fuzz_inputs = st.one_of(
    st.binary(max_size=200),
    st.tuples(TYPE_BYTES, st.binary(max_size=200)).map(b"".join),
    st.tuples(TYPE_BYTES, bodies, st.binary(max_size=8)).map(b"".join),
)


@fuzz_settings()
@given(st.lists(fuzz_inputs, min_size=INPUTS_PER_EXAMPLE, max_size=INPUTS_PER_EXAMPLE))
def test_any_bytes_decode_to_messages_or_decode_error(inputs):
    for data in inputs:
        decodes_or_refuses(data)


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        where = where % (len(out) + 1)
        if kind == 0 and where < len(out):
            out[where] ^= 1 << (value % 8)
        elif kind == 1:
            out.insert(where, value % 256)
        elif kind == 2 and where < len(out):
            del out[where]
        elif kind == 3:
            del out[where:]
        elif kind == 4 and where < len(out):
            out[where] = value % 256
    return bytes(out)


edit_lists = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)


@fuzz_settings()
@given(
    st.lists(packets, min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
    st.lists(edit_lists, min_size=INPUTS_PER_EXAMPLE, max_size=INPUTS_PER_EXAMPLE),
)
def test_mutated_packets_decode_to_messages_or_decode_error(messages, crc, compress, edits):
    wire = codec.encode_packet(messages, crc=crc, compress=compress)
    for edit in edits:
        decodes_or_refuses(mutate(wire, edit))


@fuzz_settings()
@given(
    streams,
    st.booleans(),
    st.lists(edit_lists, min_size=INPUTS_PER_EXAMPLE, max_size=INPUTS_PER_EXAMPLE),
    st.integers(min_value=1, max_value=64),
)
def test_mutated_streams_parse_or_raise_decode_error(stream, compress, edits, chunk):
    wire = codec.encode_stream(stream, compress=compress)
    for edit in edits:
        streams_or_refuses(mutate(wire, edit), chunk)


@fuzz_settings()
@given(
    st.lists(fuzz_inputs, min_size=INPUTS_PER_EXAMPLE // 2, max_size=INPUTS_PER_EXAMPLE // 2),
    st.lists(
        st.binary(max_size=120), min_size=INPUTS_PER_EXAMPLE // 2, max_size=INPUTS_PER_EXAMPLE // 2
    ),
    st.integers(min_value=1, max_value=64),
)
def test_any_stream_bytes_and_any_lzw_input_are_refused_cleanly(inputs, buffers, chunk):
    keyring = crypto.Keyring((bytes(16),))
    for data in inputs:
        streams_or_refuses(data, chunk)
        decodes_or_refuses(data, keyring)
    for buf in buffers:
        with contextlib.suppress(DecodeError):
            lzw.decompress(buf, max_output=64 << 10)
        decodes_or_refuses(b"\x09" + msgpack.packb({"Algo": 0, "Buf": buf}))
