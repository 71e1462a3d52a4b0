"""`sidecar discover`: this host's discovery and health checks alone, live, printing what it
would announce to the cluster and what it refuses (Ctrl-C stops)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys

from sidecar.cli.shared import setup_logging
from sidecar.state import discovery


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Return nothing; add `discover` and its arguments to `commands`."""
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


def main(args: argparse.Namespace) -> int:
    """Run `sidecar discover` until SIGINT or SIGTERM; return the exit status (1: nothing to
    discover, or a bad flag)."""
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

    async def watch() -> None:
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

    asyncio.run(watch())
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
