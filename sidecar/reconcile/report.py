"""What a plan means to a person or a program: the document `sidecar plan` prints and the
daemon serves at `/api/plan`.

Pure. `plan_report(...)` gathers the pending actions with their reasons, a unified diff of
the config file, the addresses to bind and the instances left out of the routing table with
why — and, when HAProxy is not running (a fresh host), what it would be started with: every
frontend and its servers; `render_text(report)` is the human form, `report` itself (plain
JSON types) the machine form. `served_instances(...)` says what the running HAProxy does
with each instance (the UI shows it).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from sidecar.reconcile.desired import Backend, Desired, Frontend, sanitize_name
from sidecar.reconcile.plans import Action, Actual
from sidecar.state.model import ClusterState
from sidecar.state.views import Exclusion

# The fields an action's JSON carries where its type has them and they are set, in this order.
_ACTION_FIELDS = ("backend", "server", "address", "port", "options")


def config_diff(old: str | None, new: str, *, path: str) -> str:
    """Return the unified diff from the config on disk to the desired one ("" when equal)."""
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{path} (on disk)" if old is not None else f"{path} (missing)",
            tofile=f"{path} (desired)",
        )
    )


def _action(action: Action) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "kind": action.kind,
        "reason": action.reason,
        "summary": action.describe(),
    }
    for name in _ACTION_FIELDS:
        value = getattr(action, name, None)
        if value:
            shown[name] = list(value) if isinstance(value, tuple) else value
    return shown


def _frontend(frontend: Frontend, backend: Backend) -> dict[str, Any]:
    return {
        "name": frontend.name,
        "service": frontend.service,
        "bind": f"{frontend.bind_ip}:{frontend.port}",
        "mode": frontend.mode,
        "servers": [
            {"name": s.name, "address": s.address, "port": s.port} for s in backend.servers
        ],
    }


def _start(desired: Desired, config_file: str) -> dict[str, Any]:
    """Return what HAProxy would be started with: the file, and every frontend (all new)
    with the servers of its backend."""
    backends = {b.name: b for b in desired.backends}
    return {
        "config_file": config_file,
        "frontends": [_frontend(f, backends[f.backend]) for f in desired.frontends],
    }


def plan_report(
    desired: Desired,
    actual: Actual,
    actions: Sequence[Action],
    excluded: Sequence[Exclusion],
    *,
    config_file: str,
) -> dict[str, Any]:
    """Return the plan as a JSON-ready document: pending, actions, diff, excluded, ...

    `start` is None while HAProxy runs; when it does not, what it would be started with.
    """
    return {
        "pending": bool(actions),
        "actions": [_action(a) for a in actions],
        "diff": config_diff(actual.config, desired.config, path=config_file),
        "bind_ips": list(desired.bind_ips),
        "haproxy_running": actual.running,
        "start": None if actual.running else _start(desired, config_file),
        "excluded": [
            {"hostname": e.hostname, "id": e.service_id, "name": e.name, "reason": e.reason}
            for e in excluded
        ],
    }


def _cost(actions: Sequence[dict[str, Any]]) -> str:
    """Return what the actions cost HAProxy: a start, a reload, or nothing of the kind."""
    kinds = [a["kind"] for a in actions]
    if "start" in kinds:
        return "HAProxy to be started"
    reloads = kinds.count("reload")
    return "no reload" if not reloads else "one reload" if reloads == 1 else f"{reloads} reloads"


def render_text(report: dict[str, Any]) -> str:
    """Return the report as `sidecar plan` prints it."""
    lines: list[str] = []
    actions = report["actions"]
    start = report.get("start")
    if start is not None:
        lines.append(
            "HAProxy is not running: it would be started with the config below, written to "
            f"{start['config_file']}."
        )
    if not actions:
        lines.append("Nothing to change: this host's HAProxy matches the cluster state.")
    else:
        lines.append(f"{len(actions)} action(s) pending ({_cost(actions)}):")
        for number, action in enumerate(actions, 1):
            lines.append(f"  {number}. {action['summary']}")
    if start is not None:
        frontends = start["frontends"]
        servers = sum(len(f["servers"]) for f in frontends)
        lines += ["", f"{len(frontends)} frontend(s) and {servers} server(s), all new:"]
        for frontend in frontends:
            lines.append(
                f"  frontend {frontend['name']} on {frontend['bind']} ({frontend['mode']})"
            )
            lines += [
                f"    server {s['name']} {s['address']}:{s['port']}" for s in frontend["servers"]
            ]
    if report["diff"]:
        lines += ["", report["diff"].rstrip("\n")]
    if report["excluded"]:
        lines += ["", f"{len(report['excluded'])} instance(s) left out of HAProxy:"]
        lines += [
            f"  {e['hostname']}/{e['id']} ({e['name']}): {e['reason']}" for e in report["excluded"]
        ]
    return "\n".join(lines) + "\n"


def served_instances(
    stats: Iterable[tuple[str, str, str, int]], state: ClusterState
) -> list[dict[str, Any]]:
    """Return what this host's HAProxy does with each instance of `state` it holds: one entry
    per server of `stats` ((backend, server, status, sessions), as `show stat` reports them)
    that names an instance of the state, with that instance's host, ID, name and service port.

    HAProxy's `no check` (a server it does not check itself, as every sidecar server) is
    reported `UP`: HAProxy sends it requests. Servers of no instance in `state` are left out.
    """
    instances = {f"{r.hostname}-{r.id}": r for r in state.records()}
    served: list[dict[str, Any]] = []
    for backend, server, status, sessions in stats:
        record = instances.get(server)
        name, _, port = backend.rpartition("-")
        if record is None or name != sanitize_name(record.name) or not port.isdigit():
            continue
        served.append(
            {
                "hostname": record.hostname,
                "id": record.id,
                "name": record.name,
                "service_port": int(port),
                "backend": backend,
                "server": server,
                "status": "UP" if status == "no check" else status,
                "sessions": sessions,
            }
        )
    return served
