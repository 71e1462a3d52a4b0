"""Go JSON round trips for generated values, and decoding never fails undeclared."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from sidecar.state import codec, merge
from sidecar.state.model import ClusterState
from tests.property import strategies


@given(strategies.any_record)
def test_any_record_round_trips_to_an_equal_record_and_the_same_bytes(record):
    encoded = codec.encode_service(record)
    decoded = codec.decode_service(encoded)
    assert decoded == record
    assert codec.encode_service(decoded) == encoded


@given(strategies.any_record)
def test_encoding_is_json_a_standard_parser_reads_back(record):
    document = json.loads(codec.encode_service(record))
    assert list(document) == [
        "ID",
        "Name",
        "Image",
        "Created",
        "Hostname",
        "Ports",
        "Updated",
        "ProxyMode",
        "Status",
    ]
    assert document["Name"] == record.name
    assert document["Status"] == int(record.status)


@given(strategies.any_record)
def test_encoding_never_writes_html_characters_raw(record):
    encoded = codec.encode_service(record)
    assert not {b"<", b">", b"&"} & {encoded[i : i + 1] for i in range(len(encoded))}


@given(st.lists(strategies.any_record, max_size=6), st.text(max_size=10))
def test_any_state_round_trips_byte_for_byte(records, hostname):
    state = merge.merge_records(ClusterState(hostname=hostname), records, now=strategies.BASE).state
    encoded = codec.encode_state(state)
    assert codec.encode_state(codec.decode_state(encoded)) == encoded


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_record_or_a_declared_rejection(raw):
    with contextlib.suppress(codec.RecordRejected):
        codec.decode_service(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["ID", "ports", "Port", "STATUS", "updated", "Type", "x"]) | st.text(),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(json_values)
def test_any_json_decodes_to_a_record_or_a_declared_rejection(value):
    for decode in (codec.decode_service, codec.decode_state):
        with contextlib.suppress(codec.RecordRejected):
            decode(json.dumps(value))
