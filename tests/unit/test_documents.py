"""Go's API documents, byte for byte: `json.Indent`, services.json, the watch document, errors.

The expected outputs are written by hand from Go's `encoding/json` rules (`json.Indent`,
`json.MarshalIndent(v, "", "  ")`, `json.Marshal` of a map) and `strconv.Quote`; the
examples added with the move to the core were also checked against Go 1.19's own output.
The routes that serve these bytes are tested in tests/integration/test_http_api.py.
"""

from __future__ import annotations

import tracemalloc
from functools import partial

import pytest

from sidecar.state import documents, times
from sidecar.state.model import ClusterState, Server, Service, Status
from tests.builders import T0, S, cluster_state, service

# ---------------------------------------------------------------- go_indent


@pytest.mark.parametrize(
    ("compact", "indented"),
    [
        (b"{}", b"{}"),
        (b"[]", b"[]"),
        (b'"x"', b'"x"'),
        (b"true", b"true"),
        (b"-1.5e3", b"-1.5e3"),
        (b'{"a":1}', b'{\n  "a": 1\n}'),
        (b"[1,2]", b"[\n  1,\n  2\n]"),
        (b"[[],{}]", b"[\n  [],\n  {}\n]"),
        (b'{"a":{},"b":[]}', b'{\n  "a": {},\n  "b": []\n}'),
        (
            b'{"a":{"b":[1,null,{}],"c":[]},"d":"x"}',
            b'{\n  "a": {\n    "b": [\n      1,\n      null,\n      {}\n    ],\n'
            b'    "c": []\n  },\n  "d": "x"\n}',
        ),
        (
            b'[[[1]],{"k":[{"z":false}]}]',
            b'[\n  [\n    [\n      1\n    ]\n  ],\n  {\n    "k": [\n      {\n'
            b'        "z": false\n      }\n    ]\n  }\n]',
        ),
    ],
)
def test_go_indent_nests_like_go(compact: bytes, indented: bytes) -> None:
    assert documents.go_indent(compact) == indented


def test_go_indent_copies_strings_verbatim() -> None:
    compact = b'{"a{,:[":"}],\\"\\u003c\\\\","\\\\":["\\"",": "]}'
    assert documents.go_indent(compact) == (
        b'{\n  "a{,:[": "}],\\"\\u003c\\\\",\n  "\\\\": [\n    "\\"",\n    ": "\n  ]\n}'
    )


def test_services_json_of_a_thousand_records_needs_little_more_than_its_output() -> None:
    """An API client polling services.json must not cost the daemon 20x the document."""
    records = [
        service(
            "h1",
            f"{i:012x}",
            name=f"svc-{i:04d}",
            image="web:1",
            ports=((40000 + i, 20000 + i),),
            ip="10.0.0.1",
        )
        for i in range(1000)
    ]
    state = cluster_state("h1", *records)
    tracemalloc.start()
    try:
        document = documents.services_json(state, {"h1": T0})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"services.json {len(document)} bytes, peak {peak / len(document):.1f}x that")
    assert peak < 5 * len(document)  # a list of its tokens made it ~19x


def test_go_indent_drops_whitespace_between_tokens_and_keeps_it_after_the_value() -> None:
    assert documents.go_indent(b' \n{ "a" :\t[ 1 , 2 ] , "b" : { } } \n') == (
        b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": {}\n} \n'
    )


def test_go_indent_with_a_prefix_and_tabs() -> None:
    assert documents.go_indent(b'{"a":[1]}', prefix=b">", indent=b"\t") == (
        b'{\n>\t"a": [\n>\t\t1\n>\t]\n>}'
    )


def test_go_indent_goes_as_deep_as_the_input() -> None:
    depth = 40
    indented = documents.go_indent(b"[" * depth + b"0" + b"]" * depth)
    lines = indented.split(b"\n")
    assert lines[depth] == b"  " * depth + b"0"
    assert lines[: depth + 1] == [b"  " * d + b"[" for d in range(depth)] + [b"  " * depth + b"0"]
    assert lines[depth + 1 :] == [b"  " * d + b"]" for d in reversed(range(depth))]


