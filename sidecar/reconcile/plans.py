"""The plan: the ordered actions that turn the HAProxy we have into the one we want.

Pure. `plan(desired, actual)` compares the desired config (`reconcile.desired`) with what
this host has — the config last written, whether HAProxy runs, the servers its runtime API
reports (and which of them are in maintenance), the addresses bound — and returns actions,
each with a human reason:

* a change that only adds, removes or moves servers is done through the runtime API
  (`add server` + `enable server`, `set server ... state maint` + `del server`, `set server
  ... addr`), the leaving servers last (make before break: a replaced instance's backend
  always has a server while the old one drains), and the config file is rewritten to match
  so a later reload agrees — no reload;
* any other change (frontends, backends, modes, globals, a server's options) writes the
  config and reloads once. So does adding a server to a backend that declares `cookie`:
  HAProxy 2.6 refuses `cookie` on a server added at runtime, and without it stickiness would
  silently differ from the file. Where the backend declares no `cookie` (the shipped
  template, like Go's), the server line's `cookie` has no effect and is left out of `add
  server`;
* HAProxy not running: write the config and start it; a missing bind address is bound first.

Each kind of action is its own frozen type (`Bind`, `Write`, `Start`, `Reload`,
`DelServer`, `AddServer`, `EnableServer`, `SetServerAddr`; `Action` is their union), and
whatever carries actions out dispatches with `match` ending in `assert_never`, so mypy checks
that every kind is handled. The config texts are read by `reconcile.haproxy_text`.

`apply(actual, plan)` is the model of what the actions do; the laws (property-tested) are
that applying a plan yields what was desired, and that planning again yields nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, Final, TypeAlias, assert_never, get_args

from sidecar.reconcile.desired import Desired
from sidecar.reconcile.haproxy_text import (
    Address,
    ServerSpec,
    parse_config,
    same_file,
    server_options,
    server_specs,
    servers_in,
    without_servers,
)

Servers = Mapping[str, Mapping[str, Address]]  # backend -> server name -> (address, port)


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
    """What this host has: the config on disk, whether HAProxy runs (and whether it runs
    that config: not after a reload of it failed), the servers its runtime API reports (by
    backend), which of those are in maintenance, and the addresses bound on the bind
    interface."""

    config: str | None = None
    running: bool = False
    loaded: bool = True
    servers: Servers = field(default_factory=dict)
    disabled: frozenset[tuple[str, str]] = frozenset()  # (backend, server) in maintenance
    bound_ips: frozenset[str] = frozenset()


def _line(what: str, reason: str) -> str:
    return f"{what}  ({reason})"


class _Step:
    """What every action has: its `kind` and `reason`, and `describe()` built from
    `subject()` (the kind alone, unless the action says more)."""

    __slots__ = ()
    kind: ClassVar[str]
    reason: str

    def subject(self) -> str:
        """Return what the action acts on, as `describe()` names it."""
        return self.kind

    def describe(self) -> str:
        """Return the action as one line a person reads: what, then why."""
        return _line(self.subject(), self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bind(_Step):
    """Add `address` to the bind interface (HAProxy binds it)."""

    kind: ClassVar[str] = "bind"
    address: str
    reason: str

    def subject(self) -> str:
        """Return what the action acts on, as `describe()` names it."""
        return f"bind {self.address}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Write(_Step):
    """Write `config` to the config file (validated first; a reload or start loads it)."""

    kind: ClassVar[str] = "write"
    config: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Start(_Step):
    """Start HAProxy from the config file."""

    kind: ClassVar[str] = "start"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reload(_Step):
    """Reload HAProxy from the config file (seamless)."""

    kind: ClassVar[str] = "reload"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _ServerStep(_Step):
    """What every runtime action on one server has: the backend and the server."""

    backend: str
    server: str
    reason: str

    def subject(self) -> str:
        """Return what the action acts on, as `describe()` names it."""
        return f"{self.kind} {self.backend}/{self.server}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DelServer(_ServerStep):
    """Delete a server through the runtime API (in maintenance first)."""

    kind: ClassVar[str] = "del-server"


@dataclass(frozen=True, slots=True, kw_only=True)
class AddServer(_ServerStep):
    """Add a server through the runtime API, with the `add server` keywords `options`, and
    enable it."""

    kind: ClassVar[str] = "add-server"
    address: str
    port: int
    options: tuple[str, ...] = ()

    def subject(self) -> str:
        """Return what the action acts on, as `describe()` names it."""
        what = f"{_ServerStep.subject(self)} {self.address}:{self.port}"
        return " ".join((what, *self.options))


@dataclass(frozen=True, slots=True, kw_only=True)
class EnableServer(_ServerStep):
    """Take a server out of maintenance through the runtime API."""

    kind: ClassVar[str] = "enable-server"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetServerAddr(_ServerStep):
    """Point a server at a new address and port through the runtime API."""

    kind: ClassVar[str] = "set-server-addr"
    address: str
    port: int

    def subject(self) -> str:
        """Return what the action acts on, as `describe()` names it."""
        return f"{_ServerStep.subject(self)} {self.address}:{self.port}"


Action: TypeAlias = (
    Bind | Write | Start | Reload | DelServer | AddServer | EnableServer | SetServerAddr
)
"""One step of a plan: each kind its own type, with its `kind` (the name reports and counters
use), its fields and a `reason`; `describe()` says it in one line."""

KINDS: Final[tuple[str, ...]] = tuple(step.kind for step in get_args(Action))


def _effective(spec: ServerSpec, *, cookies: bool) -> tuple[str, ...]:
    """Return the keywords that change what a server does: `cookie` only counts where the
    backend declares one."""
    return server_options(spec) if cookies else runtime_options(server_options(spec))


def _same_options(old: ServerSpec, new: ServerSpec, *, cookies: bool) -> bool:
    return old[2] == new[2] or _effective(old, cookies=cookies) == _effective(new, cookies=cookies)


def _reload_reason(desired: Desired, actual: Actual) -> str | None:
    """Return why the change needs a reload, or None when the runtime API can make it."""
    if actual.config is None:
        return "no config on disk"
    if not actual.loaded:
        return "HAProxy does not run the config on disk: its reload failed"
    if without_servers(actual.config) != without_servers(desired.config):
        return "frontends, backends or settings changed"
    was, want = parse_config(actual.config), parse_config(desired.config)
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
        Bind(address=ip, reason=f"HAProxy binds {ip}, which is not on the interface")
        for ip in desired.bind_ips
        if ip not in actual.bound_ips
    ]
    if not actual.running:
        actions.append(Write(config=desired.config, reason="HAProxy is not running"))
        actions.append(Start(reason="HAProxy is not running"))
        return tuple(actions)
    reload_reason = _reload_reason(desired, actual)
    if reload_reason is not None:
        actions.append(Write(config=desired.config, reason=reload_reason))
        actions.append(Reload(reason=reload_reason))
        return tuple(actions)
    actions.extend(_server_actions(server_specs(desired.config), actual))
    if not same_file(actual.config, desired.config):
        reason = "servers changed" if len(actions) else "the file differs from what runs"
        actions.append(
            Write(config=desired.config, reason=f"{reason}: keep the file in step (no reload)")
        )
    return tuple(actions)


def _server_actions(wanted: Mapping[str, Mapping[str, ServerSpec]], actual: Actual) -> list[Action]:
    actions: list[Action] = []
    leaving: list[Action] = []
    for backend, servers in wanted.items():
        running = actual.servers.get(backend, {})
        # Deleted last: a backend whose instance is replaced is never left without one
        # while the old one's requests drain.
        leaving.extend(
            DelServer(backend=backend, server=name, reason=f"{name} left {backend}")
            for name in sorted(set(running) - set(servers))
        )
        for name in sorted(servers):
            spec = servers[name]
            address, port, _ = spec
            if name not in running:
                options = runtime_options(server_options(spec))
                joined = f"{name} joined {backend}"
                actions.append(
                    AddServer(
                        backend=backend,
                        server=name,
                        address=address,
                        port=port,
                        options=options,
                        reason=joined,
                    )
                )
                continue
            if running[name] != (address, port):
                was = "{}:{}".format(*running[name])
                moved = f"{name} moved from {was} to {address}:{port}"
                actions.append(
                    SetServerAddr(
                        backend=backend, server=name, address=address, port=port, reason=moved
                    )
                )
            if (backend, name) in actual.disabled:
                actions.append(
                    EnableServer(
                        backend=backend,
                        server=name,
                        reason=f"{name} is in maintenance but serves {backend}",
                    )
                )
    return actions + leaving


def apply(actual: Actual, actions: tuple[Action, ...]) -> Actual:
    """Return what this host has after the actions succeed: the model the adapter must match.

    Pure. A start or a reload loads the servers of the config written, all enabled; a server
    added at runtime is enabled (the adapter adds, then enables).
    """
    servers = {backend: dict(names) for backend, names in actual.servers.items()}
    config, running, bound = actual.config, actual.running, set(actual.bound_ips)
    disabled = set(actual.disabled)
    for action in actions:
        match action:
            case Bind():
                bound.add(action.address)
            case Write():
                config = action.config
            case Start() | Reload():
                running = True
                servers = servers_in(config or "")
                disabled = set()
            case AddServer():
                servers.setdefault(action.backend, {})[action.server] = (
                    action.address,
                    action.port,
                )
                disabled.discard((action.backend, action.server))
            case SetServerAddr():
                servers.setdefault(action.backend, {})[action.server] = (
                    action.address,
                    action.port,
                )
            case EnableServer():
                disabled.discard((action.backend, action.server))
            case DelServer():
                servers.get(action.backend, {}).pop(action.server, None)
                disabled.discard((action.backend, action.server))
            case _:
                assert_never(action)
    return replace(
        actual,
        config=config,
        running=running,
        servers=servers,
        disabled=frozenset(disabled),
        bound_ips=frozenset(bound),
    )
