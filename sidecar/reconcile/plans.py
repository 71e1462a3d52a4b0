"""The plan: the ordered actions that turn the HAProxy we have into the one we want.

Pure. `plan(desired, actual)` compares the desired config (`reconcile.desired`) with what
this host has — the config last written, whether HAProxy runs, the servers its runtime API
reports (and which of them are in maintenance), the addresses bound — and returns actions,
each with a human reason:

* a change that only adds, removes or moves servers is done through the runtime API
  (`add server` + `enable server`, `disable server` + `del server`, `set server ... addr`),
  and the config file is rewritten to match so a later reload agrees — no reload;
* any other change (frontends, backends, modes, globals, a server's options) writes the
  config and reloads once. So does adding a server to a backend that declares `cookie`:
  HAProxy 2.6 refuses `cookie` on a server added at runtime, and without it stickiness would
  silently differ from the file. Where the backend declares no `cookie` (the shipped
  template, like Go's), the server line's `cookie` has no effect and is left out of `add
  server`;
* HAProxy not running: write the config and start it; a missing bind address is bound first.

`apply(actual, plan)` is the model of what the actions do; the laws (property-tested) are
that applying a plan yields what was desired, and that planning again yields nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from sidecar.reconcile.desired import RENDERED_TIME, Desired

Address = tuple[str, int]
Servers = Mapping[str, Mapping[str, Address]]  # backend -> server name -> (address, port)

# The lines that matter to a plan, found in one pass over the text (configs at 10,000
# services are megabytes): section headers, `cookie` and `server` directives.
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


def _options(spec: ServerSpec) -> tuple[str, ...]:
    """Return the keywords after a server's address, one word each."""
    return tuple(spec[2].split())


@dataclass(frozen=True, slots=True)
class _Parsed:
    servers: Mapping[str, Mapping[str, ServerSpec]]
    cookie_backends: frozenset[str]


@functools.lru_cache(maxsize=2)  # a plan compares two configs; the next reuses one
def _parse(config: str) -> _Parsed:
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
    return _Parsed(servers, frozenset(cookies))


def server_specs(config: str) -> Mapping[str, Mapping[str, ServerSpec]]:
    """Return the servers a config declares: backend -> server -> its line, parsed.

    Pure. IPv6 addresses keep their brackets, as the config writes them.
    """
    return _parse(config).servers


