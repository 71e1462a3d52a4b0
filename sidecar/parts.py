"""The composition layer: the one place that turns a `Config` into the parts of a sidecar.

`sidecar run` (the daemon), `sidecar plan` and `sidecar discover` build what they share
here, so `plan` renders and reads HAProxy exactly as the daemon would (by construction, not
by a second copy of the wiring) and `discover` discovers as the daemon does. Nothing here
decides anything: it maps configuration keys onto the constructors' arguments.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.adapters.gossip import GossipTransport
from sidecar.adapters.haproxy import Haproxy, HaproxyOptions
from sidecar.adapters.ipbind import IpBinder
from sidecar.adapters.static import StaticDiscovery
from sidecar.cluster import membership
from sidecar.cluster.crypto import Keyring
from sidecar.cluster.peer import Output, Peer
from sidecar.config import Config
from sidecar.host import HostDiscovery
from sidecar.reconcile.desired import HaproxySettings
from sidecar.state import discovery
from sidecar.state.discovery import DiscoveryPolicy


def discovery_policy(config: Config, *, hostname: str, advertise_ip: str) -> DiscoveryPolicy:
    """Return the discovery policy (namer, checks) of the configuration. Raises
    `discovery.NamerError` for a `regex` namer without a capture group."""
    s = config.services
    namer: discovery.Namer = discovery.LabelNamer(label=s.name_label)
    if s.namer == "regex":
        namer = discovery.regex_namer(s.name_match)
    c = config.sidecar
    return DiscoveryPolicy(
        hostname=hostname,
        advertise_ip=advertise_ip,
        namer=namer,
        default_check_endpoint=c.default_check_endpoint,
        external_checks=c.external_checks,
        rise=c.health_rise,
        fall=c.health_fall,
    )


def host_discovery(
    config: Config, policy: DiscoveryPolicy, *, docker_url: str | None = None
) -> HostDiscovery:
    """Return this host's discovery with the sources the configuration names (`docker`,
    `static`); `docker_url` overrides the configured Engine URL. An empty URL is Go's way to
    say "the Docker SDK's environment": `DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`
    (the Docker SDK reads them, as Go's client does)."""
    docker = None
    if "docker" in config.sidecar.discovery:
        from sidecar.adapters.docker import DockerDiscovery  # the SDK costs 6 MiB: on demand

        docker = DockerDiscovery(docker_url or config.docker_discovery.docker_url or None)
    static = None
    if "static" in config.sidecar.discovery:
        s = config.static_discovery
        static = StaticDiscovery(Path(s.config_file), policy, max_size=s.max_size)
    return HostDiscovery(
        policy, docker=docker, static=static, check_interval=config.sidecar.check_interval
    )


def haproxy_options(config: Config) -> HaproxyOptions:
    """Return how the HAProxy adapter finds and drives this host's HAProxy."""
    h = config.haproxy
    return HaproxyOptions(
        config_file=Path(h.config_file),
        pid_file=Path(h.pid_file),
        master_socket=Path(h.master_socket),
        admin_socket=Path(h.admin_socket),
        mode=h.mode,
        reload_command=h.reload_command,
        verify_command=h.verify_command,
    )


def haproxy(config: Config) -> Haproxy:
    """Return the HAProxy adapter for this host's HAProxy."""
    return Haproxy(haproxy_options(config))


def address_binder(config: Config) -> IpBinder:
    """Return the adapter that binds the HAProxy bind IP on `[haproxy] interface`."""
    return IpBinder(config.haproxy.interface)


def haproxy_settings(config: Config, template: str | None) -> HaproxySettings:
    """Return what the HAProxy template is rendered with (`template`: the template file's
    text, None for the shipped one)."""
    h = config.haproxy
    return HaproxySettings(
        bind_ip=h.bind_ip,
        use_hostnames=h.use_hostnames,
        user=h.user,
        group=h.group,
        admin_socket=h.admin_socket,
        stats_port=h.stats_port,
        stats_backend_port=h.stats_backend_port,
        stats_ip=h.stats_ip,
        hard_stop_after=h.hard_stop_after,
        template=template,
        template_name=h.template_file or "the shipped template",
    )


CLUSTER_LEAVE_GRACE = 0.5
"""Seconds a stopping daemon keeps gossiping its leave (its whole stop stays under 1 s)."""


def node_meta(config: Config) -> bytes:
    """Return this node's memberlist meta, as Go's Sidecar sends it (cluster-wire.md §6.1)."""
    name = config.sidecar.cluster_name
    return b'{"ClusterName":"' + name.encode() + b'","State":"Running"}'


def seed_addresses(config: Config) -> list[tuple[str, int]]:
    """Return the seeds as (host, port), the port `bind_port` where a seed names none."""
    default = config.sidecar.bind_port
    found: list[tuple[str, int]] = []
    for seed in config.sidecar.seeds:
        if seed.startswith("["):
            host, _, rest = seed[1:].partition("]")
            found.append((host, int(rest[1:]) if rest else default))
        elif seed.count(":") == 1:
            host, _, port = seed.partition(":")
            found.append((host, int(port)))
        else:
            found.append((seed, default))
    return found


def cluster(
    config: Config, *, hostname: str, advertise_ip: str, on_output: Callable[[Output], None]
) -> GossipTransport:
    """Return this host's cluster member: a `Peer` named `hostname` (as in its records),
    advertising `advertise_ip` and `bind_port`, and its gossip transport bound there.
    Raises ValueError for an advertise IP that is not IPv4 (the transport is IPv4)."""
    c = config.sidecar
    if ipaddress.ip_address(advertise_ip).version != 4:
        raise ValueError(f"the cluster needs an IPv4 advertise IP, not {advertise_ip}")
    settings = membership.Config(
        name=hostname,
        addr=socket.inet_aton(advertise_ip),
        port=c.bind_port,
        cluster_name=c.cluster_name,
        meta=node_meta(config),
        gossip_messages=c.gossip_packets(),
        suspicion_mult=membership.SUSPICION_MULT_FAST,
    )
    keys = c.gossip_keys()
    keyring = Keyring(keys) if keys else None
    peer = Peer(
        settings,
        random.Random(),
        now=time.monotonic_ns(),
        push_pull_interval=round(c.push_pull_seconds() * 1e9),
        keyring=keyring,
        nonce=(lambda: secrets.token_bytes(12)) if keyring is not None else None,
    )
    return GossipTransport(
        peer,
        bind_host=advertise_ip,
        on_output=on_output,
        keyring=keyring,
        leave_grace=CLUSTER_LEAVE_GRACE,
    )
