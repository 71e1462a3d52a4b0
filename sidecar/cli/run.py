"""`sidecar run`: the daemon (`sidecar.daemon`) — its configuration loaded and logged, the
advertise IP chosen, the signals wired (SIGINT/SIGTERM stop it, SIGHUP reloads)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.cli.shared import load_config, setup_logging
from sidecar.state import discovery

if TYPE_CHECKING:
    from sidecar.config import Config

    _Loaded = tuple[Config, str | None]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Return nothing; add `run` and its flags to `commands`."""
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


class _StartError(Exception):
    """What stops `sidecar run` (or a SIGHUP reload); the message says what and why."""


def _load_run_config(args: argparse.Namespace, overrides: dict[str, object]) -> _Loaded:
    """Return the configuration and the HAProxy template's text (None: the shipped one)."""
    from sidecar.config import ConfigError

    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
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


def main(args: argparse.Namespace) -> int:
    """Run the daemon until SIGINT or SIGTERM; return the exit status (1: it could not start,
    or a part of it stopped on its own)."""
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

    async def run_daemon() -> None:
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
        asyncio.run(run_daemon())
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