@pytest.mark.parametrize(
    ("compact", "indented"),
    [
        (b"[[[]]]", b"[\n  [\n    []\n  ]\n]"),
        (b'{"a":{"b":{}}}', b'{\n  "a": {\n    "b": {}\n  }\n}'),
        (b'{"a":[{}],"b":{"c":[]}}', b'{\n  "a": [\n    {}\n  ],\n  "b": {\n    "c": []\n  }\n}'),
        (b"[ ]", b"[]"),
        (b"{ \n\t}", b"{}"),
        (b"[ [ ] , { \n } ]", b"[\n  [],\n  {}\n]"),
    ],
)
def test_go_indent_keeps_empty_containers_compact_at_any_depth(
    compact: bytes, indented: bytes
) -> None:
    """Whitespace inside an empty `[]`/`{}` is dropped like any other: it stays compact."""
    assert documents.go_indent(compact) == indented


@pytest.mark.parametrize("bad", [b'{"a', b'["x\\"]', b"[1]]", b"}"])
def test_go_indent_refuses_what_it_cannot_tokenize(bad: bytes) -> None:
    with pytest.raises(ValueError, match="not JSON at byte"):
        documents.go_indent(bad)


# ---------------------------------------------------------------- the documents


# The records of these documents: image `web:1` whatever their name, created 100 s before T0.
_service = partial(service, image="web:1", created=T0 - 100 * S)

WEB_ALPHA = _service("alpha", "aaa111aaa111", ports=((32001, 8080),), ip="10.0.0.1", at=T0 + 2 * S)
WEB_BETA = _service(
    "beta", "bbb222bbb222", ports=((32002, 8080),), ip="10.0.0.2", at=T0 + 1_500_000_000
)
ODD_ALPHA = _service(
    "alpha",
    "ddd444ddd444",
    name="a<b",
    image="x&y:2",
    ports=(),
    at=T0 + S // 2,
    status=Status.UNHEALTHY,
    mode="tcp",
)
ODD_BETA_TOMBSTONE = _service(
    "beta",
    "ccc333ccc333",
    name="a<b",
    image="x&y:2",
    ports=None,
    at=T0 + 3 * S,
    created=times.ZERO_TIME,
    status=Status.TOMBSTONE,
    mode="tcp",
)


def _server(name: str, *records: Service, last_updated: int) -> Server:
    return Server(
        name=name,
        entries={r.id: r for r in records},
        last_updated=last_updated,
    )


STATE = ClusterState(
    hostname="alpha",
    cluster_name="test<1>",
    servers={
        "alpha": _server("alpha", WEB_ALPHA, ODD_ALPHA, last_updated=T0 + 2 * S),
        "beta": _server("beta", WEB_BETA, ODD_BETA_TOMBSTONE, last_updated=T0 + 3 * S),
    },
)

ODD_ALPHA_INDENTED = """\
      {
        "ID": "ddd444ddd444",
        "Name": "a\\u003cb",
        "Image": "x\\u0026y:2",
        "Created": "2023-11-14T22:11:40Z",
        "Hostname": "alpha",
        "Ports": [],
        "Updated": "2023-11-14T22:13:20.5Z",
        "ProxyMode": "tcp",
        "Status": 2
      }"""
ODD_BETA_INDENTED = """\
      {
        "ID": "ccc333ccc333",
        "Name": "a\\u003cb",
        "Image": "x\\u0026y:2",
        "Created": "0001-01-01T00:00:00Z",
        "Hostname": "beta",
        "Ports": null,
        "Updated": "2023-11-14T22:13:23Z",
        "ProxyMode": "tcp",
        "Status": 1
      }"""
WEB_BETA_INDENTED = """\
      {
        "ID": "bbb222bbb222",
        "Name": "web",
        "Image": "web:1",
        "Created": "2023-11-14T22:11:40Z",
        "Hostname": "beta",
        "Ports": [
          {
            "Type": "tcp",
            "Port": 32002,
            "ServicePort": 8080,
            "IP": "10.0.0.2"
          }
        ],
        "Updated": "2023-11-14T22:13:21.5Z",
        "ProxyMode": "http",
        "Status": 0
      }"""
