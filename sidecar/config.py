"""The daemon's configuration: the settings, where they are read from, and their validation.

This is the only module that reads the environment. `load()` builds one frozen `Config` from
three layers, each later one overriding the earlier ones key by key:

1. the TOML file (`sidecar.toml` by default; optional unless `required`), in the Go
   Sidecar's OLD layout: sections `[sidecar]`, `[docker_discovery]`, `[static_discovery]`,
   `[services]`, `[haproxy]`, `[listeners]`. Every setting has a key there, and unlike Go
   OLD, `[sidecar] logging_level` is honoured. Go's `stats_addr` is accepted so that a Go
   file loads, and reported by `notices()` as ignored. An unknown section or key is an error.
2. environment variables, under the Go Sidecar's NEW names (`ENV_VARS`). A variable that is
   set but empty counts as set, as in Go (`HAPROXY_BIND_IP=` means all interfaces), except
   that an empty list variable is an empty list. Lists split on commas and whitespace, both
   trimmed; booleans are Go `ParseBool` spellings; integers are decimal; durations are Go
   syntax (`"50ms"`, `"1m30s"`, `"0"`), as in the file.
3. command-line overrides, passed in by the CLI as `{"section.key": value}` (`FLAGS` names
   the Go flags; `--cluster-ip` and `--discover` replace the whole list).

No unprefixed fallbacks. Go's envconfig reads `FOO` whenever `P_FOO` is unset, so variables
set for other reasons reconfigure the Go daemon: `USER` (the login name) becomes the HAProxy
user, `CONFIG_FILE` feeds both the static file and the HAProxy config, `BIND_IP` the HAProxy
bind address, `URL` the Docker URL (spec `sidecar-behaviour.md` §9.1, §12 item 22). Here only
the names in `ENV_VARS` are read; every other variable, prefixed or not, is ignored.

Every value is validated at start-up. A `ConfigError` lists every problem found, each naming
the setting, where its value came from (the file and its `[section] key`, the variable, or
the flag), the value, and what is allowed. Secrets are never printed.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import math
import os
import platform
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, Final, Literal, Self, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

DEFAULT_PATH: Final = "sidecar.toml"
# The file's path, as Go OLD's `--config-file` read it (see `config_path`).
CONFIG_FILE_ENV: Final = "SIDECAR_CONFIG_FILE"


class ConfigError(ValueError):
    """Bad configuration; the message names the key, where it came from (the file and its
    [section] key, the environment variable, or the flag), the value, and what is allowed.

    `problems` holds one line per problem; with several, the message starts with a line
    saying how many, then lists them one per line.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "\n".join(
                [f"{len(self.problems)} configuration problems:"]
                + [f"  {problem}" for problem in self.problems]
            )
        super().__init__(message)


# ------------------------------------------------------------------ Go value syntax

_GO_BOOLS: Final[Mapping[str, bool]] = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_DECIMAL: Final = re.compile(r"[+-]?[0-9]+")
_LIST_SEPARATORS: Final = re.compile(r"[,\s]+")
_DURATION_PART: Final = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS: Final[Mapping[str, Fraction]] = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),  # U+00B5 micro sign
    "μs": Fraction(1, 10**6),  # U+03BC Greek mu
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_BAD_DURATION: Final = 'not a duration (expected Go syntax such as "50ms", "3s", "1m30s" or "2h")'


def parse_duration(text: str) -> float:
    """Return the seconds a Go duration string (`time.ParseDuration` syntax) stands for.

    Raises ValueError for anything Go would refuse: an empty string, a number without a unit
    (other than "0"), an unknown unit, spaces.
    """
    body = text[1:] if text[:1] in ("+", "-") else text
    sign = -1 if text[:1] == "-" else 1
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(_BAD_DURATION)
    total = Fraction(0)
    position = 0
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            raise ValueError(_BAD_DURATION)
        total += Fraction(part[1]) * _DURATION_UNITS[part[2]]
        position = part.end()
    return float(sign * total)


