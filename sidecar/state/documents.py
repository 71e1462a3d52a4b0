"""Go Sidecar's HTTP API documents, byte for byte: the bodies `sidecar.adapters.http` serves.

Built from the Go encoders of `codec` (`service_json`, `quote`) and, where Go indents,
re-indented by `go_indent`, which writes what Go's `json.Indent` writes; so
`services_json` (`/api/services.json`, sidecar-behaviour.md §1.7), `one_service_json`
(`/api/services/<name>.json`) and `by_service_json` (the `/api/watch` document, §6.3) are
byte-identical to Go's for the same state (except that Go's one-service list and
equal-`Updated` ties come out in random order, ours sorted); `/api/state.json` is
`codec.encode_state` (§1.6). Also Go's error body (`error_json`), its drain answer
(`drained_json`), `go_quote` (Go's `%q`, which its messages use) and `document_json`, our own
documents (plan, rejections, health...) indented the same way. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sidecar.state import codec, times, views
from sidecar.state.model import ClusterState, Service

_TOKEN: Final = re.compile(
    rb"(?P<open>[{\[])|(?P<close>[}\]])|(?P<comma>,)|(?P<colon>:)|(?P<space>[ \t\r\n]+)"
    rb'|(?P<value>"(?:[^"\\]|\\.)*"|[^"{}\[\],: \t\r\n]+)',
    re.S,
)


def go_indent(compact: bytes, *, prefix: bytes = b"", indent: bytes = b"  ") -> bytes:
    """Return the JSON text re-indented exactly as Go's `json.Indent(dst, src, prefix, indent)`.

    Strings are copied verbatim (escapes stay as written); empty `{}` and `[]` stay compact;
    `": "` follows a key; a newline and the indentation follow `,` and a non-empty `[`/`{`.
    Whitespace between tokens is dropped, whitespace after the top-level value is kept (as
    Go does). Raises ValueError where the input cannot be tokenized (e.g. an open string);
    it does not otherwise validate the JSON.
    """
    # One growing buffer, not a list of tokens: a list held every token of a large document
    # at once (services.json of 1,000 records: 9 MiB for 0.5 MB of output).
    out = bytearray()
    newlines = [b"\n" + prefix]  # newlines[d]: a newline and the indentation of depth d
    depth = 0  # indentation level, as Go counts it
    open_containers = 0
    need_indent = False  # a `{`/`[` was written; indent once we know it is not empty
    top_done = False
    pos, end = 0, len(compact)
    while pos < end:
        match = _TOKEN.match(compact, pos)
        if match is None:
            raise ValueError(f"not JSON at byte {pos}: {compact[pos : pos + 20]!r}")
        kind, token, pos = match.lastgroup, match.group(), match.end()
        if kind == "space":
            if top_done:
                out += token
            continue
        if kind == "close":
            if open_containers == 0:
                raise ValueError(f"not JSON at byte {pos - 1}: unbalanced {token!r}")
            if need_indent:
                need_indent = False
            else:
                depth -= 1
                out += newlines[depth]
            out += token
            open_containers -= 1
            top_done = open_containers == 0
            continue
        if need_indent:
            need_indent = False
            depth += 1
            if depth == len(newlines):
                newlines.append(newlines[-1] + indent)
            out += newlines[depth]
        if kind == "open":
            need_indent = True
            open_containers += 1
            out += token
        elif kind == "comma":
            out += b","
            out += newlines[depth]
        elif kind == "colon":
            out += b": "
        else:
            out += token
            top_done = open_containers == 0
    return bytes(out)


def _by_service_text(groups: Mapping[str, Sequence[Service]]) -> str:
    """Return Go's compact JSON of a `map[string][]*Service` (keys sorted)."""
    return (
        "{"
        + ",".join(
            codec.quote(name) + ":[" + ",".join(codec.service_json(s) for s in groups[name]) + "]"
            for name in sorted(groups)
        )
        + "}"
    )


def by_service_json(state: ClusterState) -> bytes:
    """Return Go's `json.Marshal(state.ByService())`: the bare map name -> records, compact.

    Every status is included; each list is oldest `Updated` first (ties by host and ID).
    This is the default `/api/watch` document.
    """
    return _by_service_text(views.by_service(state)).encode()


def _member_json(name: str, state: ClusterState) -> str:
    server = state.servers.get(name)
    last_updated = times.UNIX_EPOCH if server is None else server.last_updated
    count = 0 if server is None else len(server.entries)
    return (
        f'{codec.quote(name)}:{{"Name":{codec.quote(name)},'
        f'"LastUpdated":"{times.format_time(last_updated)}","ServiceCount":{count}}}'
    )


def services_json(state: ClusterState, members: Mapping[str, int]) -> bytes:
    """Return Go's `/api/services.json`: Services, ClusterMembers, ClusterName, indented.

    `ClusterMembers` has one entry per member: the server's `LastUpdated` and record count
    (tombstones included) when the state has that server, else the Unix epoch and 0. It is
    left out when there are no members (Go's `omitempty`).
    """
    text = '{"Services":' + _by_service_text(views.by_service(state))
    if members:
        text += (
            ',"ClusterMembers":{'
            + ",".join(_member_json(name, state) for name in sorted(members))
            + "}"
        )
    text += ',"ClusterName":' + codec.quote(state.cluster_name) + "}"
    return go_indent(text.encode())


def one_service_json(state: ClusterState, name: str) -> bytes | None:
    """Return Go's `/api/services/<name>.json` (Services, ClusterName), or None when no record
    has that name. The records are oldest `Updated` first (Go's order is random)."""
    records = views.by_service(state).get(name)
    if not records:
        return None
    text = (
        '{"Services":'
        + _by_service_text({name: records})
        + ',"ClusterName":'
        + codec.quote(state.cluster_name)
        + "}"
    )
    return go_indent(text.encode())


_GO_ESCAPES: Final[Mapping[str, str]] = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def go_quote(text: str) -> str:
    """Return `text` as Go's `%q` (`strconv.Quote`) writes it."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def error_json(message: str) -> bytes:
    """Return Go's JSON error body `{"message":"...","status":"error"}`."""
    return ('{"message":' + codec.quote(message) + ',"status":"error"}').encode()


def drained_json(service: Service) -> bytes:
    """Return Go's indented 202 body for a drained service."""
    message = f"Service {go_quote(service.name)} instance {go_quote(service.id)} set to DRAINING"
    return go_indent(('{"Message":' + codec.quote(message) + "}").encode())


def document_json(document: Any) -> bytes:
    """Return a JSON-ready value (one of ours, not Go's) as JSON indented Go's way.

    Raises TypeError or ValueError for a value JSON cannot hold.
    """
    compact = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return go_indent(compact.encode())