WEB_ALPHA_INDENTED = """\
      {
        "ID": "aaa111aaa111",
        "Name": "web",
        "Image": "web:1",
        "Created": "2023-11-14T22:11:40Z",
        "Hostname": "alpha",
        "Ports": [
          {
            "Type": "tcp",
            "Port": 32001,
            "ServicePort": 8080,
            "IP": "10.0.0.1"
          }
        ],
        "Updated": "2023-11-14T22:13:22Z",
        "ProxyMode": "http",
        "Status": 0
      }"""

SERVICES_JSON = f"""\
{{
  "Services": {{
    "a\\u003cb": [
{ODD_ALPHA_INDENTED},
{ODD_BETA_INDENTED}
    ],
    "web": [
{WEB_BETA_INDENTED},
{WEB_ALPHA_INDENTED}
    ]
  }},
  "ClusterMembers": {{
    "alpha": {{
      "Name": "alpha",
      "LastUpdated": "2023-11-14T22:13:22Z",
      "ServiceCount": 2
    }},
    "gamma": {{
      "Name": "gamma",
      "LastUpdated": "1970-01-01T00:00:00Z",
      "ServiceCount": 0
    }}
  }},
  "ClusterName": "test\\u003c1\\u003e"
}}""".encode()


def test_services_json_is_gos_marshal_indent() -> None:
    assert documents.services_json(STATE, {"gamma": 5, "alpha": 7}) == SERVICES_JSON


def test_services_json_leaves_out_cluster_members_when_there_are_none() -> None:
    body = documents.services_json(ClusterState(hostname="alpha", cluster_name="c"), {})
    assert body == b'{\n  "Services": {},\n  "ClusterName": "c"\n}'


def test_one_service_json_has_only_that_name_and_the_cluster_name() -> None:
    expected = f"""\
{{
  "Services": {{
    "web": [
{WEB_BETA_INDENTED},
{WEB_ALPHA_INDENTED}
    ]
  }},
  "ClusterName": "test\\u003c1\\u003e"
}}""".encode()
    assert documents.one_service_json(STATE, "web") == expected
    assert documents.one_service_json(STATE, "nope") is None


def test_watch_document_is_the_bare_by_service_map_compact() -> None:
    def compact(service: Service, ports: str, status: int) -> str:
        name = service.name.replace("<", "\\u003c")
        image = service.image.replace("&", "\\u0026")
        return (
            f'{{"ID":"{service.id}","Name":"{name}","Image":"{image}",'
            f'"Created":"{times.format_time(service.created)}","Hostname":"{service.hostname}",'
            f'"Ports":{ports},"Updated":"{times.format_time(service.updated)}",'
            f'"ProxyMode":"{service.proxy_mode}","Status":{status}}}'
        )

    port1 = '[{"Type":"tcp","Port":32001,"ServicePort":8080,"IP":"10.0.0.1"}]'
    port2 = '[{"Type":"tcp","Port":32002,"ServicePort":8080,"IP":"10.0.0.2"}]'
    expected = (
        '{"a\\u003cb":['
        + compact(ODD_ALPHA, "[]", 2)
        + ","
        + compact(ODD_BETA_TOMBSTONE, "null", 1)
        + '],"web":['
        + compact(WEB_BETA, port2, 0)
        + ","
        + compact(WEB_ALPHA, port1, 0)
        + "]}"
    ).encode()
    assert documents.by_service_json(STATE) == expected
    assert documents.by_service_json(ClusterState(hostname="x")) == b"{}"


