"""The layering: file, environment and flags into one `Config`, and the problem messages.

`load()` reads the TOML file, then the variables of `ENV_VARS`, then the CLI's overrides
(`FLAGS` names the Go flags), each later layer replacing earlier ones key by key
(`_Layers`). Every value remembers where it came from (`_Origin`), so that a `ConfigError`
names, for each bad value, the file and its `[section] key`, the variable or the flag, and
`sources()`/`describe()` can say where each setting came from. The name tables live here,
beside their only readers: the sections know nothing of the sources.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_origin

from pydantic import (
    BaseModel,
    SecretStr,
    ValidationError,
)

from sidecar.config.sections import SECTIONS, Config, _Conflicts
from sidecar.config.values import _decimal, _go_bool, _split_list, format_duration

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


# ------------------------------------------------------------------ the names of the sources

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
