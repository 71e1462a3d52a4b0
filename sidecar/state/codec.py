"""Go-compatible JSON for service records and the cluster state.

Encoding is byte-identical to what the Go Sidecar writes (ffjson and `encoding/json` before
Go 1.22): Go's key order, compact, map keys sorted, `<`, `>`, `&`, U+2028 and U+2029 escaped
as `\\u003c`..., control characters other than `\\n`, `\\r`, `\\t` as `\\u00XX`, times as in
`sidecar.state.times`, nil port lists as `null`. It is written by hand because no JSON
library escapes exactly like Go.

Decoding accepts what Go accepts: keys matched case-insensitively (the last matching key
wins), unknown keys ignored, missing keys and `null` as zero values, invalid UTF-8 replaced by
U+FFFD. Anything Go would refuse (a string where a number belongs, a fractional or out-of-range
integer, a malformed time) raises `RecordRejected`, which is the only error decoding raises;
so does a status outside 0..4, which Go would store and we do not.

A service document as Go and this node write it (the nine keys spelled exactly, ASCII
strings, integers in range, valid times) takes a fast path that checks each value's type
itself and builds the record without pydantic; anything else takes the validating path, so
every refusal and its text come from one place (a property test pins that both paths build
the same record).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import pydantic

from sidecar.state import times
from sidecar.state.model import (
    INT64_MAX,
    INT64_MIN,
    ChangeEvent,
    ClusterState,
    Port,
    Server,
    Service,
    Status,
)

_ESCAPES: Final[Mapping[str, str]] = {
    **{chr(c): f"\\u{c:04x}" for c in range(0x20)},
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    '"': '\\"',
    "\\": "\\\\",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_NEEDS_ESCAPE: Final = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_MAX_STATUS: Final = max(Status)


class RecordRejected(ValueError):
    """Input that Go's decoder would refuse, or that the core does not store.

    The message names the field and the value. Adapters count and drop such input.
    """


def quote(text: str) -> str:
    """Return `text` as a JSON string literal escaped exactly as Go escapes it."""
    if _NEEDS_ESCAPE.search(text) is None:
        return f'"{text}"'
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()], text) + '"'


def _port_json(port: Port) -> str:
    return (
        f'{{"Type":{quote(port.type)},"Port":{port.port},'
        f'"ServicePort":{port.service_port},"IP":{quote(port.ip)}}}'
    )


def service_json(service: Service) -> str:
    """Return the record as Go's compact JSON text (key order ID, Name, ..., Status)."""
    if service.ports is None:
        ports = "null"
    else:
        ports = "[" + ",".join(_port_json(p) for p in service.ports) + "]"
    return (
        f'{{"ID":{quote(service.id)},"Name":{quote(service.name)},'
        f'"Image":{quote(service.image)},"Created":"{times.format_time(service.created)}",'
        f'"Hostname":{quote(service.hostname)},"Ports":{ports},'
        f'"Updated":"{times.format_time(service.updated)}",'
        f'"ProxyMode":{quote(service.proxy_mode)},"Status":{int(service.status)}}}'
    )


def encode_service(service: Service) -> bytes:
    """Return the record as the bytes of one gossip user message (Go JSON, UTF-8)."""
    return service_json(service).encode()


def server_json(server: Server) -> str:
    """Return one server as Go's compact JSON text."""
    services = ",".join(
        f"{quote(service_id)}:{service_json(server.entries[service_id])}"
        for service_id in sorted(server.entries)
    )
    return (
        f'{{"Name":{quote(server.name)},"Services":{{{services}}},'
        f'"LastUpdated":"{times.format_time(server.last_updated)}",'
        f'"LastChanged":"{times.format_time(server.last_changed)}"}}'
    )


def state_json(state: ClusterState) -> str:
    """Return the state as Go's compact JSON text (`/api/state.json`)."""
    servers = ",".join(
        f"{quote(name)}:{server_json(state.servers[name])}" for name in sorted(state.servers)
    )
    return (
        f'{{"Servers":{{{servers}}},"LastChanged":"{times.format_time(state.last_changed)}",'
        f'"ClusterName":{quote(state.cluster_name)},"Hostname":{quote(state.hostname)}}}'
    )