def test_watch_document_spelled_out_for_one_record() -> None:
    state = ClusterState(
        hostname="h", servers={"h": _server("h", WEB_BETA, last_updated=WEB_BETA.updated)}
    )
    assert documents.by_service_json(state) == (
        b'{"web":[{"ID":"bbb222bbb222","Name":"web","Image":"web:1",'
        b'"Created":"2023-11-14T22:11:40Z","Hostname":"beta",'
        b'"Ports":[{"Type":"tcp","Port":32002,"ServicePort":8080,"IP":"10.0.0.2"}],'
        b'"Updated":"2023-11-14T22:13:21.5Z","ProxyMode":"http","Status":0}]}'
    )


def test_error_json_is_gos_marshal_of_the_map() -> None:
    assert documents.error_json('no instances of a<"b found') == (
        b'{"message":"no instances of a\\u003c\\"b found","status":"error"}'
    )


def test_error_json_escapes_the_message_as_gos_encoding_json() -> None:
    """`<`, `>`, `&`, U+2028/9 and controls escaped (`\\b` as `\\u0008`: Go before 1.22, as
    `codec` writes), DEL and other text as they are."""
    message = 'a<b>&c\u2028\u2029\x01\x08\x7f\n\t"\\é'
    assert documents.error_json(message) == (
        b'{"message":"a\\u003cb\\u003e\\u0026c\\u2028\\u2029\\u0001\\u0008\x7f\\n\\t'
        b'\\"\\\\\xc3\xa9","status":"error"}'
    )


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("abc123", '"abc123"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("tab\there\n", '"tab\\there\\n"'),
        ("\x01\x7f", '"\\x01\\x7f"'),
        ("héllo <ok>", '"héllo <ok>"'),
        ("\u2028", '"\\u2028"'),
        ("\U0001f600", '"\U0001f600"'),
        # strconv.Quote is not encoding/json: `<`, `>`, `&` stay as they are
        ("a&b<c>", '"a&b<c>"'),
        ("\u2029", '"\\u2029"'),
        ("\a\b\f\v", '"\\a\\b\\f\\v"'),
        ("\x00\x1b", '"\\x00\\x1b"'),
        # not printable by Go's rules (controls, spaces other than U+0020, formats, private use)
        ("\x85\xa0\xad", '"\\u0085\\u00a0\\u00ad"'),
        ("\u3000\ufeff\ue000", '"\\u3000\\ufeff\\ue000"'),
        ("\U000e0001", '"\\U000e0001"'),
        # printable: kept
        ("\ufffd e\u0301", '"\ufffd e\u0301"'),
    ],
)
def test_go_quote_is_strconv_quote(text: str, quoted: str) -> None:
    assert documents.go_quote(text) == quoted


def test_drained_body_is_gos_indented_message() -> None:
    assert documents.drained_json(WEB_ALPHA) == (
        b'{\n  "Message": "Service \\"web\\" instance \\"aaa111aaa111\\" set to DRAINING"\n}'
    )


def test_drained_body_quotes_with_q_then_escapes_as_json() -> None:
    """Go formats the message with `%q`, then `json.MarshalIndent` escapes what that wrote."""
    odd = _service("alpha", "x&y", name='a<b\t"c', ports=(), at=T0)
    assert documents.drained_json(odd) == (
        b'{\n  "Message": "Service \\"a\\u003cb\\\\t\\\\\\"c\\" instance \\"x\\u0026y\\" '
        b'set to DRAINING"\n}'
    )


def test_document_json_indents_our_documents_the_same_way() -> None:
    expected = '{\n  "Rejections": [],\n  "b": {\n    "x": [\n      1,\n      "é"\n    ]\n  }\n}'
    assert documents.document_json({"Rejections": [], "b": {"x": [1, "é"]}}) == expected.encode()
    with pytest.raises(ValueError, match="Out of range float"):
        documents.document_json({"x": float("nan")})


def test_document_json_escapes_only_what_json_requires() -> None:
    """Our own documents are not Go's: `<`, `&`, U+2028 and non-ASCII are written as they are."""
    assert documents.document_json({"a": "<&>\u2028é", "b": "\x01\n"}) == (
        '{\n  "a": "<&>\u2028é",\n  "b": "\\u0001\\n"\n}'.encode()
    )
