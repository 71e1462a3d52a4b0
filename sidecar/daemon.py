"""The daemon behind `sidecar run`: this host's discovery and checks, the cluster state,
HAProxy and the HTTP API, in one asyncio program.

Data flows one way. `HostDiscovery` (Docker, static file, checks) emits what this host
serves; the state owner (`sidecar.owner`) stamps it into the cluster state through this
host's node — alone, or a cluster member whose peers' records merge in too — and re-stamps
and expires every second. Every new state goes to the owner's sinks (the reconcile loop:
HAProxy and the bind IP follow it; the state-change listeners, `adapters.listeners`) and to
`/api/watch` subscribers, and is what the API and metrics read. The owner is the only writer
of the state, and writes only on the event loop.

What it decides is in the core, the cluster and the reconcile loop; this module wires them,
answers the API and runs the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sidecar import parts
from sidecar.adapters import http
from sidecar.adapters.gossip import GossipTransport
from sidecar.adapters.haproxy import Haproxy
from sidecar.adapters.ipbind import IpBinder
from sidecar.adapters.listeners import Listeners
from sidecar.config import Config
from sidecar.host import HostDiscovery, HostObservation
from sidecar.owner import ClusterNode, HostNode, SoloNode, StateOwner
from sidecar.reconcile import report
from sidecar.reconcile.desired import HaproxySettings
from sidecar.reconcile.errors import RuntimeRefused
from sidecar.reconcile.loop import Reconciler
from sidecar.state.discovery import Rejected
from sidecar.state.model import ClusterState, Service, Status
from sidecar.state.times import UNIX_EPOCH, format_time
from sidecar.supervise import supervised

log = logging.getLogger("sidecar.daemon")

TICK = 1.0  # seconds between re-stamps and expiry runs, as Go's loops
# HAProxy follows the state once this host's discovery has settled (every source reported,
# every service checked once) and a cluster member has joined, at the latest this long after
# the start: a restarted daemon must not take from the HAProxy it finds serving what it has
# not looked at yet (its own services before their first check, its peers' before the join).
WARMUP_LIMIT = 10.0
# What HAProxy does with each instance (`show stat`, for the UI) is looked at no more often
# than this for the same state: every open page asks every second.
HAPROXY_VIEW_TTL = 0.9


class DaemonFailed(RuntimeError):
    """A part of the daemon (discovery, the state updates, the HAProxy loop) stopped; the
    daemon stopped with it. The message names the part and its error."""


class Daemon:
    """One host's sidecar. `run(stop)` until `stop` is set; see the module docstring.

    `clock` (wall ns) stamps this host's records when it has no seeds; a cluster member's
    peer keeps its own clocks."""

    def __init__(
        self,
        config: Config,
        *,
        hostname: str,
        advertise_ip: str,
        template: str | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.hostname = hostname
        self.advertise_ip = advertise_ip
        self._rejected: tuple[Rejected, ...] = ()
        self._following = False  # whether HAProxy follows the state yet (see WARMUP_LIMIT)
        self._haproxy_seen: tuple[float, ClusterState, Mapping[str, Any]] | None = None
        self._settled = asyncio.Event()  # host discovery has settled
        self._joined = asyncio.Event()  # this host has joined its cluster (or has none)
        self._static_error: str | None = None  # why the static file is not used, if it is not
        self.host = self._host_discovery()
        self.owner = StateOwner(self._this_node(clock))
        self.listeners = Listeners(config.listeners.urls, hostname=hostname, started=clock())
        self.owner.sinks.append(self.listeners.offer)
        self.haproxy: Haproxy | None = None
        self.addresses: IpBinder | None = None
        self.reconciler: Reconciler | None = None
        if not config.haproxy.disable:
            self._haproxy_parts(template)
            self.owner.sinks.append(self._to_haproxy)

    # ------------------------------------------------------------------ wiring

    def _to_haproxy(self, state: ClusterState, _events: object) -> None:
        """Hand a new state to the HAProxy loop, once it follows the state (`_warm_up`)."""
        if self._following and self.reconciler is not None:
            self.reconciler.update(state)

    def _this_node(self, clock: Callable[[], int]) -> HostNode:
        """Return this host's node: with seeds a cluster member (its peer merges what peers
        send), without, this host alone."""
        c = self.config.sidecar
        if not c.seeds:
            return SoloNode(self.hostname, c.cluster_name, self.advertise_ip, clock=clock)
        return ClusterNode(
            lambda on_output: parts.cluster(
                self.config,
                hostname=self.hostname,
                advertise_ip=self.advertise_ip,
                on_output=on_output,
            )
        )

    @property
    def gossip(self) -> GossipTransport | None:
        """Return the gossip transport of a cluster member; None for a host alone."""
        node = self.owner.node
        return node.transport if isinstance(node, ClusterNode) else None

    def _host_discovery(self) -> HostDiscovery:
        policy = parts.discovery_policy(
            self.config, hostname=self.hostname, advertise_ip=self.advertise_ip
        )
        return parts.host_discovery(self.config, policy)

    def _haproxy_parts(self, template: str | None) -> None:
        h = self.config.haproxy
        self.haproxy = parts.haproxy(self.config)
        self.addresses = parts.address_binder(self.config)
        self.reconciler = Reconciler(
            self.haproxy,
            self.addresses,
            self.haproxy_settings(template),
            apply=h.apply,
            min_wait=h.debounce_min,
            max_wait=h.debounce_max,
            config_file=h.config_file,
        )
        self.haproxy.on_exit = self.reconciler.poke

    def haproxy_settings(self, template: str | None) -> HaproxySettings:
        """Return the template's settings from the configuration (and the template's text)."""
        return parts.haproxy_settings(self.config, template)

    # ------------------------------------------------------------------ the sources

    def observe(self, observation: HostObservation) -> None:
        """Take what host discovery saw: this host's services, what it refused and why."""
        if observation.settled:
            self._settled.set()
        self._rejected = observation.rejected
        self._static_error = observation.static_error
        # Listeners first, so a new one hears of its own service's appearance.
        self.listeners.track(dict(observation.listeners))
        self.owner.observe(observation.services)

    # ------------------------------------------------------------------ the Catalog

    def state(self) -> ClusterState:
        """Return the current cluster state."""
        return self.owner.state()

    def members(self) -> Mapping[str, int]:
        """Return the cluster's live members (this node among them) and when each one's
        services last changed."""
        servers = self.state().servers
        live = (m.name for m in self.owner.node.members() if m.state in ("alive", "suspect"))
        return {
            name: servers[name].last_updated if name in servers else UNIX_EPOCH
            for name in sorted(live)
        }

    def member_list(self) -> Sequence[Mapping[str, Any]]:
        """Return every member known, this node included: name, state (alive, suspect, dead,
        left), address, incarnation and last change (RFC 3339; null for a host alone)."""
        return [
            {
                "Name": m.name,
                "State": m.state,
                "Address": m.address,
                "Incarnation": m.incarnation,
                "LastChange": None if m.last_change is None else format_time(m.last_change),
            }
            for m in self.owner.node.members()
        ]

    def changes(self) -> AsyncIterator[ClusterState]:
        """Yield the state now, then after every change (a slow reader skips to the newest)."""
        return self.owner.changes()

    async def drain(self, service_id: str) -> Service | None:
        """Return an own service set to DRAINING, or None when there is no such live one."""
        return self.owner.drain(service_id)

    def plan(self) -> Mapping[str, Any] | None:
        """Return what is pending on this host's HAProxy (the `sidecar plan --json` document)
        as of the last reconcile, with `apply`, `applied` (the actions it carried out then)
        and `error`; None without HAProxy."""
        if self.reconciler is None:
            return None
        report = dict(self.reconciler.last_report or {"pending": False, "actions": []})
        last = self.reconciler.last
        report["apply"] = self.reconciler.apply
        report["applied"] = [] if last is None else [a.describe() for a in last.done]
        report["error"] = None if last is None else last.error
        if last is not None and last.applied and last.error is None and last.deferred is None:
            # Carried out: nothing of it is pending any more.
            report.update(pending=False, actions=[], diff="")
        return report

    def rejections(self) -> Sequence[Mapping[str, Any]]:
        """Return what this host does not serve, and why: the static file when it cannot be
        used (its last good services are served), containers and static services discovery
        refused, and instances the routing table left out."""
        found: list[Mapping[str, Any]] = []
        static_error = self._static_error
        if static_error is not None:
            found.append(
                {
                    "stage": "static",
                    "hostname": self.hostname,
                    "id": "",
                    "name": "",
                    "file": self.config.static_discovery.config_file,
                    "reason": static_error,
                }
            )
        found.extend(
            {
                "stage": "discovery",
                "hostname": self.hostname,
                "id": r.id,
                "name": r.name,
                "reason": r.reason,
            }
            for r in self._rejected
        )
        excluded = self.reconciler.last_excluded if self.reconciler is not None else ()
        found.extend(
            {
                "stage": "routing",
                "hostname": e.hostname,
                "id": e.service_id,
                "name": e.name,
                "reason": e.reason,
            }
            for e in excluded
        )
        return found

    async def local_view(self) -> Mapping[str, Any]:
        """Return what only this host knows, for the UI (JSON-ready): its name and cluster,
        the members, what its HAProxy does with each instance now (None when HAProxy is not
        managed), its services' last checks, what it does not serve and why, and the plan."""
        return {
            "hostname": self.hostname,
            "cluster_name": self.config.sidecar.cluster_name,
            "members": self.member_list(),
            "haproxy": await self._haproxy_view(),
            "checks": {
                service_id: {
                    "type": last.spec.type,
                    "args": last.spec.args,
                    "healthy": None if last.outcome is None else last.outcome.healthy,
                    "detail": "" if last.outcome is None else last.outcome.detail,
                    "at": None if last.at is None else format_time(last.at),
                }
                for service_id, last in sorted(self.host.last_checks().items())
            },
            "rejections": self.rejections(),
            "plan": self.plan(),
        }

    async def _haproxy_view(self) -> Mapping[str, Any] | None:
        """Return what HAProxy does with each instance; looked at once per HAPROXY_VIEW_TTL
        for the same state, however many pages ask."""
        if self.haproxy is None:
            return None
        state, now = self.state(), time.monotonic()
        seen = self._haproxy_seen
        if seen is not None and seen[1] is state and now - seen[0] < HAPROXY_VIEW_TTL:
            return seen[2]
        try:
            stats = await self.haproxy.server_stats()
        except (RuntimeRefused, ValueError) as exc:
            view: Mapping[str, Any] = {"error": str(exc), "servers": []}
        else:
            view = {"error": None, "servers": report.served_instances(stats, state)}
        self._haproxy_seen = (now, state, view)
        return view

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        """Return whether this sidecar does its job — discovery runs, and HAProxy (when
        managed) follows the state: its last apply did not fail — with details. A static file
        that cannot be used is in the details (`static_error`) but leaves it healthy: its last
        good services are still served."""
        details: dict[str, Any] = {"hostname": self.hostname, "services": self._own_count()}
        if "static" in self.config.sidecar.discovery:
            details["static_error"] = self._static_error
        healthy = True
        if self.reconciler is not None:
            last = self.reconciler.last
            details["haproxy_error"] = None if last is None else last.error
            healthy = last is None or last.error is None
        return healthy, details

    def _own_count(self) -> int:
        return sum(1 for r in self.state().own_records() if r.status is not Status.TOMBSTONE)

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> bytes:
        """Return the metrics in Prometheus' text format."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)

    # ------------------------------------------------------------------ SIGHUP

    def reload(self, config: Config, *, template: str | None = None) -> list[str]:
        """Take what can change while running from a new configuration (the logging level,
        the HAProxy template, apply, debounce, what to do at exit); return what changed, and
        what needs a restart to take effect."""
        said: list[str] = []
        old, new = self.config.model_dump(), config.model_dump()
        live = {
            ("sidecar", "logging_level"),
            ("haproxy", "template_file"),
            ("haproxy", "apply"),
            ("haproxy", "debounce_min"),
            ("haproxy", "debounce_max"),
            ("haproxy", "stop_on_exit"),
            ("haproxy", "release_ip"),
        }
        taken: dict[str, dict[str, Any]] = {}
        for section, values in new.items():
            for key, value in values.items():
                if old[section][key] == value:
                    continue
                if (section, key) in live:
                    taken.setdefault(section, {})[key] = value
                    said.append(f"{section}.{key} is now {value!r}")
                else:
                    said.append(f"{section}.{key} changed: takes effect at the next start")
        # The running configuration takes the live values only, so a later SIGHUP still
        # names what waits for a restart. (Values from a validated Config: no re-validation.)
        self.config = self.config.model_copy(
            update={
                section: getattr(self.config, section).model_copy(update=values)
                for section, values in taken.items()
            }
        )
        level = config.sidecar.logging_level
        logging.getLogger().setLevel({"warn": logging.WARNING}.get(level, level.upper()))
        if self.reconciler is not None:
            h = config.haproxy
            self.reconciler.apply = h.apply
            self.reconciler.min_wait, self.reconciler.max_wait = h.debounce_min, h.debounce_max
            self.reconciler.settings = _with_template(
                self.reconciler.settings, template, h.template_file
            )
            if self._following:
                self.reconciler.update(self.state())
        return said

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down within a second: HAProxy is left serving
        unless `haproxy.stop_on_exit` (then soft-stopped: requests in flight finish, bounded
        by `hard_stop_after`), and the bind IP is released if this daemon added it,
        `haproxy.release_ip` is on and HAProxy no longer serves on it."""
        host, port = self.config.sidecar.http_listen()
        token = self.config.sidecar.api_token.get_secret_value()
        app = http.make_app(self, api_token=token, metrics=self.metrics)
        server = await http.serve(app, host, port)
        log.info("HTTP API on http://%s:%d", host, port)
        observations: asyncio.Queue[HostObservation] = asyncio.Queue()
        jobs = {
            "discovery": self.host.run(observations),
            "state updates": self._follow(observations),
            "ticks": self._ticks(),
            "the listeners": self.listeners.run(),
        }
        if self.gossip is not None:
            try:
                await self.gossip.start()
            except OSError:
                await server.stop()
                raise
            log.info("gossip on %s:%d (UDP and TCP)", self.advertise_ip, self.gossip.port)
            jobs["the cluster join"] = self._join()
        if self.reconciler is not None:
            jobs["the HAProxy loop"] = self.reconciler.run()
            jobs["the warm-up"] = self._warm_up()
        try:
            async with supervised(jobs) as parts:
                ended = await parts.first_end(stop)
                if ended is not None:
                    # Each part runs until cancelled: one that ended leaves the others serving
                    # a state that no longer follows what runs. Better to stop and be restarted.
                    log.error("%s stopped (%r); stopping", ended.name, ended.cause)
                    raise DaemonFailed(str(ended)) from ended.cause
                log.info("stopping")
        finally:
            # All bounded (the API ~0.3 s, HAProxy STOP_GRACE, the leave 0.5 s): the daemon
            # exits within 1 s (a stop of HAProxy during a reload waits for the new master,
            # up to STOP_DURING_RELOAD). Peers hear the leave and tombstone our services.
            await asyncio.gather(server.stop(), self._release(), self._leave())

    async def _join(self) -> None:
        """Join through the seeds (again and again until one answers), then stay."""
        assert self.gossip is not None
        await self.gossip.join_until_answered(parts.seed_addresses(self.config))
        self._joined.set()
        await asyncio.Event().wait()  # a job runs until cancelled

    async def _warm_up(self) -> None:
        """Have HAProxy follow the state once this host knows what it serves and, in a
        cluster, what its peers serve (at the latest WARMUP_LIMIT after the start); stay."""
        assert self.reconciler is not None
        if self.gossip is None:
            self._joined.set()
        loop = asyncio.get_running_loop()
        began = loop.time()
        waits = [
            asyncio.ensure_future(self._settled.wait()),
            asyncio.ensure_future(self._joined.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=WARMUP_LIMIT)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        missing = [
            what
            for what, done in (
                ("the first look of discovery and checks", self._settled.is_set()),
                ("the cluster join", self._joined.is_set()),
            )
            if not done
        ]
        if missing:
            log.warning(
                "HAProxy follows the state from now, after %g s without %s",
                WARMUP_LIMIT,
                " and ".join(missing),
            )
        else:
            log.info(
                "HAProxy follows the state from now: this host's services looked at%s (%.2f s)",
                ", the cluster joined" if self.gossip is not None else "",
                loop.time() - began,
            )
        self.follow()
        await asyncio.Event().wait()  # a job runs until cancelled

    def follow(self) -> None:
        """Have HAProxy follow the state from now on (`run` does, after its warm-up)."""
        self._following = True
        if self.reconciler is not None:
            self.reconciler.update(self.state())

    async def _leave(self) -> None:
        if self.gossip is not None:
            await self.gossip.leave()

    async def _follow(self, observations: asyncio.Queue[HostObservation]) -> None:
        while True:
            observation = await observations.get()
            while not observations.empty():  # each is whole: only the newest matters
                observation = observations.get_nowait()
            self.observe(observation)

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.owner.tick()

    async def _release(self) -> None:
        h = self.config.haproxy
        if self.haproxy is None:
            return
        stopped = await self.haproxy.close(stop=h.stop_on_exit)
        if not h.stop_on_exit:
            log.info("HAProxy keeps serving (haproxy.stop_on_exit is off)")
        if self.addresses is None or not h.release_ip:
            return
        if not stopped:
            # Removing the address would cut what HAProxy still serves on it.
            log.info("the bind IP stays: HAProxy still serves on it")
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.addresses.release_added)


