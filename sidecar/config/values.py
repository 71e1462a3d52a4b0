"""Go-syntax values and the checks of one value: what a setting's text means and whether it fits.

Durations (`parse_duration`, `format_duration`: Go's `time.ParseDuration` and
`Duration.String`), booleans (Go's `strconv.ParseBool` spellings), decimal integers, lists
split on commas and whitespace, and the validators of single values (IP addresses, seeds,
ports, URLs, paths, the gossip key...), with the annotated types the sections are written
in (`Word`, `Port`, `Duration`...). Each check raises ValueError saying what is wrong and
what is allowed; `layers` adds where the value came from. Knows no section and no source.
Names with a leading underscore are private to the `sidecar.config` package.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    SecretStr,
    StrictInt,
    StrictStr,
)

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


# ------------------------------------------------------------------ value types

Word = Annotated[StrictStr, AfterValidator(_non_empty), AfterValidator(_no_space)]
Name = Annotated[StrictStr, AfterValidator(_no_space)]  # "" allowed
FilePath = Annotated[StrictStr, AfterValidator(_non_empty), AfterValidator(_no_control)]
OptionalPath = Annotated[StrictStr, AfterValidator(_no_control)]
Port = Annotated[StrictInt, AfterValidator(_between(1, 65535, _PORT_RANGE))]
Threshold = Annotated[StrictInt, AfterValidator(_between(1, 100))]
Duration = Annotated[float, BeforeValidator(_duration_input)]
"""Seconds; written as a Go duration string in the file and the environment."""
