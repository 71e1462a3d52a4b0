"""Static discovery's file: the Go `static.json` format, read into observations.

The file is a JSON array of *targets* (spec `sidecar-behaviour.md` §3.4):

    [{"Service": {...a Service record...},
      "Check": {"Type": "HttpGet", "Args": "http://:10234/"},
      "ListenPort": 9999}]

Decoding is Go's: keys match case-insensitively (the last matching key wins), unknown keys
are ignored, missing keys and `null` are zero values. The Service object is decoded by
`codec.decode_service`, so it accepts and refuses exactly what a gossiped record does, except
that its `ID`, `Created`, `Updated` and `Status` are overwritten as Go overwrites them.

Where we differ from Go, on purpose:
- IDs are derived from the target's content, so they are stable across restarts (Go draws
  random ones on every start).
- Identical targets (the same Hostname, Name and set of Ports: they would be HAProxy
  servers for one address) are served once, under the first one's ID; the others are
  `Rejected` as duplicates of it (Go serves each under its own random ID).
- Every string a target gives is validated as a container's labels are: a control
  character or line break in any field, a Name longer than routing allows, an unknown
  ProxyMode make that target a `Rejected` naming the field and value (Go announces it).
- An empty `ProxyMode` becomes `"http"` (Go leaves it empty, which breaks the HAProxy config;
  spec §12 item 5).
- A check type `Docker` (ours, for containers) means nothing for a static target, so it is
  treated like any other unknown type: as HttpGet (Go's rule).
- A target whose check cannot run here (`External` while the policy disables it, a refused
  `Args` template) is a `Rejected` with the reason, and the other targets are served, as a
  container with a bad label is. Only a file that is not valid JSON or has a wrong shape is
  refused whole (the last good services are then kept by the adapter).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Final

from sidecar.state import codec
from sidecar.state.discovery import (
    ID_LENGTH,
    PROXY_MODES,
    CheckSpec,
    CheckType,
    DiscoveryPolicy,
    Observed,
    Rejected,
    TemplateRejected,
    name_problem,
    quoted,
    render_check_args,
    text_problem,
)
from sidecar.state.model import Port, Service, Status
from sidecar.state.times import UNIX_EPOCH

DEFAULT_PROXY_MODE: Final = "http"
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# Check types a static target may ask for by name; anything else is HttpGet, as in Go.
_STATIC_CHECK_TYPES: Final = frozenset(
    {CheckType.HTTP_GET, CheckType.TCP, CheckType.ALWAYS_SUCCESSFUL, CheckType.EXTERNAL}
)


class StaticConfigError(ValueError):
    """A static discovery file that cannot be used; `str()` names where and why.

    `line` and `column` (1-based) are set for invalid JSON; a wrong shape names the target
    index and the field in the message instead.
    """

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        *,
        source: str = "static.json",
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        where = source if line is None else f"{source} line {line} column {column}"
        super().__init__(f"{where}: {message}")


class _ConstantNotJSON(ValueError):
    """`NaN`, `Infinity` or `-Infinity`, which Python's parser accepts and Go's refuses."""


def _refuse_constant(name: str) -> object:
    raise _ConstantNotJSON(name)


def _load(text: str | bytes, source: str) -> object:
    """Return the parsed JSON document, or raise StaticConfigError with line and column."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")  # as Go: invalid bytes become U+FFFD
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise StaticConfigError(exc.msg, exc.lineno, exc.colno, source=source) from None
    except _ConstantNotJSON as exc:
        raise StaticConfigError(f"invalid JSON value {exc}", source=source) from None
    except RecursionError:
        raise StaticConfigError("JSON nested too deeply", source=source) from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise StaticConfigError(f"invalid JSON: {exc}", source=source) from None


def _fold(obj: Mapping[str, object], names: Iterable[str]) -> dict[str, object]:
    """Return Go field name -> value for the object's keys that match one case-insensitively.

    Later keys win and `null` values are dropped (Go leaves the zero value).
    """
    by_folded = {name.casefold(): name for name in names}
    folded: dict[str, object] = {}
    for key, value in obj.items():
        name = by_folded.get(key.casefold())
        if name is not None and value is not None:
            folded[name] = value
    return folded


