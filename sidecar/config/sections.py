"""The configuration's sections: one frozen pydantic model per TOML section, and `Config`.

Each section (`SidecarSection`, `DockerDiscoverySection`, `StaticDiscoverySection`,
`ServicesSection`, `HaproxySection`, `ListenersSection`) holds its settings with their
defaults and validators, and the checks of several settings together (raised as
`_Conflicts`, so that `layers` can name each setting involved). `SECTIONS` maps the TOML
section names to them. Where values come from (file, environment, flags) is `layers`' job.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal, Self

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
    model_validator,
)

from sidecar.config.values import (
    Duration,
    FilePath,
    Name,
    OptionalPath,
    Port,
    Threshold,
    Word,
    _advertise_ip,
    _between,
    _bind_ip,
    _check_endpoint,
    _choice,
    _docker_url,
    _gossip_key,
    _http_address,
    _interface,
    _ip,
    _listener_url,
    _not_negative,
    _positive,
    _secret_no_control,
    _seed,
    _split_address,
    _stats_ip,
    _unique,
    gossip_key_bytes,
)


class _Conflicts(ValueError):
    """Problems with several settings of one section together: (keys, message) pairs."""

    def __init__(self, conflicts: Sequence[tuple[tuple[str, ...], str]]) -> None:
        self.conflicts = tuple(conflicts)
        super().__init__("; ".join(message for _, message in self.conflicts))


# ------------------------------------------------------------------ the settings

DiscoveryMethod = Literal["docker", "static"]
LoggingFormat = Literal["text", "json"]
LoggingLevel = Literal["debug", "info", "warn", "error"]
Namer = Literal["docker_label", "regex"]
HaproxyMode = Literal["managed", "external"]

_SECTION_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SidecarSection(BaseModel):
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


class DockerDiscoverySection(BaseModel):
    """`[docker_discovery]`: where the Docker Engine answers."""

    model_config = _SECTION_CONFIG

    docker_url: Annotated[StrictStr, AfterValidator(_docker_url)] = "unix:///var/run/docker.sock"


class StaticDiscoverySection(BaseModel):
    """`[static_discovery]`: Go's `static.json`, and the largest one read (bytes; ours)."""

    model_config = _SECTION_CONFIG

    config_file: FilePath = "static.json"
    max_size: Annotated[StrictInt, AfterValidator(_between(1, 2**31, "1..2147483648 bytes"))] = (
        4 * 1024 * 1024
    )


class ServicesSection(BaseModel):
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


class HaproxySection(BaseModel):
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
    debounce_min: Annotated[Duration, AfterValidator(_not_negative)] = 0.02
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


class ListenersSection(BaseModel):
    """`[listeners]`: URLs that get every state change POSTed to them."""

    model_config = _SECTION_CONFIG

    urls: tuple[Annotated[StrictStr, AfterValidator(_listener_url)], ...] = ()


class Config(BaseModel):
    """The whole configuration, one frozen model per TOML section. Build it with `load()`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sidecar: SidecarSection = Field(default_factory=SidecarSection)
    docker_discovery: DockerDiscoverySection = Field(default_factory=DockerDiscoverySection)
    static_discovery: StaticDiscoverySection = Field(default_factory=StaticDiscoverySection)
    services: ServicesSection = Field(default_factory=ServicesSection)
    haproxy: HaproxySection = Field(default_factory=HaproxySection)
    listeners: ListenersSection = Field(default_factory=ListenersSection)

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
    "sidecar": SidecarSection,
    "docker_discovery": DockerDiscoverySection,
    "static_discovery": StaticDiscoverySection,
    "services": ServicesSection,
    "haproxy": HaproxySection,
    "listeners": ListenersSection,
}