def servers_in(config: str) -> dict[str, dict[str, Address]]:
    """Return the servers a config declares: backend -> server -> (address, port)."""
    return {
        backend: {name: (spec[0], spec[1]) for name, spec in names.items()}
        for backend, names in _parse(config).servers.items()
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
    _parse.cache_clear()
    without_servers.cache_clear()


def same_file(a: str | None, b: str) -> bool:
    """Return whether two configs are the same but for rendered times."""
    if a is None:
        return False
    return a == b or _masked(a) == _masked(b)


def runtime_options(options: tuple[str, ...]) -> tuple[str, ...]:
    """Return a server line's keywords as `add server` takes them: without `cookie <value>`,
    which HAProxy 2.6 refuses on dynamic servers (callers make sure it has no effect)."""
    kept: list[str] = []
    skip = False
    for word in options:
        if skip:
            skip = False
        elif word == "cookie":
            skip = True
        else:
            kept.append(word)
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class Actual:
    """What this host has: the config on disk, whether HAProxy runs, the servers its
    runtime API reports (by backend), which of those are in maintenance, and the addresses
    bound on the bind interface."""

    config: str | None = None
    running: bool = False
    servers: Servers = field(default_factory=dict)
    disabled: frozenset[tuple[str, str]] = frozenset()  # (backend, server) in maintenance
    bound_ips: frozenset[str] = frozenset()


KINDS: Final = (
    "bind",
    "write",
    "start",
    "reload",
    "del-server",
    "add-server",
    "enable-server",
    "set-server-addr",
)


@dataclass(frozen=True, slots=True)
class Action:
    """One step. `kind` is one of KINDS. `backend` and `server` are set for the server
    steps, with `address`, `port` and `options` (the `add server` keywords) where they
    apply; `address` for bind, `config` for write."""

    kind: str
    reason: str
    backend: str = ""
    server: str = ""
    address: str = ""
    port: int = 0
    options: tuple[str, ...] = ()
    config: str = ""

    def describe(self) -> str:
        """Return the action as one line a person reads: what, then why."""
        if self.kind == "bind":
            what = f"bind {self.address}"
        elif self.kind in ("write", "start", "reload"):
            what = self.kind
        elif self.kind in ("add-server", "set-server-addr"):
            what = f"{self.kind} {self.backend}/{self.server} {self.address}:{self.port}"
            if self.options:
                what += " " + " ".join(self.options)
        else:
            what = f"{self.kind} {self.backend}/{self.server}"
        return f"{what}  ({self.reason})"


def _effective(spec: ServerSpec, *, cookies: bool) -> tuple[str, ...]:
    """Return the keywords that change what a server does: `cookie` only counts where the
    backend declares one."""
    return _options(spec) if cookies else runtime_options(_options(spec))


def _same_options(old: ServerSpec, new: ServerSpec, *, cookies: bool) -> bool:
    return old[2] == new[2] or _effective(old, cookies=cookies) == _effective(new, cookies=cookies)


def _reload_reason(desired: Desired, actual: Actual) -> str | None:
    """Return why the change needs a reload, or None when the runtime API can make it."""
    if actual.config is None:
        return "no config on disk"
    if without_servers(actual.config) != without_servers(desired.config):
        return "frontends, backends or settings changed"
    was, want = _parse(actual.config), _parse(desired.config)
    for backend, servers in want.servers.items():
        for name, spec in servers.items():
            old = was.servers.get(backend, {}).get(name)
            cookies = backend in want.cookie_backends
            if old is not None and not _same_options(old, spec, cookies=cookies):
                return f"the options of {backend}/{name} changed"
            if cookies and name not in actual.servers.get(backend, {}):
                return (
                    f"{name} joins {backend}, which declares a cookie; HAProxy 2.6 cannot "
                    "give a server added at runtime its cookie"
                )
    return None


def plan(desired: Desired, actual: Actual) -> tuple[Action, ...]:
    """Return the actions that make `actual` match `desired`, in the order to run them.

    Pure. Empty when nothing is pending.
    """
    actions: list[Action] = [
        Action("bind", f"HAProxy binds {ip}, which is not on the interface", address=ip)
        for ip in desired.bind_ips
        if ip not in actual.bound_ips
    ]
    if not actual.running:
        actions.append(Action("write", "HAProxy is not running", config=desired.config))
        actions.append(Action("start", "HAProxy is not running"))
        return tuple(actions)
    reload_reason = _reload_reason(desired, actual)
    if reload_reason is not None:
        actions.append(Action("write", reload_reason, config=desired.config))
        actions.append(Action("reload", reload_reason))
        return tuple(actions)
    actions.extend(_server_actions(server_specs(desired.config), actual))
    if not same_file(actual.config, desired.config):
        reason = "servers changed" if len(actions) else "the file differs from what runs"
        actions.append(
            Action("write", f"{reason}: keep the file in step (no reload)", config=desired.config)
        )
    return tuple(actions)


def _server_actions(wanted: Mapping[str, Mapping[str, ServerSpec]], actual: Actual) -> list[Action]:
    actions: list[Action] = []
    for backend, servers in wanted.items():
        running = actual.servers.get(backend, {})
        for name in sorted(set(running) - set(servers)):
            actions.append(
                Action("del-server", f"{name} left {backend}", backend=backend, server=name)
            )
        for name in sorted(servers):
            spec = servers[name]
            address, port, _ = spec
            if name not in running:
                options = runtime_options(_options(spec))
                joined = f"{name} joined {backend}"
                actions.append(Action("add-server", joined, backend, name, address, port, options))
                continue
            if running[name] != (address, port):
                was = "{}:{}".format(*running[name])
                moved = f"{name} moved from {was} to {address}:{port}"
                actions.append(Action("set-server-addr", moved, backend, name, address, port))
            if (backend, name) in actual.disabled:
                actions.append(
                    Action(
                        "enable-server",
                        f"{name} is in maintenance but serves {backend}",
                        backend=backend,
                        server=name,
                    )
                )
    return actions


def apply(actual: Actual, actions: tuple[Action, ...]) -> Actual:
    """Return what this host has after the actions succeed: the model the adapter must match.

    Pure. A start or a reload loads the servers of the config written, all enabled; a server
    added at runtime is enabled (the adapter adds, then enables).
    """
    servers = {backend: dict(names) for backend, names in actual.servers.items()}
    config, running, bound = actual.config, actual.running, set(actual.bound_ips)
    disabled = set(actual.disabled)
    for action in actions:
        key = (action.backend, action.server)
        if action.kind == "bind":
            bound.add(action.address)
        elif action.kind == "write":
            config = action.config
        elif action.kind in ("start", "reload"):
            running = True
            servers = servers_in(config or "")
            disabled = set()
        elif action.kind == "add-server" or action.kind == "set-server-addr":
            servers.setdefault(action.backend, {})[action.server] = (action.address, action.port)
            if action.kind == "add-server":
                disabled.discard(key)
        elif action.kind == "enable-server":
            disabled.discard(key)
        elif action.kind == "del-server":
            servers.get(action.backend, {}).pop(action.server, None)
            disabled.discard(key)
    return replace(
        actual,
        config=config,
        running=running,
        servers=servers,
        disabled=frozenset(disabled),
        bound_ips=frozenset(bound),
    )