def _describe(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _string(value: object, where: str, source: str) -> str:
    if type(value) is not str:
        raise StaticConfigError(
            f"{where}: expected a string, got {_describe(value)}", source=source
        )
    return _SURROGATE.sub("\ufffd", value)


def _service(obj: object, where: str, source: str) -> Service:
    """Return the target's Service object decoded as a gossiped record would be."""
    if not isinstance(obj, dict):
        raise StaticConfigError(
            f"{where}: expected a JSON object, got {_describe(obj)}", source=source
        )
    # Go stores any integer status and health overwrites it; codec refuses all but 0..4.
    cleaned = {
        key: 0 if key.casefold() == "status" and type(value) is int else value
        for key, value in obj.items()
    }
    try:
        return codec.decode_service(json.dumps(cleaned))
    except codec.RecordRejected as exc:
        raise StaticConfigError(f"{where}: {exc}", source=source) from None


def _first_tcp_port(service: Service) -> int | None:
    for port in service.ports or ():
        if port.type == "tcp":
            return port.port
    return None


def default_check(service: Service, policy: DiscoveryPolicy) -> CheckSpec:
    """Return Go's default check for a service (spec §4.3): HttpGet on the advertise IP, the
    first tcp port and the default endpoint, or AlwaysSuccessful without a tcp port."""
    port = _first_tcp_port(service)
    if port is None:
        return CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "", rise=policy.rise, fall=policy.fall)
    url = f"http://{policy.advertise_ip}:{port}{policy.default_check_endpoint}"
    return CheckSpec(CheckType.HTTP_GET, url, rise=policy.rise, fall=policy.fall)


def _check(
    obj: object, service: Service, policy: DiscoveryPolicy, where: str, source: str
) -> CheckSpec:
    """Return the target's check: as given, or the default one when its type is empty."""
    if not isinstance(obj, dict):
        raise StaticConfigError(
            f"{where}: expected a JSON object, got {_describe(obj)}", source=source
        )
    fields = _fold(obj, ("Type", "Args"))
    type_name = _string(fields.get("Type", ""), f"{where}.Type", source)
    args = _string(fields.get("Args", ""), f"{where}.Args", source)
    _refuse_if(text_problem(f"{where}.Type", type_name))
    _refuse_if(text_problem(f"{where}.Args", args))
    if type_name == "":
        return default_check(service, policy)
    check_type = CheckType.HTTP_GET
    if type_name in _STATIC_CHECK_TYPES:
        check_type = CheckType(type_name)
    if check_type is CheckType.EXTERNAL and not policy.external_checks:
        raise _TargetRefused(
            f"{where}.Type: external checks disabled: External runs a command, which this "
            "node's configuration does not allow"
        )
    try:
        args = render_check_args(args, service, host=policy.advertise_ip)
    except TemplateRejected as exc:
        raise _TargetRefused(f"{where}.Args: {exc}") from None
    if check_type is CheckType.HTTP_GET and args.startswith(("http://:", "https://:")):
        # Go dials an empty host as this host (`http://:10234/` in Go's own fixture).
        scheme, rest = args.split("://", 1)
        args = f"{scheme}://{policy.advertise_ip}{rest}"
    return CheckSpec(check_type, args, rise=policy.rise, fall=policy.fall)


class _TargetRefused(Exception):
    """Internal: one target cannot be served; the message is the reason."""


def _refuse_if(problem: str | None) -> None:
    if problem is not None:
        raise _TargetRefused(problem)


def _validate(service: Service, where: str) -> None:
    """Raise _TargetRefused naming the first field of the Service a container's labels could
    not carry either: a control character or line break anywhere, a name longer than
    routing allows, an unknown ProxyMode."""
    _refuse_if(name_problem(f"{where}.Name", service.name))
    _refuse_if(text_problem(f"{where}.Image", service.image))
    _refuse_if(text_problem(f"{where}.Hostname", service.hostname))
    _refuse_if(text_problem(f"{where}.ProxyMode", service.proxy_mode))
    if service.proxy_mode not in PROXY_MODES:
        raise _TargetRefused(
            f"{where}.ProxyMode {quoted(service.proxy_mode)} is not one of {', '.join(PROXY_MODES)}"
        )
    for number, port in enumerate(service.ports or ()):
        _refuse_if(text_problem(f"{where}.Ports[{number}].Type", port.type))
        _refuse_if(text_problem(f"{where}.Ports[{number}].IP", port.ip))


def _target_key(service: Service) -> tuple[object, ...]:
    """Return what makes two targets the same instance: the host, the name and the set of
    ports (two of them would be two HAProxy servers for one address)."""
    ports = sorted((p.type, p.port, p.service_port, p.ip) for p in service.ports or ())
    return (service.hostname, service.name, tuple(ports))


def _listen_port(value: object, where: str, source: str) -> int:
    if type(value) is not int or not 0 <= value <= 65535:
        # Go would take any int64 and build a URL that cannot work; a port must be a port.
        raise StaticConfigError(
            f"{where}: expected a port number 0..65535, got {_describe(value)}", source=source
        )
    return value


def _content_key(hostname: str, name: str, image: str, ports: tuple[Port, ...] | None) -> str:
    """Return the canonical text a static service's ID is derived from."""
    port_list = [[p.type, p.port, p.service_port, p.ip] for p in ports or ()]
    return json.dumps(
        [hostname, name, image, port_list],
        separators=(",", ":"),
        ensure_ascii=True,
    )


