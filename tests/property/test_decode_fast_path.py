"""The fast path of `codec.decode_service` builds the record the validating path builds.

The fast path (`_well_formed_service`) takes documents written the way Go writes them and
builds the record without pydantic; anything else goes to the validating path
(`_validated_service`), which owns every refusal. These tests reach both private paths
directly: for generated documents, and for documents mutated in the ways that must send
them down the validating path (a key in another case, a missing or unknown key, a value of
another type, an out-of-range number, a time in another form), the fast path either builds
an identical record or declines, and `decode_service` answers exactly as the validating path
alone does (the same record, or the same refusal text).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.state import codec, times
from sidecar.state.model import Port, Service, Status
from tests.property import strategies
from tests.unit.test_codec import GO_GOSSIP_SERVICE, GO_SERVICE


def _outcome(decode, document):
    """Return what a decoder does with `document`: the record's repr, or the refusal text."""
    try:
        return repr(decode(document))
    except codec.RecordRejected as exc:
        return f"refused: {exc}"


def _validating_only(document):
    return codec._validated_service(codec._loads(document))


def _assert_same_record(fast, slow):
    """Equal, and built of the same types (a `Status`, a tuple of `Port`, plain ints)."""
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert hash(fast) == hash(slow)
    assert type(fast.status) is Status
    assert type(fast.created) is int
    assert type(fast.updated) is int
    if slow.ports is None:
        assert fast.ports is None
    else:
        assert type(fast.ports) is tuple
        assert all(type(port) is Port for port in fast.ports)
    assert not hasattr(fast, "__dict__")


def _all_text(record: Service) -> str:
    ports = record.ports or ()
    return "".join(
        [record.id, record.name, record.image, record.hostname, record.proxy_mode]
        + [port.type + port.ip for port in ports]
    )


@pytest.mark.parametrize("document", [GO_SERVICE, GO_GOSSIP_SERVICE])
def test_the_go_examples_take_the_fast_path(document):
    fast = codec._well_formed_service(json.loads(document))
    assert fast is not None
    _assert_same_record(fast, _validating_only(document))


@given(strategies.any_record)
def test_a_record_as_go_writes_it_takes_the_fast_path_to_the_same_record(record):
    document = codec.encode_service(record)
    fast = codec._well_formed_service(json.loads(document))
    if _all_text(record).isascii():
        assert fast is not None
    if fast is not None:
        _assert_same_record(fast, _validating_only(document))
        assert fast == record
    assert codec.decode_service(document) == record


# ---------------------------------------------------------------- mutated documents

_EDGES = [
    ("Status", -1),
    ("Status", 5),
    ("Status", True),
    ("Status", 1.0),
    ("Status", "1"),
    ("Status", None),
    ("ID", "a\ud800b"),
    ("Name", "é"),
    ("Image", "<&>"),
    ("ID", 1),
    ("ID", None),
    ("Hostname", ["vm"]),
    ("Ports", None),
    ("Ports", []),
    ("Ports", {}),
    ("Ports", [None]),
    ("Ports", [{}]),
    ("Ports.Port", 2**63 - 1),
    ("Ports.Port", 2**63),
    ("Ports.ServicePort", -(2**63)),
    ("Ports.ServicePort", -(2**63) - 1),
    ("Ports.Port", True),
    ("Ports.Port", 80.0),
    ("Ports.IP", "\udc80"),
    ("Ports.IP", 7),
    ("Ports.ServicePort", "8080"),
    ("Ports.Type", "é"),
    ("Ports.Type", None),
    ("Created", "2023-02-30T00:00:00Z"),
    ("Created", "2023-01-02T03:04:05.1234567891Z"),
    ("Created", "2023-01-02T03:04:05.Z"),
    ("Created", "2023-01-02T03:04:05.٣Z"),
    ("Updated", "2023-01-02T03:04:05+01:00"),
    ("Updated", "2023-01-02T03:04:05z"),
    ("Updated", "2023-01-02T03:04:05"),
    ("Updated", 5),
    ("Updated", None),
]


@pytest.mark.parametrize(("field", "value"), _EDGES)
def test_an_edge_value_decodes_as_the_validating_path_alone_decodes_it(field, value):
    obj = json.loads(GO_SERVICE)
    if field.startswith("Ports."):
        obj["Ports"][0][field.removeprefix("Ports.")] = value
    else:
        obj[field] = value
    document = json.dumps(obj)
    assert _outcome(codec.decode_service, document) == _outcome(_validating_only, document)


