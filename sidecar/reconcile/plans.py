"""The plan: the ordered actions that turn the HAProxy we have into the one we want.

Pure. `plan(desired, actual)` compares the desired config (`reconcile.desired`) with what
this host has — the config last written, whether HAProxy runs, the servers its runtime API
reports, the addresses bound — and returns actions, each with a human reason:

* a change that only adds, removes or moves servers is done through the runtime API
  (`add server`, `del server`, `set server ... addr`), and the config file is rewritten to
  match so a later reload agrees — no reload;
* any other change (frontends, backends, modes, globals) writes the config and reloads once;
* HAProxy not running: write the config and start it; a missing bind address is bound first.

`apply(actual, plan)` is the model of what the actions do; the laws (property-tested) are
that applying a plan yields what was desired, and that planning again yields nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from sidecar.reconcile.desired import Desired

Address = tuple[str, int]
Servers = Mapping[str, Mapping[str, Address]]  # backend -> server name -> (address, port)

_BACKEND: Final = re.compile(r"\s*backend\s+(\S+)")
_SECTION: Final = re.compile(r"\s*(frontend|backend|listen|defaults|global|peers|resolvers)\b")
_SERVER: Final = re.compile(r"\s*server\s+(\S+)\s+(\[[^\]]*\]|[^\s:]*):(\d+)")


def servers_in(config: str) -> dict[str, dict[str, Address]]:
    """Return the servers a config declares: backend -> server -> (address, port).

    Pure. IPv6 addresses keep their brackets, as the config writes them.
    """
    found: dict[str, dict[str, Address]] = {}
    backend: str | None = None
    for line in config.splitlines():
        section = _SECTION.match(line)
        if section is not None:
            match = _BACKEND.match(line)
            backend = match.group(1) if match else None
            if backend is not None:
                found.setdefault(backend, {})
            continue
        server = _SERVER.match(line)
        if server is not None and backend is not None:
            found[backend][server.group(1)] = (server.group(2), int(server.group(3)))
    return found


def without_servers(config: str) -> str:
    """Return the config with its `server` lines removed: what a reload would change."""
    return "\n".join(line for line in config.splitlines() if _SERVER.match(line) is None)


@dataclass(frozen=True, slots=True)
class Actual:
    """What this host has: the config on disk, whether HAProxy runs, the servers its
    runtime API reports (by backend), and the addresses bound on the bind interface."""

    config: str | None = None
    running: bool = False
    servers: Servers = field(default_factory=dict)
    bound_ips: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Action:
    """One step. `kind` is one of: bind, write, start, reload, add-server, del-server,
    set-server-addr. `backend`, `server`, `address`, `port` are set for the server steps,
    `address` for bind, `config` for write."""

    kind: str
    reason: str
    backend: str = ""
    server: str = ""
    address: str = ""
    port: int = 0
    config: str = ""


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
    if actual.config is None or without_servers(actual.config) != without_servers(desired.config):
        reason = (
            "no config on disk"
            if actual.config is None
            else "frontends, backends or settings changed"
        )
        actions.append(Action("write", reason, config=desired.config))
        actions.append(Action("reload", reason))
        return tuple(actions)
    wanted = servers_in(desired.config)
    for backend, servers in wanted.items():
        running = actual.servers.get(backend, {})
        for name in sorted(set(running) - set(servers)):
            actions.append(
                Action("del-server", f"{name} left {backend}", backend=backend, server=name)
            )
        for name in sorted(servers):
            address, port = servers[name]
            if name not in running:
                actions.append(
                    Action(
                        "add-server",
                        f"{name} joined {backend}",
                        backend=backend,
                        server=name,
                        address=address,
                        port=port,
                    )
                )
            elif running[name] != (address, port):
                was = "{}:{}".format(*running[name])
                actions.append(
                    Action(
                        "set-server-addr",
                        f"{name} moved from {was} to {address}:{port}",
                        backend=backend,
                        server=name,
                        address=address,
                        port=port,
                    )
                )
    if actual.config != desired.config:
        reason = "servers changed" if len(actions) else "the file differs from what runs"
        actions.append(
            Action("write", f"{reason}: keep the file in step (no reload)", config=desired.config)
        )
    return tuple(actions)


def apply(actual: Actual, actions: tuple[Action, ...]) -> Actual:
    """Return what this host has after the actions succeed: the model the adapter must match.

    Pure. A start or a reload loads the servers of the config written.
    """
    servers = {backend: dict(names) for backend, names in actual.servers.items()}
    config, running, bound = actual.config, actual.running, set(actual.bound_ips)
    for action in actions:
        if action.kind == "bind":
            bound.add(action.address)
        elif action.kind == "write":
            config = action.config
        elif action.kind in ("start", "reload"):
            running = True
            servers = servers_in(config or "")
        elif action.kind == "add-server" or action.kind == "set-server-addr":
            servers.setdefault(action.backend, {})[action.server] = (action.address, action.port)
        elif action.kind == "del-server":
            servers.get(action.backend, {}).pop(action.server, None)
    return replace(
        actual, config=config, running=running, servers=servers, bound_ips=frozenset(bound)
    )