def encode_state(state: ClusterState) -> bytes:
    """Return the state as Go's `/api/state.json` and push-pull bytes."""
    return state_json(state).encode()


def encode_state_changed(state: ClusterState, event: ChangeEvent) -> bytes:
    """Return Go's `StateChangedEvent` document, the body a URL listener is POSTed: the state
    after the change and the change, compact as Go's `json.Marshal` writes it
    (`{"State":...,"ChangeEvent":{"Service":...,"PreviousStatus":n,"Time":"..."}}`)."""
    return (
        f'{{"State":{state_json(state)},"ChangeEvent":{{"Service":{service_json(event.service)},'
        f'"PreviousStatus":{int(event.previous_status)},'
        f'"Time":"{times.format_time(event.time)}"}}}}'
    ).encode()


# ---------------------------------------------------------------------------- decoding

_STRING, _INT, _TIME, _OTHER = range(4)


def _keys(*fields: tuple[str, str, int]) -> Mapping[str, tuple[str, int]]:
    """Return Go key (exact and case-folded) -> (field name, kind)."""
    table: dict[str, tuple[str, int]] = {}
    for go_name, field_name, kind in fields:
        table[go_name] = table[go_name.casefold()] = (field_name, kind)
    return table


_PORT_KEYS: Final = _keys(
    ("Type", "type", _STRING),
    ("Port", "port", _INT),
    ("ServicePort", "service_port", _INT),
    ("IP", "ip", _STRING),
)
_SERVICE_KEYS: Final = _keys(
    ("ID", "id", _STRING),
    ("Name", "name", _STRING),
    ("Image", "image", _STRING),
    ("Created", "created", _TIME),
    ("Hostname", "hostname", _STRING),
    ("Ports", "ports", _OTHER),
    ("Updated", "updated", _TIME),
    ("ProxyMode", "proxy_mode", _STRING),
    ("Status", "status", _INT),
)
_SERVER_KEYS: Final = _keys(
    ("Name", "name", _STRING),
    ("Services", "services", _OTHER),
    ("LastUpdated", "last_updated", _TIME),
    ("LastChanged", "last_changed", _TIME),
)
_STATE_KEYS: Final = _keys(
    ("Servers", "servers", _OTHER),
    ("LastChanged", "last_changed", _TIME),
    ("ClusterName", "cluster_name", _STRING),
    ("Hostname", "hostname", _STRING),
)


def _fold(obj: object, keys: Mapping[str, tuple[str, int]], what: str) -> dict[str, object]:
    """Return the object's known keys mapped to field names, Go-style.

    Keys match case-insensitively; later keys win; `null` values are dropped (zero value).
    """
    if not isinstance(obj, dict):
        raise RecordRejected(f"{what}: expected a JSON object, got {_describe(obj)}")
    folded: dict[str, object] = {}
    for key, value in obj.items():
        known = keys.get(key) or keys.get(key.casefold())
        if known is None or value is None:
            continue
        name, kind = known
        if kind == _STRING:
            if type(value) is not str:
                raise RecordRejected(f"{what}.{name}: expected a string, got {_describe(value)}")
            if not value.isascii() and _SURROGATE.search(value):
                value = _SURROGATE.sub("\ufffd", value)
        elif kind == _INT:
            if type(value) is not int:
                raise RecordRejected(f"{what}.{name}: expected an integer, got {_describe(value)}")
        elif kind == _TIME:
            if type(value) is not str:
                raise RecordRejected(f"{what}.{name}: expected a time, got {_describe(value)}")
            try:
                value = times.parse_time(value)
            except ValueError as exc:
                raise RecordRejected(f"{what}.{name}: {exc}") from None
        folded[name] = value
    return folded


