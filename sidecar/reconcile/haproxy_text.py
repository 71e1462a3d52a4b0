"""HAProxy config text, read: the servers a config declares, the backends that declare a
`cookie`, and the text a reload would change.

Pure. Used by the plan (`reconcile.plans`) to compare two configs, and by the HAProxy
answer parsers (`reconcile.haproxy_answers`) to report a server by the host name the config
gives it. One pass of one regular expression over the text, cached: configs at 10,000
services are megabytes, and the loop plans against the same file again and again.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from sidecar.reconcile.desired import RENDERED_TIME

Address = tuple[str, int]

# One pass over the text finds what matters to a plan: section headers, `cookie`, and
# `server` lines with their parts. Anchored on the newline before each line (the text is
# searched with one prepended): much faster than `^` in MULTILINE mode, which is tried at
# every position of a config that is megabytes at 10,000 services.
_LINE: Final = re.compile(
    r"\n[ \t]*(?:server[ \t]+(\S+)[ \t]+(\[[^\]]*\]|[^\s:]*):(\d+)([^\n]*)"
    r"|(frontend|backend|listen|defaults|global|peers|resolvers|cookie)(?=[ \t\r\n])([^\n]*))"
)
_SERVER_LINE: Final = re.compile(r"\n[ \t]*server[ \t][^\n]*")
_TIME_MARK: Final = "+0000 UTC"  # in every RENDERED_TIME; cheap to look for first


ServerSpec = tuple[str, int, str]
"""A `server` line, parsed: (the address as written, the port, the text after address:port).
A plain tuple of atoms, which CPython's collector stops tracking: a config at 10,000
services holds tens of thousands, and tracked objects make every full collection slower."""


def server_options(spec: ServerSpec) -> tuple[str, ...]:
    """Return the keywords after a server's address, one word each."""
    return tuple(spec[2].split())


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    """A config's servers by backend, and the backends that declare a cookie."""

    servers: Mapping[str, Mapping[str, ServerSpec]]
    cookie_backends: frozenset[str]


@functools.lru_cache(maxsize=2)  # a plan compares two configs; the next reuses one
def parse_config(config: str) -> ParsedConfig:
    """Return a config's servers by backend and the backends that declare a cookie.

    Cached: the loop plans against the same file again and again. Treat as read-only.
    """
    servers: dict[str, dict[str, ServerSpec]] = {}
    cookies: set[str] = set()
    defaults_cookie = False
    backend: dict[str, ServerSpec] | None = None
    backend_name = ""
    in_defaults = False
    for name, address, port, rest, keyword, args in _LINE.findall("\n" + config + "\n"):
        if name:
            if backend is not None:
                backend[name] = (address, int(port), rest.strip())
        elif keyword == "cookie":
            if in_defaults:
                defaults_cookie = True
            elif backend is not None:
                cookies.add(backend_name)
        else:
            words = args.split()
            in_defaults = keyword == "defaults"
            backend = None
            if keyword == "backend" and words:
                backend_name = words[0]
                backend = servers.setdefault(backend_name, {})
                if defaults_cookie:
                    cookies.add(backend_name)
    return ParsedConfig(servers, frozenset(cookies))


def server_specs(config: str) -> Mapping[str, Mapping[str, ServerSpec]]:
    """Return the servers a config declares: backend -> server -> its line, parsed.

    Pure. IPv6 addresses keep their brackets, as the config writes them.
    """
    return parse_config(config).servers


def servers_in(config: str) -> dict[str, dict[str, Address]]:
    """Return the servers a config declares: backend -> server -> (address, port)."""
    return {
        backend: {name: (spec[0], spec[1]) for name, spec in names.items()}
        for backend, names in parse_config(config).servers.items()
    }


def _masked(config: str) -> str:
    return RENDERED_TIME.sub("<now>", config) if _TIME_MARK in config else config


@functools.lru_cache(maxsize=2)  # a plan compares two configs; the next reuses one
def without_servers(config: str) -> str:
    """Return the config with its `server` lines removed and rendered times masked: what a
    reload would change."""
    return _masked(_SERVER_LINE.sub("", "\n" + config))


def clear_caches() -> None:
    """Forget the configs parsed so far (benchmarks measure a plan from cold with it)."""
    parse_config.cache_clear()
    without_servers.cache_clear()


def same_file(a: str | None, b: str) -> bool:
    """Return whether two configs are the same but for rendered times."""
    if a is None:
        return False
    return a == b or _masked(a) == _masked(b)