@pytest.mark.parametrize(
    "document",
    [
        GO_SERVICE.replace(b'"ID"', b'"id"'),
        GO_SERVICE.replace(b'"Status":0', b'"Status":0,"status":3'),
        GO_SERVICE.replace(b'"Status":0', b'"Status":0,"Extra":1'),
        GO_SERVICE.replace(b'"Status":0', b'"Status":0,"Status":2'),
        GO_SERVICE.replace(b',"Status":0', b""),
        GO_SERVICE.replace(b'"IP"', b'"ip"'),
        GO_SERVICE.replace(b'"IP"', b'"IP":"x","Ip"'),
        GO_SERVICE.replace(b',"IP":"127.0.0.1"', b""),
        b" " + GO_SERVICE + b"\n",
        b"\xef\xbb\xbf" + GO_SERVICE,
        GO_SERVICE.replace(b"awesome-svc:1.0", b"awesome\xff"),
    ],
)
def test_an_edited_go_document_decodes_as_the_validating_path_alone_decodes_it(document):
    assert _outcome(codec.decode_service, document) == _outcome(_validating_only, document)


_SERVICE_KEYS = ["ID", "Name", "Image", "Created", "Hostname", "Ports", "Updated", "ProxyMode"]
_PORT_KEYS = ["Type", "Port", "ServicePort", "IP"]

_time_texts = st.one_of(
    strategies.any_time.map(times.format_time),
    st.builds(
        lambda head, fraction, zone: head + fraction + zone,
        st.sampled_from(
            [
                "2023-01-02T03:04:05",
                "2023-02-30T00:00:00",  # no such day
                "2023-01-02T24:00:00",  # no such hour
                "2023-01-02T03:60:05",
                "0000-01-01T00:00:00",
                "9999-12-31T23:59:59",
                "2023-01-02t03:04:05",
                "2023-01-02T03:04",
                "２０２３-01-02T03:04:05",
            ]
        ),
        st.one_of(
            st.just(""),
            st.just("."),
            st.text(alphabet="0123456789", min_size=1, max_size=14).map(lambda d: "." + d),
            st.sampled_from([".٣", ".1٣", ".１", ".1 "]),
        ),
        st.sampled_from(["Z", "z", "", "+01:00", "-23:59", "+24:00", "Z ", "ZZ", "+0100"]),
    ),
)

_odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([-(2**63) - 1, -(2**63), 2**63 - 1, 2**63, -1, 0, 4, 5]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["a\ud800b", "é", "<&>", "\u2028"]),
    _time_texts,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from([*_PORT_KEYS, "port", "x"]), st.integers(), max_size=2),
)


def _case_variants(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([key.lower(), key.upper(), key.swapcase(), key + "x", "ſ" + key[1:]])


@st.composite
def _mutated(draw, obj: dict, keys: list[str]) -> dict:
    """Return `obj` with a few keys renamed, dropped, added or given another value."""
    obj = dict(obj)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["rename", "drop", "add", "value", "time", "both"]))
        if action == "drop":
            obj.pop(key, None)
        elif action == "rename" and key in obj:
            obj[draw(_case_variants(key))] = obj.pop(key)
        elif action == "both" and key in obj:  # the exact key and a case variant (Go: last wins)
            obj[draw(_case_variants(key))] = draw(_odd_values)
        elif action == "add":
            obj[draw(st.text(max_size=4))] = draw(_odd_values)
        elif action == "time":
            obj[key] = draw(_time_texts)
        else:
            obj[key] = draw(_odd_values)
    return obj


@st.composite
def _mutated_documents(draw) -> str:
    record = draw(strategies.any_record)
    obj = json.loads(codec.encode_service(record))
    target = draw(st.sampled_from(["service", "port", "status"]))
    if target == "port" and obj["Ports"]:
        index = draw(st.integers(min_value=0, max_value=len(obj["Ports"]) - 1))
        ports = list(obj["Ports"])
        ports[index] = draw(_mutated(ports[index], _PORT_KEYS))
        obj["Ports"] = ports
    elif target == "status":
        obj["Status"] = draw(_odd_values)
    else:
        obj = draw(_mutated(obj, [*_SERVICE_KEYS, "Status"]))
    pairs = list(obj.items())
    if draw(st.booleans()):  # key order is not part of the form
        pairs = draw(st.permutations(pairs))
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"


@given(_mutated_documents(), st.booleans())
def test_any_mutated_document_decodes_as_the_validating_path_alone_decodes_it(document, as_bytes):
    raw = document.encode("utf-8", "surrogatepass") if as_bytes else document
    assert _outcome(codec.decode_service, raw) == _outcome(_validating_only, raw)
    fast = codec._well_formed_service(codec._loads(raw))  # never raises
    if fast is not None:
        _assert_same_record(fast, _validating_only(raw))


@given(_time_texts)
def test_the_fast_time_reading_is_parse_time_or_declines(text):
    try:
        expected: int | None = times.parse_time(text)
    except ValueError:
        expected = None
    assert codec._time_or_none(text) == expected
