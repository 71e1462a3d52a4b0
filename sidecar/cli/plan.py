"""`sidecar plan`: what would change on this host's HAProxy for a cluster state — the config
diff, the runtime and address actions with their reasons, the instances left out — by the
daemon's own pure path, its parts built from the daemon's configuration. Writes nothing."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time

from sidecar.cli.shared import load_config
from sidecar.state import codec

PLAN_PENDING = 2


_PLAN_FLAGS = {
    "bind_ip": "bind_ip",
    "use_hostnames": "use_hostnames",
    "user": "user",
    "group": "group",
    "stats_port": "stats_port",
    "stats_backend_port": "stats_backend_port",
    "stats_ip": "stats_ip",
    "config_file": "config_file",
    "haproxy_mode": "mode",
    "master_socket": "master_socket",
    "admin_socket": "admin_socket",
    "interface": "interface",
}
"""`sidecar plan`'s flags (argparse destinations) -> the `[haproxy]` keys they override."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Return nothing; add `plan` and its flags to `commands`."""
    plan = commands.add_parser(
        "plan",
        help="show what would change on this host's HAProxy (writes nothing)",
        description=(
            "Show what would change on this host's HAProxy for the cluster state: the config "
            "diff, the runtime API and address actions with their reasons, and the instances "
            "left out; where no HAProxy runs yet, its start. Writes nothing. Exit 0 when "
            "nothing is pending, 2 when changes are pending, 1 on error."
        ),
    )
    source = plan.add_mutually_exclusive_group()
    source.add_argument(
        "--api",
        help="the local daemon, whose /api/state.json is read (default: sidecar.http_address, "
        "with 0.0.0.0 read as 127.0.0.1)",
    )
    source.add_argument(
        "--state", metavar="FILE", help="a saved /api/state.json document (- = stdin)"
    )
    plan.add_argument("--config", help="the daemon's TOML file (sidecar.toml if it exists)")
    plan.add_argument("--template", metavar="FILE", help="preview this Jinja2 template instead")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    # The daemon's settings come from its configuration (file, then environment); these
    # flags override them, e.g. to look at another HAProxy.
    plan.add_argument("--bind-ip", help="haproxy.bind_ip")
    plan.add_argument(
        "--use-hostnames", action="store_true", default=None, help="haproxy.use_hostnames"
    )
    plan.add_argument("--user", help="haproxy.user")
    plan.add_argument("--group", help="haproxy.group")
    plan.add_argument("--stats-port", type=int, help="haproxy.stats_port")
    plan.add_argument("--stats-backend-port", type=int, help="haproxy.stats_backend_port")
    plan.add_argument("--stats-ip", help="haproxy.stats_ip")
    plan.add_argument("--config-file", help="haproxy.config_file")
    plan.add_argument("--haproxy-mode", choices=("managed", "external"), help="haproxy.mode")
    plan.add_argument("--master-socket", help="haproxy.master_socket")
    plan.add_argument("--admin-socket", help="haproxy.admin_socket")
    plan.add_argument("--interface", help="haproxy.interface")


class _PlanError(Exception):
    """Something `sidecar plan` cannot work without; the message says what and where."""


def _read_state(args: argparse.Namespace) -> bytes:
    if args.state == "-":
        return sys.stdin.buffer.read()
    if args.state:
        try:
            with open(args.state, "rb") as document:
                return document.read()
        except OSError as exc:
            raise _PlanError(f"cannot read {args.state}: {exc.strerror}") from None
    return asyncio.run(_fetch_state(args.api.rstrip("/") + "/api/state.json"))


async def _fetch_state(url: str) -> bytes:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url) as reply,
        ):
            if reply.status != 200:
                raise _PlanError(f"{url} answered {reply.status} {reply.reason}")
            return await reply.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _PlanError(
            f"cannot read the cluster state from {url}: {exc or type(exc).__name__} "
            "(is the sidecar daemon running? --state FILE reads a saved state)"
        ) from None


def main(args: argparse.Namespace) -> int:
    """Run `sidecar plan`; return the exit status: 0 nothing pending, `PLAN_PENDING` changes
    pending (a start included), 1 an error."""
    from pathlib import Path

    from sidecar import parts
    from sidecar.adapters.ipbind import IpBindError
    from sidecar.config import ConfigError
    from sidecar.reconcile import report
    from sidecar.reconcile.desired import TemplateError, check_template, desired
    from sidecar.reconcile.plans import plan
    from sidecar.state import views

    def fail(message: str) -> int:
        print(f"sidecar plan: {message}", file=sys.stderr)
        return 1

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    # The flags override single settings; then the daemon's own composition builds the rest.
    overrides = {
        key: value
        for flag, key in _PLAN_FLAGS.items()
        if (value := getattr(args, flag, None)) is not None
    }
    if args.template is not None:
        overrides["template_file"] = args.template
    config = config.model_copy(update={"haproxy": config.haproxy.model_copy(update=overrides)})
    h = config.haproxy

    if args.api is None and args.state is None:
        host, port = config.sidecar.http_listen()
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        args.api = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    config_file = h.config_file
    try:
        state = codec.decode_state(_read_state(args))
        template, template_file = None, h.template_file
        if template_file:
            try:
                template = Path(template_file).read_text()
            except OSError as exc:
                raise _PlanError(f"cannot read {template_file}: {exc.strerror}") from None
            check_template(template, template_file)
        settings = parts.haproxy_settings(config, template)
        table = views.routing_table(state)
        want = desired(table, settings, now=time.time_ns())
        options = parts.haproxy_options(config)
        try:
            actual = asyncio.run(parts.haproxy(config).read_actual())
        except OSError as exc:  # the config file unreadable; a missing one is None
            raise _PlanError(f"cannot read {config_file}: {exc.strerror}") from None
        bound = parts.address_binder(config).bound()
    except (_PlanError, codec.RecordRejected, TemplateError, IpBindError) as exc:
        prefix = "the cluster state was refused: " if isinstance(exc, codec.RecordRejected) else ""
        return fail(f"{prefix}{exc}")
    if not actual.running:
        # Not an error: on a fresh host nothing runs yet, and the plan is the start. Where we
        # looked is said, in case HAProxy does run, elsewhere.
        where = options.master_socket if options.mode == "managed" else options.admin_socket
        print(
            f"sidecar plan: no HAProxy answers on {where} ({options.mode} mode): planned as "
            "starting it (--haproxy-mode/--master-socket/--admin-socket say where to look)",
            file=sys.stderr,
        )
    actual = dataclasses.replace(actual, bound_ips=bound)
    actions = plan(want, actual)
    document = report.plan_report(want, actual, actions, table.excluded, config_file=config_file)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        sys.stdout.write(report.render_text(document))
    return PLAN_PENDING if actions else 0
