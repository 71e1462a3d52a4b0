"""The `sidecar` command line.

Today it has `plan` (what would change on this host's HAProxy for a cluster state: the
config diff, the runtime and address actions with their reasons, the instances left out),
`discover` (this host's discovery and health checks, live: what it would announce to the
cluster), `simulate` (a whole cluster of sidecars running the pure core in virtual time) and
`decode` (check a Go `state.json` or service document and print it back in Go's bytes),
and `run`: the daemon (`sidecar.daemon`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from sidecar import __version__, simulate
from sidecar.state import codec, discovery

PLAN_PENDING = 2


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--loss must be in [0, 1), got {text}")
    return value


def _node_count(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"--nodes must be 2..10000, got {text}")
    return value


def _duration_seconds(text: str) -> int:
    value = int(text)
    if not 30 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"--duration must be 30..3600 seconds, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="simulate a cluster of sidecars (virtual time)")
    sim.add_argument("--nodes", type=_node_count, default=5, help="hosts in the cluster (5)")
    sim.add_argument("--loss", type=_fraction, default=0.2, help="UDP packet loss, 0..1 (0.2)")
    sim.add_argument("--seed", type=int, default=1, help="random seed (1)")
    sim.add_argument(
        "--duration", type=_duration_seconds, default=60, help="virtual seconds to run (60)"
    )
    disc = commands.add_parser(
        "discover", help="discover and health-check this host's services, live (Ctrl-C stops)"
    )
    disc.add_argument("--hostname", default=socket.gethostname(), help="this node's name")
    disc.add_argument(
        "--advertise-ip", default="127.0.0.1", help="IP for published ports and checks"
    )
    disc.add_argument("--docker-url", default=None, help="Engine URL (default: DOCKER_HOST)")
    disc.add_argument("--no-docker", action="store_true", help="no Docker discovery")
    disc.add_argument("--static", metavar="FILE", help="a Go static.json to watch as well")
    disc.add_argument("--namer", metavar="REGEX", help="name services by this regex's group 1")
    disc.add_argument("--check-interval", type=float, default=3.0, help="seconds (3)")
    disc.add_argument("--external-checks", action="store_true", help="allow External checks")
    decode = commands.add_parser(
        "decode", help="read a Go state.json or service JSON document, print it as Go would"
    )
    decode.add_argument("file", help="the document, or - for stdin")
    _plan_parser(commands)
    _run_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "discover":
        return _discover(args)
    if args.command == "simulate":
        lines = simulate.run(args.nodes, loss=args.loss, seed=args.seed, duration=args.duration)
        for line in lines:
            print(line, flush=True)
        return 0
    if args.command == "plan":
        return _plan(args)
    if args.command == "run":
        return _run(args)
    if args.command == "decode":
        if args.file == "-":
            raw = sys.stdin.buffer.read()
        else:
            try:
                with open(args.file, "rb") as document:
                    raw = document.read()
            except OSError as exc:
                print(f"sidecar decode: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
                return 1
        try:
            if b'"Servers"' in raw or b'"servers"' in raw:
                out = codec.encode_state(codec.decode_state(raw))
            else:
                out = codec.encode_service(codec.decode_service(raw))
        except codec.RecordRejected as exc:
            print(f"sidecar decode: rejected: {exc}", file=sys.stderr)
            return 1
        sys.stdout.write(out.decode() + "\n")
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse allows no other


def _engine_answers(url: str | None) -> bool:
    path = (url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock").removeprefix(
        "unix://"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _discover(args: argparse.Namespace) -> int:
    # Imported here: the adapters pull in aiohttp and the Docker SDK, which the other
    # commands do not need.
    import pydantic

    from sidecar import parts
    from sidecar.config import Config
    from sidecar.host import HostObservation

    setup_logging(level="info", json_format=False)
    sources: list[str] = []
    if not args.no_docker:
        if _engine_answers(args.docker_url):
            sources.append("docker")
        else:
            print("sidecar discover: no Docker Engine answers; Docker discovery is off")
    if args.static:
        sources.append("static")
    if not sources:
        print("sidecar discover: nothing to discover (no Engine and no --static file)")
        return 1
    # The flags as a configuration, so that discovery is built as the daemon builds it.
    docker_url = args.docker_url or os.environ.get("DOCKER_HOST")
    try:
        config = Config.model_validate(
            {
                "sidecar": {
                    "discovery": sources,
                    "check_interval": args.check_interval,
                    "external_checks": args.external_checks,
                },
                "services": {"namer": "regex", "name_match": args.namer} if args.namer else {},
                "static_discovery": {"config_file": args.static} if args.static else {},
                "docker_discovery": {"docker_url": docker_url} if docker_url else {},
            }
        )
        policy = parts.discovery_policy(
            config, hostname=args.hostname, advertise_ip=args.advertise_ip
        )
    except pydantic.ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        print(f"sidecar discover: {message}", file=sys.stderr)
        return 1
    except discovery.NamerError as exc:
        print(f"sidecar discover: {exc}", file=sys.stderr)
        return 1
    host = parts.host_discovery(config, policy)

    async def main() -> None:
        out: asyncio.Queue[HostObservation] = asyncio.Queue()
        task = asyncio.create_task(host.run(out))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(
            f"sidecar discover: {policy.hostname}, advertising {policy.advertise_ip}; Ctrl-C stops"
        )
        try:
            while not stop.is_set():
                getter = asyncio.ensure_future(out.get())
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if getter not in done:
                    getter.cancel()
                    break
                _print_observation(getter.result())
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    return 0


def _print_observation(observation: object) -> None:
    from sidecar.host import HostObservation

    assert isinstance(observation, HostObservation)
    print(f"-- {len(observation.services)} services, {len(observation.rejected)} rejected")
    for service in observation.services:
        ports = ", ".join(
            f"{p.ip}:{p.port}" + (f" as :{p.service_port}" if p.service_port else "")
            for p in service.ports or ()
        )
        print(f"   {service.id}  {service.name:<30} {service.status.label():<9} {ports}")
    for rejected in observation.rejected:
        print(f"   {rejected.id}  {rejected.name:<30} REJECTED  {rejected.reason}")
    sys.stdout.flush()


# ---------------------------------------------------------------- sidecar plan


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


def _plan_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sidecar import parts
    from sidecar.adapters.haproxy import Haproxy
    from sidecar.adapters.ipbind import IpBinder, IpBindError
    from sidecar.reconcile import report
    from sidecar.reconcile.desired import TemplateError, check_template, desired
    from sidecar.reconcile.plans import plan
    from sidecar.state import views

    def fail(message: str) -> int:
        print(f"sidecar plan: {message}", file=sys.stderr)
        return 1

    from sidecar import config as configuration

    try:
        config = configuration.load(
            path=args.config or configuration.config_path(), required=args.config is not None
        )
    except configuration.ConfigError as exc:
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
            actual = asyncio.run(Haproxy(options).read_actual())
        except OSError as exc:  # the config file unreadable; a missing one is None
            raise _PlanError(f"cannot read {config_file}: {exc.strerror}") from None
        bound = IpBinder(h.interface).bound()
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


# ---------------------------------------------------------------- sidecar run


def _run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="the daemon: discovery, checks, HAProxy and the HTTP API (Ctrl-C stops)",
        description=(
            "Run the sidecar daemon. Configuration: the TOML file (--config), then the "
            "environment (SIDECAR_*, HAPROXY_*, DOCKER_URL, ...), then these flags."
        ),
    )
    run.add_argument("--config", help="the TOML file (sidecar.toml if it exists)")
    run.add_argument(
        "-c", "--cluster-ip", action="append", dest="seeds", help="a seed (repeatable)"
    )
    run.add_argument("-a", "--advertise-ip", help="the IP this node announces")
    run.add_argument("-n", "--cluster-name", help="the cluster's name")
    run.add_argument(
        "-d", "--discover", action="append", dest="discovery", help="docker or static (repeatable)"
    )
    run.add_argument("-l", "--logging-level", help="debug, info, warn or error")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


# C0 and C1 controls, DEL, and what else Python's str.splitlines() breaks on (U+2028/2029).
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(character: re.Match[str]) -> str:
    text = character.group()
    if text in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[text]
    return f"\\x{ord(text):02x}" if ord(text) <= 0xFF else f"\\u{ord(text):04x}"


def escape_controls(text: str) -> str:
    """Return `text` with every control character and line break written as an escape
    (`\\n`, `\\x1b`, ...): printable, and on one line."""
    return _UNPRINTABLE.sub(_escaped, text)


class _TextFormatter(logging.Formatter):
    """One record, one line: the message is escaped, since it carries values from labels,
    files and (with the cluster) the network, and a line break in one would forge a record.

    A traceback (our own code's) stays readable on the lines below, each indented, so that
    every line that starts at column 0 is a record of its own.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


def setup_logging(*, level: str, json_format: bool) -> None:
    """Send logs to stderr, as text (one line per record) or one JSON object per line, at
    `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter() if json_format else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": logging.WARNING}.get(level, level.upper()))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


if TYPE_CHECKING:
    from sidecar.config import Config

    _Loaded = tuple[Config, str | None]


class _StartError(Exception):
    """What stops `sidecar run` (or a SIGHUP reload); the message says what and why."""


def _load_run_config(args: argparse.Namespace, overrides: dict[str, object]) -> _Loaded:
    """Return the configuration and the HAProxy template's text (None: the shipped one)."""
    from sidecar import config as configuration

    try:
        config = configuration.load(
            path=args.config or configuration.config_path(),
            required=args.config is not None,
            overrides=overrides,
        )
    except configuration.ConfigError as exc:
        raise _StartError(str(exc)) from None
    template = None
    if config.haproxy.template_file and not config.haproxy.disable:
        from sidecar.reconcile.desired import TemplateError, check_template

        try:
            with open(config.haproxy.template_file) as text:
                template = text.read()
        except OSError as exc:
            raise _StartError(
                f"cannot read haproxy.template_file {config.haproxy.template_file!r}: "
                f"{exc.strerror}"
            ) from None
        try:
            check_template(template, config.haproxy.template_file)
        except TemplateError as exc:
            raise _StartError(f"haproxy.template_file is not a valid template: {exc}") from None
    return config, template


M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed


def _steady_allocator() -> None:
    """Return nothing; on glibc, keep the allocator's mmap threshold fixed at its default.

    glibc raises the threshold to the size of every large block freed, after which the
    daemon's big short-lived blocks (a config of 1,000 services is 270 KB; so is HAProxy's
    answer to `show servers state`) come from the heap and leave it fragmented. Fixed, they
    are mapped and returned to the system when freed: 1.7 MiB less resident with 1,000
    services (`bench/daemon.py`). Elsewhere than glibc, nothing.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _run(args: argparse.Namespace) -> int:
    _steady_allocator()
    from sidecar import config as configuration
    from sidecar.adapters.ipbind import IpBindError, host_ipv4_addresses
    from sidecar.daemon import Daemon, DaemonFailed

    overrides: dict[str, object] = {}
    for flag, key in (
        ("seeds", "sidecar.seeds"),
        ("advertise_ip", "sidecar.advertise_ip"),
        ("cluster_name", "sidecar.cluster_name"),
        ("discovery", "sidecar.discovery"),
        ("logging_level", "sidecar.logging_level"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    try:
        config, template = _load_run_config(args, overrides)
    except _StartError as exc:
        print(f"sidecar run: {exc}", file=sys.stderr)
        return 1
    setup_logging(
        level=config.sidecar.logging_level, json_format=config.sidecar.logging_format == "json"
    )
    log = logging.getLogger("sidecar")
    hostname = config.sidecar.hostname or socket.gethostname()
    advertise_ip = config.sidecar.advertise_ip
    if not advertise_ip:
        try:
            found = host_ipv4_addresses()
        except IpBindError as exc:
            print(f"sidecar run: {exc}", file=sys.stderr)
            return 1
        chosen = discovery.choose_advertise_ip(found, excluded=config.sidecar.exclude_ips)
        if chosen is None:
            print(
                "sidecar run: failed to find a private IP address to advertise (this host "
                f"has {', '.join(found) or 'none'}); set SIDECAR_ADVERTISE_IP or --advertise-ip",
                file=sys.stderr,
            )
            return 1
        advertise_ip = chosen
    log.info("sidecar %s on %s, advertising %s", __version__, hostname, advertise_ip)
    for line in configuration.describe(config):
        log.info("config: %s", line)
    for notice in configuration.notices(config):
        log.info("config: %s", notice)
    if not config.sidecar.seeds:
        log.info("no seeds (sidecar.seeds, --cluster-ip): this host serves its own services only")
    try:
        daemon = Daemon(config, hostname=hostname, advertise_ip=advertise_ip, template=template)
    except ValueError as exc:
        log.error("%s", exc)
        return 1

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(daemon, args, overrides))
        await daemon.run(stop)

    # What start-up made (modules, classes, the configuration) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it (at 10,000 services
    # a reconcile's render and plan is ~20 % faster, bench/haproxy_churn.py --render-only).
    # Start-up's garbage is collected first, so that none of it is kept for good.
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(main())
    except OSError as exc:  # the API's address taken, a socket directory not writable, ...
        log.error("cannot run: %s", exc)
        return 1
    except DaemonFailed:  # logged, with its cause, as it happened
        return 1
    return 0


def _reload(daemon: object, args: argparse.Namespace, overrides: dict[str, object]) -> None:
    """SIGHUP: re-read the configuration; apply what can change while running."""
    from sidecar.daemon import Daemon

    assert isinstance(daemon, Daemon)
    log = logging.getLogger("sidecar")
    try:
        config, template = _load_run_config(args, overrides)
    except _StartError as exc:
        log.error("SIGHUP: configuration not reloaded, the running one is kept: %s", exc)
        return
    changes = daemon.reload(config, template=template)
    log.info("SIGHUP: %s", "; ".join(changes) or "nothing changed")