def static_id(content_key: str, occurrence: int = 0) -> str:
    """Return the 12 lowercase hex characters of a static service's ID.

    The ID depends only on the content, so it survives restarts, re-reads and reordering of
    the file. Identical targets are served once, so `occurrence` is 0 but for the served
    target whose ID another one already has (a 48-bit collision): 1, 2, ... until free.
    """
    digest = hashlib.sha256(f"{occurrence}:{content_key}".encode()).hexdigest()
    return digest[:ID_LENGTH]


def parse_static(
    text: str | bytes, policy: DiscoveryPolicy, *, now: int, source: str = "static.json"
) -> tuple[Observed | Rejected, ...]:
    """Return the observations (or rejections) a Go `static.json` document describes, in
    file order.

    Pure. Each service gets a content-derived stable `ID`, `Created = now`, `Updated` 0 (the
    core stamps own records), status UNKNOWN (health decides), the file's `Hostname` or else
    `policy.hostname`, the advertise IP on ports without an IP, and `ProxyMode` "http" when
    empty (Go leaves it empty, which breaks HAProxy). An empty check type gets the default
    check. `ListenPort > 0` subscribes `http://<policy.hostname>:<ListenPort>/sidecar/update`.
    A top-level `null` is an empty file, as in Go.

    A target whose check cannot run here, with a field a container's label could not carry
    either, or identical to an earlier served one, is a `Rejected` naming the target and the
    reason (a duplicate's ID is the served one's).
    Raises StaticConfigError naming `source` and the line and column for invalid JSON, or
    the target index and field for a wrong shape: such a file is not used at all.
    """
    document = _load(text, source)
    if document is None:
        return ()
    if not isinstance(document, list):
        raise StaticConfigError(
            f"expected a JSON array of targets, got {_describe(document)}", source=source
        )
    observed: list[Observed | Rejected] = []
    used_ids: set[str] = set()
    served: dict[tuple[object, ...], tuple[int, str]] = {}  # target key -> (index, ID)
    for index, target in enumerate(document):
        where = f"target {index}"
        if not isinstance(target, dict):
            raise StaticConfigError(
                f"{where}: expected a JSON object, got {_describe(target)}", source=source
            )
        fields = _fold(target, ("Service", "Check", "ListenPort"))
        given = _service(fields.get("Service", {}), f"{where}.Service", source)
        listen_port = _listen_port(fields.get("ListenPort", 0), f"{where}.ListenPort", source)
        ports = given.ports
        if ports is not None:
            ports = tuple(
                Port(type=p.type, port=p.port, service_port=p.service_port, ip=policy.advertise_ip)
                if p.ip == ""
                else p
                for p in ports
            )
        hostname = given.hostname or policy.hostname
        key = _content_key(hostname, given.name, given.image, ports)
        service = Service(
            id=static_id(key),
            name=given.name,
            image=given.image,
            created=now,
            hostname=hostname,
            ports=ports,
            updated=UNIX_EPOCH,
            proxy_mode=given.proxy_mode or DEFAULT_PROXY_MODE,
            status=Status.UNKNOWN,
        )
        try:
            _validate(service, f"{where}.Service")
            check = _check(fields.get("Check", {}), service, policy, f"{where}.Check", source)
        except _TargetRefused as refused:
            observed.append(Rejected(service.id, service.name, str(refused)))
            continue
        first = served.get(_target_key(service))
        if first is not None:
            first_index, first_id = first
            observed.append(
                Rejected(
                    first_id,
                    service.name,
                    f"{where} is a duplicate of target {first_index} (the same Hostname, Name "
                    f"and Ports), which is served as ID {first_id}",
                )
            )
            continue
        occurrence = 0
        while service.id in used_ids:  # a 48-bit collision: astronomically rare, still handled
            occurrence += 1
            service = replace(service, id=static_id(key, occurrence))
        used_ids.add(service.id)
        served[_target_key(service)] = (index, service.id)
        listener = None
        if listen_port > 0:
            listener = f"http://{policy.hostname}:{listen_port}/sidecar/update"
        observed.append(Observed(service=service, check=check, listener=listener))
    return tuple(observed)


def keep_created(
    observed: tuple[Observed, ...], previous: tuple[Observed, ...]
) -> tuple[Observed, ...]:
    """Return `observed` with each service's `Created` taken from the previous parse when
    the same (hostname, ID) was there, so re-reading an edited file does not make its
    unchanged services look new."""
    created = {(o.service.hostname, o.service.id): o.service.created for o in previous}
    kept: list[Observed] = []
    for item in observed:
        first = created.get((item.service.hostname, item.service.id))
        if first is None or first == item.service.created:
            kept.append(item)
            continue
        old = item.service
        service = Service(
            id=old.id,
            name=old.name,
            image=old.image,
            created=first,
            hostname=old.hostname,
            ports=old.ports,
            updated=old.updated,
            proxy_mode=old.proxy_mode,
            status=old.status,
        )
        kept.append(replace(item, service=service))
    return tuple(kept)