def _with_template(settings: HaproxySettings, template: str | None, name: str) -> HaproxySettings:
    return dataclasses.replace(
        settings, template=template, template_name=name or "the shipped template"
    )


class _Collector:
    """Reads the daemon's figures at scrape time (nothing to keep in step)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Any]:
        d = self.daemon
        by_status = GaugeMetricFamily(
            "sidecar_services", "Service records in the cluster state, by status", labels=["status"]
        )
        counts = Counter(r.status.label().lower() for r in d.state().records())
        for status in Status:
            by_status.add_metric([status.label().lower()], counts.get(status.label().lower(), 0))
        yield by_status
        yield GaugeMetricFamily(
            "sidecar_peers", "Cluster members other than this node", value=len(d.members()) - 1
        )
        yield CounterMetricFamily(
            "sidecar_state_changes", "Changes made to the cluster state", value=d.owner.merges
        )
        events = CounterMetricFamily(
            "sidecar_service_events", "Services that appeared or changed status", labels=["status"]
        )
        for label, count in sorted(d.owner.events.items()):
            events.add_metric([label.lower()], count)
        yield events
        checks = CounterMetricFamily(
            "sidecar_check_results", "Health check outcomes", labels=["result"]
        )
        for result in ("healthy", "unhealthy", "unknown"):
            checks.add_metric([result], d.host.check_results.get(result, 0))
        yield checks
        yield from _haproxy_metrics(d)
        yield from _gossip_metrics(d)
        yield from _listener_metrics(d)


def _haproxy_metrics(d: Daemon) -> Iterable[Any]:
    if d.reconciler is None or d.haproxy is None:
        return
    stats, counters = d.reconciler.stats, d.haproxy.counters
    figures = [
        ("applies", "Plans carried out", stats.applies),
        ("apply_failures", "Applies that failed (the running config was kept)", stats.failures),
        ("reloads", "HAProxy reloads", stats.reloads),
        ("runtime_ops", "Server changes made through the runtime API", stats.runtime_ops),
        ("fallbacks", "Runtime changes refused and made by reload instead", stats.fallbacks),
        ("restarts", "HAProxy started again after it exited", counters.restarts),
        ("exits", "Times HAProxy exited on its own", counters.exits),
    ]
    for name, text, value in figures:
        yield CounterMetricFamily(f"sidecar_haproxy_{name}", text, value=value)


def _gossip_metrics(d: Daemon) -> Iterable[Any]:
    if d.gossip is None:
        return
    peer, stats = d.gossip.peer, d.gossip.stats
    messages = CounterMetricFamily(
        "sidecar_gossip_messages",
        "Gossip messages sent and received (UDP), by type",
        labels=["direction", "type"],
    )
    for key, count in sorted(peer.counters.items()):
        direction, _, kind = key.partition(".")
        messages.add_metric([direction, kind], count)
    yield messages
    moved = CounterMetricFamily(
        "sidecar_gossip_bytes", "Gossip bytes moved", labels=["direction", "transport"]
    )
    moved.add_metric(["received", "udp"], stats.bytes_in)
    moved.add_metric(["sent", "udp"], stats.bytes_out)
    moved.add_metric(["received", "tcp"], stats.stream_bytes_in)
    moved.add_metric(["sent", "tcp"], stats.stream_bytes_out)
    yield moved
    members = GaugeMetricFamily("sidecar_gossip_members", "Members by state", labels=["state"])
    by_state = Counter(str(m["State"]) for m in d.member_list())
    for state in ("alive", "suspect", "dead", "left"):
        members.add_metric([state], by_state.get(state, 0))
    yield members
    pulls = CounterMetricFamily(
        "sidecar_gossip_push_pulls", "Push/pulls this node started", labels=["result"]
    )
    pulls.add_metric(["ok"], stats.push_pulls_ok)
    pulls.add_metric(["failed"], stats.push_pulls_failed)
    yield pulls
    swim = peer.membership.counters
    figures = [
        ("probes", "Probes this node made", swim["probes"]),
        ("probes_failed", "Probes that failed (each raised a suspicion)", swim["probes_failed"]),
        ("refutations", "Suspicions or deaths of this node it refuted", swim["refutations"]),
    ]
    for name, text, value in figures:
        yield CounterMetricFamily(f"sidecar_gossip_{name}", text, value=value)
    rejected = CounterMetricFamily(
        "sidecar_gossip_rejected", "Peer input refused, by kind", labels=["kind"]
    )
    for kind, count in sorted(stats.rejected.items()):
        rejected.add_metric([kind], count)
    yield rejected


def _listener_metrics(d: Daemon) -> Iterable[Any]:
    listeners = sorted(d.listeners.listeners.values(), key=lambda each: each.name)
    deliveries = CounterMetricFamily(
        "sidecar_listener_deliveries",
        "Change events a listener accepted (2xx)",
        labels=["listener"],
    )
    retries = CounterMetricFamily(
        "sidecar_listener_retries",
        "POSTs to a listener after an event's first",
        labels=["listener"],
    )
    drops = CounterMetricFamily(
        "sidecar_listener_drops",
        "Change events not delivered: the oldest dropped from a full queue (overflow), or "
        "given up after every attempt failed (failed)",
        labels=["listener", "reason"],
    )
    queued = GaugeMetricFamily(
        "sidecar_listener_queue_length", "Change events waiting to be POSTed", labels=["listener"]
    )
    for each in listeners:
        stats = each.stats
        deliveries.add_metric([each.name], stats.deliveries)
        retries.add_metric([each.name], stats.retries)
        drops.add_metric([each.name, "overflow"], stats.dropped_overflow)
        drops.add_metric([each.name, "failed"], stats.dropped_failed)
        queued.add_metric([each.name], len(each.queue))
    yield from (deliveries, retries, drops, queued)