def _describe(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _service_from_object(obj: object) -> Service:
    fields = _fold(obj, _SERVICE_KEYS, "Service")
    ports = fields.get("ports")
    if ports is not None:
        if type(ports) is not list:
            raise RecordRejected(f"Service.ports: expected an array, got {_describe(ports)}")
        fields["ports"] = tuple(_port_from_object(p, i) for i, p in enumerate(ports))
    status = fields.get("status")
    if status is not None:
        if not (isinstance(status, int) and 0 <= status <= _MAX_STATUS):
            raise RecordRejected(f"Service.status: expected 0..4, got {_describe(status)}")
        fields["status"] = Status(status)
    checked: dict[str, Any] = fields  # _fold checked every value's type
    return Service(**checked)


def _port_from_object(obj: object, index: int) -> Port:
    checked: dict[str, Any] = _fold(obj, _PORT_KEYS, "Port")  # _fold checked the types
    try:
        return Port(**checked)
    except pydantic.ValidationError as exc:
        raise RecordRejected(_first_error(exc, within=f"Service.ports.{index}")) from None


def _text(raw: bytes) -> str:
    """Return `raw` as Go reads JSON: UTF-8 only, an invalid byte as U+FFFD
    (`json.loads(bytes)` would also take UTF-16 and UTF-32)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def _loads(raw: bytes | str) -> object:
    try:
        return json.loads(_text(raw) if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError) as exc:
        raise RecordRejected(f"not JSON: {exc}") from None


def decode_service(raw: bytes | str) -> Service:
    """Return the record in one Go JSON service document.

    Raises RecordRejected, naming the field and value, for input Go would refuse.
    """
    obj = _loads(raw)
    record = _well_formed_service(obj)
    if record is not None:
        return record
    return _validated_service(obj)


def _validated_service(obj: object) -> Service:
    """Return the record of a parsed service document by the full validating path."""
    try:
        return _service_from_object(obj)
    except pydantic.ValidationError as exc:
        raise RecordRejected(_first_error(exc)) from None


# The fast path. It accepts a strict subset of what the validating path accepts, and for
# that subset it checks what the models' strict schema checks (exact `str`, exact `int`,
# ports' Int64 range, a `Status`, a tuple of `Port`), so the record is the one pydantic
# would build; it returns None for anything else, never raises.
_GO_SERVICE_KEYS: Final = frozenset(
    ("ID", "Name", "Image", "Created", "Hostname", "Ports", "Updated", "ProxyMode", "Status")
)
_GO_PORT_KEYS: Final = frozenset(("Type", "Port", "ServicePort", "IP"))
_STATUSES: Final = tuple(Status(value) for value in range(_MAX_STATUS + 1))
_new = object.__new__
_set_slot = object.__setattr__  # a frozen dataclass's own __setattr__ refuses


def _well_formed_service(obj: object) -> Service | None:
    """Return the record of a service document written the way Go writes one, built
    without pydantic; None when the document needs the validating path."""
    if type(obj) is not dict or obj.keys() != _GO_SERVICE_KEYS:
        return None
    id_, name, image = obj["ID"], obj["Name"], obj["Image"]
    hostname, proxy_mode = obj["Hostname"], obj["ProxyMode"]
    created, updated, status = obj["Created"], obj["Updated"], obj["Status"]
    if not (
        type(id_) is str
        and type(name) is str
        and type(image) is str
        and type(hostname) is str
        and type(proxy_mode) is str
        and type(created) is str
        and type(updated) is str
        and type(status) is int
        and 0 <= status <= _MAX_STATUS
        # Not ASCII: maybe a surrogate to replace, which the validating path does.
        and (id_ + name + image + hostname + proxy_mode).isascii()
    ):
        return None
    created_at = _time_or_none(created)
    updated_at = _time_or_none(updated)
    if created_at is None or updated_at is None:
        return None
    ports_obj = obj["Ports"]
    ports: tuple[Port, ...] | None = None
    if ports_obj is not None:
        if type(ports_obj) is not list:
            return None
        built = []
        for port_obj in ports_obj:
            port = _well_formed_port(port_obj)
            if port is None:
                return None
            built.append(port)
        ports = tuple(built)
    record: Service = _new(Service)
    _set_slot(record, "id", id_)
    _set_slot(record, "name", name)
    _set_slot(record, "image", image)
    _set_slot(record, "created", created_at)
    _set_slot(record, "hostname", hostname)
    _set_slot(record, "ports", ports)
    _set_slot(record, "updated", updated_at)
    _set_slot(record, "proxy_mode", proxy_mode)
    _set_slot(record, "status", _STATUSES[status])
    return record


def _time_or_none(text: str) -> int | None:
    """Return the instant of an RFC 3339 time (as `times.parse_time`), or None for a time
    it refuses."""
    # Go writes `YYYY-MM-DDTHH:MM:SS[.digits]Z`. Its first 19 characters (all that can be
    # out of range) repeat from record to record, so they are parsed once.
    tail = text[19:]
    if tail == "Z":
        nanos = 0
    elif tail[:1] == "." and tail[-1:] == "Z" and tail[1:-1].isdigit() and tail.isascii():
        nanos = int(tail[1:-1][:9].ljust(9, "0"))  # digits past the ninth dropped
    else:
        try:
            return times.parse_time(text)
        except ValueError:
            return None
    try:
        return _utc_seconds(text[:19]) * times.NANOS_PER_SECOND + nanos
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _utc_seconds(date_and_time: str) -> int:
    """Return the seconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS` (UTC).

    Raises ValueError where `times.parse_time` would."""
    return times.parse_time(date_and_time + "Z") // times.NANOS_PER_SECOND


def _well_formed_port(obj: object) -> Port | None:
    """Return the port of a port object written the way Go writes one, built without
    pydantic; None when it needs the validating path."""
    if type(obj) is not dict or obj.keys() != _GO_PORT_KEYS:
        return None
    kind, number, service_port, ip = obj["Type"], obj["Port"], obj["ServicePort"], obj["IP"]
    if not (
        type(kind) is str
        and type(ip) is str
        and type(number) is int
        and type(service_port) is int
        and INT64_MIN <= number <= INT64_MAX
        and INT64_MIN <= service_port <= INT64_MAX
        and (kind + ip).isascii()
    ):
        return None
    port: Port = _new(Port)
    _set_slot(port, "type", kind)
    _set_slot(port, "port", number)
    _set_slot(port, "service_port", service_port)
    _set_slot(port, "ip", ip)
    return port


def _first_error(exc: pydantic.ValidationError, *, within: str | None = None) -> str:
    error = exc.errors()[0]
    where = ".".join([within or exc.title, *(str(part) for part in error["loc"])])
    return f"{where}: {error['msg']} (got {_describe(error['input'])})"


def decode_state(raw: bytes | str) -> ClusterState:
    """Return the cluster state in a Go `/api/state.json` or push-pull document.

    Servers are keyed as in the document; records are stored as received (a decoded state is
    a snapshot to merge from or to show, not one this node's merges produced). Raises
    RecordRejected for input Go would refuse.
    """
    try:
        fields = _fold(_loads(raw), _STATE_KEYS, "ServicesState")
        servers_obj = fields.get("servers", {})
        if not isinstance(servers_obj, dict):
            raise RecordRejected(f"ServicesState.servers: expected an object, got {servers_obj!r}")
        servers = {
            key: _server_from_object(key, value)
            for key, value in servers_obj.items()
            if value is not None
        }
    except pydantic.ValidationError as exc:
        raise RecordRejected(_first_error(exc)) from None
    return ClusterState(
        hostname=str(fields.get("hostname", "")),
        cluster_name=str(fields.get("cluster_name", "")),
        servers=servers,
        last_changed=_int(fields.get("last_changed", times.ZERO_TIME)),
    )


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _server_from_object(key: str, obj: object) -> Server:
    fields = _fold(obj, _SERVER_KEYS, f"Server {key!r}")
    services_obj = fields.get("services", {})
    if not isinstance(services_obj, dict):
        raise RecordRejected(f"Server {key!r}.services: expected an object")
    entries = {
        service_id: _service_from_object(value)
        for service_id, value in services_obj.items()
        if value is not None
    }
    return Server(
        name=str(fields.get("name", "")),
        entries=entries,
        last_updated=_int(fields.get("last_updated", times.ZERO_TIME)),
        last_changed=_int(fields.get("last_changed", times.ZERO_TIME)),
    )


def records_of(state: ClusterState) -> Iterable[Service]:
    """Yield every record of a decoded state, for merging it record by record."""
    for name in sorted(state.servers):
        server = state.servers[name]
        for service_id in sorted(server.entries):
            yield server.entries[service_id]