def format_duration(seconds: float) -> str:
    """Return `seconds` as Go's `time.Duration.String` writes it ("50ms", "1m30s", "2h0m0s")."""
    nanos = round(seconds * 10**9)
    if nanos == 0:
        return "0s"
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)

    def decimal(whole: int, fraction: int, digits: int) -> str:
        tail = f"{fraction:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if nanos < 1000:
        return f"{sign}{nanos}ns"
    if nanos < 10**6:
        return f"{sign}{decimal(nanos // 1000, nanos % 1000, 3)}µs"
    if nanos < 10**9:
        return f"{sign}{decimal(nanos // 10**6, nanos % 10**6, 6)}ms"
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{sign}{text}{decimal(rest // 10**9, rest % 10**9, 9)}s"


def _go_bool(text: str) -> bool:
    """Return the boolean a Go `strconv.ParseBool` spelling stands for."""
    try:
        return _GO_BOOLS[text]
    except KeyError:
        raise ValueError(f"not a boolean (expected one of {', '.join(_GO_BOOLS)})") from None


def _decimal(text: str) -> int:
    """Return a decimal integer written with digits only (and an optional sign)."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError("not a decimal integer")
    return int(text)


def _split_list(text: str) -> tuple[str, ...]:
    """Return the items of a list written with commas and/or whitespace between them."""
    return tuple(item for item in _LIST_SEPARATORS.split(text) if item)


# ------------------------------------------------------------------ value checks
# Each raises ValueError with "what is wrong (what is allowed)"; the caller adds where the
# value came from.

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACE_OR_CONTROL: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_SCHEMES: Final = ("unix://", "tcp://", "http://", "https://")
_PORT_RANGE: Final = "a port number 1..65535"


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("empty (a value is required)")
    return value


def _no_space(value: str) -> str:
    if _SPACE_OR_CONTROL.search(value):
        raise ValueError("contains whitespace or a control character")
    return value


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains a control character")
    return value


def _secret_no_control(value: SecretStr) -> SecretStr:
    _no_control(value.get_secret_value())
    return value


GOSSIP_KEY_SIZES: Final = (16, 24, 32)


def gossip_key_bytes(value: SecretStr) -> bytes:
    """Return the AES key a gossip key (base64 text) stands for; b"" for none. Raises
    ValueError, never showing the key, for text that is not the base64 of 16, 24 or 32
    bytes."""
    text = value.get_secret_value()
    if not text:
        return b""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 (expected the base64 of 16, 24 or 32 bytes)") from None
    if len(key) not in GOSSIP_KEY_SIZES:
        raise ValueError(f"{len(key)} bytes (expected the base64 of 16, 24 or 32 bytes)")
    return key


def _gossip_key(value: SecretStr) -> SecretStr:
    gossip_key_bytes(value)
    return value


def _between(low: int, high: int, expected: str = "") -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"out of range (expected {expected or f'{low}..{high}'})")
        return value

    return check


def _port_text(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not {_PORT_RANGE}")
    return int(text)


def _ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("not an IP address (expected an IPv4 or IPv6 address)") from None
    return value


def _advertise_ip(value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                'not an IP address (expected an IPv4 or IPv6 address, or "" to detect it)'
            ) from None
    return value


def _bind_ip(value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                "not an IP address (expected an IPv4 or IPv6 address, "
                '"" or 0.0.0.0 for all interfaces)'
            ) from None
    return value


def _stats_ip(value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                'not an IP address (expected an IPv4 or IPv6 address, or "" for the bind IP)'
            ) from None
    return value


def _seed(value: str) -> str:
    _no_space(value)
    if value.startswith("["):  # [v6] or [v6]:port
        host, bracket, port = value[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError('not a host (expected "host", "host:port" or "[IPv6]:port")')
        if port:
            _port_text(port[1:])
        return value
    if value.count(":") > 1:  # a bare IPv6 address, no port
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError('not a host (expected "host", "host:port" or "[IPv6]:port")') from None
        return value
    host, colon, port = value.partition(":")
    if not host:
        raise ValueError('no host before the port (expected "host" or "host:port")')
    if colon:
        _port_text(port)
    return value


def _split_address(value: str) -> tuple[str, int]:
    """Return the host and port of "IP:port" or "[IPv6]:port"."""
    expected = "(expected IP:port or [IPv6]:port, e.g. 0.0.0.0:7777)"
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
        version = 6
    else:
        host, _, port = value.rpartition(":")
        version = 4
    try:
        if ipaddress.ip_address(host).version != version:
            raise ValueError(host)
    except ValueError:
        raise ValueError(f"not an address and port {expected}") from None
    return host, _port_text(port)


def _http_address(value: str) -> str:
    _split_address(value)
    return value


def _check_endpoint(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError('not a path (expected one starting with "/", e.g. /version)')
    return _no_space(value)


def _docker_url(value: str) -> str:
    _no_space(value)
    if value == "":
        return value  # Go's "use the DOCKER_* environment" (DOCKER_HOST, DOCKER_TLS_VERIFY, ...)
    scheme = next((scheme for scheme in _SCHEMES if value.startswith(scheme)), None)
    if scheme is None:
        raise ValueError(
            "unsupported URL (expected one starting with unix://, tcp://, http:// or https://)"
        )
    rest = value[len(scheme) :]
    if scheme == "unix://" and not rest.startswith("/"):
        raise ValueError(
            f"the socket path is not absolute: did you mean {'unix:///' + rest!r} (three slashes)?"
        )
    if not rest.strip("/"):
        raise ValueError(f"no {'socket path' if scheme == 'unix://' else 'host'} after {scheme}")
    return value


def _listener_url(value: str) -> str:
    _no_space(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http:// or https:// URL with a host")
    return value


def _interface(value: str) -> str:
    _no_space(value)
    if not value or len(value) > 15 or "/" in value or value in (".", ".."):
        raise ValueError("not a network interface name (expected 1 to 15 characters, no /)")
    return value


def _choice(
    allowed: Sequence[str],
    *,
    aliases: Mapping[str, str] | None = None,
    unsupported: Iterable[str] = (),
    fold_case: bool = False,
) -> Callable[[object], object]:
    """Return a before-validator accepting `allowed` (and `aliases`), refusing the rest."""
    refused = frozenset(unsupported)

    def check(value: object) -> object:
        if not isinstance(value, str):
            return value  # the type check says so
        word = value.lower() if fold_case else value
        word = (aliases or {}).get(word, word)
        if word in allowed:
            return word
        if word in refused:
            raise ValueError(f"not supported by this sidecar (allowed: {', '.join(allowed)})")
        raise ValueError(f"unknown value (allowed: {', '.join(allowed)})")

    return check


def _duration_input(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool):
        raise ValueError(_BAD_DURATION)
    return value


def _positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError("not above zero (expected a duration such as 3s)")
    return value


def _not_negative(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("negative (expected 0 or more, such as 50ms)")
    return value


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class _Conflicts(ValueError):
    """Problems with several settings of one section together: (keys, message) pairs."""

    def __init__(self, conflicts: Sequence[tuple[tuple[str, ...], str]]) -> None:
        self.conflicts = tuple(conflicts)
        super().__init__("; ".join(message for _, message in self.conflicts))


# ------------------------------------------------------------------ the settings

Word = Annotated[StrictStr, AfterValidator(_non_empty), AfterValidator(_no_space)]
Name = Annotated[StrictStr, AfterValidator(_no_space)]  # "" allowed
FilePath = Annotated[StrictStr, AfterValidator(_non_empty), AfterValidator(_no_control)]
OptionalPath = Annotated[StrictStr, AfterValidator(_no_control)]
Port = Annotated[StrictInt, AfterValidator(_between(1, 65535, _PORT_RANGE))]
Threshold = Annotated[StrictInt, AfterValidator(_between(1, 100))]
Duration = Annotated[float, BeforeValidator(_duration_input)]
"""Seconds; written as a Go duration string in the file and the environment."""
DiscoveryMethod = Literal["docker", "static"]
LoggingFormat = Literal["text", "json"]
LoggingLevel = Literal["debug", "info", "warn", "error"]
Namer = Literal["docker_label", "regex"]
HaproxyMode = Literal["managed", "external"]

_SECTION_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SidecarSettings(BaseModel):
    """`[sidecar]`: the node, the cluster, logging, the HTTP API and health checks."""

    model_config = _SECTION_CONFIG

    seeds: tuple[Annotated[StrictStr, AfterValidator(_seed)], ...] = ()
    cluster_name: Word = "default"
    advertise_ip: Annotated[StrictStr, AfterValidator(_advertise_ip)] = ""
    exclude_ips: tuple[Annotated[StrictStr, AfterValidator(_ip)], ...] = ("192.168.168.168",)
    bind_port: Port = 7946
    discovery: Annotated[
        tuple[
            Annotated[
                DiscoveryMethod,
                BeforeValidator(_choice(("docker", "static"), unsupported=("kubernetes_api",))),
            ],
            ...,
        ],
        AfterValidator(_unique),
    ] = ("docker",)
    logging_format: Annotated[
        LoggingFormat,
        BeforeValidator(
            _choice(("text", "json"), aliases={"": "text", "standard": "text"}, fold_case=True)
        ),
    ] = "text"
    logging_level: Annotated[
        LoggingLevel,
        BeforeValidator(
            _choice(
                ("debug", "info", "warn", "error"),
                aliases={"warning": "warn", "": "info"},
                fold_case=True,
            )
        ),
    ] = "info"
    default_check_endpoint: Annotated[StrictStr, AfterValidator(_check_endpoint)] = "/version"
    hostname: Name = ""
    http_address: Annotated[StrictStr, AfterValidator(_http_address)] = "0.0.0.0:7777"
    api_token: Annotated[SecretStr, AfterValidator(_secret_no_control)] = SecretStr("")
    gossip_key: Annotated[SecretStr, AfterValidator(_gossip_key)] = SecretStr("")
    gossip_keyring: tuple[Annotated[SecretStr, AfterValidator(_gossip_key)], ...] = ()
    external_checks: StrictBool = False
    check_interval: Annotated[Duration, AfterValidator(_positive)] = 3.0
    health_rise: Threshold = 1
    health_fall: Threshold = 2
    push_pull_interval: Annotated[Duration, AfterValidator(_not_negative)] = 20.0
    """Seconds between full-state exchanges with a random member; 0 means Go's 79 s."""
    gossip_messages: Annotated[StrictInt, AfterValidator(_between(0, 1000))] = 15
    """Packets sent to each gossip target per 200 ms round at most; 0 means memberlist's 3."""

    @model_validator(mode="after")
    def _keyring_has_a_key(self) -> Self:
        if self.gossip_keyring and not self.gossip_key.get_secret_value():
            raise _Conflicts(
                [
                    (
                        ("gossip_keyring",),
                        "set, but gossip_key is not: gossip_key encrypts, the keyring's keys "
                        "only decrypt (during a rotation)",
                    )
                ]
            )
        return self

    def gossip_keys(self) -> tuple[bytes, ...]:
        """Return the gossip keys, the one that encrypts first; () when gossip is not
        encrypted (the default, as Go's Sidecar)."""
        primary = gossip_key_bytes(self.gossip_key)
        if not primary:
            return ()
        others = (gossip_key_bytes(k) for k in self.gossip_keyring)
        return (primary, *(k for k in others if k != primary))

    def push_pull_seconds(self) -> float:
        """Return the push/pull interval in seconds: Go's ALIVE_LIFESPAN - 1 s (79 s) for 0."""
        return self.push_pull_interval or 79.0

    def gossip_packets(self) -> int:
        """Return the most packets per target per gossip round: memberlist's 3 for 0."""
        return self.gossip_messages or 3

    def node_name(self) -> str:
        """Return this node's name: `hostname`, or the machine's host name when it is ""."""
        return self.hostname or platform.node()

    def http_listen(self) -> tuple[str, int]:
        """Return the HTTP API's (IP, port), from `http_address` (brackets removed)."""
        return _split_address(self.http_address)


class DockerDiscoverySettings(BaseModel):
    """`[docker_discovery]`: where the Docker Engine answers."""

    model_config = _SECTION_CONFIG

    docker_url: Annotated[StrictStr, AfterValidator(_docker_url)] = "unix:///var/run/docker.sock"


class StaticDiscoverySettings(BaseModel):
    """`[static_discovery]`: Go's `static.json`, and the largest one read (bytes; ours)."""

    model_config = _SECTION_CONFIG

    config_file: FilePath = "static.json"
    max_size: Annotated[StrictInt, AfterValidator(_between(1, 2**31, "1..2147483648 bytes"))] = (
        4 * 1024 * 1024
    )


class ServicesSettings(BaseModel):
    """`[services]`: how a container's service name is found."""

    model_config = _SECTION_CONFIG

    namer: Annotated[Namer, BeforeValidator(_choice(("docker_label", "regex")))] = "docker_label"
    name_label: Word = "ServiceName"
    name_match: StrictStr = ""

    @model_validator(mode="after")
    def _regex_namer_has_a_group(self) -> Self:
        if self.namer != "regex":
            return self
        example = "e.g. ^/(.+)(-[0-9a-z]{7,14})$"
        try:
            groups = re.compile(self.name_match).groups if self.name_match else 0
        except re.error as exc:
            raise _Conflicts([(("name_match",), f"not a valid regex: {exc}")]) from None
        if groups < 1:
            why = "empty" if not self.name_match else "no capture group"
            raise _Conflicts(
                [
                    (
                        ("name_match",),
                        f"{why}, but the regex namer names a service by the pattern's first "
                        f"capture group ({example})",
                    )
                ]
            )
        return self


class HaproxySettings(BaseModel):
    """`[haproxy]`: the local HAProxy, how it is run and how changes reach it."""

    model_config = _SECTION_CONFIG

    disable: StrictBool = False
    bind_ip: Annotated[StrictStr, AfterValidator(_bind_ip)] = "192.168.168.168"
    template_file: OptionalPath = ""
    config_file: FilePath = "/etc/haproxy.cfg"
    pid_file: FilePath = "/var/run/haproxy.pid"
    user: Name = "haproxy"
    group: Name = ""
    use_hostnames: StrictBool = False
    reload_command: StrictStr = ""
    verify_command: StrictStr = ""
    mode: Annotated[HaproxyMode, BeforeValidator(_choice(("managed", "external")))] = "managed"
    master_socket: FilePath = "/var/run/sidecar/haproxy-master.sock"
    admin_socket: FilePath = "/var/run/haproxy_stats.sock"
    interface: Annotated[StrictStr, AfterValidator(_interface)] = "lo"
    release_ip: StrictBool = True
    stop_on_exit: StrictBool = False
    apply: StrictBool = True
    debounce_min: Annotated[Duration, AfterValidator(_not_negative)] = 0.05
    debounce_max: Annotated[Duration, AfterValidator(_not_negative)] = 1.0
    stats_port: Port = 3212
    stats_backend_port: Port = 32012
    stats_ip: Annotated[StrictStr, AfterValidator(_stats_ip)] = ""
    hard_stop_after: Annotated[Duration, AfterValidator(_positive)] = 30.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        conflicts: list[tuple[tuple[str, ...], str]] = []
        if self.debounce_min > self.debounce_max:
            conflicts.append(
                (
                    ("debounce_min", "debounce_max"),
                    "the minimum wait is above the maximum "
                    "(expected 0 <= debounce_min <= debounce_max)",
                )
            )
        if self.stats_port == self.stats_backend_port:
            conflicts.append(
                (("stats_port", "stats_backend_port"), "the same port (expected two ports)")
            )
        if conflicts:
            raise _Conflicts(conflicts)
        return self


class ListenersSettings(BaseModel):
    """`[listeners]`: URLs that get every state change POSTed to them."""

    model_config = _SECTION_CONFIG

    urls: tuple[Annotated[StrictStr, AfterValidator(_listener_url)], ...] = ()


class Config(BaseModel):
    """The whole configuration, one frozen model per TOML section. Build it with `load()`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sidecar: SidecarSettings = Field(default_factory=SidecarSettings)
    docker_discovery: DockerDiscoverySettings = Field(default_factory=DockerDiscoverySettings)
    static_discovery: StaticDiscoverySettings = Field(default_factory=StaticDiscoverySettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    haproxy: HaproxySettings = Field(default_factory=HaproxySettings)
    listeners: ListenersSettings = Field(default_factory=ListenersSettings)

    # Filled by load(): "section.key" → where the value came from; what was ignored. Not
    # part of the value: two configs with the same settings are equal wherever they came from.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _notices: tuple[str, ...] = PrivateAttr(default=())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))


SECTIONS: Final[Mapping[str, type[BaseModel]]] = {
    "sidecar": SidecarSettings,
    "docker_discovery": DockerDiscoverySettings,
    "static_discovery": StaticDiscoverySettings,
    "services": ServicesSettings,
    "haproxy": HaproxySettings,
    "listeners": ListenersSettings,
}

# The environment variables read, and the setting each one sets. Nothing else is read.
ENV_VARS: Final[Mapping[str, tuple[str, str]]] = {
    "SIDECAR_SEEDS": ("sidecar", "seeds"),
    "SIDECAR_CLUSTER_NAME": ("sidecar", "cluster_name"),
    "SIDECAR_ADVERTISE_IP": ("sidecar", "advertise_ip"),
    "SIDECAR_EXCLUDE_IPS": ("sidecar", "exclude_ips"),
    "SIDECAR_BIND_PORT": ("sidecar", "bind_port"),
    "SIDECAR_DISCOVERY": ("sidecar", "discovery"),
    "SIDECAR_LOGGING_FORMAT": ("sidecar", "logging_format"),
    "SIDECAR_LOGGING_LEVEL": ("sidecar", "logging_level"),
    "SIDECAR_DEFAULT_CHECK_ENDPOINT": ("sidecar", "default_check_endpoint"),
    "SIDECAR_HOSTNAME": ("sidecar", "hostname"),
    "SIDECAR_HTTP_ADDRESS": ("sidecar", "http_address"),
    "SIDECAR_API_TOKEN": ("sidecar", "api_token"),
    "SIDECAR_GOSSIP_KEY": ("sidecar", "gossip_key"),
    "SIDECAR_GOSSIP_KEYRING": ("sidecar", "gossip_keyring"),
    "SIDECAR_EXTERNAL_CHECKS": ("sidecar", "external_checks"),
    "SIDECAR_CHECK_INTERVAL": ("sidecar", "check_interval"),
    "SIDECAR_HEALTH_RISE": ("sidecar", "health_rise"),
    "SIDECAR_HEALTH_FALL": ("sidecar", "health_fall"),
    "SIDECAR_PUSH_PULL_INTERVAL": ("sidecar", "push_pull_interval"),
    "SIDECAR_GOSSIP_MESSAGES": ("sidecar", "gossip_messages"),
    "DOCKER_URL": ("docker_discovery", "docker_url"),
    "STATIC_CONFIG_FILE": ("static_discovery", "config_file"),
    "STATIC_MAX_SIZE": ("static_discovery", "max_size"),
    "SERVICES_NAMER": ("services", "namer"),
    "SERVICES_NAME_LABEL": ("services", "name_label"),
    "SERVICES_NAME_MATCH": ("services", "name_match"),
    "HAPROXY_DISABLE": ("haproxy", "disable"),
    "HAPROXY_BIND_IP": ("haproxy", "bind_ip"),
    "HAPROXY_TEMPLATE_FILE": ("haproxy", "template_file"),
    "HAPROXY_CONFIG_FILE": ("haproxy", "config_file"),
    "HAPROXY_PID_FILE": ("haproxy", "pid_file"),
    "HAPROXY_USER": ("haproxy", "user"),
    "HAPROXY_GROUP": ("haproxy", "group"),
    "HAPROXY_USE_HOSTNAMES": ("haproxy", "use_hostnames"),
    "HAPROXY_RELOAD_COMMAND": ("haproxy", "reload_command"),
    "HAPROXY_VERIFY_COMMAND": ("haproxy", "verify_command"),
    "HAPROXY_MODE": ("haproxy", "mode"),
    "HAPROXY_MASTER_SOCKET": ("haproxy", "master_socket"),
    "HAPROXY_ADMIN_SOCKET": ("haproxy", "admin_socket"),
    "HAPROXY_INTERFACE": ("haproxy", "interface"),
    "HAPROXY_RELEASE_IP": ("haproxy", "release_ip"),
    "HAPROXY_STOP_ON_EXIT": ("haproxy", "stop_on_exit"),
    "HAPROXY_APPLY": ("haproxy", "apply"),
    "HAPROXY_DEBOUNCE_MIN": ("haproxy", "debounce_min"),
    "HAPROXY_DEBOUNCE_MAX": ("haproxy", "debounce_max"),
    "HAPROXY_STATS_PORT": ("haproxy", "stats_port"),
    "HAPROXY_STATS_BACKEND_PORT": ("haproxy", "stats_backend_port"),
    "HAPROXY_STATS_IP": ("haproxy", "stats_ip"),
    "HAPROXY_HARD_STOP_AFTER": ("haproxy", "hard_stop_after"),
    "LISTENERS_URLS": ("listeners", "urls"),
}

# The Go Sidecar's flags, by the override key the CLI passes for each.
FLAGS: Final[Mapping[str, str]] = {
    "sidecar.seeds": "--cluster-ip",
    "sidecar.advertise_ip": "--advertise-ip",
    "sidecar.cluster_name": "--cluster-name",
    "sidecar.discovery": "--discover",
    "sidecar.logging_level": "--logging-level",
}

# Keys of Go OLD's sidecar.toml that have no meaning here: accepted and ignored, with a notice.
_GO_ONLY_KEYS: Final[Mapping[tuple[str, str], str]] = {
    ("sidecar", "stats_addr"): "statsd metrics are not supported",
}

_SECRETS: Final = frozenset(
    {("sidecar", "api_token"), ("sidecar", "gossip_key"), ("sidecar", "gossip_keyring")}
)

Kind = Literal["str", "bool", "int", "duration", "list"]


def _kind_of(annotation: Any) -> Kind:
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "duration"
    if get_origin(annotation) is tuple:
        return "list"
    return "str"  # str, SecretStr, Literal[...]


_KINDS: Final[Mapping[tuple[str, str], Kind]] = {
    (section, key): _kind_of(field.annotation)
    for section, model in SECTIONS.items()
    for key, field in model.model_fields.items()
}


# ------------------------------------------------------------------ where a value came from

_NO_ITEM: Final = object()


def _show(value: object) -> str:
    """Return a value as an error message quotes it: strings in Python quotes, TOML bools."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return repr(value)


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where one setting's value came from, and the value as it was written there."""

    kind: Literal["default", "file", "env", "flag"]
    name: str  # the file, the variable or the flag ("" for a default or an unnamed override)
    raw: object
    secret: bool = False

    @property
    def label(self) -> str:
        return {"default": "default", "flag": self.name or "command line"}.get(self.kind, self.name)

    def where(self, section: str, key: str, *, item: object = _NO_ITEM) -> str:
        """Return how a message names the setting: source, key and value."""
        shown = "(secret)" if self.secret else _show(self.raw)
        if self.kind == "flag" and self.name:
            return f"{self.name} {shown if item is _NO_ITEM else _show(item)}"
        head = {
            "env": f"{self.name}={shown}",
            "file": f"{self.name} [{section}] {key}={shown}",
            "flag": f"command line {section}.{key}={shown}",
            "default": f"{section}.{key}={self.raw} (default)",
        }[self.kind]
        return head if item is _NO_ITEM else f"{head}: item {_show(item)}"


def _display(value: object) -> str:
    """Return a setting's value as `describe()` writes it, in TOML syntax."""
    if isinstance(value, SecretStr):
        return "(set)" if value.get_secret_value() else "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return json.dumps(format_duration(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(_display(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _default_origin(section: str, key: str) -> _Origin:
    return _Origin("default", "", _display(SECTIONS[section].model_fields[key].default))


# ------------------------------------------------------------------ the layers


class _Layers:
    """The values of the three layers, later ones replacing earlier ones, and the problems."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], object] = {}
        self.origins: dict[tuple[str, str], _Origin] = {}
        self.problems: list[str] = []
        self.notices: list[str] = []

    def _set(self, section: str, key: str, value: object, origin: _Origin) -> None:
        self.values[section, key] = value
        self.origins[section, key] = origin

    def read_file(self, path: str | os.PathLike[str], *, required: bool) -> None:
        label = os.fspath(path)
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except FileNotFoundError:
            if required:
                self.problems.append(f"{label}: no such configuration file")
            else:
                self.notices.append(f"{label}: no such file; using the environment and defaults")
            return
        except OSError as exc:
            self.problems.append(f"{label}: cannot be read: {exc.strerror or exc}")
            return
        except UnicodeDecodeError as exc:
            self.problems.append(f"{label}: not valid TOML: not UTF-8 (byte {exc.start + 1})")
            return
        except tomllib.TOMLDecodeError as exc:
            self.problems.append(_toml_syntax_problem(label, exc))
            return
        for section, table in document.items():
            model = SECTIONS.get(section)
            if model is None:
                self.problems.append(_unknown(label, section, is_table=isinstance(table, dict)))
                continue
            if not isinstance(table, dict):
                self.problems.append(
                    f"{label}: {section}={_show(table)} is not a section (expected [{section}])"
                )
                continue
            for key, value in table.items():
                self._read_file_key(label, section, key, value)

    def _read_file_key(self, label: str, section: str, key: str, value: object) -> None:
        kind = _KINDS.get((section, key))
        if kind is None:
            if (section, key) in _GO_ONLY_KEYS:
                self.notices.append(
                    f"{label} [{section}] {key}: a Go Sidecar setting, ignored "
                    f"({_GO_ONLY_KEYS[section, key]})"
                )
                return
            known = sorted(SECTIONS[section].model_fields)
            self.problems.append(
                f"{label} [{section}] {key}: unknown key{_did_you_mean(key, known)} "
                f"(known keys: {', '.join(known)})"
            )
            return
        origin = _Origin("file", label, value, secret=(section, key) in _SECRETS)
        expected = _toml_type_problem(kind, value)
        if expected:
            self.problems.append(f"{origin.where(section, key)}: {expected}")
            return
        self._set(section, key, tuple(value) if isinstance(value, list) else value, origin)

    def read_environ(self, environ: Mapping[str, str]) -> None:
        for name, (section, key) in ENV_VARS.items():
            raw = environ.get(name)
            if raw is None:
                continue
            origin = _Origin("env", name, raw, secret=(section, key) in _SECRETS)
            self._set_text(section, key, raw, origin)

    def read_overrides(self, overrides: Mapping[str, object]) -> None:
        for name, value in overrides.items():
            section, _, key = name.partition(".")
            kind = _KINDS.get((section, key))
            if kind is None:
                known = sorted(f"{s}.{k}" for s, k in _KINDS)
                self.problems.append(
                    f"command line {name}: unknown setting{_did_you_mean(name, known)}"
                )
                continue
            if value is None:  # a flag that was not given
                continue
            origin = _Origin("flag", FLAGS.get(name, ""), value, secret=(section, key) in _SECRETS)
            if isinstance(value, str):
                self._set_text(section, key, value, origin)
            elif kind == "list" and isinstance(value, list | tuple):
                self._set(section, key, tuple(value), origin)
            else:
                self._set(section, key, value, origin)

    def _set_text(self, section: str, key: str, text: str, origin: _Origin) -> None:
        """Set a value written as text (a variable, a flag), parsed as its kind needs."""
        kind = _KINDS[section, key]
        value: object = text
        try:
            if kind == "bool":
                value = _go_bool(text)
            elif kind == "int":
                value = _decimal(text)
            elif kind == "list":
                value = _split_list(text)
        except ValueError as exc:
            self.problems.append(f"{origin.where(section, key)}: {exc}")
            return
        self._set(section, key, value, origin)

    def build(self) -> Config:
        sections: dict[str, BaseModel] = {}
        for section, model in SECTIONS.items():
            data = {key: value for (sec, key), value in self.values.items() if sec == section}
            try:
                sections[section] = model.model_validate(data)
            except ValidationError as exc:
                self.problems.extend(self._validation_problems(section, exc))
        if self.problems:
            raise ConfigError(self.problems)
        config = Config.model_validate(sections)
        config._sources = {f"{s}.{k}": origin.label for (s, k), origin in self.origins.items()}
        config._notices = tuple(self.notices)
        return config

    def _where(self, section: str, key: str, *, item: object = _NO_ITEM) -> str:
        origin = self.origins.get((section, key)) or _default_origin(section, key)
        return origin.where(section, key, item=item)

    def _validation_problems(self, section: str, exc: ValidationError) -> list[str]:
        problems = []
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, _Conflicts):
                for keys, message in cause.conflicts:
                    names = " and ".join(self._where(section, key) for key in keys)
                    problems.append(f"{names}: {message}")
                continue
            message = str(cause) if isinstance(cause, ValueError) else error["msg"]
            key = str(error["loc"][0])
            if len(error["loc"]) > 1 and isinstance(error["loc"][1], int):
                value = self.values.get((section, key))
                item = value[error["loc"][1]] if isinstance(value, tuple) else error["input"]
                problems.append(f"{self._where(section, key, item=item)}: {message}")
            else:
                problems.append(f"{self._where(section, key)}: {message}")
        return problems


def _toml_type_problem(kind: Kind, value: object) -> str:
    """Return what a TOML value of the wrong type should have been, or "" if it fits."""
    if kind == "str":
        return "" if isinstance(value, str) else "expected a string"
    if kind == "bool":
        return "" if isinstance(value, bool) else "expected true or false"
    if kind == "int":
        fits = isinstance(value, int) and not isinstance(value, bool)
        return "" if fits else "expected an integer"
    if kind == "duration":
        return "" if isinstance(value, str) else 'expected a duration string such as "3s"'
    fits = isinstance(value, list) and all(isinstance(item, str) for item in value)
    return "" if fits else "expected a list of strings"


_TOML_WHERE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$|\s*\(at end of document\)$")


def _toml_syntax_problem(label: str, exc: tomllib.TOMLDecodeError) -> str:
    """Return a TOML syntax error as "FILE line L column C: not valid TOML: why"."""
    text = str(exc)
    found = _TOML_WHERE.search(text)
    if found is None:
        return f"{label}: not valid TOML: {text}"
    why = text[: found.start()]
    where = f"line {found[1]} column {found[2]}" if found[1] else "at the end of the file"
    return f"{label} {where}: not valid TOML: {why}"


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f", did you mean {close[0]}?" if close else ""


def _unknown(label: str, section: str, *, is_table: bool) -> str:
    known = sorted(SECTIONS)
    if not is_table:
        return f"{label}: {section}: a key outside any section (known sections: {', '.join(known)})"
    close = difflib.get_close_matches(section, known, n=1)
    hint = f", did you mean [{close[0]}]?" if close else ""
    return f"{label}: unknown section [{section}]{hint} (known: {', '.join(known)})"


# ------------------------------------------------------------------ the API


def load(
    *,
    path: str | os.PathLike[str] | None = DEFAULT_PATH,
    required: bool = False,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Return the configuration from the file (if it exists; ConfigError if `required` and
    it does not, or if it does not parse — with line/column from tomllib), the environment
    (default os.environ) and the overrides.

    `overrides` maps "section.key" to a flag's value: a typed value, or text parsed as an
    environment variable would be (so "5s", "true", "a,b" work); None means "not given".
    Raises ConfigError listing every problem found.
    """
    layers = _Layers()
    if path is not None:
        layers.read_file(path, required=required)
    layers.read_environ(os.environ if environ is None else environ)
    if overrides:
        layers.read_overrides(overrides)
    return layers.build()


def config_path(environ: Mapping[str, str] | None = None) -> str:
    """Return the file to read when no path is given: `SIDECAR_CONFIG_FILE`, else
    `sidecar.toml` (Go OLD's `--config-file` default and variable)."""
    env = os.environ if environ is None else environ
    return env.get(CONFIG_FILE_ENV) or DEFAULT_PATH


def sources(config: Config) -> Mapping[str, str]:
    """Return where each setting came from, by "section.key": "default", the file's path,
    the variable ("HAPROXY_BIND_IP"), the flag ("--cluster-ip") or "command line"."""
    found: dict[str, str] = {}
    for section, model in SECTIONS.items():
        settings = getattr(config, section)
        for key, field in model.model_fields.items():
            name = f"{section}.{key}"
            recorded = config._sources.get(name)
            if recorded is None:
                recorded = "default" if getattr(settings, key) == field.default else "set in code"
            found[name] = recorded
    return found


def notices(config: Config) -> tuple[str, ...]:
    """Return what `load()` ignored and the daemon should log: Go-only keys, a missing file."""
    return config._notices


def describe(config: Config) -> list[str]:
    """Return one line per setting, "section.key = value", secrets shown as "(set)"/"(not
    set)", for the log at start; each line ends with its source, "(default)" or "(from X)"."""
    origin = sources(config)
    lines = []
    for section, model in SECTIONS.items():
        settings = getattr(config, section)
        for key in model.model_fields:
            name = f"{section}.{key}"
            where = "default" if origin[name] == "default" else f"from {origin[name]}"
            lines.append(f"{name} = {_display(getattr(settings, key))} ({where})")
    return lines
