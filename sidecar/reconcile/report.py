"""What a plan means to a person or a program: the document `sidecar plan` prints and the
daemon serves at `/api/plan`.

Pure. `plan_report(...)` gathers the pending actions with their reasons, a unified diff of
the config file, the addresses to bind and the instances left out of the routing table with
why; `render_text(report)` is the human form, `report` itself (plain JSON types) the
machine form.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from sidecar.reconcile.desired import Desired
from sidecar.reconcile.plans import Action, Actual
from sidecar.state.views import Exclusion

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
        value = getattr(action, name)
        if value:
            shown[name] = list(value) if isinstance(value, tuple) else value
    return shown


def plan_report(
    desired: Desired,
    actual: Actual,
    actions: Sequence[Action],
    excluded: Sequence[Exclusion],
    *,
    config_file: str,
) -> dict[str, Any]:
    """Return the plan as a JSON-ready document: pending, actions, diff, excluded, ..."""
    return {
        "pending": bool(actions),
        "actions": [_action(a) for a in actions],
        "diff": config_diff(actual.config, desired.config, path=config_file),
        "bind_ips": list(desired.bind_ips),
        "haproxy_running": actual.running,
        "excluded": [
            {"hostname": e.hostname, "id": e.service_id, "name": e.name, "reason": e.reason}
            for e in excluded
        ],
    }


def render_text(report: dict[str, Any]) -> str:
    """Return the report as `sidecar plan` prints it."""
    lines: list[str] = []
    actions = report["actions"]
    if not actions:
        lines.append("Nothing to change: this host's HAProxy matches the cluster state.")
    else:
        reloads = sum(a["kind"] in ("reload", "start") for a in actions)
        cost = "no reload" if not reloads else "one reload" if reloads == 1 else f"{reloads}"
        lines.append(f"{len(actions)} action(s) pending ({cost}):")
        for number, action in enumerate(actions, 1):
            lines.append(f"  {number}. {action['summary']}")
    if report["diff"]:
        lines += ["", report["diff"].rstrip("\n")]
    if report["excluded"]:
        lines += ["", f"{len(report['excluded'])} instance(s) left out of HAProxy:"]
        lines += [
            f"  {e['hostname']}/{e['id']} ({e['name']}): {e['reason']}" for e in report["excluded"]
        ]
    return "\n".join(lines) + "\n"
